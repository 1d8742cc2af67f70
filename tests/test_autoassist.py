"""AutoAssist: the assistant, the gate rule, the worker (thread, process, inline), failures, leaks."""

import math
import multiprocessing as mp
import os
import signal
import threading
import time

import mlflow
import numpy as np
import pytest
import torch

from selectkit.config import ConfigError, TrackingConfig
from selectkit.graph import build_input_graph, candidate_ids
from selectkit.methods.autoassist.features import read_features, write_features
from selectkit.methods.autoassist.functions import Assistant, ema, gate_draw, pass_probability, sigmoid
from selectkit.methods.autoassist.node import AssistantFailed, AssistantWorker, AutoAssistGate, Publisher
from selectkit.nodes.sampler import IdBatchSampler
from selectkit.tasks import task_for
from selectkit.tasks.image import pooled_pixels
from selectkit.tracking import Tracker
from selectkit.train import Trainer

from conftest import tiny_train_cfg

KW = {"lr": 0.5, "weight_decay": 1e-4, "loss_ema": 0.05, "accuracy_ema": 0.1}


SB = {"beta": 1.0, "selection_batch_size": 64}


def _aa(sb=None, **kw):
    """A method stack with the AutoAssist gate (params ``kw``), and SB after it when given."""
    return {"methods": {"autoassist": kw, **({"sb": sb} if sb is not None else {})}}


def _find(trainer, cls):
    """The node of type ``cls`` in a trainer's input graph."""
    node = trainer.graph.root
    while not isinstance(node, cls):
        node = node.source
    return node


