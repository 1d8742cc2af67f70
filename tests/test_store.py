import gzip
import shutil

import numpy as np
import pytest

from selectkit.config import DataConfig
from selectkit.store import Store, prepare, write_store
from selectkit.store.idx import read_idx
from selectkit.store.sources import Source

from conftest import FMNIST_DIR


def _write_idx(path, arr, gz=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_dir(tmp_path):
    def _make(gz):
        d = tmp_path / ("gz" if gz else "raw")
        d.mkdir()
        rng = np.random.default_rng(0)
        sfx = ".gz" if gz else ""
        _write_idx(d / f"train-images-idx3-ubyte{sfx}", rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), gz)
        _write_idx(d / f"train-labels-idx1-ubyte{sfx}", (np.arange(20) % 10).astype(np.uint8), gz)
        _write_idx(d / f"t10k-images-idx3-ubyte{sfx}", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), gz)
        _write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", (np.arange(5) % 10).astype(np.uint8), gz)
        return d
    return _make


@pytest.mark.parametrize("gz", [False, True])
def test_idx_store_round_trip(idx_dir, tmp_path, gz):
    d = idx_dir(gz)
    meta = prepare(DataConfig(source="idx", path=str(d)), tmp_path / "store")
    s = Store(tmp_path / "store")
    assert isinstance(s.train.x, np.memmap)  # never loaded whole
    assert s.train.x.shape == (20, 1, 28, 28) and s.test.y.tolist() == [0, 1, 2, 3, 4]
    assert meta["class_names"][0] == "T-shirt/top" and s.num_classes == 10
    np.testing.assert_array_equal(s.train.x[:, 0], read_idx(next(d.glob("train-images*"))))
    s.verify()


def test_gzip_and_raw_give_the_same_fingerprint(idx_dir, tmp_path):
    a = prepare(DataConfig(source="idx", path=str(idx_dir(False))), tmp_path / "a")
    b = prepare(DataConfig(source="idx", path=str(idx_dir(True))), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]


