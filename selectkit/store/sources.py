"""One small adapter per source. Each returns a ``Split`` pair of uint8 NCHW images and labels.

Images are stored as uint8 [N, C, H, W]; labels as int64 [N]. Example ids are row numbers:
every adapter reads its source in a deterministic order so ids are stable across runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from selectkit.store.idx import find_idx, read_idx

if TYPE_CHECKING:
    from selectkit.config import DataConfig

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Source:
    """What an adapter hands to the store writer."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: List[str]
    description: str


def _to_nchw(x: np.ndarray) -> np.ndarray:
    """[N,H,W] -> [N,1,H,W]; [N,H,W,C] (C in 1,3,4) -> [N,C,H,W]; [N,C,H,W] unchanged."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if x.ndim == 4:
        return x
    raise ValueError(f"images must have 3 or 4 dimensions, got shape {x.shape}")


def _holdout(x: np.ndarray, y: np.ndarray, cfg: DataConfig) -> Tuple[np.ndarray, ...]:
    rng = np.random.default_rng(cfg.split_seed)
    perm = rng.permutation(len(y))
    n_test = max(1, int(round(len(y) * cfg.test_fraction)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train], y[train], x[test], y[test]


def check_source(cfg: DataConfig) -> None:
    """The cheap part of reading a source: its path exists and has the right kind (the `check`
    stage runs this before any stage deletes an output).

    Raises:
        FileNotFoundError: naming data.path and what is expected there.
    """
    if cfg.source in ("wordnet", "text"):
        from selectkit.store.text import check_text_source

        check_text_source(cfg)
    elif cfg.source == "idx":
        d = Path(cfg.path)  # type: ignore[arg-type]
        if not d.is_dir():
            raise FileNotFoundError(
                f"data.path={str(d)!r} is not a directory. Fashion-MNIST IDX files are expected there; "
                f"on Debian run `apt-get install dataset-fashion-mnist` (they land in "
                f"/usr/share/datasets/fashion-mnist), or set data.source: torchvision with download: true.")
    elif cfg.source == "npz":
        p = Path(cfg.path)  # type: ignore[arg-type]
        if not p.is_file():
            raise FileNotFoundError(f"data.path={str(p)!r}: no such .npz file. Save one with "
                                    f"np.savez(path, x_train=..., y_train=..., [x_test=..., y_test=...])")
    elif cfg.source == "imagefolder":
        root = Path(cfg.path)  # type: ignore[arg-type]
        if not root.is_dir():
            raise FileNotFoundError(f"data.path={str(root)!r} is not a directory; expected an image folder "
                                    f"laid out as <path>/<class>/<image> or <path>/{{train,test}}/<class>/<image>")


def from_idx(cfg: DataConfig) -> Source:
    d = Path(cfg.path)  # type: ignore[arg-type]
    check_source(cfg)
    parts = [read_idx(find_idx(d, s)) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    tx, ty, vx, vy = parts
    for x, y, name in ((tx, ty, "train"), (vx, vy, "t10k")):
        if len(x) != len(y):
            raise ValueError(f"{d}: {name} images hold {len(x)} examples but labels {len(y)}: "
                             f"the files do not belong together; re-download them")
    names = cfg.class_names or (FASHION_MNIST_CLASSES if int(ty.max()) == 9 else
                                [str(i) for i in range(int(ty.max()) + 1)])
    return Source(_to_nchw(tx), ty.astype(np.int64), _to_nchw(vx), vy.astype(np.int64), names,
                  f"idx:{d.resolve()}")


def from_digits(cfg: DataConfig) -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    tx, ty, vx, vy = _holdout(x, y, cfg)
    names = cfg.class_names or [str(int(n)) for n in d.target_names]
    return Source(tx, ty, vx, vy, names, f"sklearn.load_digits(split_seed={cfg.split_seed})")


def from_npz(cfg: DataConfig) -> Source:
    p = Path(cfg.path)  # type: ignore[arg-type]
    check_source(cfg)
    with np.load(p, allow_pickle=False) as z:
        keys = set(z.files)
        if not {"x_train", "y_train"} <= keys:
            raise ValueError(f"{p} holds arrays {sorted(keys)}; expected x_train and y_train "
                             f"(and optionally x_test, y_test)")
        x, y = z["x_train"], z["y_train"]
        has_test = {"x_test", "y_test"} <= keys
        vx, vy = (z["x_test"], z["y_test"]) if has_test else (None, None)
    for xa, ya, name in ((x, y, "train"), (vx, vy, "test")):
        if xa is not None and len(xa) != len(ya):
            raise ValueError(f"{p}: x_{name} has {len(xa)} rows but y_{name} has {len(ya)}: "
                             f"one label per image is needed")
    x = _as_uint8(x, f"{p}:x_train")
    if has_test:
        tx, ty, vx, vy = x, y, _as_uint8(vx, f"{p}:x_test"), vy
    else:
        tx, ty, vx, vy = _holdout(x, y, cfg)
    for arr, name in ((ty, "y_train"), (vy, "y_test")):
        if not np.issubdtype(np.asarray(arr).dtype, np.integer):
            raise ValueError(f"{p}:{name} must hold integer class labels, got dtype {arr.dtype}")
    k = int(max(ty.max(), vy.max())) + 1
    return Source(_to_nchw(tx), ty.astype(np.int64), _to_nchw(vx), vy.astype(np.int64),
                  cfg.class_names or [str(i) for i in range(k)], f"npz:{p.resolve()}")


def _as_uint8(x: np.ndarray, name: str) -> np.ndarray:
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and x.size and 0.0 <= x.min() and x.max() <= 1.0:
        return np.round(x * 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and x.size and 0 <= x.min() and x.max() <= 255:
        return x.astype(np.uint8)
    raise ValueError(f"{name}: images must be uint8, integers in [0, 255] or floats in [0, 1]; "
                     f"got dtype {x.dtype} with range [{x.min()}, {x.max()}]")


def _read_image(path: Path, size: Optional[int]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("1", "L", "I", "I;16", "F") else "RGB")
        if size is not None:
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _read_folder(root: Path, classes: List[str], size: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
    files: List[Tuple[Path, int]] = []
    for label, c in enumerate(classes):
        d = root / c
        if d.is_dir():
            files += [(f, label) for f in sorted(d.rglob("*")) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}/<class>/")
    first = _read_image(files[0][0], size)
    x = np.empty((len(files),) + first.shape, dtype=np.uint8)
    for i, (f, _) in enumerate(files):
        a = first if i == 0 else _read_image(f, size)
        if a.shape != first.shape:
            raise ValueError(f"images of inconsistent shapes: {files[0][0]} is {first.shape} (C,H,W) "
                             f"but {f} is {a.shape}. Set data.image_size to resize all images "
                             f"to one square size, or convert them to one mode (gray or RGB).")
        x[i] = a
    return x, np.array([lab for _, lab in files], dtype=np.int64)


def from_imagefolder(cfg: DataConfig) -> Source:
    """torchvision's ImageFolder layout: root/<class>/*.png, or root/{train,test}/<class>/*.png."""
    root = Path(cfg.path)  # type: ignore[arg-type]
    check_source(cfg)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    base = root / "train" if split else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {base}: expected {base}/<class>/<image>")
    if split:
        tx, ty = _read_folder(root / "train", classes, cfg.image_size)
        vx, vy = _read_folder(root / "test", classes, cfg.image_size)
        if tx.shape[1:] != vx.shape[1:]:
            raise ValueError(f"train images are {tx.shape[1:]} but test images {vx.shape[1:]}: "
                             f"set data.image_size to resize both")
    else:
        x, y = _read_folder(root, classes, cfg.image_size)
        tx, ty, vx, vy = _holdout(x, y, cfg)
    return Source(tx, ty, vx, vy, cfg.class_names or classes, f"imagefolder:{root.resolve()}")


