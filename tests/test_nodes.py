import numpy as np
import pytest
import torch
from torchdata.nodes import IterableWrapper, Mapper, Prefetcher

from selectkit.graph import build_input_graph, candidate_ids
from selectkit.nodes import FilterRows, IdBatchSampler, Rebatch
from selectkit.tasks import task_for
from selectkit.tasks.image import LoadBatch

from conftest import tiny_train_cfg
from resume_harness import canon, check_resume, run_epoch


def test_sampler_covers_every_id_once_per_epoch():
    s = IdBatchSampler(np.arange(10, 33), batch_size=5, seed=3)
    for _ in range(2):
        items = run_epoch(s)
        ids = np.concatenate([i["ids"] for i in items])
        assert sorted(ids.tolist()) == list(range(10, 33))
        assert [i["index"] for i in items] == list(range(5)) and items[0]["num_batches"] == 5
    e0, e1 = (np.concatenate([i["ids"] for i in run_epoch(IdBatchSampler(np.arange(50), 10, seed=1), st)])
              for st in (None, {"epoch": 1, "index": 0}))
    assert e0.tolist() != e1.tolist()  # each epoch is its own permutation


def test_sampler_validates():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        IdBatchSampler(np.array([], dtype=np.int64), 4)
    with pytest.raises(ValueError, match="batch_size=0"):
        IdBatchSampler(np.arange(4), 0)
    with pytest.raises(ValueError, match="would yield no batch"):
        IdBatchSampler(np.arange(4), 8, drop_last=True)


def test_resume_sampler():
    check_resume(lambda: IdBatchSampler(np.arange(37), 8, seed=5), stop_after=2)


def test_resume_load_with_augmentation(digits_store):
    s = digits_store
    make = lambda: Mapper(IdBatchSampler(np.arange(200), 32, seed=1),
                          LoadBatch(s.train, s.meta["mean"], s.meta["std"], "crop_flip", seed=2))
    check_resume(make, stop_after=3)


def test_load_is_normalised_and_ordered(digits_store):
    s = digits_store
    out = LoadBatch(s.train, s.meta["mean"], s.meta["std"])({"ids": np.array([5, 1, 3]), "epoch": 0, "index": 0})
    assert out["ids"].tolist() == [5, 1, 3]
    assert out["y"].tolist() == s.train.y[[5, 1, 3]].tolist()
    raw = torch.from_numpy(np.asarray(s.train.x[[5, 1, 3]])).float() / 255
    expect = (raw - s.meta["mean"][0]) / s.meta["std"][0]
    torch.testing.assert_close(out["x"], expect)


def test_augmentation_is_seeded_by_position(digits_store):
    s = digits_store
    load = LoadBatch(s.train, s.meta["mean"], s.meta["std"], "crop_flip", seed=0)
    item = {"ids": np.arange(64), "epoch": 2, "index": 4}
    a, b = load(item), load(dict(item))
    c = load({**item, "index": 5})
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])


def _id_batches(sizes):
    items, start = [], 0
    for i, n in enumerate(sizes):
        items.append({"ids": np.arange(start, start + n), "epoch": 0, "index": i, "num_batches": len(sizes)})
        start += n
    return items


def test_filter_rows_and_rebatch():
    src = IterableWrapper(_id_batches([4, 4, 4, 4]))
    node = Rebatch(FilterRows(src, lambda b: b["ids"] % 3 != 0), batch_size=3)
    out = [x["ids"].tolist() for x in node]
    assert out == [[1, 2, 4], [5, 7, 8], [10, 11, 13], [14]]


def test_filter_rejects_wrong_mask():
    node = FilterRows(IterableWrapper(_id_batches([4])), lambda b: np.ones(3, bool))
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) for a batch of 4 rows"):
        next(node)


def test_rebatch_tensors_and_drop_last():
    items = [{"ids": torch.arange(i * 5, i * 5 + 5), "x": torch.randn(5, 2), "epoch": 0, "index": i,
              "num_batches": 3} for i in range(3)]
    out = list(Rebatch(IterableWrapper(items), 4, drop_last=True))
    assert [len(b["ids"]) for b in out] == [4, 4, 4] and out[-1]["index"] == 2
    assert torch.equal(torch.cat([b["x"] for b in out]), torch.cat([i["x"] for i in items])[:12])


