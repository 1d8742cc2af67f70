"""The optimizer a run trains with and its learning-rate schedule (warm-up, then cosine, step or
constant) as a function of training progress."""

from __future__ import annotations

import math

import torch


def lr_at(progress: float, cfg) -> float:
    """Learning rate at ``progress`` in [0, 1] of training, by ``cfg``'s (a TrainConfig's) schedule."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup > 0 and p < cfg.warmup:
        return cfg.lr * p / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** sum(p >= m for m in cfg.milestones)
    q = (p - cfg.warmup) / (1.0 - cfg.warmup)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * q))


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
