import math

import numpy as np
import pytest
import torch

from selectkit.checkpoint import read_checkpoint
from selectkit.config import TrainConfig
from selectkit.methods import METHODS
from selectkit.optim import lr_at
from selectkit.train import Trainer

from conftest import FMNIST_DIR, example_params, tiny_train_cfg


def test_lr_schedules():
    cos = TrainConfig(lr=1.0, warmup=0.1)
    assert lr_at(0.05, cos) == pytest.approx(0.5)
    assert lr_at(0.1, cos) == pytest.approx(1.0)
    assert lr_at(0.55, cos) == pytest.approx(0.5)
    assert lr_at(1.0, cos) == pytest.approx(0.0, abs=1e-12)
    step = TrainConfig(lr=1.0, warmup=0.0, schedule="step", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_at(p, step) for p in (0.2, 0.6, 0.9)] == pytest.approx([1.0, 0.1, 0.01])
    assert lr_at(0.7, TrainConfig(lr=0.3, warmup=0.0, schedule="constant")) == 0.3


def test_training_learns_digits(digits_store):
    r = Trainer(digits_store, tiny_train_cfg(epochs=3)).fit()
    assert r.metrics["final_test_error"] < 0.15  # chance is 0.9
    assert r.curve[0]["step"] == 10 and r.curve[-1]["step"] == r.metrics["steps"]
    n = len(digits_store.train)
    assert r.metrics["examples_backpropagated"] == 3 * n == r.metrics["examples_forwarded"]
    assert set(r.metrics["seconds"]) >= {"data", "forward", "backward", "optimizer", "evaluation", "other"}


def test_same_seed_same_result(digits_store):
    a = Trainer(digits_store, tiny_train_cfg(epochs=1)).fit()
    b = Trainer(digits_store, tiny_train_cfg(epochs=1)).fit()
    c = Trainer(digits_store, tiny_train_cfg(epochs=1, seed=1)).fit()
    assert a.curve[-1]["test_loss"] == b.curve[-1]["test_loss"] != c.curve[-1]["test_loss"]


class _Recorder:
    """A loss listener recording the ids of every batch; optionally requests a stop."""

    def __init__(self, trainer=None, stop_at=None):
        self.ids, self.trainer, self.stop_at = [], trainer, stop_at

    def __call__(self, ids, losses, step):
        assert len(ids) == len(losses) and torch.isfinite(losses).all()
        self.ids.append(ids.tolist())
        if self.stop_at is not None and step + 1 == self.stop_at:
            self.trainer.request_stop("test")


def _stacks():
    """Every registered method on its own (its example params), plus Traditional, Stale-SB with a
    warm-up, and the gate composed with SB: a registry-driven test, as STYLE.md asks."""
    stacks = {"traditional": {}}
    for m in METHODS.values():
        if m.slot != "stages":
            stacks[m.name] = {m.name: dict(m.example)}
    stacks["stale-sb"] = {"sb": {**METHODS["sb"].example, "staleness": 2, "warmup_epochs": 1}}
    # without a prefetch thread Stale-SB's stale epochs come unloaded and the node loads what it keeps
    stacks["stale-sb-inline"] = stacks["stale-sb"]
    # and InfoBatch's per-row weights, added before loading, cut with the rows Stale-SB keeps
    stacks["infobatch+stale-sb-inline"] = {"infobatch": dict(METHODS["infobatch"].example),
                                           "sb": {**METHODS["sb"].example, "staleness": 2}}
    stacks["autoassist+sb"] = {"autoassist": dict(METHODS["autoassist"].example), "sb": dict(METHODS["sb"].example)}
    stacks["infobatch+sb"] = {"infobatch": dict(METHODS["infobatch"].example), "sb": dict(METHODS["sb"].example)}
    return stacks


STACKS = _stacks()


def _cfg(store, name, prefetch=None, **over):
    from selectkit.tasks import task_for

    def params(n, p):  # a method reading an artifact: its example's, with this stack's changes on top
        changed = {k: v for k, v in p.items() if METHODS[n].example.get(k) != v}
        return example_params(n, task_for(store), changed) if METHODS[n].make_example else p

    stack = {n: params(n, p) for n, p in STACKS[name].items()}
    # a method before loading reads its live state from the prefetch thread, which runs ahead of
    # the trainer by a timing-dependent amount: bit-exact comparisons load in the training thread
    before_load = any(METHODS[n].slot == "ids" for n in stack)
    pf = prefetch if prefetch is not None else (0 if before_load or name.endswith("-inline") else 2)
    return tiny_train_cfg(epochs=3, input={"augment": "crop_flip", "prefetch": pf}, methods=stack, **over)


