"""Select Via Proxy (Coleman et al., ICLR 2020) as pure functions: proxy outputs in, subsets out.

Uncertainty scores are oriented so that **larger means more uncertain**; every selection
rule keeps the examples with the largest scores (the most uncertain), which is what SVP
prescribes. Ties are broken by example id, so a selection is a deterministic function of
its inputs.
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence

import numpy as np

METRICS = ("least_confidence", "margin", "entropy", "loss")


def uncertainty(probs: np.ndarray, labels: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-example uncertainty from class probabilities [N, K] and labels [N].

    Returns:
        ``least_confidence`` = 1 - max p; ``margin`` = 1 - (p_top1 - p_top2);
        ``entropy`` = -sum p log p (natural log, 0 log 0 = 0); ``loss`` = -log p[label].
        All float64 arrays of length N, larger = more uncertain.

    Raises:
        ValueError: shapes disagree, K < 2, or probabilities are not finite.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 2 or len(y) != len(p):
        raise ValueError(f"probs must be [N, K>=2] with one label per row; got probs {p.shape}, labels {y.shape}")
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
        loss = -np.log(p[np.arange(len(p)), y])
    return {"least_confidence": 1.0 - top2[:, 0], "margin": 1.0 - (top2[:, 0] - top2[:, 1]),
            "entropy": -plogp.sum(axis=1), "loss": loss}


def ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each example, 0 = most uncertain; ties go to the smaller example id (index)."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s))  # primary: score descending; then id ascending
    r = np.empty(len(s), dtype=np.int64)
    r[order] = np.arange(len(s))
    return r


def count(n: int, fraction: Optional[float] = None, size: Optional[int] = None) -> int:
    """How many examples a fraction in (0, 1] or a cardinality in [1, n] keeps."""
    if (fraction is None) == (size is None):
        raise ValueError("give exactly one of fraction or size")
    if size is not None:
        if not 1 <= size <= n:
            raise ValueError(f"subset size {size} is outside [1, {n}] (the store's train split)")
        return int(size)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} is outside (0, 1]")
    return max(1, int(round(fraction * n)))


def top_k(order_keys: np.ndarray, k: int, labels: Optional[np.ndarray] = None,
          num_classes: Optional[int] = None) -> np.ndarray:
    """Indices of the k examples with the smallest keys (ranks, rank sums), sorted by index.

    With ``labels``, per-class balancing: each class keeps the same share of its examples
    (its quota rounded, the remainder going to the classes with the best next candidates).
    """
    keys = np.asarray(order_keys)
    n = len(keys)
    order = np.lexsort((np.arange(n), keys))
    if labels is None:
        return np.sort(order[:k])
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes or 0)
    quota = np.floor(counts * k / n).astype(int)
    chosen: List[np.ndarray] = []
    taken = np.zeros(n, dtype=bool)
    for c in range(len(counts)):
        members = order[labels[order] == c][: quota[c]]
        taken[members] = True
        chosen.append(members)
    rest = order[~taken[order]][: k - int(quota.sum())]
    return np.sort(np.concatenate(chosen + [rest]))


def select_single(scores: np.ndarray, k: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """The k most uncertain examples of one proxy's scores."""
    return top_k(ranks(scores), k, labels)


def rank_sum(score_lists: Sequence[np.ndarray], k: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Ensemble by rank combination: the k examples with the smallest sum of per-proxy ranks."""
    if len(score_lists) < 2:
        raise ValueError(f"rank-sum combines an ensemble; got {len(score_lists)} proxy: use the single rule")
    return top_k(np.sum([ranks(s) for s in score_lists], axis=0), k, labels)


def alternating(score_lists: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Round robin: each proxy in turn adds its most uncertain example not yet chosen."""
    if len(score_lists) < 2:
        raise ValueError(f"alternating selection needs an ensemble; got {len(score_lists)} proxy")
    orders = [np.argsort(ranks(s), kind="stable") for s in score_lists]
    n = len(orders[0])
    taken = np.zeros(n, dtype=bool)
    pos = [0] * len(orders)
    out: List[int] = []
    while len(out) < k:
        for j, o in enumerate(orders):
            while taken[o[pos[j]]]:
                pos[j] += 1
            taken[o[pos[j]]] = True
            out.append(int(o[pos[j]]))
            if len(out) == k:
                break
    return np.sort(np.array(out, dtype=np.int64))


def random_subset(n: int, k: int, seed: int, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """A uniform random subset of size k (the baseline at the same fraction), seeded."""
    keys = np.random.default_rng([seed, 0x5F9]).permutation(n)
    return top_k(keys, k, labels)


def ids_hash(ids: np.ndarray) -> str:
    """sha256 of the sorted int64 ids (first 16 hex): a subset's identity in provenance."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(ids, dtype=np.int64)).tobytes()).hexdigest()[:16]
