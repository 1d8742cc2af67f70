"""The process seam: rank and world size, and one main-process check for every writer."""

import mlflow

from selectkit import dist
from selectkit.config import TrackingConfig
from selectkit.io import atomic_write_text, fresh_dir, replace_dir
from selectkit.tracking import Tracker
from selectkit.train import Trainer

from conftest import tiny_train_cfg


def test_alone_is_rank_0_of_1(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)


def test_only_the_main_process_writes(monkeypatch, tmp_path, digits_store):
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
    cfg = tiny_train_cfg(epochs=1)
    r = Trainer(digits_store, cfg, checkpoint_path=tmp_path / "ck.pt").fit()
    assert r.metrics["steps"] == -(-len(digits_store.train) // 2 // 64)  # rank 1's shard: half the ids
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written: not a file, dir or checkpoint
    assert mlflow.MlflowClient().get_experiment_by_name(exp) is None
