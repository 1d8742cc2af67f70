"""Cheap per-example features for the AutoAssist gate, computed once per store: the task's own
(images: pixels average-pooled by ``downsample``, see selectkit/tasks/image.py), or a proxy's
penultimate-layer embeddings cached by SVP's score stage (``score.embeddings: true``), which
know what a trained network finds hard at the same cost per candidate.

A features directory holds ``features.npy`` (float32, one row per train id) and
``features.json`` (the store's fingerprint, rows, kind, downsample), written atomically by the
``features`` stage (stages/features.py). The gate reads it memory-mapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from selectkit.io import fresh_dir, replace_dir


def write_features(out: str | Path, features: np.ndarray, meta: Dict[str, Any]) -> None:
    out = Path(out)
    tmp = fresh_dir(out)
    np.save(tmp / "features.npy", np.ascontiguousarray(features, dtype=np.float32))
    meta = {**meta, "rows": int(features.shape[0]), "dim": int(features.shape[1])}
    (tmp / "features.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, out)


def standardise(x: np.ndarray) -> np.ndarray:
    """Columns centred, all divided by one global standard deviation (float32): the scale the
    assistant's fixed learning rate expects, whatever produced the features."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return (x / max(float(x.std()), 1e-12)).astype(np.float32)


UNCERTAINTY = ("loss", "entropy", "margin", "least_confidence")


def embedding_features(scores_dir: str | Path, task, components: Optional[int] = 64, uncertainty: bool = True
                       ) -> tuple[np.ndarray, Dict[str, Any]]:
    """A proxy's cached penultimate-layer embeddings as gate features, with their provenance,
    reduced to their first ``components`` principal components (scikit-learn's randomized PCA,
    seeded; None keeps every column) so the gate's cost per candidate stays a short dot product.

    With ``uncertainty`` the proxy's own scores of each example (``log1p(loss)``, entropy,
    margin, least confidence) come first: what the proxy found hard predicts what the target
    will. Each block is standardised on its own and the scores block scaled to carry as much
    total variance as the embeddings block, so neither drowns the other at the assistant's
    fixed learning rate.

    Raises:
        FileNotFoundError: no scores there (names the stages to run).
        UsageError: the scores hold no embeddings (names ``score.embeddings``), were scored on
            another store (both fingerprints named), or cover another number of examples.
    """
    from selectkit.methods.svp.artifacts import read_scores
    from selectkit.validation import UsageError

    d = Path(scores_dir)
    scores, prov = read_scores(d)
    if "embeddings" not in scores:
        raise UsageError(f"{d} holds no embeddings: set score.embeddings: true in params and rerun its score stage")
    if prov.get("store_fingerprint") != task.fingerprint:
        raise UsageError(f"embeddings {d} were scored on store {prov.get('store_fingerprint')} but the features are "
                         f"for store {task.fingerprint}: rerun the proxy's train and score stages on this store")
    e = scores["embeddings"]
    if e.ndim != 2 or len(e) != len(task):
        raise UsageError(f"embeddings {d} have shape {e.shape} but the store has {len(task)} train examples: "
                         f"rerun its score stage")
    meta: Dict[str, Any] = {"kind": "proxy embeddings", "scores": str(d), "proxy_run": prov.get("proxy_run"),
                            "proxy_train_s": prov.get("proxy_train_s"), "score_s": prov.get("score_s"),
                            "embedding_dim": int(e.shape[1])}
    if components is not None and components < e.shape[1]:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=components, svd_solver="randomized", random_state=0)
        e = pca.fit_transform(np.asarray(e, dtype=np.float32))
        meta.update(components=components, explained_variance=float(pca.explained_variance_ratio_.sum()))
    feats = standardise(e)
    if uncertainty:
        u = np.stack([np.log1p(np.asarray(scores["loss"], dtype=np.float64))]
                     + [np.asarray(scores[k], dtype=np.float64) for k in UNCERTAINTY[1:]], axis=1)
        u = standardise(u) * np.float32(np.sqrt(feats.shape[1] / u.shape[1]))
        feats = np.concatenate([u, feats], axis=1)
        meta.update(uncertainty=list(UNCERTAINTY))
    return feats, meta


def read_features(path: str | Path, task) -> np.ndarray:
    """Features of ``task``'s train examples from a features directory (memory-mapped).

    Raises:
        FileNotFoundError: no features there (names the stage to run).
        ValueError: features of another store, or a row count that is not the store's.
    """
    d = Path(path)
    if not (d / "features.npy").is_file() or not (d / "features.json").is_file():
        raise FileNotFoundError(f"autoassist.features={str(path)!r} holds no features.npy + features.json: "
                                f"run the features stage (stages/features.py) first")
    meta = json.loads((d / "features.json").read_text())
    if meta.get("store_fingerprint") != task.fingerprint:
        raise ValueError(f"features {d} were computed from store {meta.get('store_fingerprint')} but training "
                         f"uses store {task.fingerprint}: rerun the features stage on this store")
    feats = np.load(d / "features.npy", mmap_mode="r")
    n = len(task)
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"features {d} have shape {feats.shape} but the store has {n} train examples "
                         f"(one row per id expected): rerun the features stage")
    return feats


def upstream_seconds(path: Optional[str]) -> float:
    """Seconds a features directory cost upstream: the features stage's own time plus, for a
    proxy's embeddings, the proxy's training and scoring (0 without a directory or record)."""
    p = Path(path) / "features.json" if path else None
    if p is None or not p.is_file():
        return 0.0
    meta = json.loads(p.read_text())
    return sum(float(meta.get(k) or 0.0) for k in ("features_s", "proxy_train_s", "score_s"))


def features_for(task, path: Optional[str], downsample: int) -> np.ndarray:
    """The gate's features: read from ``path`` (a features stage's output), else the task's,
    computed now."""
    if path:
        return np.asarray(read_features(path, task))
    return task.features(downsample=downsample)
