"""InfoBatch: the rule on fixed loss tables (unbiasedness, pruned share, annealing), the node
(pruning, weights, resume), the trainer applying the weights, and the schedule whatever the
epoch length."""

import numpy as np
import pytest

from conftest import tiny_train_cfg
from resume_harness import check_resume, run_epoch
from selectkit.losstable import LossTable
from selectkit.methods.infobatch.config import InfoBatchConfig
from selectkit.methods.infobatch.functions import loss_weights, prune_masks, prunes_in
from selectkit.methods.infobatch.node import InfoBatchPrune
from selectkit.nodes.sampler import IdBatchSampler
from selectkit.train import Trainer
from selectkit.validation import ConfigError


def _losses(n=2000, seed=0):
    return np.random.default_rng(seed).exponential(1.0, n).astype(np.float32)  # skewed, like real losses


def test_weighted_loss_is_unbiased_over_pruning_draws():
    """The mean over epochs of sum(kept * weight * loss) / N equals the unpruned mean loss, within
    5 standard errors of that estimate (measured from the epochs themselves)."""
    losses, r = _losses(), 0.5
    estimates = []
    for epoch in range(3000):
        well, pruned = prune_masks(losses, r, np.random.default_rng([1, epoch]))
        w = loss_weights(well, r)
        estimates.append(float(np.sum(np.where(pruned, 0.0, w * losses))) / len(losses))
    est = np.asarray(estimates)
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert se > 0 and abs(est.mean() - losses.mean()) < 5 * se


def test_pruned_share_is_r_times_the_share_below_the_mean():
    losses, r = _losses(20000), 0.5
    well, pruned = prune_masks(losses, r, np.random.default_rng(3))
    below = float((losses < losses.mean()).mean())
    assert well.mean() == pytest.approx(below)
    assert below > 0.55  # exponential: about 63 % below the mean, so r = 0.5 prunes about 32 %, not 50 %
    n = len(losses)
    assert abs(pruned.mean() - r * below) < 4 * np.sqrt(r * (1 - r) * below / n)


def test_unscored_examples_are_kept_and_out_of_the_mean():
    scores = np.array([np.nan, 0.1, 0.2, 3.0, np.nan], dtype=np.float32)
    well, pruned = prune_masks(scores, 0.99, np.random.default_rng(0))
    assert well.tolist() == [False, True, True, False, False]  # mean of the scored is 1.1
    assert not pruned[[0, 3, 4]].any()
    none_well, none_pruned = prune_masks(np.full(4, np.nan), 0.5, np.random.default_rng(0))
    assert not none_well.any() and not none_pruned.any()


def test_annealing_switches_at_delta():
    assert [prunes_in(e, 10, 0.875) for e in range(10)] == [True] * 9 + [False]
    assert [prunes_in(e, 8, 0.5) for e in range(8)] == [True] * 4 + [False] * 4
    assert all(prunes_in(e, 5, 1.0) for e in range(5))


@pytest.mark.parametrize("values", [{"prune_ratio": 1.0}, {"prune_ratio": -0.1}, {"delta": 0.0}, {"delta": 1.5}])
def test_bad_params_are_refused(values):
    with pytest.raises(ConfigError, match="train.methods.infobatch"):
        InfoBatchConfig(**values)


def _node(table, epochs=4, ratio=0.5, delta=0.875, n=None):
    n = n or table.num_examples
    return InfoBatchPrune(IdBatchSampler(np.arange(n), batch_size=16, seed=5), table, ratio=ratio, delta=delta,
                          epochs=epochs, seed=11)


def test_node_prunes_the_drawn_ids_and_weighs_the_kept_well_learned():
    table = LossTable(200)
    table.update(np.arange(150), _losses(150, seed=4))  # 50 examples never scored
    node = _node(table)
    rows = run_epoch(node)
    ids = np.concatenate([np.asarray(b["ids"]) for b in rows])
    weights = np.concatenate([np.asarray(b["weight"]) for b in rows])
    well, pruned = prune_masks(table.values, 0.5, np.random.default_rng([11, 0x1B, 0]))
    assert sorted(ids.tolist()) == np.flatnonzero(~pruned).tolist()  # exactly the undrawn ones, once each
    assert set(np.arange(150, 200)) <= set(ids.tolist())  # unscored: always kept
    assert np.allclose(weights, np.where(well[ids], 2.0, 1.0))
    c = node.get_state()["selectkit_counters"]
    assert c["ib/pruned"] == pruned.sum() and c["ib/candidates"] == 200
    assert c["ib/epoch_pruned_fraction"] == pytest.approx(pruned.sum() / 150)


def test_node_prunes_nothing_in_annealed_epochs_or_without_scores():
    empty = LossTable(64)
    rows = run_epoch(_node(empty))
    assert sum(len(b["ids"]) for b in rows) == 64 and all(np.all(np.asarray(b["weight"]) == 1) for b in rows)
    table = LossTable(64)
    table.update(np.arange(64), _losses(64))
    node = _node(table, epochs=2, delta=0.5)  # epoch 0 prunes, epoch 1 does not
    assert sum(len(b["ids"]) for b in run_epoch(node)) < 64
    rest = run_epoch(node)
    assert sum(len(b["ids"]) for b in rest) == 64 and all(np.all(np.asarray(b["weight"]) == 1) for b in rest)


def test_node_resumes_mid_epoch_with_the_same_batches_and_weights():
    table = LossTable(300)
    table.update(np.arange(300), _losses(300, seed=2))
    check_resume(lambda: _node(table), stop_after=5)


def test_trainer_applies_the_weights_and_the_schedule_spans_the_shorter_epochs(digits_store, monkeypatch):
    seen = []
    original = Trainer._progress

    def spy(self, batch):
        seen.append(original(self, batch))
        return seen[-1]

    monkeypatch.setattr(Trainer, "_progress", spy)
    cfg = tiny_train_cfg(epochs=4, eval_every=0, methods={"infobatch": {"prune_ratio": 0.5, "delta": 0.75}})
    t = Trainer(digits_store, cfg)
    applied = []
    step = t._step

    def record(batch):
        applied.append(np.asarray(batch["weight"]).copy())
        step(batch)

    t._step = record
    r = t.fit()
    n = len(digits_store.train)
    c = r.metrics["counters"]
    assert c["ib/pruned"] > 0 and r.metrics["examples_backpropagated"] == 4 * n - c["ib/pruned"]
    assert r.metrics["kept_fraction"] < 1 and c["ib/pruning_epochs"] == 3  # epochs 0-2; 0 has no scores yet
    assert any((w == 2.0).any() for w in applied) and all(set(np.unique(w)) <= {1.0, 2.0} for w in applied)
    assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0)  # progress by position, not step count
