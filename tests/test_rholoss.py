"""RHO-LOSS and the store's holdout: the selection rule on hand-made losses, the holdout split
(stratified, seeded, fingerprinted, never trained on), the irreducible-loss artifact's checks,
and a run that trains through the node."""


import numpy as np
import pytest
import torch

from selectkit.config import DataConfig, train_config, to_dict
from selectkit.graph import candidate_ids
from selectkit.methods.rholoss.artifacts import load_irreducible
from selectkit.methods.rholoss.functions import keep_count, reducible, sample_k, top_k
from selectkit.methods.svp.artifacts import score_store, write_scores
from selectkit.methods.svp.functions import METRICS
from selectkit.store import Store, holdout_split, prepare
from selectkit.tasks import task_for
from selectkit.train import Trainer
from selectkit.validation import ConfigError

from conftest import tiny_train_cfg


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """The digits store with 10 % held out."""
    out = tmp_path_factory.mktemp("held") / "store"
    prepare(DataConfig(source="digits", holdout_fraction=0.1), out)
    return Store(out)


def _irreducible(dirpath, task, losses, split="holdout", fingerprint=None):
    losses = np.asarray(losses, dtype=np.float32)
    write_scores(dirpath, {"ids": np.arange(len(losses), dtype=np.int64), **{m: losses for m in METRICS}},
                 {"proxy_run": "runs/irreducible", "store_fingerprint": fingerprint or task.fingerprint,
                  "proxy_config": {"input": {"split": split}}, "proxy_train_s": 3.0, "score_s": 0.5})
    return str(dirpath)


# ---------------------------------------------------------------- the selection rule
def test_top_k_picks_the_hand_computed_reducible_set():
    losses = np.array([2.0, 0.1, 1.5, 3.0, 0.4, 2.2])
    il = np.array([1.9, 0.0, 0.2, 0.5, 0.3, 2.1])
    # reducible: 0.1, 0.1, 1.3, 2.5, 0.1, 0.1 -> the top two are rows 2 and 3; the largest raw
    # losses (rows 3 and 5) are mostly irreducible for row 5: only row 3 survives
    assert reducible(losses, il) == pytest.approx([0.1, 0.1, 1.3, 2.5, 0.1, 0.1])
    assert top_k(reducible(losses, il), 2).tolist() == [2, 3]
    assert top_k(losses, 2).tolist() == [3, 5]
    assert top_k(np.zeros(4), 2).tolist() == [0, 1]  # ties go to the lower row
    assert [keep_count(n, 0.1) for n in (1, 4, 5, 320)] == [1, 1, 1, 32]


def test_sample_k_is_seeded_distinct_and_follows_the_softmax():
    s = np.array([0.0, np.log(2.0), np.log(4.0), np.log(8.0)])  # weights 1 : 2 : 4 : 8
    a = sample_k(s, 2, 1.0, np.random.default_rng(5))
    assert a.tolist() == sample_k(s, 2, 1.0, np.random.default_rng(5)).tolist() and len(set(a)) == 2
    rng = np.random.default_rng(0)
    draws = 20000
    first = np.bincount([sample_k(s, 1, 1.0, rng)[0] for _ in range(draws)], minlength=4) / draws
    # k = 1 draws row i with probability w_i / sum(w); 4 standard errors of a proportion <= 0.014
    assert first == pytest.approx(np.array([1, 2, 4, 8]) / 15, abs=0.014)
    # a tiny temperature is top-k; a huge one is uniform
    assert sample_k(s, 2, 1e-6, rng).tolist() == [2, 3]
    wide = np.bincount([sample_k(s, 1, 1e6, rng)[0] for _ in range(4000)], minlength=4) / 4000
    assert wide == pytest.approx(np.full(4, 0.25), abs=0.04)


# ---------------------------------------------------------------- the holdout
def test_holdout_is_stratified_seeded_and_fingerprinted(held, digits_store):
    h = held.holdout_ids
    y = np.asarray(held.train.y)
    counts = np.bincount(y)
    assert np.array_equal(np.bincount(y[h], minlength=len(counts)), np.round(0.1 * counts).astype(int))
    assert np.all(np.diff(h) > 0) and held.meta["holdout"]["size"] == len(h)
    assert np.array_equal(h, holdout_split(y, 0.1, 0, held.meta["class_names"]))
    assert not np.array_equal(h, holdout_split(y, 0.1, 1, held.meta["class_names"]))
    # same examples, a holdout: another fingerprint, so artifacts of either store fail on the other
    assert held.fingerprint != digits_store.fingerprint and len(digits_store.holdout_ids) == 0
    held.verify()


