"""Your own loop: SelectiveLoader over a map-style dataset, and the example script."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selectkit import SelectiveLoader
from selectkit.validation import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class Data(torch.utils.data.Dataset):
    def __init__(self, n=200, shift=0):
        g = torch.Generator().manual_seed(0)
        self.x, self.targets, self.shift = torch.randn(n, 8, generator=g), torch.arange(n) % 3, shift

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return i + self.shift, self.x[i], self.targets[i]


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(8, 3)


def _run(loader, model, stop_after=None, steps=None):
    """Train like a user's loop; returns the ids of every batch."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for batch in loader:
        losses = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
        loader.observe(batch["ids"], losses)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
        seen.append(batch["ids"].tolist())
        if stop_after is not None and len(seen) == stop_after:
            break
    return seen


SB = {"sb": {"beta": 1.0, "window": 64, "selection_batch_size": 32}}


def test_sb_filters_and_resumes_mid_epoch_in_a_plain_loop():
    model = _model()
    loader = SelectiveLoader(Data(), batch_size=16, methods=SB, model=model, prefetch=0)
    full = _run(loader, model) + _run(loader, model)
    c = loader.counters()
    assert c["sb/candidates"] == 400 and c["sb/kept"] == sum(map(len, full)) < 400

    model = _model()
    loader = SelectiveLoader(Data(), batch_size=16, methods=SB, model=model, prefetch=0)
    head = _run(loader, model, stop_after=3)
    state = {"loader": loader.state_dict(), "model": model.state_dict()}
    model2 = _model()
    model2.load_state_dict(state["model"])
    loader2 = SelectiveLoader(Data(), batch_size=16, methods=SB, model=model2, prefetch=0)
    loader2.load_state_dict(state["loader"])
    # the optimizer restarts (no momentum), so the continued run matches the uninterrupted one
    assert head + _run(loader2, model2) + _run(loader2, model2) == full


def test_svp_subset_and_gate_in_a_plain_loop():
    data, subset = Data(), np.arange(0, 200, 4)
    with SelectiveLoader(data, batch_size=10, subset=subset, methods={"autoassist": {"worker": "inline"}},
                         labels=data.targets.numpy(), features=data.x.numpy(), prefetch=0) as loader:
        ids = sum(_run(loader, _model()), [])
    assert set(ids) <= set(subset.tolist()) and loader.counters()["aa/candidates"] == 50


@pytest.mark.parametrize("kwargs, error, match", [
    ({"methods": SB}, ValueError, "pass model="),
    ({"methods": {"autoassist": {}}}, ValueError, "needs every example's label"),
    ({"methods": {"autoassist": {}}, "labels": np.zeros(200, int)}, ValueError, "pass features="),
    ({"methods": {"autoassist": {}}, "labels": np.zeros(200, int), "features": np.zeros((5, 2))}, ValueError,
     r"features has shape \(5, 2\)"),
    ({"methods": {"boost": {}}}, ConfigError, r"'boost', which is not a registered method"),
    ({"subset": np.array([1, 500])}, ValueError, r"ids \[500\] outside"),
])
def test_bad_input_is_named_before_any_work(kwargs, error, match):
    data = Data()
    data.targets = None  # no labels to fall back on
    with pytest.raises(error, match=match):
        SelectiveLoader(data, batch_size=8, **kwargs)


def test_dataset_must_return_its_index():
    loader = SelectiveLoader(Data(shift=1), batch_size=8, prefetch=0)
    with pytest.raises(ValueError, match=r"dataset\[\d+\] returned index \d+: the first element must be the index"):
        next(iter(loader))


def test_example_script_runs():
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "own_loop.py"), "--epochs", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if "test error" in l]
    assert len(lines) == 8 and any("svp-70%" in l and "sb/kept" in l for l in lines)


def test_counters_and_state_before_iterating_start_nothing_and_keep_a_loaded_state():
    """Asking for counters or a state before the first batch neither starts an epoch nor makes a
    state loaded afterwards be ignored (torchdata's Loader would do both)."""
    import threading

    data = Data()
    kw = dict(batch_size=10, methods={"autoassist": {"worker": "thread"}}, labels=data.targets.numpy(),
              features=data.x.numpy(), prefetch=2)
    a = SelectiveLoader(data, **kw)
    before = set(threading.enumerate())
    assert a.counters() == {"aa/published": 0.0, "aa/dropped": 0.0, "aa/publish_s": 0.0, "aa/nan_losses": 0.0,
                            "aa/queue_in": a.counters()["aa/queue_in"]}
    fresh = a.state_dict()
    assert set(threading.enumerate()) == before  # no prefetch thread, no assistant worker yet
    head = _run(a, _model(), stop_after=4)
    saved = a.state_dict()
    a.close()

    b = SelectiveLoader(data, **kw)
    b.counters()
    b.load_state_dict(saved)
    assert b.state_dict()["graph"]["loader"] is saved["graph"]["loader"]  # the loaded state, not a new epoch
    assert b.counters()["aa/candidates"] == 40
    rest = sum(_run(b, _model()), [])
    b.close()
    assert sorted(sum(head, []) + rest) == sorted(set(sum(head, []) + rest))  # no id twice in the epoch
    assert b.counters()["aa/candidates"] == 200
    c = SelectiveLoader(data, **kw)
    c.load_state_dict(fresh)  # a state saved before the first epoch: starts from the beginning
    assert len(sum(_run(c, _model()), [])) > 0
    c.close()
    with pytest.raises(ValueError, match="saved before the first epoch started"):
        c.load_state_dict(fresh)


def test_infobatch_in_a_plain_loop_hands_out_weights():
    """The pruning node works in a user's loop: the second epoch prunes some well-learned ids
    and every batch carries a weight the user multiplies into the loss."""
    model = _model()
    loader = SelectiveLoader(Data(), batch_size=16, methods={"infobatch": {"prune_ratio": 0.5, "delta": 1.0}},
                             model=model, prefetch=0, epochs=2)
    first, second = _run(loader, model), _run(loader, model)
    assert sum(map(len, first)) == 200 and sum(map(len, second)) < 200
    batch = next(iter(loader))
    assert set(np.unique(np.asarray(batch["weight"]))) <= {1.0, 2.0}
    loader.close()
