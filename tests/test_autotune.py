"""Settings measured on the machine (selectkit/autotune.py): ``selection_precision``,
``channels_last``, SB's ``selection_batch_size`` and ``input.prefetch`` set to ``auto``.
Nothing here asserts a time: the choices are checked on injected timings."""

import numpy as np
import pytest
import torch

from selectkit import autotune
from selectkit.autotune import BF16_MARGIN, MARGIN, pick, pick_batch_size, pick_precision, pick_prefetch
from selectkit.train import Trainer
from selectkit.validation import ConfigError

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
    sb = {"sb": {"beta": 1.0, "selection_batch_size": 64, "selection_precision": "auto", "selection_fold": False}}
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
                                                        "selection_precision": precision, "selection_fold": False}})
        t = Trainer(digits_store, cfg)
        t.fit()
        runs.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]).numpy())
    assert np.array_equal(runs[0], runs[1])


def test_auto_is_a_valid_setting_and_a_typo_is_named():
    from selectkit.validation import ConfigError

    tiny_train_cfg(methods={"sb": {"selection_precision": "auto"}, })
    with pytest.raises(ConfigError, match="selection_precision"):
        tiny_train_cfg(methods={"sb": {"selection_precision": "bf32"}})


# ---------------------------------------------------------------- memory format, selection batch, prefetch
@pytest.mark.parametrize("timings, prefer, want", [
    ({True: 10.0, False: 8.0}, True, False),                # clearly faster: switch
    ({True: 10.0, False: 10.0 * MARGIN}, True, True),       # at the margin: keep the preferred
    ({True: 10.0, False: 11.0}, True, True),
    ({"a": 5.0, "b": 3.0, "c": 2.0}, "a", "c"),             # the fastest of several
])
def test_an_alternative_is_taken_only_when_clearly_faster(timings, prefer, want):
    assert pick(timings, prefer) == want


def test_the_smallest_selection_batch_unless_a_larger_is_clearly_cheaper_per_example():
    assert pick_batch_size({128: 30.0, 256: 28.0, 512: 29.0}) == 128  # a near tie: smallest
    assert pick_batch_size({128: 30.0, 256: 20.0, 512: 15.0}) == 512
    assert pick_batch_size({64: 10.0}) == 64
    assert pick_batch_size({128: 9.0, 256: 5.0, 512: 4.9}) == 256  # 512 is not clearly cheaper than 256


@pytest.mark.parametrize("load, step, spare, cuda, want", [
    (0.2, 20.0, False, False, 0),    # loading is 1 % of a step on a CPU whose cores all compute
    (2.0, 20.0, False, False, 2),    # 10 %: worth loading ahead
    (0.2, 20.0, True, False, 2),     # a core to spare
    (0.2, 20.0, False, True, 2),     # CUDA: the CPU is free while the GPU computes
])
def test_prefetch_thread_only_where_it_pays(load, step, spare, cuda, want):
    assert pick_prefetch(load, step, spare, cuda) == want


def _inject(monkeypatch, step=None, forward=None, load=1.0, spare=False):
    """Probe measurements from tables: step ms by channels_last, forward µs per example by batch."""
    calls = {"step": 0, "forward": 0, "load": 0}

    def step_ms(self, channels_last):
        calls["step"] += 1
        return (step or {True: 10.0, False: 10.0})[channels_last]

    def forward_us(self, n, *a, **k):
        calls["forward"] += 1
        return (forward or {})[n] if forward else 1.0

    def load_ms(self, n):
        calls["load"] += 1
        return load

    monkeypatch.setattr(autotune.Probe, "step_ms", step_ms)
    monkeypatch.setattr(autotune.Probe, "forward_us", forward_us)
    monkeypatch.setattr(autotune.Probe, "load_ms", load_ms)
    monkeypatch.setattr(autotune, "spare_cores", lambda: spare)
    return calls


class _Log:
    run_id = None

    def __init__(self):
        self.logged = []

    def log(self, metrics, step, timestamp_ms=None):
        self.logged.append((step, dict(metrics)))

    def flush(self, wait=False):
        pass