def test_truncated_gzip_idx(idx_dir, tmp_path):
    d = idx_dir(True)
    p = d / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is truncated.*reinstall"):
        prepare(DataConfig(source="idx", path=str(d)), tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_truncated_raw_idx_and_bad_magic(idx_dir):
    d = idx_dir(False)
    p = d / "train-labels-idx1-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"holds \d+ bytes but its header \(20,\) needs"):
        read_idx(p)
    p.write_bytes(b"\x12\x34\x56\x78" + b"\0" * 40)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(p)


def test_missing_dataset_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*download: true"):
        prepare(DataConfig(source="idx", path=str(tmp_path / "nowhere")), tmp_path / "store")


def test_missing_store_names_the_stage(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the prepare stage"):
        Store(tmp_path)


def test_digits_store(digits_store):
    assert digits_store.image_shape == (1, 8, 8) and digits_store.num_classes == 10
    assert len(digits_store.train) + len(digits_store.test) == 1797
    assert digits_store.meta["splits"]["train"]["class_counts"][0] > 100


def test_npz_with_and_without_test_split(make_npz, tmp_path):
    m1 = prepare(DataConfig(source="npz", path=str(make_npz(test=True))), tmp_path / "a")
    assert m1["splits"]["test"]["size"] == 16
    m2 = prepare(DataConfig(source="npz", path=str(make_npz(test=False)), test_fraction=0.25), tmp_path / "b")
    assert m2["splits"]["train"]["size"] == 48 and m2["splits"]["test"]["size"] == 16


def test_npz_float_images_and_hwc_layout(make_npz, tmp_path):
    rng = np.random.default_rng(1)
    p = make_npz(test=False, x_train=rng.random((40, 6, 6, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="x_train has 40 rows but y_train has 64"):
        prepare(DataConfig(source="npz", path=str(p)), tmp_path / "s")
    p = make_npz(test=False, x_train=rng.random((40, 6, 6, 3)).astype(np.float32), y_train=np.arange(40) % 3)
    meta = prepare(DataConfig(source="npz", path=str(p)), tmp_path / "s")
    assert meta["image_shape"] == [3, 6, 6]


def test_labels_out_of_range(make_npz, tmp_path):
    p = make_npz(y_train=np.array([0, 1, 5] + [0] * 61))
    with pytest.raises(ValueError, match=r"train labels out of range \[0, 3\) at example ids \[2\]"):
        prepare(DataConfig(source="npz", path=str(p), class_names=["a", "b", "c"]), tmp_path / "s")


def test_fingerprint_follows_content(make_npz, tmp_path):
    a = prepare(DataConfig(source="npz", path=str(make_npz(seed=0))), tmp_path / "a")
    b = prepare(DataConfig(source="npz", path=str(make_npz(seed=0))), tmp_path / "b")
    c = prepare(DataConfig(source="npz", path=str(make_npz(seed=1))), tmp_path / "c")
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]


def test_failed_prepare_keeps_previous_store(make_npz, tmp_path):
    out = tmp_path / "store"
    good = prepare(DataConfig(source="npz", path=str(make_npz())), out)
    bad = Source(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 9]), np.zeros((1, 1, 4, 4), np.uint8),
                 np.array([0]), ["a", "b"], "bad")
    with pytest.raises(ValueError, match="out of range"):
        write_store(bad, out)
    assert Store(out).fingerprint == good["fingerprint"]


def test_corrupted_store_file_detected(make_npz, tmp_path):
    out = tmp_path / "store"
    prepare(DataConfig(source="npz", path=str(make_npz())), out)
    np.save(out / "train_y.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="meta.json says"):
        Store(out)


def _png(path, size, mode="L"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=128).save(path)


def test_imagefolder_flat_and_split(tmp_path):
    for c in ("cat", "dog"):
        for i in range(5):
            _png(tmp_path / "flat" / c / f"{i}.png", (10, 10))
            _png(tmp_path / "split" / "train" / c / f"{i}.png", (10, 10))
            _png(tmp_path / "split" / "test" / c / f"{i}.png", (10, 10))
    m = prepare(DataConfig(source="imagefolder", path=str(tmp_path / "flat"), test_fraction=0.2), tmp_path / "s1")
    assert m["class_names"] == ["cat", "dog"] and m["splits"]["test"]["size"] == 2
    m = prepare(DataConfig(source="imagefolder", path=str(tmp_path / "split")), tmp_path / "s2")
    assert m["splits"]["train"]["size"] == 10 and m["image_shape"] == [1, 10, 10]


def test_imagefolder_inconsistent_shapes_and_resize_fix(tmp_path):
    _png(tmp_path / "f" / "a" / "0.png", (10, 10))
    _png(tmp_path / "f" / "a" / "1.png", (12, 9))
    _png(tmp_path / "f" / "b" / "0.png", (10, 10))
    with pytest.raises(ValueError, match=r"inconsistent shapes.*1.png is \(1, 9, 12\).*data.image_size"):
        prepare(DataConfig(source="imagefolder", path=str(tmp_path / "f"), test_fraction=0.3), tmp_path / "s")
    m = prepare(DataConfig(source="imagefolder", path=str(tmp_path / "f"), image_size=8, test_fraction=0.3),
                tmp_path / "s")
    assert m["image_shape"] == [1, 8, 8]


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_torchvision_source_through_local_files(tmp_path):
    """torchvision's FashionMNIST from local raw files gives the same store as the IDX adapter."""
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in FMNIST_DIR.glob("*.gz"):
        with gzip.open(gz) as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    a = prepare(DataConfig(source="torchvision", name="FashionMNIST", path=str(tmp_path / "tv")), tmp_path / "a")
    b = prepare(DataConfig(source="idx", path=str(FMNIST_DIR)), tmp_path / "b")
    assert a["fingerprint"] == b["fingerprint"]
    assert a["splits"]["train"]["size"] == 60000


def test_torchvision_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="download: true"):
        prepare(DataConfig(source="torchvision", name="FashionMNIST", path=str(tmp_path)), tmp_path / "s")
    with pytest.raises(ValueError, match="not a torchvision dataset"):
        prepare(DataConfig(source="torchvision", name="NoSuchSet", path=str(tmp_path)), tmp_path / "s")
