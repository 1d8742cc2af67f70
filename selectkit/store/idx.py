"""Reader for the IDX format of (Fashion-)MNIST, gzipped or raw."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into an array.

    Raises:
        ValueError: the file is truncated, corrupt or not IDX, naming the file and the fix.
    """
    path = Path(path)
    fix = "re-download or reinstall it (on Debian: apt-get install --reinstall dataset-fashion-mnist)"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path} is truncated or not a valid gzip file ({e}): {fix}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()}): {fix}")
    dtype = np.dtype(_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated inside its header: {fix}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path} holds {len(data)} bytes but its header {shape} needs {expected}: "
                         f"the file is truncated or corrupt; {fix}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def find_idx(directory: Path, stem: str) -> Path:
    """Find ``<stem>`` or ``<stem>.gz`` (also the ``-idx3-ubyte`` dotted variants) in a directory."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    raise FileNotFoundError(
        f"{stem}[.gz] not found in {directory}. Fashion-MNIST is expected there as the four IDX "
        f"files; on Debian run `apt-get install dataset-fashion-mnist` (files land in "
        f"/usr/share/datasets/fashion-mnist), or set data.source: torchvision with download: true.")