def test_auto_settings_are_measured_recorded_logged_and_kept_on_resume(monkeypatch, tmp_path, digits_store):
    calls = _inject(monkeypatch, step={True: 10.0, False: 7.0}, forward={32: 9.0, 64: 5.0, 128: 4.9}, load=0.1)
    sb = {"sb": {"beta": 1.0, "selection_batch_size": "auto"}}
    cfg = tiny_train_cfg(epochs=2, methods=sb, channels_last="auto", input={"batch_size": 32, "prefetch": "auto"},
                         checkpoint_every=5)
    t = Trainer(digits_store, cfg, tracker=_Log(), checkpoint_path=tmp_path / "ck.pt")
    assert calls == {"step": 2, "forward": 3, "load": 1}  # once per run, before the graph
    assert t.task.memory_format == torch.contiguous_format  # contiguous measured clearly faster
    assert all(p.is_contiguous() for p in t.model.parameters())
    assert t.graph.candidate_batch_size == 64 and t.prefetch == 0  # 1 % of a step to load: inline
    m = t.fit().metrics
    assert m["channels_last"] is False and m["prefetch"] == 0 and m["selection"]["batch_size"] == 64
    assert m["autotune"]["channels_last"] == {"choice": False, "channels_last_ms": 10.0, "contiguous_ms": 7.0,
                                              "cached": False}
    assert m["autotune"]["sb/selection_batch_size"]["choice"] == 64
    assert m["autotune"]["sb/selection_batch_size"]["per_example_us"] == {"32": 9.0, "64": 5.0, "128": 4.9}
    assert m["autotune"]["prefetch"]["choice"] == 0 and m["autotune"]["prefetch"]["candidate_batch"] == 64
    step0 = [metrics for step, metrics in t.tracker.logged if "autotune/channels_last" in metrics]
    assert step0 and step0[0]["autotune/channels_last"] == 0.0 and step0[0]["autotune/sb/selection_batch_size"] == 64
    assert step0[0]["autotune/channels_last/contiguous_ms"] == 7.0
    # measured otherwise now (channels_last faster, batches of 32, loading slow): a resumed run
    # still takes the checkpoint's choices, and its graph state fits them
    _inject(monkeypatch, step={True: 5.0, False: 9.0}, forward={32: 1.0, 64: 5.0, 128: 5.0}, load=9.0)
    again = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    assert again.graph.candidate_batch_size == 32 and again.prefetch == 2
    again.resume(tmp_path / "ck.pt")
    assert again.tuned == m["autotune"] and again.graph.candidate_batch_size == 64 and again.prefetch == 0
    assert again.task.memory_format == torch.contiguous_format


def test_auto_trains_exactly_like_the_values_it_chose(monkeypatch, digits_store):
    _inject(monkeypatch, step={True: 10.0, False: 7.0}, forward={32: 9.0, 64: 5.0, 128: 9.0}, load=0.1)
    params = []
    for cl, sbs, pf in (("auto", "auto", "auto"), (False, 64, 0)):
        cfg = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": sbs}},
                             channels_last=cl, input={"batch_size": 32, "prefetch": pf})
        t = Trainer(digits_store, cfg)
        t.fit()
        params.append(torch.cat([p.detach().flatten() for p in t.model.parameters()]).numpy())
    assert np.array_equal(params[0], params[1])


def test_explicit_settings_are_not_measured(monkeypatch, digits_store):
    calls = _inject(monkeypatch)
    t = Trainer(digits_store, tiny_train_cfg(channels_last=False, methods={"sb": {"selection_batch_size": 64}}))
    assert calls == {"step": 0, "forward": 0, "load": 0} and t.tuned == {}


def test_a_task_with_one_memory_format_is_not_timed_for_it(monkeypatch, text_store):
    from selectkit.autotune import Probe, tune
    from selectkit.tasks import task_for

    calls = _inject(monkeypatch)
    task = task_for(text_store)
    tuned = tune(Probe(task, torch.nn.Linear(1, 1), torch.device("cpu"), np.arange(8), 4), "auto", 2, [])
    assert tuned == {"channels_last": {"choice": False, "channels_last_ms": None, "contiguous_ms": None}}
    assert calls["step"] == 0


@pytest.mark.measured
def test_the_probe_really_runs_each_option_on_real_batches(digits_store):
    """No injected timings: the measurements run (a memory format, three selection batches,
    loading) and give positive times; which option wins is the machine's business."""
    from selectkit.autotune import Probe, tune
    from selectkit.config import ModelConfig
    from selectkit.methods import get
    from selectkit.methods.sb.config import SBConfig
    from selectkit.models import make_model
    from selectkit.tasks import task_for

    task = task_for(digits_store)
    model = make_model(ModelConfig("cnn", {"channels": [8, 16]}), task)
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    tuned = tune(Probe(task, model, torch.device("cpu"), np.arange(len(digits_store.train)), 32), "auto", "auto",
                 [(get("sb"), SBConfig())])
    assert torch.equal(torch.get_rng_state(), rng)  # the run's randomness is untouched
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # so is the model
    assert tuned["channels_last"]["channels_last_ms"] > 0 and tuned["channels_last"]["contiguous_ms"] > 0
    assert set(tuned["sb/selection_batch_size"]["per_example_us"]) == {"32", "64", "128"}
    assert tuned["prefetch"]["load_ms"] > 0 and tuned["prefetch"]["choice"] in (0, 2)


def test_own_loop_resolves_an_auto_selection_batch(monkeypatch, digits_store):
    from selectkit import SelectiveLoader

    _inject(monkeypatch, forward={16: 5.0, 32: 2.0, 64: 4.0})
    x = torch.randn(200, 4)
    data = [(i, x[i], i % 3) for i in range(200)]
    model = torch.nn.Linear(4, 3)
    loader = SelectiveLoader(data, batch_size=16, model=model, num_classes=3, methods={"sb": {"beta": 1.0}})
    assert loader.graph.candidate_batch_size == 32 and loader.tuned["sb/selection_batch_size"]["choice"] == 32
    loader.close()


