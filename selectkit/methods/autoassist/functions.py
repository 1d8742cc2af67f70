"""AutoAssist (Zhang, Yu, Dhillon, NeurIPS 2019) as plain numpy: the assistant and its gate rule.

The assistant is an L2-regularised logistic regression on cheap per-example features (plus a
per-class bias: a one-hot of the label) predicting ``g = P(loss > T_k)``, where ``T_k`` is an
exponential moving average (EMA) of the mean loss of the batches the trainer (the boss) trained
on. Each published batch of (ids, losses) is first used to *measure* the assistant (accuracy of
``g > 0.5`` against ``z = [loss > T_k]``, before it learns from them), then to take one
fixed-learning-rate gradient step, then to move ``T_k``. ``lambda_k`` is an EMA of that measured
accuracy starting at 0, so the gate trusts the assistant only as far as it has proved right.

The gate passes a candidate with probability ``(1 - lambda) + lambda * g``: with probability
``1 - lambda`` untested (the safeguard), otherwise with the assistant's ``g``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np


def sigmoid(a: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    a = np.asarray(a, dtype=np.float64)
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def ema(old: float, new: float, rate: float) -> float:
    """``(1 - rate) * old + rate * new``; a NaN ``old`` (nothing seen yet) takes ``new``."""
    return new if math.isnan(old) else (1.0 - rate) * old + rate * new


def auc(scores: np.ndarray, z: np.ndarray) -> float:
    """ROC AUC of ``scores`` ranking the rows with ``z = 1`` above those with ``z = 0`` (the
    Mann-Whitney statistic, ties counted half); NaN when ``z`` holds one class only."""
    z = np.asarray(z, dtype=bool)
    pos, neg = int(z.sum()), int((~z).sum())
    if pos == 0 or neg == 0:
        return math.nan
    from scipy.stats import rankdata  # scikit-learn's own dependency

    ranks = rankdata(np.asarray(scores, dtype=np.float64))  # ties get their average rank
    return float((ranks[z].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def pass_probability(g: np.ndarray, lam: float) -> np.ndarray:
    """The gate's pass probability ``(1 - lambda) + lambda * g``."""
    return (1.0 - lam) + lam * np.asarray(g, dtype=np.float64)


