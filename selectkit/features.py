"""Cheap per-example features for the AutoAssist gate, computed once per store.

Images: the train split average-pooled by ``downsample`` in both spatial dimensions (28x28 ->
14x14 at 2), scaled to [0, 1], centred per column and divided by one global standard
deviation. A features directory holds ``features.npy`` (float32, one row per train id) and
``features.json`` (the store's fingerprint, rows, kind, downsample), written atomically by the
``features`` stage (stages/features.py). The gate reads it memory-mapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from selectkit.store import Store, fresh_dir, replace_dir


def pooled_pixels(store: Store, downsample: int = 2, chunk: int = 8192) -> np.ndarray:
    """The train split's pixels, average-pooled by ``downsample``, standardised (float32, N x D)."""
    if downsample < 1:
        raise ValueError(f"autoassist.downsample={downsample} must be >= 1")
    x = store.train.x
    n, c, h, w = x.shape
    hh, ww = h // downsample, w // downsample
    if hh == 0 or ww == 0:
        raise ValueError(f"autoassist.downsample={downsample} is larger than the images ({h}x{w})")
    out = np.empty((n, c * hh * ww), dtype=np.float32)
    for i in range(0, n, chunk):
        b = np.asarray(x[i:i + chunk, :, :hh * downsample, :ww * downsample], dtype=np.float32) / 255.0
        b = b.reshape(len(b), c, hh, downsample, ww, downsample).mean(axis=(3, 5))
        out[i:i + len(b)] = b.reshape(len(b), -1)
    out -= out.mean(axis=0, keepdims=True)
    out /= max(float(out.std()), 1e-6)
    return out


def write_features(out: str | Path, features: np.ndarray, meta: Dict[str, Any]) -> None:
    out = Path(out)
    tmp = fresh_dir(out)
    np.save(tmp / "features.npy", np.ascontiguousarray(features, dtype=np.float32))
    meta = {**meta, "rows": int(features.shape[0]), "dim": int(features.shape[1])}
    (tmp / "features.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    replace_dir(tmp, out)


def read_features(path: str | Path, store: Store) -> np.ndarray:
    """Features of ``store``'s train split from a features directory (memory-mapped).

    Raises:
        FileNotFoundError: no features there (names the stage to run).
        ValueError: features of another store, or a row count that is not the store's.
    """
    d = Path(path)
    if not (d / "features.npy").is_file() or not (d / "features.json").is_file():
        raise FileNotFoundError(f"autoassist.features={str(path)!r} holds no features.npy + features.json: "
                                f"run the features stage (stages/features.py) first")
    meta = json.loads((d / "features.json").read_text())
    if meta.get("store_fingerprint") != store.fingerprint:
        raise ValueError(f"features {d} were computed from store {meta.get('store_fingerprint')} but training "
                         f"uses store {store.fingerprint}: rerun the features stage on this store")
    feats = np.load(d / "features.npy", mmap_mode="r")
    n = len(store.train)
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(f"features {d} have shape {feats.shape} but the store has {n} train examples "
                         f"(one row per id expected): rerun the features stage")
    return feats


def features_for(store: Store, path: Optional[str], downsample: int) -> np.ndarray:
    """The gate's features: read from ``path`` (a features stage's output), else computed now."""
    if path:
        return np.asarray(read_features(path, store))
    return pooled_pixels(store, downsample)
