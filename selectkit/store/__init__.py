"""The example store: arrays on disk addressed by a stable integer example id.

Layout of a store directory::

    meta.json         fingerprint, shapes, dtypes, class names, per-channel mean/std, source
    train_x.npy       uint8 [N, C, H, W]   (example id = row number)
    train_y.npy       int64 [N]
    test_x.npy        uint8 [M, C, H, W]
    test_y.npy        int64 [M]
    holdout_ids.npy   int64 [H], sorted train ids held out (only when data.holdout_fraction > 0)

Arrays are opened memory-mapped, so a store of any size costs only the pages touched. A text
store (``data.source: wordnet | text``) holds ragged token ids and its tokenizer instead of
images: see selectkit/store/text.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from selectkit.io import fresh_dir, replace_dir  # noqa: F401  (re-exported)
from selectkit.store.sources import Source, read_source

TEXT_SOURCES = ("wordnet", "text")

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
FORMAT_VERSION = 1
_CHUNK = 1 << 16  # rows hashed / reduced at a time, so fingerprinting never loads a whole array


def _hash_array(h: "hashlib._Hash", a: np.ndarray) -> None:
    h.update(f"{a.dtype.str}{a.shape}".encode())
    for i in range(0, len(a), _CHUNK):
        h.update(np.ascontiguousarray(a[i:i + _CHUNK]).tobytes())


def fingerprint_arrays(arrays: Dict[str, np.ndarray], class_names: List[str], extra: bytes = b"") -> str:
    """sha256 over every array's dtype, shape and bytes, plus the class names and ``extra``
    (a text store's tokenizer hash) (first 16 hex)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        _hash_array(h, arrays[name])
    h.update(json.dumps(class_names).encode())
    h.update(extra)
    return h.hexdigest()[:16]


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    c = x.shape[1]
    s, s2, n = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), _CHUNK):
        b = np.asarray(x[i:i + _CHUNK], dtype=np.float64) / 255.0
        s += b.sum(axis=(0, 2, 3))
        s2 += (b * b).sum(axis=(0, 2, 3))
        n += b.shape[0] * b.shape[2] * b.shape[3]
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 1e-12))
    return mean.tolist(), std.tolist()


def _validate(src: Source) -> None:
    k = len(src.class_names)
    for split, x, y in (("train", src.train_x, src.train_y), ("test", src.test_x, src.test_y)):
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{split} images must be uint8 [N, C, H, W], got {x.dtype} {x.shape}")
        if len(x) != len(y) or y.ndim != 1:
            raise ValueError(f"{split}: {len(x)} images but labels of shape {y.shape}")
        if len(y) == 0:
            raise ValueError(f"{split} split is empty")
        bad = np.flatnonzero((y < 0) | (y >= k))
        if bad.size:
            raise ValueError(f"{split} labels out of range [0, {k}) at example ids {bad[:10].tolist()} "
                             f"(values {y[bad[:10]].tolist()}): fix the labels, or set data.class_names "
                             f"to list all {int(y.max()) + 1} classes")
    if src.train_x.shape[1:] != src.test_x.shape[1:]:
        raise ValueError(f"train images are {src.train_x.shape[1:]} but test images {src.test_x.shape[1:]}")


