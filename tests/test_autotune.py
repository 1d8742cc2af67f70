"""Settings measured on the machine: ``selection_precision: auto`` (selectkit/autotune.py).
Nothing here asserts a time: the choices are checked on injected timings."""

import numpy as np
import pytest
import torch

from selectkit.autotune import BF16_MARGIN, pick_precision
from selectkit.train import Trainer

from conftest import tiny_train_cfg


@pytest.mark.parametrize("fp32, bf16, want", [(2.0, 1.0, "bf16"), (2.0, 2.5, "fp32"), (2.0, 2.0 * BF16_MARGIN, "fp32"),
                                             (2.0, 2.0 * BF16_MARGIN - 1e-9, "bf16")])
def test_bf16_is_chosen_only_when_clearly_faster(fp32, bf16, want):
    assert pick_precision({"fp32": fp32, "bf16": bf16}) == want


def _fake_timings(monkeypatch, fp32_ms, bf16_ms):
    """Each timed forward reports the given milliseconds; records which precisions were timed."""
    seen = []

    def fake(forward, reps=3, sync=None):
        forward()  # the forward still runs (it must work in that precision)
        seen.append(len(seen))
        return fp32_ms if len(seen) == 1 else bf16_ms

    monkeypatch.setattr("selectkit.autotune.time_forward", fake)
    return seen


@pytest.mark.parametrize("fp32_ms, bf16_ms, want", [(3.0, 1.0, "bf16"), (2.0, 2.7, "fp32")])
def test_a_run_with_auto_records_what_it_chose_and_resumes_with_it(monkeypatch, tmp_path, digits_store,
                                                                   fp32_ms, bf16_ms, want):
    seen = _fake_timings(monkeypatch, fp32_ms, bf16_ms)
    sb = {"sb": {"beta": 1.0, "selection_batch_size": 64, "selection_precision": "auto"}}
    cfg = tiny_train_cfg(epochs=2, methods=sb, checkpoint_every=5)
    t = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    m = t.fit().metrics
    assert len(seen) == 2  # measured once per run, not per batch
    assert m["selection"]["precision"] == want
    assert m["selection"]["auto"] == {"precision": want, "fp32_ms": fp32_ms, "bf16_ms": bf16_ms}
    assert m["counters"]["selection/bf16_fraction"] == float(want == "bf16")
    assert m["counters"]["selection/fp32_ms"] == fp32_ms
    # a resumed run keeps the checkpoint's choice without measuring again
    resumed = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    resumed.resume(tmp_path / "ck.pt")
    assert resumed.handle.choice == {"precision": want, "fp32_ms": fp32_ms, "bf16_ms": bf16_ms}


def test_auto_scores_like_the_precision_it_chose(monkeypatch, digits_store):
    _fake_timings(monkeypatch, 2.0, 5.0)  # fp32 chosen
    runs = []
    for precision in ("auto", "fp32"):
        cfg = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": 64,
                                                        "selection_precision": precision}})
        t = Trainer(digits_store, cfg)
        t.fit()
        runs.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]).numpy())
    assert np.array_equal(runs[0], runs[1])


def test_auto_is_a_valid_setting_and_a_typo_is_named():
    from selectkit.validation import ConfigError

    tiny_train_cfg(methods={"sb": {"selection_precision": "auto"}, })
    with pytest.raises(ConfigError, match="selection_precision"):
        tiny_train_cfg(methods={"sb": {"selection_precision": "bf32"}})