def _separable(n=4000, d=8, seed=0):
    """Features whose first column decides the loss: high loss iff x0 > 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    losses = np.where(x[:, 0] > 0, 2.0, 0.2) + rng.normal(0, 0.05, n)
    return x, np.zeros(n, dtype=np.int64), losses


def test_assistant_learns_a_separable_rule_on_held_out_ids():
    x, y, losses = _separable()
    a = Assistant(x.shape[1], 1, **KW)
    for i in range(0, 3000, 64):
        a.update(x[i:i + 64], y[i:i + 64], losses[i:i + 64])
    held = slice(3000, 4000)
    z = losses[held] > a.threshold
    acc = ((a.predict(x[held], y[held]) > 0.5) == z).mean()
    assert 0.8 < a.threshold < 1.4  # the EMA of the mean loss sits between the two modes
    assert acc > 0.9, acc  # chance is about 0.5
    assert a.lam > 0.5 and a.updates == 47


def test_lambda_starts_at_zero_and_follows_measured_accuracy():
    x, y, losses = _separable()
    a = Assistant(x.shape[1], 1, **KW)
    assert a.lam == 0.0
    a.update(x[:64], y[:64], losses[:64])
    assert a.lam == 0.0 and math.isnan(a.accuracy)  # nothing trained to measure yet
    a.update(x[64:128], y[64:128], losses[64:128])
    assert a.lam == pytest.approx(KW["accuracy_ema"] * a.accuracy)
    assert ema(float("nan"), 3.0, 0.1) == 3.0 and ema(1.0, 3.0, 0.25) == pytest.approx(1.5)


def test_assistant_rejects_bad_rates():
    for bad in ({"loss_ema": 0.0}, {"accuracy_ema": 1.0}, {"loss_ema": -0.1}):
        with pytest.raises(ValueError, match="must be in \\(0, 1\\)"):
            Assistant(3, 2, **{**KW, **bad})


def test_pass_rate_follows_one_minus_lambda_plus_lambda_g():
    rng = np.random.default_rng(0)
    n = 40000
    for lam, g in ((0.0, 0.1), (0.6, 0.2), (0.9, 0.9), (1.0, 0.3)):
        passed, tested = gate_draw(np.full(n, g), lam, rng)
        want = pass_probability(np.array([g]), lam)[0]
        sd = math.sqrt(want * (1 - want) / n) + 1e-9
        assert abs(passed.mean() - want) < 5 * sd, (lam, g, passed.mean(), want)
        assert abs(tested.mean() - lam) < 5 * math.sqrt(lam * (1 - lam) / n) + 1e-9
    assert sigmoid(np.array([-800.0, 0.0, 800.0])).tolist() == [0.0, 0.5, 1.0]


def _gate(store, mode="inline", shadow=False, seed=0):
    task = task_for(store)
    feats = task.features(downsample=2)
    labels = task.labels
    worker = AssistantWorker(feats, labels, task.num_classes, KW, mode=mode)
    src = IdBatchSampler(np.arange(len(labels)), 64, seed=seed)
    return AutoAssistGate(src, worker, feats, labels, task.fingerprint, seed=seed, shadow=shadow)


def test_gate_passes_everything_while_lambda_is_zero(digits_store):
    gate = _gate(digits_store)
    gate.reset(None)
    out = np.concatenate([b["ids"] for b in gate])
    assert sorted(out.tolist()) == list(range(len(digits_store.train)))
    c = gate.counters()
    assert c["aa/tested"] == 0 and c["aa/pass_rate"] == 1.0
    assert c["aa/candidates"] == c["aa/passed"] == len(digits_store.train)
    gate.shutdown()


def test_gate_pass_rate_on_fixed_assistant_per_class(digits_store):
    """A fixed assistant whose g depends only on the class: pass rates per class follow the rule."""
    gate = _gate(digits_store)
    gate.reset(None)
    k = digits_store.num_classes
    dim = gate.features.shape[1]
    w = np.zeros(dim + k)
    w[dim:] = np.linspace(-3, 3, k)  # per-class bias
    lam = 0.7
    gate.worker._latest = {"assistant": {"w": w, "b": 0.0, "lam": lam, "accuracy": 0.7, "positives": 0.3,
                                         "threshold": 1.0, "updates": 5, "dim": dim}, "update_s": 0.0}
    labels = np.asarray(digits_store.train.y)
    seen = np.zeros(k)
    passed = np.zeros(k)
    for _ in range(20):  # epochs
        gate.reset(None)
        gate.worker._latest["assistant"]["lam"] = lam  # no worker updates: inline, nothing published
        for b in gate:
            passed += np.bincount(labels[b["ids"]], minlength=k)
        seen += np.bincount(labels, minlength=k)
    want = pass_probability(sigmoid(w[dim:]), lam)
    sd = np.sqrt(want * (1 - want) / seen)
    assert (np.abs(passed / seen - want) < 5 * sd).all(), (passed / seen, want)
    c = gate.counters()
    assert c["aa/lambda"] == lam and c["aa/safeguard_rate"] == pytest.approx(1 - lam)
    # max_lambda caps the trust: the same assistant at lambda 0.7 gates as if at 0.4
    gate.max_lambda = 0.4
    seen[:] = passed[:] = 0
    for _ in range(20):
        gate.reset(None)
        for b in gate:
            passed += np.bincount(labels[b["ids"]], minlength=k)
        seen += np.bincount(labels, minlength=k)
    want = pass_probability(sigmoid(w[dim:]), 0.4)
    assert (np.abs(passed / seen - want) < 5 * np.sqrt(want * (1 - want) / seen)).all()
    c = gate.counters()
    assert c["aa/lambda"] == lam and c["aa/safeguard_rate"] == pytest.approx(0.6)
    gate.shutdown()


def test_rejected_examples_are_never_loaded(digits_store, monkeypatch):
    from selectkit.tasks import image

    loaded = []
    orig = image.LoadBatch.__call__

    def spy(self, item):
        if self.split is digits_store.train:  # (evaluation loads the test split the same way)
            loaded.extend(np.asarray(item["ids"]).tolist())
        return orig(self, item)

    monkeypatch.setattr(image.LoadBatch, "__call__", spy)
    cfg = tiny_train_cfg(epochs=3, **_aa(worker="inline", accuracy_ema=0.3), input={"prefetch": 0})
    t = Trainer(digits_store, cfg)
    r = t.fit()
    c = r.metrics["counters"]
    assert c["aa/passed"] < c["aa/candidates"] == 3 * len(digits_store.train)
    assert len(loaded) == c["aa/passed"] == r.metrics["examples_forwarded"] == r.metrics["examples_backpropagated"]
    assert r.metrics["label"] == "autoassist" and c["aa/published"] == r.metrics["steps"]
    # the inline assistant learnt from every step, and the final counters say so
    assert _find(t, AutoAssistGate).worker.snapshot["assistant"]["updates"] == r.metrics["steps"]
    assert c["aa/updates"] == c["aa/published"] == r.metrics["steps"]


def test_autoassist_composes_with_sb_and_shadow_passes_all(digits_store):
    r = Trainer(digits_store, tiny_train_cfg(epochs=2, **_aa(sb=SB, accuracy_ema=0.3))).fit()
    c = r.metrics["counters"]
    assert r.metrics["label"] == "autoassist+sb" and list(r.metrics["methods"]) == ["autoassist", "sb"]
    assert c["sb/candidates"] == c["aa/passed"] < c["aa/candidates"]
    r = Trainer(digits_store, tiny_train_cfg(epochs=2, **_aa(accuracy_ema=0.3, shadow=True))).fit()
    c = r.metrics["counters"]
    assert c["aa/passed"] == c["aa/candidates"] == r.metrics["examples_forwarded"]
    assert c["aa/would_pass"] < c["aa/candidates"]


def _leftovers():
    return ([t.name for t in threading.enumerate() if t.name == "selectkit-autoassist"],
            [p.name for p in mp.active_children() if p.name == "selectkit-autoassist"])


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_workers_learn_and_leave_nothing_behind(digits_store, mode):
    r = Trainer(digits_store, tiny_train_cfg(epochs=2, **_aa(worker=mode))).fit()
    c = r.metrics["counters"]
    assert c["aa/updates"] > 0 and c["aa/published"] == r.metrics["steps"]
    assert c["aa/updates"] + c["aa/dropped"] <= c["aa/published"]
    assert _leftovers() == ([], [])


class _Crash(RuntimeError):
    pass


def _run_bounded(fn, limit_s=120.0):
    """Run ``fn`` in a thread; its exception, or a failure if it does not end within ``limit_s``."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(limit_s)
    assert not t.is_alive(), f"training did not stop within {limit_s} s after the assistant failed"
    return box.get("error")