def from_torchvision(cfg: DataConfig) -> Source:
    """Any torchvision classification dataset with a ``train`` flag, e.g. FashionMNIST, CIFAR10."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, cfg.name, None)
    if cls is None:
        raise ValueError(f"data.name={cfg.name!r} is not a torchvision dataset; "
                         f"examples: FashionMNIST, MNIST, KMNIST, CIFAR10, CIFAR100, SVHN")
    root = cfg.path or "data/torchvision"
    splits = []
    for train in (True, False):
        try:
            kw = {"split": "train" if train else "test"} if cfg.name == "SVHN" else {"train": train}
            ds = cls(root=root, download=cfg.download, **kw)
        except RuntimeError as e:
            raise FileNotFoundError(f"torchvision {cfg.name} not found under {root!r} ({e}). "
                                    f"Set data.download: true on a machine with a network, or "
                                    f"place the files where torchvision expects them.") from None
        splits.append(_torchvision_arrays(ds))
    (tx, ty), (vx, vy) = splits
    names = cfg.class_names or list(getattr(ds, "classes", [])) or [str(i) for i in range(int(ty.max()) + 1)]
    return Source(tx, ty, vx, vy, names, f"torchvision:{cfg.name}:{Path(root).resolve()}")


def _torchvision_arrays(ds) -> Tuple[np.ndarray, np.ndarray]:
    data = getattr(ds, "data", None)
    labels = getattr(ds, "targets", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if data is not None and labels is not None:  # MNIST family, CIFAR, SVHN keep arrays in memory
        x = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        y = labels.numpy() if hasattr(labels, "numpy") else np.asarray(labels)
        return _to_nchw(_as_uint8(x, type(ds).__name__)), y.astype(np.int64)
    xs, ys = zip(*((np.asarray(img, dtype=np.uint8), int(t)) for img, t in ds))
    return _to_nchw(np.stack(xs)), np.array(ys, dtype=np.int64)


ADAPTERS = {"idx": from_idx, "digits": from_digits, "npz": from_npz,
            "imagefolder": from_imagefolder, "torchvision": from_torchvision}


def read_source(cfg: DataConfig) -> Source:
    """Read the configured source into arrays (the adapters' common entry point)."""
    log.info("reading %s source", cfg.source)
    return ADAPTERS[cfg.source](cfg)
