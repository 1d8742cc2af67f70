"""The irreducible-loss scores RHO-LOSS reads: a scores directory of the score stage
(selectkit/methods/svp/artifacts.py) run on a model trained on the store's holdout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

from selectkit.validation import UsageError


def load_irreducible(path: str | Path, task) -> Tuple[np.ndarray, Dict[str, Any]]:
    """The per-example irreducible losses (float32, indexed by train id) and their provenance,
    checked against the task they will be subtracted in.

    Raises:
        FileNotFoundError: no scores there (names the stages to run).
        ValueError: scores of another store (both fingerprints named), of another number of
            examples, non-finite losses (the ids named), or a model that trained on the ids it
            scores (not on the holdout), whose losses there are not irreducible.
    """
    from selectkit.methods.svp.artifacts import read_scores

    d = Path(path)
    if not (d / "scores.npz").is_file():
        raise FileNotFoundError(
            f"train.methods.rholoss.irreducible={str(d)!r} holds no scores (scores.npz + provenance.json): run "
            f"the stages that write it (train the irreducible-loss model with input.split: holdout, then "
            f"stages/score.py --proxy <its run> --out {d})")
    try:
        scores, prov = read_scores(d)
    except ValueError as e:
        raise UsageError(f"train.methods.rholoss.irreducible: {e}") from None
    if prov.get("store_fingerprint") != task.fingerprint:
        raise UsageError(f"irreducible losses {d} were scored on store {prov.get('store_fingerprint')} but this run "
                         f"trains on store {task.fingerprint}: rerun the irreducible-loss model's train and score "
                         f"stages on this store")
    n = len(task)
    ids = scores["ids"]
    if len(ids) != n or not np.array_equal(ids, np.arange(n)):
        raise UsageError(f"irreducible losses {d} cover {len(ids)} example ids but the train split has {n}: rerun "
                         f"its score stage on this store")
    cfg = prov.get("proxy_config") or {}
    split = (cfg.get("input") or {}).get("split", "train") if cfg else None
    if split is not None and split != "holdout":
        raise UsageError(f"irreducible losses {d} come from model {prov.get('proxy_run')}, which trained on the train "
                         f"split, the ids RHO-LOSS selects from: its losses there are not irreducible. Train it with "
                         f"input.split: holdout (data.holdout_fraction > 0), then rerun its score stage")
    loss = np.ascontiguousarray(scores["loss"], dtype=np.float32)
    digest = hashlib.sha256(loss.tobytes()).hexdigest()[:16]
    return loss, {**prov, "path": str(d), "loss_sha256": digest}


def upstream_seconds(path: str | Path) -> float:
    """Seconds the irreducible-loss scores cost upstream: the model's training plus scoring
    (0 when the provenance is missing: a run is never failed for its report)."""
    p = Path(path) / "provenance.json"
    if not p.is_file():
        return 0.0
    prov = json.loads(p.read_text())
    return float(prov.get("proxy_train_s") or 0.0) + float(prov.get("score_s") or 0.0)
