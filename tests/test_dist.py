"""The process seam: rank and world size, and one main-process check for every writer."""

import mlflow
import pytest

from selectkit import dist
from selectkit.config import TrackingConfig
from selectkit.io import atomic_write_text, fresh_dir, replace_dir
from selectkit.tracking import Tracker


def test_alone_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)


def test_only_the_main_process_writes(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not dist.is_main_process()
    atomic_write_text(tmp_path / "a.txt", "x")
    tmp = fresh_dir(tmp_path / "artifact")
    (tmp / "f").write_text("x")
    replace_dir(tmp, tmp_path / "artifact")
    exp = "rank-test"
    with Tracker(TrackingConfig(experiment=exp), stage="train").run({"a": 1}) as t:
        t.log({"m": 1.0}, step=0)
        t.finish({"final": 1.0}, metrics_path=tmp_path / "metrics.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: not a file or a dir
    assert mlflow.MlflowClient().get_experiment_by_name(exp) is None
    # the trainer under a real process group: tests/test_ddp.py (checkpoints, outputs, one MLflow run)


def test_exchange_delivers_every_send_of_every_other_rank(monkeypatch):
    """The message layout, without a process group: rank 0's sync sees its own message and a
    fake rank 1's; several sends on one channel arrive as one concatenation, pairs intact."""
    import numpy as np

    from selectkit.exchange import Exchange
    from selectkit.losstable import LossTable

    def build():
        ex = Exchange(live=True)
        table = LossTable(10)
        table.share(ex)
        window = []
        ch = ex.channel("window", window.append)
        return ex, table, ch, window

    ex1, t1, ch1, _ = build()  # "rank 1": writes two batches of losses and window values
    t1.update(np.array([1, 2]), np.array([0.5, 0.25], dtype=np.float32))
    t1.update(np.array([7]), np.array([3.0], dtype=np.float32))
    ch1.send([9.0, 8.0])
    captured = {}

    def gather(msg, capacity=0):
        captured["rank1"] = msg
        return [msg]

    monkeypatch.setattr("selectkit.dist.all_gather_array", gather)
    ex1.sync([1.0, 0.0])
    assert ch1.pending().size == 0 and ex1.channels[0].pending().size == 0  # sent once, not again
    ex0, t0, ch0, window0 = build()  # "rank 0": receives rank 1's message beside its own
    monkeypatch.setattr("selectkit.dist.all_gather_array", lambda msg, capacity=0: [msg, captured["rank1"]])
    monkeypatch.setattr("selectkit.dist.rank", lambda: 0)
    heads = ex0.sync([0.0, 1.0])
    assert heads.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert t0[np.array([1, 2, 7])].tolist() == [0.5, 0.25, 3.0] and t0.known() == 3
    assert [w.tolist() for w in window0] == [[9.0, 8.0]]


def test_counters_of_the_ranks_merge_counts_summed_rates_averaged():
    from selectkit.train import merge_counters

    got = merge_counters([{"sb/kept": 10, "sb/candidates": 40, "sb/kept_fraction": 0.25, "sb/selection_s": 2.0,
                           "aa/accuracy": 0.8},
                          {"sb/kept": 30, "sb/candidates": 40, "sb/kept_fraction": 0.75, "sb/selection_s": 4.0,
                           "aa/accuracy": 0.6}])
    assert got == {"sb/kept": 40, "sb/candidates": 80, "sb/kept_fraction": 0.5, "sb/selection_s": 3.0,
                   "aa/accuracy": pytest.approx(0.7)}


def test_each_rank_draws_its_own_randomness_and_one_process_is_unchanged():
    assert dist.rank_seed(7, 0, 1) == 7
    seeds = {dist.rank_seed(7, r, 4) for r in range(4)}
    assert len(seeds) == 4 and seeds == {dist.rank_seed(7, r, 4) for r in range(4)}  # distinct, reproducible