def test_holdout_that_empties_a_class_fails_naming_it():
    y = np.array([0] * 50 + [1] * 3)
    with pytest.raises(ValueError, match=r"class 'b' \(3 train examples\) with no holdout example"):
        holdout_split(y, 0.1, 0, ["a", "b"])
    with pytest.raises(ValueError, match=r"class 'b' \(3 train examples\) with no training example"):
        holdout_split(y, 0.9, 0, ["a", "b"])
    with pytest.raises(ConfigError, match="data.holdout_fraction"):
        DataConfig(source="digits", holdout_fraction=1.0)


def test_training_never_sees_the_holdout(held):
    task = task_for(held)
    h = held.holdout_ids
    ids = candidate_ids(task, None)
    assert len(ids) + len(h) == len(task) and not np.isin(ids, h).any()
    assert np.array_equal(candidate_ids(task, None, "holdout"), h)
    with pytest.raises(ValueError, match=r"holds 2 ids of the store's holdout \(e.g. \[" + str(h[0])):
        candidate_ids(task, np.array([h[0], h[1], ids[0]]))
    seen = []
    t = Trainer(held, tiny_train_cfg(epochs=2))
    t.graph.listeners.append(("rec", lambda i, losses, step: seen.append(np.asarray(i))))
    r = t.fit()
    seen = np.concatenate(seen)
    assert not np.isin(seen, h).any() and len(seen) == 2 * len(ids)
    assert r.metrics["kept_fraction"] == 1.0  # of the train split less the holdout


def test_holdout_split_needs_a_holdout(digits_store):
    with pytest.raises(ValueError, match="holds nothing out: set data.holdout_fraction"):
        candidate_ids(task_for(digits_store), None, "holdout")
    with pytest.raises(ConfigError, match="input.subset"):
        tiny_train_cfg(input={"split": "holdout", "subset": "x.npy"})


def test_choose_never_picks_the_holdout(held, tmp_path):
    from selectkit.methods.svp.artifacts import choose_subset
    from selectkit.methods.svp.config import ChooseConfig

    task = task_for(held)
    n = len(task)
    # the holdout scored most uncertain of all: a selection blind to it would take it first
    ent = np.zeros(n, dtype=np.float32)
    ent[held.holdout_ids] = 10.0
    write_scores(tmp_path / "s", {"ids": np.arange(n), **{m: ent for m in METRICS}},
                 {"proxy_run": "p", "store_fingerprint": held.fingerprint})
    for rule in ("single", "random"):
        ids, prov = choose_subset(ChooseConfig(rule=rule, fraction=0.5), held, [tmp_path / "s"])
        assert not np.isin(ids, held.holdout_ids).any()
        assert len(ids) == round(0.5 * (n - len(held.holdout_ids)))


# ---------------------------------------------------------------- the irreducible losses
def test_irreducible_losses_are_checked(held, digits_store, tmp_path):
    task = task_for(held)
    n = len(task)
    good = _irreducible(tmp_path / "good", task, np.linspace(0, 1, n))
    loss, prov = load_irreducible(good, task)
    assert loss.dtype == np.float32 and len(loss) == n and prov["loss_sha256"]
    with pytest.raises(FileNotFoundError, match="holds no scores.*input.split: holdout"):
        load_irreducible(tmp_path / "missing", task)
    other = _irreducible(tmp_path / "other", task, np.ones(n), fingerprint=digits_store.fingerprint)
    with pytest.raises(ValueError, match=f"store {digits_store.fingerprint} but this run trains on store {held.fingerprint}"):
        load_irreducible(other, task)
    bad = np.ones(n)
    bad[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"NaN/inf for example ids \[3, 7\]"):
        load_irreducible(_irreducible(tmp_path / "nan", task, bad), task)
    with pytest.raises(ValueError, match="trained on the train split.*not irreducible"):
        load_irreducible(_irreducible(tmp_path / "train", task, np.ones(n), split="train"), task)
    with pytest.raises(ValueError, match="cover 5 example ids"):
        load_irreducible(_irreducible(tmp_path / "short", task, np.ones(5)), task)