@pytest.mark.parametrize("key, value, named", [
    ("channels_last", "yes", "train.channels_last"),
    ("channels_last", 1, "train.channels_last"),
    ("input", {"prefetch": "soon"}, "input.prefetch"),
    ("input", {"prefetch": -1}, "input.prefetch"),
    ("methods", {"sb": {"selection_batch_size": "big"}}, "selection_batch_size"),
])
def test_bad_auto_settings_are_named(key, value, named):
    with pytest.raises(ConfigError, match=named):
        tiny_train_cfg(**{key: value})


@pytest.mark.parametrize("legacy", [False, True])
def test_an_auto_run_resumes_a_checkpoint_of_explicit_values_with_those_values(monkeypatch, tmp_path, digits_store,
                                                                              legacy):
    """A run given values (or one from before auto existed: no choices in its checkpoint) resumed
    by a run whose settings are auto: the checkpoint's values, not a new measurement."""
    from selectkit.checkpoint import read_checkpoint, save_checkpoint

    explicit = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": 64}},
                              channels_last=False, input={"batch_size": 32, "prefetch": 0}, checkpoint_every=5)
    t = Trainer(digits_store, explicit, checkpoint_path=tmp_path / "ck.pt")
    t.fit(complete=False)
    if legacy:
        ck = read_checkpoint(tmp_path / "ck.pt")
        del ck["autotune"], ck["resolved"]
        save_checkpoint(tmp_path / "ck.pt", ck)
    _inject(monkeypatch, step={True: 5.0, False: 9.0}, forward={32: 1.0, 64: 5.0, 128: 5.0}, load=9.0)
    auto = tiny_train_cfg(epochs=2, methods={"sb": {"beta": 1.0, "selection_batch_size": "auto"}},
                          channels_last="auto", input={"batch_size": 32, "prefetch": "auto"}, checkpoint_every=5)
    again = Trainer(digits_store, auto, checkpoint_path=tmp_path / "ck.pt")
    assert (again.channels_last, again.prefetch, again.graph.candidate_batch_size) == (True, 2, 32)  # measured
    again.resume(tmp_path / "ck.pt")
    assert (again.channels_last, again.prefetch, again.graph.candidate_batch_size) == (False, 0, 64)
    assert again.task.memory_format == torch.contiguous_format


def test_own_loop_saves_its_choice_and_a_resumed_loader_takes_it(monkeypatch):
    from selectkit import SelectiveLoader

    x = torch.randn(200, 4)
    data = [(i, x[i], i % 3) for i in range(200)]
    model = torch.nn.Linear(4, 3)
    _inject(monkeypatch, forward={16: 5.0, 32: 2.0, 64: 4.0})
    first = SelectiveLoader(data, batch_size=16, model=model, num_classes=3, methods={"sb": {"beta": 1.0}}, prefetch=0)
    batches = iter(first)
    next(batches)
    state = first.state_dict()
    first.close()
    _inject(monkeypatch, forward={16: 1.0, 32: 2.0, 64: 4.0})  # measured otherwise now
    second = SelectiveLoader(data, batch_size=16, model=model, num_classes=3, methods={"sb": {"beta": 1.0}}, prefetch=0)
    assert second.graph.candidate_batch_size == 16
    second.load_state_dict(state)
    assert second.graph.candidate_batch_size == 32 and second.tuned == state["tuned"]
    second.close()
    with pytest.raises(ValueError, match="selection_batch_size.*number"):
        SelectiveLoader(data, batch_size=16, model=model, num_classes=3, methods={"sb": {"beta": 1.0}},
                        rank=0, world_size=2)


def test_choices_are_remembered_per_machine_and_model(monkeypatch, tmp_path, digits_store):
    """With a cache, the second run on this machine takes the first's choices (a noisy machine
    does not flip them between runs); another model shape is measured on its own."""
    monkeypatch.setenv("SELECTKIT_AUTOTUNE_CACHE", str(tmp_path / "tune.json"))
    auto = dict(channels_last="auto", input={"batch_size": 32, "prefetch": "auto"})
    _inject(monkeypatch, step={True: 10.0, False: 7.0}, load=0.1)
    first = Trainer(digits_store, tiny_train_cfg(**auto))
    assert first.channels_last is False and first.tuned["channels_last"]["cached"] is False
    calls = _inject(monkeypatch, step={True: 5.0, False: 9.0}, load=9.0)  # measured otherwise now
    second = Trainer(digits_store, tiny_train_cfg(**auto))
    assert calls["step"] == 0 and calls["load"] == 0
    assert second.channels_last is False and second.prefetch == 0 and second.tuned["channels_last"]["cached"] is True
    assert second.tuned["channels_last"]["contiguous_ms"] == 7.0  # the timings it came from
    wider = Trainer(digits_store, tiny_train_cfg(model={"name": "cnn", "args": {"channels": [8, 32]}}, **auto))
    assert wider.channels_last is True and wider.tuned["channels_last"]["cached"] is False
    for broken in ("{not json", "[]"):  # a broken cache is measured around
        (tmp_path / "tune.json").write_text(broken)
        assert Trainer(digits_store, tiny_train_cfg(**auto)).tuned["channels_last"]["cached"] is False
