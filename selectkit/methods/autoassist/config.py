"""AutoAssist's params (``train.methods.autoassist``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from selectkit.validation import check as _check, choice as _choice


@dataclass
class AutoAssistConfig:
    """The AutoAssist gate (params `train.methods.autoassist`): an assistant trained off the
    training thread predicts which candidates are worth loading; see node.py beside this file."""

    # Features directory written by stages/features.py; null computes the task's features at start.
    features: Optional[str] = None
    downsample: int = 2  # pooling factor of the pixel features when computed at start
    lr: float = 0.05  # the assistant's fixed learning rate (one step per published batch)
    weight_decay: float = 1e-4  # L2 on the assistant's weights
    loss_ema: float = 0.05  # EMA rate of T_k (the loss threshold) per published batch
    accuracy_ema: float = 0.02  # EMA rate of lambda_k (the trust in the assistant) per batch
    queue_size: int = 16  # published batches that may wait for the assistant before drops
    worker: str = "thread"  # thread | process | inline (synchronous: deterministic, for tests)
    shadow: bool = False  # decide and count, but pass everything (measure the assistant alone)
    warmup_epochs: int = 0  # epochs passing everything before the gate may reject
    # Cap on lambda_k: the safeguard rate never falls below 1 - max_lambda (1.0: the paper's rule).
    max_lambda: float = 1.0

    def __post_init__(self) -> None:
        _check(0 <= self.max_lambda <= 1, "train.methods.autoassist.max_lambda", self.max_lambda, "0 <= x <= 1")
        for key in ("loss_ema", "accuracy_ema"):
            v = getattr(self, key)
            _check(0 < v < 1, f"train.methods.autoassist.{key}", v, "0 < x < 1 (an EMA rate)")
        _check(self.lr > 0, "train.methods.autoassist.lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "train.methods.autoassist.weight_decay", self.weight_decay, ">= 0")
        _check(self.queue_size >= 1, "train.methods.autoassist.queue_size", self.queue_size, ">= 1")
        _check(self.downsample >= 1, "train.methods.autoassist.downsample", self.downsample, ">= 1")
        _check(self.warmup_epochs >= 0, "train.methods.autoassist.warmup_epochs", self.warmup_epochs, ">= 0")
        _choice("train.methods.autoassist.worker", self.worker, ["thread", "process", "inline"])
