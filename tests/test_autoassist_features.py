"""The AutoAssist assistant's quality figures (ROC AUC, the always-easy baseline) and gate
features from a proxy's cached scores: what the proxy found hard and its embeddings."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from selectkit.methods.autoassist.features import embedding_features, read_features, upstream_seconds
from selectkit.methods.autoassist.functions import Assistant, auc
from selectkit.methods.autoassist.report import markdown, summarise
from selectkit.methods.svp.artifacts import score_store, write_scores
from selectkit.models import make_model
from selectkit.config import ModelConfig
from selectkit.tasks import task_for
from selectkit.validation import UsageError


def test_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        s = rng.integers(0, 6, 64).astype(float)  # many ties
        z = rng.random(64) < 0.3
        assert auc(s, z) == pytest.approx(roc_auc_score(z, s), abs=1e-12)
    assert math.isnan(auc([0.1, 0.2], [True, True]))


def test_assistant_measures_auc_before_learning_and_keeps_it_in_its_state():
    rng = np.random.default_rng(1)
    a = Assistant(3, 2, lr=0.5, weight_decay=0.0, loss_ema=0.05, accuracy_ema=0.5)
    for _ in range(40):
        x = rng.normal(size=(64, 3))
        a.update(x, np.zeros(64, dtype=np.int64), x[:, 0] + 0.1 * rng.normal(size=64))  # loss follows column 0
    assert a.auc > 0.9
    b = Assistant(3, 2, lr=0.5, weight_decay=0.0, loss_ema=0.05, accuracy_ema=0.5)
    b.load_state_dict(a.state_dict())
    assert b.auc == a.auc


@pytest.fixture(scope="module")
def proxy_scores(digits_store, tmp_path_factory):
    task = task_for(digits_store)
    torch.manual_seed(0)
    model = make_model(ModelConfig("mlp", {"hidden": [24]}), task)
    d = tmp_path_factory.mktemp("proxy")
    scores = score_store(model, task, torch.device("cpu"), 500, embeddings=True)
    write_scores(d / "with", scores, {"proxy_run": "p", "store_fingerprint": digits_store.fingerprint,
                                      "proxy_train_s": 2.0, "score_s": 0.5})
    write_scores(d / "without", {k: v for k, v in scores.items() if k != "embeddings"},
                 {"proxy_run": "p", "store_fingerprint": digits_store.fingerprint})
    write_scores(d / "other", scores, {"proxy_run": "p", "store_fingerprint": "0123456789abcdef"})
    return d


def test_embedding_features_reduce_and_prepend_uncertainty(digits_store, proxy_scores):
    task = task_for(digits_store)
    f, meta = embedding_features(proxy_scores / "with", task, components=8)
    assert f.shape == (len(task), 4 + 8) and f.dtype == np.float32 and np.isfinite(f).all()
    assert meta["embedding_dim"] == 24 and meta["uncertainty"][0] == "loss" and 0 < meta["explained_variance"] <= 1
    # each block standardised, the 4 scores scaled to the 8 components' total variance
    assert f[:, 4:].std() == pytest.approx(1.0, rel=1e-4)
    assert f[:, :4].std() == pytest.approx(np.sqrt(2.0), rel=1e-4)
    e, _ = embedding_features(proxy_scores / "with", task, components=None, uncertainty=False)
    assert e.shape == (len(task), 24)
    with pytest.raises(UsageError, match="holds no embeddings: set score.embeddings: true"):
        embedding_features(proxy_scores / "without", task)
    with pytest.raises(UsageError, match=f"store 0123456789abcdef but the features are for store {task.fingerprint}"):
        embedding_features(proxy_scores / "other", task)


def test_features_stage_from_scores_records_its_upstream_cost(digits_store, proxy_scores, tmp_path):
    from stages.features import main

    out = tmp_path / "feats"
    (tmp_path / "params.yaml").write_text("tracking: {experiment: features-test}\n")
    main(["--params", str(tmp_path / "params.yaml"), "--store", str(digits_store.root),
          "--from-scores", str(proxy_scores / "with"), "--components", "8", "--out", str(out)])
    task = task_for(digits_store)
    assert read_features(out, task).shape == (len(task), 12)
    meta = json.loads((out / "features.json").read_text())
    assert meta["kind"] == "proxy embeddings" and meta["features_s"] > 0
    assert upstream_seconds(str(out)) == pytest.approx(2.5 + meta["features_s"])
    assert upstream_seconds(None) == 0.0


def test_report_shows_auc_and_the_always_easy_baseline():
    counters = {"aa/candidates": 100, "aa/passed": 40, "aa/accuracy": 0.8, "aa/positives": 0.25, "aa/auc": 0.9,
                "aa/safeguard_rate": 0.5, "aa/published": 10, "aa/dropped": 0, "aa/nan_losses": 0, "aa/update_s": 0.1,
                "aa/publish_s": 0.1, "aa/gate_s": 0.1}
    run = {"counters": counters, "train_s": 10.0, "methods": {"autoassist": {"features": "data/features-proxy"}}}
    s = summarise([run, run])
    assert s["final_auc"] == 0.9 and s["features"] == ["data/features-proxy"]
    text = markdown({"autoassist-proxy": s})
    assert "| autoassist-proxy | data/features-proxy | 40.0 % | 80.0 % | 75.0 % | 0.900 | 50.0 % |" in text