def gate_draw(g: np.ndarray, lam: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw the gate's decisions for candidates with assistant outputs ``g``.

    Returns (passed, tested): ``tested`` marks candidates the assistant judged (probability
    ``lambda``); the others pass untested (the safeguard). Two uniforms per candidate, so the
    draw sequence does not depend on ``lambda``.
    """
    u = rng.random((2, len(g)))
    tested = u[0] < lam
    passed = ~tested | (u[1] < np.asarray(g))
    return passed, tested


class Assistant:
    """Logistic regression ``g = sigmoid(w . [features, onehot(label)] + b)`` with L2 decay.

    Args:
        dim: number of feature columns.
        num_classes: classes of the labels (the per-class bias columns).
        lr: fixed learning rate of the gradient steps.
        weight_decay: L2 coefficient on ``w`` (not on the bias).
        loss_ema: EMA rate of ``T_k`` per published batch, in (0, 1).
        accuracy_ema: EMA rate of ``lambda_k`` per published batch, in (0, 1).
    """

    def __init__(self, dim: int, num_classes: int, *, lr: float, weight_decay: float,
                 loss_ema: float, accuracy_ema: float):
        for name, v in (("loss_ema", loss_ema), ("accuracy_ema", accuracy_ema)):
            if not 0.0 < v < 1.0:
                raise ValueError(f"autoassist.{name}={v} must be in (0, 1)")
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"autoassist.lr={lr} must be > 0 and weight_decay={weight_decay} >= 0")
        self.dim, self.num_classes = dim, num_classes
        self.lr, self.weight_decay = lr, weight_decay
        self.loss_ema, self.accuracy_ema = loss_ema, accuracy_ema
        self.w = np.zeros(dim + num_classes, dtype=np.float64)
        self.b = 0.0
        self.threshold = math.nan  # T_k
        self.lam = 0.0  # lambda_k: lambda_0 = 0, the gate starts by passing everything
        self.accuracy = math.nan  # last measured accuracy (before learning from that batch)
        self.positives = math.nan  # EMA of the share of z = 1 (what always answering 0 would miss)
        self.auc = math.nan  # EMA of the ROC AUC of g against z per batch (before learning from it)
        self.updates = 0
        self.learnt = 0  # examples learnt from

    def logits(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return features @ self.w[:self.dim] + self.w[self.dim:][labels] + self.b

    def predict(self, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``g = P(loss > T_k)`` for each row."""
        return sigmoid(self.logits(features, labels))

    def update(self, features: np.ndarray, labels: np.ndarray, losses: np.ndarray) -> Dict[str, float]:
        """Measure on, then learn from, one published batch (finite losses only)."""
        losses = np.asarray(losses, dtype=np.float64)
        if self.updates == 0 or math.isnan(self.threshold):
            self.threshold = float(losses.mean())
        z = (losses > self.threshold).astype(np.float64)
        self.positives = ema(self.positives, float(z.mean()), self.accuracy_ema)
        g = self.predict(features, labels)
        acc = float(((g > 0.5) == (z > 0.5)).mean())
        # the first batch has no trained assistant to measure: lambda moves only from update 2
        if self.updates > 0:
            self.accuracy = acc
            self.lam = ema(self.lam, acc, self.accuracy_ema)
            batch_auc = auc(g, z > 0.5)
            if not math.isnan(batch_auc):
                self.auc = ema(self.auc, batch_auc, self.accuracy_ema)
        n = len(losses)
        err = (g - z) / n
        grad = np.empty_like(self.w)
        grad[:self.dim] = features.T @ err
        grad[self.dim:] = np.bincount(labels, weights=err, minlength=self.num_classes)
        grad[:self.dim] += self.weight_decay * self.w[:self.dim]
        w = self.w - self.lr * grad  # a new array: readers holding the old one never see a half-update
        self.b -= self.lr * float(err.sum())
        self.w = w
        self.threshold = ema(self.threshold, float(losses.mean()), self.loss_ema)
        self.updates += 1
        self.learnt += n
        return {"accuracy": acc, "positives": float(z.mean())}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        return {"w": self.w.copy(), "b": self.b, "threshold": self.threshold, "lam": self.lam,
                "accuracy": self.accuracy, "positives": self.positives, "auc": self.auc, "updates": self.updates,
                "learnt": self.learnt,
                "dim": self.dim, "num_classes": self.num_classes}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if (state["dim"], state["num_classes"]) != (self.dim, self.num_classes):
            raise ValueError(f"assistant state has {state['dim']} features and {state['num_classes']} classes "
                             f"but this run's have {self.dim} and {self.num_classes}: resume with the same "
                             f"features, or start afresh")
        self.w = np.array(state["w"], dtype=np.float64)
        self.b = float(state["b"])
        self.threshold, self.lam, self.accuracy = float(state["threshold"]), float(state["lam"]), float(state["accuracy"])
        self.updates, self.learnt = int(state["updates"]), int(state["learnt"])
        self.positives = float(state.get("positives", math.nan))
        self.auc = float(state.get("auc", math.nan))


def snapshot_predict(state: Dict[str, Any], features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``g`` from an assistant ``state_dict`` (what the gate holds; no Assistant object needed)."""
    d = state["dim"]
    w = state["w"]
    return sigmoid(features @ w[:d] + w[d:][labels] + state["b"])


def finite_rows(losses: np.ndarray) -> Optional[np.ndarray]:
    """Indices of non-finite losses, or None when all are finite."""
    bad = ~np.isfinite(losses)
    return np.flatnonzero(bad) if bad.any() else None
