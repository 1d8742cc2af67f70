"""Shared fixtures: one MLflow store per test session, small stores, offline DVC."""

import os
from pathlib import Path

import numpy as np
import pytest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def pytest_collection_modifyitems(config, items):
    """Order the suite so `make test`'s pytest-xdist workers (``-n 2 --dist worksteal``) finish
    together. The end-to-end tests marked ``cost`` take most of the suite's time (each DVC stage
    they run pays 5-12 s of imports); worksteal hands worker j the j-th contiguous share of this
    list and lets an idle worker steal from the end of another's. So the costly tests are dealt
    out longest first to the least loaded share (LPT) and put at the front of their share, the
    rest keep their order behind them, and stealing evens out the cheap tail. A serial run only
    runs the costly tests first."""
    k = getattr(config.option, "numprocesses", None)
    k = k if isinstance(k, int) and k > 1 else 2
    costly = sorted((it for it in items if it.get_closest_marker("cost")),
                    key=lambda it: -it.get_closest_marker("cost").args[0])
    if not costly:
        return
    rest = [it for it in items if not it.get_closest_marker("cost")]
    shares, load = [[] for _ in range(k)], [0.0] * k
    for it in costly:
        j = load.index(min(load))
        shares[j].append(it)
        load[j] += it.get_closest_marker("cost").args[0]
    ordered, left = [], len(items)
    for j, share in enumerate(shares):
        size = left // (k - j)  # worksteal's split: what is pending, shared evenly by the idle workers
        take = max(0, size - len(share))
        share, rest = share + rest[:take], rest[take:]
        ordered += share
        left -= len(share)
    items[:] = ordered + rest


@pytest.fixture(scope="session", autouse=True)
def _session_env(tmp_path_factory):
    """One SQLite MLflow store for the whole session; DVC without analytics."""
    root = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["DVC_NO_ANALYTICS"] = "1"
    # auto settings measured in every run, never taken from an earlier run's (or the user's) cache
    os.environ["SELECTKIT_AUTOTUNE_CACHE"] = "off"
    os.environ.pop("DVC_ROOT", None)
    os.environ.pop("DVC_STAGE", None)
    yield


@pytest.fixture(autouse=True)
def _equal_timings(request, monkeypatch):
    """Settings left ``auto`` (selectkit/autotune.py) are measured; in-process tests see equal
    timings for every option, so each takes its preferred value and runs compare bit for bit.
    Tests marked ``measured`` time for real; tests of the choices inject their own timings."""
    if request.node.get_closest_marker("measured") is None:
        def equal(forward, reps=3, sync=None):
            forward()  # the option still runs once: it must work
            return 1.0

        monkeypatch.setattr("selectkit.autotune.time_forward", equal)
        # per example too: every selection batch size costs the same, the smallest is taken
        monkeypatch.setattr("selectkit.autotune.Probe.forward_us", lambda self, n, *a, **k: 1.0)


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory):
    from selectkit.config import DataConfig
    from selectkit.store import Store, prepare

    out = tmp_path_factory.mktemp("stores") / "digits"
    prepare(DataConfig(source="digits"), out)
    return Store(out)


@pytest.fixture
def make_npz(tmp_path):
    """Write a synthetic .npz source and return its path."""

    def _make(n=64, k=3, shape=(1, 8, 8), test=True, seed=0, **override):
        rng = np.random.default_rng(seed)
        arrays = {"x_train": rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                  "y_train": rng.integers(0, k, n)}
        if test:
            arrays.update(x_test=rng.integers(0, 256, (n // 4,) + shape, dtype=np.uint8),
                          y_test=rng.integers(0, k, n // 4))
        arrays.update(override)
        p = tmp_path / f"src{seed}.npz"
        np.savez(p, **arrays)
        return p

    return _make


_EXAMPLES_DIR = []


def example_params(name, task, params=None):
    """A registered method's example params for ``task``, with any artifact its runs read (e.g.
    RHO-LOSS's irreducible losses) written once per session through its ``make_example``."""
    import tempfile

    from selectkit.methods import METHODS

    m = METHODS[name]
    base = dict(m.example, **(params or {}))
    if m.make_example is None:
        return base
    if not _EXAMPLES_DIR:
        _EXAMPLES_DIR.append(tempfile.mkdtemp(prefix="selectkit-examples-"))
    return {**m.make_example(task, _EXAMPLES_DIR[0]), **(params or {})}


def tiny_train_cfg(**overrides):
    """A TrainConfig that trains a small CNN on digits in well under a second."""
    from selectkit.config import train_config

    values = {"model": {"name": "cnn", "args": {"channels": [8, 16]}}, "epochs": 2,
              "input": {"batch_size": 64, "prefetch": 2}, "eval_every": 10, "log_every": 5,
              "checkpoint_every": 0, "threads": 1, "channels_last": True}
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v
    return train_config(values, "train")


# Words that mark each class of the tiny text fixture, and words every class uses.
TEXT_CLASSES = {
    "animal": ["dog", "cat", "horse", "sparrow", "otter", "lizard", "wolf", "fur", "paws", "tail"],
    "tool": ["hammer", "saw", "wrench", "drill", "chisel", "pliers", "blade", "handle", "bolt", "screw"],
    "food": ["bread", "cheese", "apple", "soup", "rice", "butter", "salt", "spice", "baked", "sweet"],
}
TEXT_FILLER = ["a", "the", "of", "with", "used", "for", "small", "large", "kind", "often", "very", "and", "or"]


def text_rows(n=240, seed=0, max_words=14):
    """(text, label) rows of the tiny text fixture: each text is filler words with one to three
    of its class's marker words, so a model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    names = sorted(TEXT_CLASSES)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = list(rng.choice(TEXT_FILLER, rng.integers(2, max_words - 2)))
        for w in rng.choice(TEXT_CLASSES[label], rng.integers(1, 4)):
            words.insert(int(rng.integers(0, len(words) + 1)), str(w))
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


@pytest.fixture
def make_text(tmp_path):
    """Write the tiny text fixture as JSON Lines or CSV and return its path."""
    import csv
    import json

    def _make(n=240, seed=0, fmt="jsonl", rows=None, name=None, encoding="utf-8", **cols):
        rows = rows if rows is not None else text_rows(n, seed)
        tc, lc = cols.get("text_column", "text"), cols.get("label_column", "label")
        p = tmp_path / (name or f"texts{seed}.{fmt}")
        with open(p, "w", encoding=encoding, newline="") as f:
            if fmt == "jsonl":
                for t, lab in rows:
                    f.write(json.dumps({tc: t, lc: lab}, ensure_ascii=False) + "\n")
            else:
                w = csv.writer(f)
                w.writerow([tc, lc])
                w.writerows(rows)
        return p

    return _make


@pytest.fixture(scope="session")
def text_store(tmp_path_factory):
    """A tiny text store from the fixture rows (JSON Lines), 20 % held out as test split."""
    import json

    from selectkit.config import DataConfig
    from selectkit.store import Store, prepare

    d = tmp_path_factory.mktemp("text")
    p = d / "texts.jsonl"
    p.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in text_rows(300)))
    prepare(DataConfig(source="text", path=str(p), vocab_size=200, min_frequency=1), d / "store")
    return Store(d / "store")