def _listen(trainer, recorder):
    trainer.graph.listeners.append(("test-recorder", recorder))


@pytest.mark.parametrize("name, where", [(n, w) for n in sorted(STACKS) for w in (0.1, 0.5, 0.9)]
                         + [("traditional", 23)])  # step 23 ends epoch 1 (23 batches of 64)
def test_resume_mid_epoch_is_equivalent(digits_store, tmp_path, name, where):
    cfg = _cfg(digits_store, name)
    ref = Trainer(digits_store, cfg)
    rec = _Recorder()
    _listen(ref, rec)
    full = ref.fit()
    stop_at = where if isinstance(where, int) else max(1, int(where * full.metrics["steps"]))

    t1 = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    first = _Recorder(t1, stop_at)
    _listen(t1, first)
    with pytest.raises(KeyboardInterrupt, match=f"test at step {stop_at}; checkpoint saved"):
        t1.fit()
    t2 = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    second = _Recorder()
    _listen(t2, second)
    resumed = t2.fit(resume="auto")

    assert first.ids + second.ids == rec.ids  # the same batches, in the same order
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)
    assert resumed.metrics["steps"] == full.metrics["steps"]
    assert [r["step"] for r in resumed.curve] == [r["step"] for r in full.curve]
    assert resumed.metrics["counters"] == full.metrics["counters"] or _timing_only(resumed, full)
    assert read_checkpoint(tmp_path / "ck.pt")["complete"]


def _timing_only(a, b) -> bool:
    """Counters equal except seconds (``*_s``), which measure this machine, not the method."""
    strip = lambda c: {k: v for k, v in c.items() if not k.endswith("_s") and k != "aa/queue_in"}
    assert strip(a.metrics["counters"]) == strip(b.metrics["counters"])
    return True


@pytest.mark.parametrize("name", sorted(n for n in STACKS if n != "traditional"))
def test_counters_across_a_resume_with_a_prefetcher(digits_store, tmp_path, name):
    """With a prefetch thread (which runs ahead of the trainer), counters saved in a checkpoint
    count only what the trainer consumed: after a resume every candidate was offered to each
    method exactly once per epoch, and what the last method passed is what was trained."""
    cfg = _cfg(digits_store, name, prefetch=2, eval_every=0)
    n = len(digits_store.train)
    t1 = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt")
    _listen(t1, _Recorder(t1, 7))  # mid-epoch 0
    with pytest.raises(KeyboardInterrupt):
        t1.fit()
    r = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt").fit(resume="auto")
    c, stack = r.metrics["counters"], cfg.stack
    first, last = stack[0][0], stack[-1][0]
    warm = getattr(stack[0][1], "warmup_epochs", 0)
    assert c[first.offered] == (cfg.epochs - warm) * n
    assert c[last.passed] == r.metrics["examples_backpropagated"] - (warm * n if len(stack) == 1 else 0)
    for (m, _), (nxt, _) in zip(stack, stack[1:]):
        assert c[m.passed] == c[nxt.offered]  # what the gate passed is what SB was offered
    for m, _ in stack:
        assert set(m.counters) <= set(c)


def test_auto_resume_ignores_other_config_and_finished_runs(digits_store, tmp_path):
    ck = tmp_path / "ck.pt"
    Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck).fit()
    t = Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck)
    assert not t.resume(ck, strict=False)  # finished
    t = Trainer(digits_store, tiny_train_cfg(epochs=1, lr=0.05), checkpoint_path=ck)
    assert not t.resume(ck, strict=False)  # other config


def test_checkpoint_from_other_model_or_store(digits_store, tmp_path, make_npz):
    from selectkit.config import DataConfig
    from selectkit.store import Store, prepare

    ck = tmp_path / "ck.pt"
    Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck).fit()
    other_model = tiny_train_cfg(epochs=1, model={"name": "mlp", "args": {}})
    with pytest.raises(ValueError, match=r"holds model \{'name': 'cnn'.*builds \{'name': 'mlp'"):
        Trainer(digits_store, other_model).fit(resume=ck)
    prepare(DataConfig(source="npz", path=str(make_npz(shape=(1, 8, 8), k=10))), tmp_path / "other")
    with pytest.raises(ValueError, match=r"trained on store [0-9a-f]+ but this run's store is [0-9a-f]+"):
        Trainer(Store(tmp_path / "other"), tiny_train_cfg(epochs=1)).fit(resume=ck)


