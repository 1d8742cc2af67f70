"""SVP artifacts: scoring a store, subsets with provenance, and the checks that guard them."""

import json
import math

import numpy as np
import pytest
import torch

from selectkit.config import ConfigError, DataConfig, from_dict
from selectkit.graph import candidate_ids
from selectkit.methods.svp.artifacts import (choose_subset, read_scores, read_subset, score_store, write_scores,
                                             write_subset)
from selectkit.methods.svp.config import ChooseConfig
from selectkit.store import Store, prepare
from selectkit.tasks import task_for
from selectkit.train import Trainer

from conftest import tiny_train_cfg


@pytest.fixture(scope="module")
def proxies(digits_store, tmp_path_factory):
    """Two briefly trained proxies' scores directories."""
    root = tmp_path_factory.mktemp("scores")
    dirs = []
    for seed in (0, 1):
        r = Trainer(digits_store, tiny_train_cfg(epochs=1, seed=seed)).fit()
        s = score_store(r.model, task_for(digits_store), torch.device("cpu"), 500)
        write_scores(root / f"p{seed}", s, {"proxy_run": f"p{seed}", "store_fingerprint": digits_store.fingerprint})
        dirs.append(root / f"p{seed}")
    return dirs


def test_scores_cover_the_store_and_round_trip(proxies, digits_store):
    s, prov = read_scores(proxies[0])
    assert s["ids"].tolist() == list(range(len(digits_store.train)))
    for m in ("least_confidence", "margin", "entropy", "loss"):
        assert s[m].dtype == np.float32 and np.isfinite(s[m]).all()
    assert prov["proxy_run"] == "p0"


def test_embeddings_are_the_classifier_input_and_round_trip(digits_store, tmp_path):
    m = Trainer(digits_store, tiny_train_cfg(epochs=1)).model.eval()
    task = task_for(digits_store)
    s = score_store(m, task, torch.device("cpu"), 300, embeddings=True)
    x = next(iter(task.train_batches(5)))["x"]  # the first 5 train examples, loaded as for scoring
    with torch.no_grad():
        want = torch.flatten(m.features(x), 1).numpy()
    assert s["embeddings"].shape == (len(digits_store.train), want.shape[1]) and s["embeddings"].dtype == np.float32
    np.testing.assert_allclose(s["embeddings"][:5], want, rtol=1e-4, atol=1e-5)
    assert "embeddings" not in score_store(m, task, torch.device("cpu"), 300)
    write_scores(tmp_path / "e", s, {"proxy_run": "e", "store_fingerprint": digits_store.fingerprint})
    assert read_scores(tmp_path / "e")[0]["embeddings"].shape == s["embeddings"].shape


def test_nan_scores_name_ids_and_proxy(proxies, tmp_path):
    s, prov = read_scores(proxies[0])
    s["entropy"][[3, 7]] = np.nan
    write_scores(tmp_path / "bad", s, prov)
    with pytest.raises(ValueError, match=r"entropy scores of proxy run p0 are NaN/inf for example ids \[3, 7\]"):
        read_scores(tmp_path / "bad")


def test_proxy_with_nan_outputs(digits_store):
    m = Trainer(digits_store, tiny_train_cfg(epochs=1)).model
    with torch.no_grad():
        m.classifier.bias.fill_(math.nan)
    with pytest.raises(FloatingPointError, match=r"proxy run x gives non-finite outputs for example ids \[0, 1"):
        score_store(m, task_for(digits_store), torch.device("cpu"), source="proxy run x")


def _cfg(**kw):
    return from_dict(ChooseConfig, kw, "choose")