def test_rholoss_config_errors():
    rho = lambda **kw: {"methods": {"rholoss": {"irreducible": "data/irreducible", **kw}}}
    with pytest.raises(ConfigError, match="train.methods.rholoss.irreducible"):
        train_config({"methods": {"rholoss": {}}})
    for kw, key in (({"fraction": 0.0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"rule": "best"}, "rule"),
                    ({"temperature": 0.0}, "temperature"), ({"fraction": 0.001, "selection_batch_size": 10}, "fraction"),
                    ({"warmup_epochs": 5}, "warmup_epochs")):
        with pytest.raises(ConfigError, match=f"train.methods.rholoss.{key}"):
            train_config({**rho(**kw), "epochs": 3})
    with pytest.raises(ConfigError, match="input.split"):
        train_config({**rho(), "input": {"split": "holdout"}})
    with pytest.raises(ConfigError, match="'batches' slot"):
        train_config({"methods": {"rholoss": {"irreducible": "x"}, "sb": {}}})


# ---------------------------------------------------------------- end to end through the trainer
def test_rholoss_trains_on_the_top_reducible_rows(held, tmp_path):
    """The irreducible-loss model trains on the holdout, is scored, and RHO-LOSS trains on the
    train split less the holdout, keeping the batch's top reducible losses."""
    il_cfg = tiny_train_cfg(epochs=4, input={"split": "holdout"})
    il = Trainer(held, il_cfg).fit()
    assert il.metrics["examples_backpropagated"] == 4 * len(held.holdout_ids)
    task = task_for(held)
    scores = score_store(il.model, task, torch.device("cpu"), 500)
    assert np.isfinite(scores["loss"]).all()
    write_scores(tmp_path / "il", scores, {"proxy_run": "il", "store_fingerprint": held.fingerprint,
                                           "proxy_config": to_dict(il_cfg), "proxy_train_s": 2.0, "score_s": 0.5})
    cfg = tiny_train_cfg(epochs=2, methods={"rholoss": {"irreducible": str(tmp_path / "il"), "fraction": 0.25,
                                                        "selection_batch_size": 128}})
    seen = []
    t = Trainer(held, cfg)
    t.graph.listeners.append(("rec", lambda i, losses, step: seen.append(np.asarray(i))))
    r = t.fit()
    c = r.metrics["counters"]
    pool = len(task) - len(held.holdout_ids)
    assert c["rho/candidates"] == c["rho/selection_forwarded"] == 2 * pool
    assert r.metrics["examples_backpropagated"] == c["rho/kept"] == sum(keep_count(len(b), 0.25) for b in
                                                                         _batches(pool, 128)) * 2
    assert not np.isin(np.concatenate(seen), held.holdout_ids).any()
    assert c["rho/reducible_kept_sum"] / c["rho/kept"] > c["rho/reducible_sum"] / c["rho/candidates"]
    assert r.metrics["upstream_s"] == 2.5  # the irreducible-loss model's training and scoring


def _batches(n, size):
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def test_report_adds_upstream_seconds_end_to_end():
    from selectkit.report import end_to_end_markdown, summarise

    def run(label, upstream, t_reach):
        curve = [{"wall_s": 1.0, "examples_seen": 1, "test_error": 0.5},
                 {"wall_s": t_reach, "examples_seen": 2, "test_error": 0.1}]
        return {"label": label, "name": label, "seed": 0, "final_test_error": 0.1, "train_s": 20.0,
                "examples_forwarded": 2, "examples_backpropagated": 2, "seconds": {}, "curve": curve,
                "upstream_s": upstream}

    s = summarise([run("traditional", 0.0, 10.0), run("rholoss", 2.0, 4.0)], "traditional", [1.1])
    tt = s["methods"]["rholoss"]["time_to_target"]["1.1x"]
    assert tt["speedup"] == pytest.approx(2.5) and tt["end_to_end_speedup"] == pytest.approx(10 / 6)
    text = "\n".join(end_to_end_markdown(s))
    assert "| rholoss | 2.0 s | 6.0 s (1.67x) |" in text
    assert end_to_end_markdown(summarise([run("traditional", 0.0, 10.0)], "traditional", [1.1])) == []