def test_unreadable_checkpoint(digits_store, tmp_path):
    (tmp_path / "ck.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="unreadable.*--resume never"):
        Trainer(digits_store, tiny_train_cfg(epochs=1)).fit(resume=tmp_path / "ck.pt")


def test_trained_model_passed_as_checkpoint_says_what_it_is(digits_store, tmp_path):
    """A finished run's model.pt is not a checkpoint: the error says so and what to pass,
    and does not advise deleting it."""
    from selectkit.io import save_model

    t = Trainer(digits_store, tiny_train_cfg(epochs=1))
    save_model(tmp_path / "model.pt", t.model, model_sig=t.model_sig, task=t.task, config={})
    with pytest.raises(ValueError, match=r"is a trained model .*not a training checkpoint.*\.selectkit/checkpoints") as e:
        Trainer(digits_store, tiny_train_cfg(epochs=1)).fit(resume=tmp_path / "model.pt")
    assert "delete" not in str(e.value)
    assert (tmp_path / "model.pt").is_file()


def test_nan_loss_names_example_ids(digits_store):
    t = Trainer(digits_store, tiny_train_cfg(epochs=1))
    with torch.no_grad():
        t.model.classifier.weight.fill_(math.nan)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at step 0 \(epoch 0\) on example ids \[\d+"):
        t.fit()


def test_wall_clock_budget_stops_early(digits_store):
    full = Trainer(digits_store, tiny_train_cfg(epochs=50, eval_every=0)).fit()
    budget = Trainer(digits_store, tiny_train_cfg(epochs=50, eval_every=0, budget_s=0.2)).fit()
    assert budget.metrics["steps"] < full.metrics["steps"]
    assert budget.metrics["train_s"] >= 0.2


def test_subset_training_counts(digits_store, tmp_path):
    ids = np.arange(0, 300, 3)
    np.save(tmp_path / "s.npy", ids)
    r = Trainer(digits_store, tiny_train_cfg(epochs=2, input={"subset": str(tmp_path / "s.npy")})).fit()
    assert r.metrics["examples_backpropagated"] == 2 * len(ids)


@pytest.mark.skipif(not FMNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_slice_trains(tmp_path):
    """A slice of the real data through the real target CNN: far better than chance in one pass."""
    from selectkit.config import DataConfig
    from selectkit.store import Store, prepare

    prepare(DataConfig(source="idx", path=str(FMNIST_DIR)), tmp_path / "fm")
    store = Store(tmp_path / "fm")
    ids = np.arange(0, 60000, 20)  # 3,000 examples
    cfg = tiny_train_cfg(epochs=2, model={"name": "cnn", "args": {"channels": [32, 64]}},
                         input={"batch_size": 128}, eval_every=0, threads=None)
    r = Trainer(store, cfg, ids=ids).fit()
    assert r.metrics["final_test_error"] < 0.35  # chance is 0.9
    assert r.metrics["examples_backpropagated"] == 2 * len(ids)


def test_kept_fraction_of_a_budget_run_counts_the_epochs_it_covered(digits_store):
    r = Trainer(digits_store, tiny_train_cfg(epochs=50, eval_every=0, budget_s=0.3)).fit()
    assert r.metrics["epochs"] < 50
    assert r.metrics["kept_fraction"] == pytest.approx(1.0, abs=0.06)  # Traditional: all it covered


def test_finished_but_unwritten_run_is_not_retrained(digits_store, tmp_path):
    """A stage fits with complete=False and marks the checkpoint finished after writing its
    outputs: if writing fails, the rerun resumes at the end of training and trains no step."""
    ck = tmp_path / "ck.pt"
    first = Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck).fit(complete=False)
    again = Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck)
    second = again.fit(resume="auto", complete=False)
    assert second.metrics["steps"] == first.metrics["steps"] and second.curve == first.curve
    assert second.metrics["final_test_error"] == first.metrics["final_test_error"]
    again.mark_complete()
    assert read_checkpoint(ck)["complete"]
    third = Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck)
    assert third.resume_source("auto") is None  # finished: a rerun trains afresh


def test_unreadable_checkpoint_at_the_automatic_path_trains_afresh(digits_store, tmp_path, caplog):
    ck = tmp_path / "ck.pt"
    ck.write_bytes(b"cut short")
    t = Trainer(digits_store, tiny_train_cfg(epochs=1), checkpoint_path=ck)
    assert t.resume_source("auto") is None
    r = t.fit(resume="auto")
    assert r.metrics["steps"] > 0 and read_checkpoint(ck)["complete"]
    assert sum("training afresh, not resuming" in m for m in caplog.messages) == 1