def test_thread_worker_crash_fails_the_run_with_its_traceback(digits_store, monkeypatch, tmp_path):
    calls = {"n": 0}
    orig = Assistant.update

    def flaky(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Crash("assistant exploded")
        return orig(self, *a, **kw)

    monkeypatch.setattr(Assistant, "update", flaky)
    tracker = Tracker(TrackingConfig(experiment="t-autoassist"), stage="train")
    cfg = tiny_train_cfg(epochs=50, checkpoint_every=3, **_aa(worker="thread"))
    trainer = Trainer(digits_store, cfg, tracker=tracker, checkpoint_path=tmp_path / "ck.pt")

    def fit():
        with tracker.run({"train": {}}):
            trainer.fit()

    err = _run_bounded(fit)
    assert isinstance(err, AssistantFailed), err
    assert "assistant worker (thread) failed" in str(err) and "assistant exploded" in str(err)
    assert trainer.p.epoch < 50
    run = mlflow.get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert _leftovers()[0] == []
    # the last checkpoint still resumes (with a healthy assistant)
    monkeypatch.setattr(Assistant, "update", orig)
    again = Trainer(digits_store, tiny_train_cfg(epochs=50, checkpoint_every=3, **_aa(worker="thread")),
                    checkpoint_path=tmp_path / "ck.pt")
    assert again.resume(tmp_path / "ck.pt")


def test_killed_worker_process_fails_within_bounded_time(digits_store):
    cfg = tiny_train_cfg(epochs=50, **_aa(worker="process"))
    trainer = Trainer(digits_store, cfg)
    killed = {}
    worker = _find(trainer, AutoAssistGate).worker

    def killer(ids, losses, step):
        if step == 10 and not killed:
            killed["pid"] = worker._runner.pid
            os.kill(worker._runner.pid, signal.SIGKILL)
            worker._runner.join(10)

    trainer.graph.listeners.append(("killer", killer))  # after the gate's Publisher
    t0 = time.monotonic()
    err = _run_bounded(trainer.fit)
    assert isinstance(err, AssistantFailed), err
    assert "died with exit code -9" in str(err) and trainer.p.step < 20
    assert time.monotonic() - t0 < 120 and _leftovers() == ([], [])


def test_nan_losses_are_named_and_not_learnt(digits_store, caplog):
    gate = _gate(digits_store)
    gate.reset(None)
    publish = Publisher(gate.worker)
    ids = torch.arange(8)
    losses = torch.tensor([0.1, float("nan"), 0.3, 2.0, float("inf"), 0.5, 0.2, 1.0])
    publish(ids, losses, step=3)
    c = publish.counters()
    assert c["aa/nan_losses"] == 2 and c["aa/published"] == 1 and c["aa/dropped"] == 0
    assert "step 3 for example ids [1, 4] are not learnt from" in caplog.text
    assert gate.worker.snapshot["assistant"]["learnt"] == 6
    # the publisher's counters are checkpointed (by the graph) and restored
    again = Publisher(gate.worker)
    again.load_state_dict(publish.state_dict())
    assert again.counters() == c
    gate.shutdown()


def test_full_queue_drops_and_counts_without_blocking(digits_store):
    feats = pooled_pixels(digits_store.train.x, 2)
    worker = AssistantWorker(feats, np.asarray(digits_store.train.y), digits_store.num_classes, KW, mode="thread",
                             queue_size=1)
    publish = Publisher(worker)
    # not started: nobody consumes, so the queue fills at once; publishing must still not block
    import queue as q

    worker._in, worker._out = q.Queue(1), q.Queue(1)
    t0 = time.monotonic()
    for step in range(50):
        publish(torch.arange(4), torch.ones(4, dtype=torch.float32), step)
    assert time.monotonic() - t0 < 5  # a bound against blocking, not a timing claim
    c = publish.counters()
    assert c["aa/published"] == 50 and c["aa/dropped"] == 49 and c["aa/queue_in"] == 1.0
    assert worker.publish(np.arange(4), np.ones(4, dtype=np.float32)) is False and worker.queued() == 1.0


def test_features_bad_input(digits_store, make_npz, tmp_path):
    task = task_for(digits_store)
    feats = pooled_pixels(digits_store.train.x, 2)
    assert feats.shape == (len(digits_store.train), 16) and feats.dtype == np.float32
    assert np.array_equal(task.features(downsample=2), feats)
    write_features(tmp_path / "f", feats, {"store_fingerprint": digits_store.fingerprint})
    assert np.array_equal(read_features(tmp_path / "f", task), feats)
    with pytest.raises(FileNotFoundError, match="run the features stage"):
        read_features(tmp_path / "nope", task)
    write_features(tmp_path / "short", feats[:-3], {"store_fingerprint": digits_store.fingerprint})
    with pytest.raises(ValueError, match=r"shape \(1435, 16\) but the store has 1438 train examples"):
        read_features(tmp_path / "short", task)
    write_features(tmp_path / "other", feats, {"store_fingerprint": "0123456789abcdef"})
    with pytest.raises(ValueError, match="computed from store 0123456789abcdef but training uses store"):
        read_features(tmp_path / "other", task)


def test_autoassist_config_bad_input():
    for kw, msg in (({"loss_ema": 1.0}, "train.methods.autoassist.loss_ema"), ({"accuracy_ema": 0}, "accuracy_ema"),
                    ({"queue_size": 0}, "train.methods.autoassist.queue_size"),
                    ({"worker": "gpu"}, "train.methods.autoassist.worker"),
                    ({"enabled": True}, "train.methods.autoassist.enabled")):  # presence turns it on
        with pytest.raises(ConfigError, match=msg):
            tiny_train_cfg(**_aa(**kw))


def test_features_read_by_the_graph_are_checked(digits_store, tmp_path):
    feats = pooled_pixels(digits_store.train.x, 2)
    write_features(tmp_path / "f", feats[:10], {"store_fingerprint": digits_store.fingerprint})
    cfg = tiny_train_cfg(**_aa(features=str(tmp_path / "f")))
    task = task_for(digits_store)
    with pytest.raises(ValueError, match="one row per id expected"):
        build_input_graph(task, cfg.stack, candidate_ids(task, None), batch_size=cfg.input.batch_size)


def test_an_svp_subset_feeds_the_gate_and_sb(digits_store, tmp_path):
    ids = np.arange(0, len(digits_store.train), 3)
    np.save(tmp_path / "subset.npy", ids)
    cfg = tiny_train_cfg(epochs=2, input={"subset": str(tmp_path / "subset.npy")}, **_aa(sb=SB, accuracy_ema=0.3))
    t = Trainer(digits_store, cfg)
    seen = []
    t.graph.listeners.append(("seen", lambda i, losses, step: seen.extend(i.tolist())))
    c = t.fit().metrics["counters"]
    assert c["aa/candidates"] == 2 * len(ids) and c["sb/candidates"] == c["aa/passed"]
    assert set(seen) <= set(ids.tolist())
