"""Cheap per-example features for the AutoAssist gate, computed once per store by the task
(images: pixels average-pooled by ``downsample``, see selectkit/tasks/image.py).

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


def features_for(task, path: Optional[str], downsample: int) -> np.ndarray:
    """The gate's features: read from ``path`` (a features stage's output), else the task's,
    computed now."""
    if path:
        return np.asarray(read_features(path, task))
    return task.features(downsample=downsample)