def test_resume_filter_and_rebatch():
    def make():
        s = IdBatchSampler(np.arange(100), 16, seed=4)
        return Rebatch(FilterRows(s, lambda b: (b["ids"] * 7919) % 5 < 3), batch_size=10)
    check_resume(make, stop_after=2)


def test_resume_rebatch_behind_prefetch():
    def make():
        s = Prefetcher(IdBatchSampler(np.arange(90), 7, seed=9), prefetch_factor=3)
        return Rebatch(s, batch_size=10)
    check_resume(make, stop_after=4)


def _graph(store, cfg):
    task = task_for(store)
    return build_input_graph(task, cfg.stack, candidate_ids(task, cfg.input.subset), batch_size=cfg.input.batch_size,
                             seed=cfg.seed, augment=cfg.input.augment, prefetch=cfg.input.prefetch)


def test_resume_whole_graph(digits_store):
    cfg = tiny_train_cfg(input={"augment": "crop_flip", "batch_size": 50})
    check_resume(lambda: _graph(digits_store, cfg).root, stop_after=5)


def test_subset_restricts_sampler(digits_store, tmp_path):
    ids = np.array([3, 9, 100, 7])
    np.save(tmp_path / "s.npy", ids)
    cfg = tiny_train_cfg(input={"subset": str(tmp_path / "s.npy"), "batch_size": 3})
    seen = sorted(torch.cat([b["ids"] for b in _graph(digits_store, cfg)]).tolist())
    assert seen == [3, 7, 9, 100]


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_shards_one_permutation_across_ranks(world_size):
    ids = np.arange(100, 131)  # 31 ids: not a multiple of 2 or 3
    shards = [np.concatenate([b["ids"] for b in run_epoch(IdBatchSampler(ids, 4, seed=7, rank=r,
                                                                         world_size=world_size))])
              for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    together = np.concatenate(shards)
    assert set(together.tolist()) == set(ids.tolist()) and len(together) == -(-31 // world_size) * world_size
    one = np.concatenate([b["ids"] for b in run_epoch(IdBatchSampler(ids, 31, seed=7))])
    assert shards[0].tolist() == one[::world_size].tolist()  # rank 0's share of the same permutation
    with pytest.raises(ValueError, match="rank=2 should be in"):
        IdBatchSampler(ids, 4, rank=2, world_size=2)


def test_rebatch_state_never_shares_what_it_handed_out():
    items = [{"ids": np.arange(i * 5, i * 5 + 5), "x": torch.arange(i * 5, i * 5 + 5).float(), "epoch": 0,
              "index": i, "num_batches": 4} for i in range(4)]
    node = Rebatch(IterableWrapper(items), 7)
    node.reset(None)
    next(node)
    state = node.state_dict()
    expect = [canon(b) for b in run_epoch(Rebatch(IterableWrapper(items), 7), state)]
    node = Rebatch(IterableWrapper(items), 7)
    node.reset(state)
    for b in node:  # a consumer that scribbles on what it receives
        b["x"].mul_(-1)
        b["ids"] = None
    assert [canon(b) for b in run_epoch(Rebatch(IterableWrapper(items), 7), state)] == expect


@pytest.mark.parametrize("ids, match", [
    (np.array([1, 2, 99999]), r"ids \[99999\] outside the store's train split"),
    (np.array([1, 2, 2]), r"repeats ids \[2\]"),
    (np.array([0.5, 1.0]), "integer array"),
])
def test_bad_subsets(digits_store, tmp_path, ids, match):
    np.save(tmp_path / "s.npy", ids)
    with pytest.raises(ValueError, match=match):
        candidate_ids(task_for(digits_store), str(tmp_path / "s.npy"))


def test_missing_subset(digits_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="input.subset"):
        candidate_ids(task_for(digits_store), str(tmp_path / "none.npy"))


def test_sampler_state_of_another_rank_is_refused():
    state = {"epoch": 0, "index": 1, "shard": [0, 2]}
    with pytest.raises(ValueError, match="belongs to rank 0 of 2 processes but this is rank 1 of 2"):
        IdBatchSampler(np.arange(20), 4, rank=1, world_size=2).reset(state)
    IdBatchSampler(np.arange(20), 4, rank=0, world_size=2).reset(state)
