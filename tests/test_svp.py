"""Select Via Proxy: uncertainty metrics against hand-computed values, and the selection rules."""

import numpy as np
import pytest

from selectkit.methods.svp.functions import (alternating, count, ids_hash, rank_sum, ranks, random_subset,
                                             select_single, uncertainty)


def test_metrics_hand_computed():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]])
    u = uncertainty(p, np.array([0, 1, 0]))
    np.testing.assert_allclose(u["least_confidence"], [0.1, 0.4, 0.5])
    np.testing.assert_allclose(u["margin"], [0.2, 0.8, 1.0])
    np.testing.assert_allclose(u["entropy"], [0.325083, 0.673012, 0.693147], atol=1e-6)
    np.testing.assert_allclose(u["loss"], [0.105361, 0.916291, 0.693147], atol=1e-6)


def test_three_classes_and_zero_probabilities():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2]])
    u = uncertainty(p, np.array([0, 2]))
    np.testing.assert_allclose(u["margin"], [0.0, 0.8])
    np.testing.assert_allclose(u["entropy"][0], 0.0)
    assert u["loss"][1] == pytest.approx(-np.log(0.2))


def test_two_classes_all_uncertainty_metrics_order_alike():
    rng = np.random.default_rng(0)
    p1 = rng.random(200)
    p = np.stack([p1, 1 - p1], axis=1)
    u = uncertainty(p, np.zeros(200, dtype=int))
    r = ranks(u["least_confidence"])
    assert (ranks(u["margin"]) == r).all() and (ranks(u["entropy"]) == r).all()


def test_selection_keeps_the_most_uncertain_not_the_most_confident():
    """The inverted ordering some coreset libraries shipped would pick the confident half."""
    confident = np.tile([0.99, 0.01], (50, 1))
    unsure = np.tile([0.55, 0.45], (50, 1))
    p = np.empty((100, 2))
    p[0::2], p[1::2] = confident, unsure
    for metric, s in uncertainty(p, np.zeros(100, dtype=int)).items():
        if metric == "loss":
            continue  # with label 0 everywhere, the unsure half also has the larger loss
        assert select_single(s, 50).tolist() == list(range(1, 100, 2)), metric


def test_ranks_break_ties_by_id():
    assert ranks(np.array([0.5, 0.5, 0.2, 0.9])).tolist() == [1, 2, 3, 0]


def test_rank_sum_and_alternating_on_known_rankings():
    a = np.array([4.0, 3.0, 2.0, 1.0])  # ranks 0 1 2 3
    b = np.array([3.0, 4.0, 1.0, 2.0])  # ranks 1 0 3 2
    assert rank_sum([a, b], 2).tolist() == [0, 1]
    c = np.array([1.0, 2.0, 3.0, 4.0])  # ranks 3 2 1 0
    assert rank_sum([a, c], 1).tolist() == [0]  # all sums tie at 3: smallest id
    # a's order 0,1,2,3; d's order 0,1,3,2: a takes 0, d takes 1, a takes 2, d takes 3
    d = np.array([4.0, 3.0, 1.0, 2.0])
    assert alternating([a, d], 3).tolist() == [0, 1, 2]
    assert alternating([a, c], 2).tolist() == [0, 3]


def test_combination_rules_need_an_ensemble():
    with pytest.raises(ValueError, match="rank-sum combines an ensemble; got 1 proxy"):
        rank_sum([np.ones(3)], 1)
    with pytest.raises(ValueError, match="alternating selection needs an ensemble"):
        alternating([np.ones(3)], 1)


def test_count_and_bounds():
    assert count(10, fraction=1.0) == 10 and count(10, fraction=0.3) == 3 and count(10, size=4) == 4
    with pytest.raises(ValueError, match=r"fraction 1.5 is outside \(0, 1\]"):
        count(10, fraction=1.5)
    with pytest.raises(ValueError, match=r"subset size 11 is outside \[1, 10\]"):
        count(10, size=11)


def test_class_balance_and_random_baseline():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([9, 8, 7, 6, 1, 2, 3, 4], dtype=float)
    assert select_single(scores, 4).tolist() == [0, 1, 2, 3]
    assert select_single(scores, 4, labels=labels).tolist() == [0, 1, 6, 7]
    r1, r2 = random_subset(100, 30, seed=0), random_subset(100, 30, seed=0)
    assert r1.tolist() == r2.tolist() and len(set(r1.tolist())) == 30
    assert random_subset(100, 30, seed=1).tolist() != r1.tolist()
    assert len(random_subset(100, 100, seed=0)) == 100


def test_ids_hash_identifies_the_set():
    assert ids_hash(np.array([1, 2, 3])) == ids_hash(np.array([1, 2, 3], dtype=np.int32))
    assert ids_hash(np.array([1, 2, 3])) != ids_hash(np.array([1, 2, 4]))


def test_svp_against_random_per_fraction():
    from selectkit.methods.svp.report import vs_random, vs_random_markdown

    def m(err, t):
        return {"final_test_error": {"mean": err}, "time_to_target": {"1.1x": {"end_to_end_s": t}}}

    summary = {"targets": {"1.1x": 0.1, "1.2x": 0.2},
               "methods": {"traditional": m(0.1, 10.0), "svp-0.3": m(0.12, 4.0), "random-0.3": m(0.11, 8.0),
                           "svp-0.5": m(0.10, None), "random-0.5": m(0.13, 5.0), "svp-0.7": m(0.1, 3.0)}}
    rows = vs_random(summary)
    assert set(rows) == {"0.3", "0.5"}  # svp-0.7 has no random baseline
    assert rows["0.3"]["svp_beats_random"] is False and rows["0.3"]["speedup_over_random"] == 2.0
    assert rows["0.5"]["svp_beats_random"] is True and rows["0.5"]["speedup_over_random"] is None
    text = "\n".join(vs_random_markdown(summary))
    assert "| 0.3 | 12.00 % | 11.00 % | no | 4.0 s | 8.0 s |" in text and "not reached" in text