def holdout_split(labels: np.ndarray, fraction: float, seed: int, class_names: List[str]) -> np.ndarray:
    """Sorted train ids of a seeded, stratified holdout: ``round(fraction * n_c)`` examples of
    every class ``c`` (its own draw per class, so one class's size never moves another's ids).

    Raises:
        ValueError: the fraction leaves a class with no holdout example or with no training
            example left (names the class, its count and the fractions that would work).
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(class_names))
    rng = np.random.default_rng([seed, 0x401D])
    out = []
    for c, n_c in enumerate(counts):
        h = int(round(fraction * n_c))
        if n_c and (h == 0 or h == n_c):
            where = "holdout" if h == 0 else "training"
            lo, hi = 0.5 / n_c, 1 - 0.5 / n_c
            raise ValueError(
                f"data.holdout_fraction={fraction} leaves class {class_names[c]!r} ({n_c} train examples) with "
                f"no {where} example: pick a fraction in [{lo:.4g}, {hi:.4g}) for this class, or 0 for no holdout")
        ids = np.flatnonzero(labels == c)
        out.append(ids[rng.permutation(n_c)[:h]])
    return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)


def write_store(src: Source, out: str | Path, holdout_fraction: float = 0.0, holdout_seed: int = 0) -> Dict[str, Any]:
    """Write a source as a store, atomically: a crash leaves any previous store untouched.

    With ``holdout_fraction`` > 0 a stratified, seeded share of the train split is held out
    (``holdout_ids.npy``, see ``holdout_split``): training draws from the rest by default.

    Returns:
        The store's metadata (also written to ``meta.json``).
    """
    _validate(src)
    holdout = (holdout_split(src.train_y, holdout_fraction, holdout_seed, list(src.class_names))
               if holdout_fraction > 0 else None)
    out = Path(out)
    tmp = fresh_dir(out)
    arrays = {"train_x": src.train_x, "train_y": src.train_y, "test_x": src.test_x, "test_y": src.test_y}
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(a))
    hashed = dict(arrays)
    if holdout is not None:  # the fingerprint covers the holdout: artifacts of another split fail
        np.save(tmp / "holdout_ids.npy", holdout)
        hashed["holdout_ids"] = holdout
    mean, std = _channel_stats(src.train_x)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint_arrays(hashed, list(src.class_names)),
        "source": src.description,
        "class_names": list(src.class_names),
        "num_classes": len(src.class_names),
        "image_shape": list(src.train_x.shape[1:]),
        "mean": mean,
        "std": std,
        "splits": {s: {"size": int(len(arrays[f"{s}_y"])),
                       "x": {"shape": list(arrays[f"{s}_x"].shape), "dtype": str(arrays[f"{s}_x"].dtype)},
                       "y": {"shape": list(arrays[f"{s}_y"].shape), "dtype": str(arrays[f"{s}_y"].dtype)},
                       "class_counts": np.bincount(arrays[f"{s}_y"], minlength=len(src.class_names)).tolist()}
                   for s in SPLITS},
    }
    if holdout is not None:
        meta["holdout"] = {"fraction": holdout_fraction, "seed": holdout_seed, "size": int(len(holdout)),
                           "class_counts": np.bincount(src.train_y[holdout], minlength=len(src.class_names)).tolist()}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    replace_dir(tmp, out)
    log.info("wrote store %s (fingerprint %s)", out, meta["fingerprint"])
    return meta


@dataclass
class Split:
    """One split of an image store: memory-mapped images and labels."""

    x: np.ndarray  # uint8 [N, C, H, W], memory-mapped
    y: np.ndarray  # int64 [N], memory-mapped

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class TextSplit:
    """One split of a text store: ragged token ids (memory-mapped) and labels."""

    tokens: np.ndarray  # int32 [T]: every example's token ids, concatenated
    offsets: np.ndarray  # int64 [N + 1]: example i is tokens[offsets[i]:offsets[i + 1]]
    y: np.ndarray  # int64 [N]
    rows: np.ndarray  # int64 [N]: the source row of each example

    def __len__(self) -> int:
        return len(self.y)

    def lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.offsets))

    def example(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1]])


# the arrays of each split, by the task a store holds (meta.json's "task")
PARTS = {"image_classification": ("x", "y"), "text_classification": ("tokens", "offsets", "y", "rows")}
SPLIT_TYPES = {"image_classification": Split, "text_classification": TextSplit}


class Store:
    """A prepared example store, opened memory-mapped.

    Raises:
        FileNotFoundError: the directory or one of its files is missing (names the stage to run).
        ValueError: the files disagree with ``meta.json``.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no example store at {self.root} (missing meta.json): run the "
                                    f"prepare stage first (`dvc repro prepare`)")
        self.meta: Dict[str, Any] = json.loads(meta_path.read_text())
        self.kind = self.meta.get("task", "image_classification")
        if self.kind not in PARTS:
            raise ValueError(f"{meta_path} names task {self.kind!r}, which this selectkit does not know "
                             f"({sorted(PARTS)}): upgrade selectkit, or rerun prepare")
        self.splits: Dict[str, Any] = {}
        for s in SPLITS:
            arrays = []
            for part in PARTS[self.kind]:
                p = self.root / f"{s}_{part}.npy"
                if not p.is_file():
                    raise FileNotFoundError(f"store {self.root} lacks {p.name}: rerun the prepare stage")
                a = np.load(p, mmap_mode="r")
                want = self.meta["splits"][s][part]
                if list(a.shape) != want["shape"] or str(a.dtype) != want["dtype"]:
                    raise ValueError(f"{p} is {a.dtype} {list(a.shape)} but meta.json says "
                                     f"{want['dtype']} {want['shape']}: the store is corrupt; rerun prepare")
                arrays.append(a)
            self.splits[s] = SPLIT_TYPES[self.kind](*arrays)
        if self.kind == "text_classification":
            self._check_tokenizer()
        self._holdout: np.ndarray = np.zeros(0, dtype=np.int64)
        if "holdout" in self.meta:
            p = self.root / "holdout_ids.npy"
            if not p.is_file():
                raise FileNotFoundError(f"store {self.root} lacks {p.name} (meta.json records a holdout): "
                                        f"rerun the prepare stage")
            self._holdout = np.load(p, allow_pickle=False)
            if len(self._holdout) != self.meta["holdout"]["size"]:
                raise ValueError(f"{p} holds {len(self._holdout)} ids but meta.json says "
                                 f"{self.meta['holdout']['size']}: the store is corrupt; rerun prepare")

    def _check_tokenizer(self) -> None:
        from selectkit.store.text import file_sha256

        p = self.root / self.meta["tokenizer"]["file"]
        if not p.is_file():
            raise FileNotFoundError(f"text store {self.root} lacks {p.name}: rerun the prepare stage")
        got, want = file_sha256(p)[:16], self.meta["tokenizer"]["sha256"][:16]
        if got != want:
            raise ValueError(f"{p} (sha256 {got}...) is not the tokenizer this store's token ids were made with "
                             f"(sha256 {want}... in meta.json, store fingerprint {self.fingerprint}): it was copied "
                             f"from another store or edited; rerun prepare to re-tokenise")

    @property
    def tokenizer_path(self) -> Path:
        """The text store's tokenizer.json."""
        return self.root / self.meta["tokenizer"]["file"]

    @property
    def holdout_ids(self) -> np.ndarray:
        """Sorted train ids held out from training (empty without ``data.holdout_fraction``)."""
        return self._holdout

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def image_shape(self) -> tuple:
        return tuple(self.meta["image_shape"])

    @property
    def train(self) -> Any:
        """The train split: a ``Split`` (images) or ``TextSplit`` (text)."""
        return self.splits["train"]

    @property
    def test(self) -> Any:
        return self.splits["test"]

    def verify(self) -> None:
        """Recompute the content fingerprint (reads every byte once) and compare with meta.json."""
        arrays = {f"{s}_{p}": getattr(self.splits[s], p) for s in SPLITS for p in PARTS[self.kind]}
        if "holdout" in self.meta:
            arrays["holdout_ids"] = self._holdout
        extra = self.meta["tokenizer"]["sha256"].encode() if self.kind == "text_classification" else b""
        got = fingerprint_arrays(arrays, self.meta["class_names"], extra)
        if got != self.fingerprint:
            raise ValueError(f"store {self.root} content fingerprint {got} != {self.fingerprint} in "
                             f"meta.json: its arrays changed after prepare; rerun prepare")


def prepare(cfg, out: str | Path) -> Dict[str, Any]:
    """Read the configured source and write it as a store (the `prepare` stage's work)."""
    from selectkit.store.text import write_text_store

    if cfg.source in TEXT_SOURCES:
        return write_text_store(cfg, out)
    return write_store(read_source(cfg), out, cfg.holdout_fraction, cfg.split_seed)
