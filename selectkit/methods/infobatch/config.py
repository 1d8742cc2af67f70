"""InfoBatch's params (``train.methods.infobatch``)."""

from __future__ import annotations

from dataclasses import dataclass

from selectkit.validation import check as _check


@dataclass
class InfoBatchConfig:
    """InfoBatch-style unbiased pruning, params section `train.methods.infobatch`."""

    # r: each epoch, every example whose last loss is below the mean is pruned with probability
    # r; the kept ones among them weigh 1 / (1 - r), so the expected gradient is unchanged.
    prune_ratio: float = 0.5
    # Prune only in epochs before this fraction of training; the rest trains on all data.
    delta: float = 0.875

    def __post_init__(self) -> None:
        _check(0.0 <= self.prune_ratio < 1.0, "train.methods.infobatch.prune_ratio", self.prune_ratio,
               "0 <= r < 1 (a kept well-learned example weighs 1 / (1 - r))")
        _check(0.0 < self.delta <= 1.0, "train.methods.infobatch.delta", self.delta,
               "0 < delta <= 1 (the fraction of training that prunes; 1 prunes in every epoch)")
