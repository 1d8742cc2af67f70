"""Select Via Proxy's params: the score stage (``score``) and the choose stage (``choose``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from selectkit.methods.svp.functions import METRICS
from selectkit.validation import check as _check, choice as _choice


@dataclass
class ScoreConfig:
    """SVP's score stage (params section `score`): one inference pass of a proxy over the store."""

    batch_size: int = 1000
    device: str = "auto"
    channels_last: bool = True
    embeddings: bool = False     # also store the penultimate-layer embedding (float32, N x D)
    # Processes scoring together under torchrun (each scores every N-th batch; the scores are
    # gathered by example id and equal one process's); > 1: the stage launches them itself.
    processes: int = 1

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "score.batch_size", self.batch_size, ">= 1")
        _check(isinstance(self.processes, int) and self.processes >= 1, "score.processes", self.processes,
               "an integer >= 1 (processes under torchrun)")


SVP_RULES = ["single", "rank_sum", "alternating", "random"]


@dataclass
class ChooseConfig:
    """SVP's choose stage (params section `choose`): scores -> a subset artifact."""

    metric: str = "entropy"  # least_confidence | margin | entropy | loss
    # single: one proxy's ranking; rank_sum / alternating: ensemble combinations;
    # random: a uniform random subset of the same size (the baseline)
    rule: str = "rank_sum"
    fraction: Optional[float] = 0.5  # share of the train split to keep, in (0, 1]
    size: Optional[int] = None  # or an exact number of examples (set fraction: null)
    balance: bool = False  # keep the same share of every class
    seed: int = 0  # seeds the random rule

    def __post_init__(self) -> None:
        _choice("choose.metric", self.metric, list(METRICS))
        _choice("choose.rule", self.rule, SVP_RULES)
        _check((self.fraction is None) != (self.size is None), "choose.fraction/size",
               (self.fraction, self.size), "exactly one of fraction and size (set the other to null)")
        if self.fraction is not None:
            _check(0.0 < self.fraction <= 1.0, "choose.fraction", self.fraction, "0 < x <= 1")
        if self.size is not None:
            _check(self.size >= 1, "choose.size", self.size, ">= 1")