def test_choose_rules(proxies, digits_store):
    n = len(digits_store.train)
    ids, prov = choose_subset(_cfg(rule="rank_sum", fraction=0.3), digits_store, proxies)
    assert len(ids) == round(0.3 * n) and (np.diff(ids) > 0).all()
    assert prov["store_fingerprint"] == digits_store.fingerprint and len(prov["proxies"]) == 2
    single, _ = choose_subset(_cfg(rule="single", metric="loss", fraction=0.3), digits_store, proxies[:1])
    s, _ = read_scores(proxies[0])
    assert s["loss"][single].min() >= np.sort(s["loss"])[::-1][len(single) - 1]  # the most uncertain
    rnd, _ = choose_subset(_cfg(rule="random", fraction=0.3), digits_store, [])
    assert len(rnd) == len(ids) and rnd.tolist() != ids.tolist()
    alt, _ = choose_subset(_cfg(rule="alternating", fraction=0.3), digits_store, proxies)
    assert len(alt) == len(ids)
    everything, _ = choose_subset(_cfg(rule="rank_sum", fraction=1.0), digits_store, proxies)
    assert everything.tolist() == list(range(n))
    bal, _ = choose_subset(_cfg(rule="rank_sum", fraction=0.5, balance=True), digits_store, proxies)
    counts = np.bincount(np.asarray(digits_store.train.y)[bal], minlength=10)
    full = np.bincount(np.asarray(digits_store.train.y), minlength=10)
    quota = np.floor(full * len(bal) / n)  # each class its share; < 10 leftovers go to the best rest
    assert (counts >= quota).all() and (counts - quota).sum() < 10


def test_rule_and_ensemble_mismatch(proxies, digits_store):
    with pytest.raises(ConfigError, match="rule='single' takes one proxy's scores, got 2"):
        choose_subset(_cfg(rule="single"), digits_store, proxies)
    with pytest.raises(ValueError, match="rank-sum combines an ensemble; got 1 proxy"):
        choose_subset(_cfg(rule="rank_sum"), digits_store, proxies[:1])


@pytest.mark.parametrize("values, match", [
    ({"fraction": 1.5}, r"choose.fraction=1.5"),
    ({"fraction": 0.5, "size": 10}, r"exactly one of fraction and size"),
    ({"metric": "variance"}, r"choose.metric='variance'"),
    ({"rule": "kmeans"}, r"choose.rule='kmeans'"),
])
def test_choose_config_errors(values, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**values)


def test_size_larger_than_store(proxies, digits_store):
    with pytest.raises(ValueError, match=r"subset size 99999 is outside \[1, 1438\]"):
        choose_subset(_cfg(fraction=None, size=99999), digits_store, proxies)


def test_subset_provenance_round_trip_and_training(proxies, digits_store, tmp_path):
    ids, prov = choose_subset(_cfg(rule="rank_sum", fraction=0.4), digits_store, proxies)
    meta = write_subset(tmp_path / "sub", ids, prov)
    back, meta2 = read_subset(tmp_path / "sub", digits_store)
    assert back.tolist() == ids.tolist() and meta2 == json.loads(json.dumps(meta))
    assert meta2["rule"] == "rank_sum" and meta2["metric"] == "entropy" and meta2["size"] == len(ids)
    r = Trainer(digits_store, tiny_train_cfg(epochs=1, input={"subset": str(tmp_path / "sub")})).fit()
    assert r.metrics["examples_backpropagated"] == len(ids)


def test_subset_from_another_store(proxies, digits_store, tmp_path, make_npz):
    ids, prov = choose_subset(_cfg(rule="random", fraction=0.1), digits_store, [])
    write_subset(tmp_path / "sub", ids, prov)
    prepare(DataConfig(source="npz", path=str(make_npz(n=2000, shape=(1, 8, 8), k=10))), tmp_path / "other")
    other = Store(tmp_path / "other")
    with pytest.raises(ValueError, match=rf"selected from store {digits_store.fingerprint} but training uses "
                                         rf"store {other.fingerprint}: rerun"):
        candidate_ids(task_for(other), str(tmp_path / "sub"))


def test_scores_from_another_store(proxies, digits_store, tmp_path):
    s, prov = read_scores(proxies[1])
    write_scores(tmp_path / "p1", s, {**prov, "store_fingerprint": "0123456789abcdef"})
    with pytest.raises(ValueError, match="proxy run p1 come from store 0123456789abcdef"):
        choose_subset(_cfg(rule="rank_sum"), digits_store, [proxies[0], tmp_path / "p1"])


def test_tampered_subset(digits_store, tmp_path):
    write_subset(tmp_path / "sub", np.array([1, 2, 3]), {"store_fingerprint": digits_store.fingerprint})
    np.save(tmp_path / "sub" / "ids.npy", np.array([1, 2, 4]))
    with pytest.raises(ValueError, match="does not match the hash"):
        read_subset(tmp_path / "sub", digits_store)
