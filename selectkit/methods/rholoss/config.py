"""RHO-LOSS's params (``train.methods.rholoss``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selectkit.validation import check as _check, check_fold, choice as _choice

S = "train.methods.rholoss"


@dataclass
class RhoLossConfig:
    """RHO-LOSS (Mindermann et al., ICML 2022), params section `train.methods.rholoss`."""

    # Scores directory of the irreducible-loss model (the score stage run on a model trained with
    # input.split: holdout); its per-example `loss` is subtracted from the live training loss.
    irreducible: str = ""
    # Share of each candidate batch trained on (the paper's n_b / n_B; it used 0.1).
    fraction: float = 0.1
    # Candidates per selection forward (n_B); the kept rows are re-batched to input.batch_size.
    selection_batch_size: int = 320
    # top_k: the largest reducible losses (the paper); sample: draw without replacement with
    # probability proportional to exp(reducible loss / temperature) (Gumbel top-k).
    rule: str = "top_k"
    temperature: float = 1.0  # rule: sample only; -> 0 approaches top_k, large is uniform
    warmup_epochs: int = 0  # epochs of Traditional training before selection starts
    selection_mode: str = "eval"  # eval | train: the model's mode during selection forwards
    selection_precision: str = "auto"  # fp32 | bf16 (autocast) | auto (measured), as for Selective-Backprop
    selection_fold: Any = "auto"  # true | false | auto: BatchNorm folded for selection, as for Selective-Backprop

    def __post_init__(self) -> None:
        _check(bool(self.irreducible), f"{S}.irreducible", self.irreducible,
               "the scores directory of an irreducible-loss model (stages/score.py on a model trained with "
               "input.split: holdout)")
        _check(0.0 < self.fraction <= 1.0, f"{S}.fraction", self.fraction, "0 < x <= 1 (1 keeps everything)")
        _check(self.selection_batch_size >= 1, f"{S}.selection_batch_size", self.selection_batch_size, ">= 1")
        _check(round(self.fraction * self.selection_batch_size) >= 1, f"{S}.fraction",
               self.fraction, f"large enough to keep at least one of {self.selection_batch_size} candidates "
               f"(fraction x selection_batch_size >= 0.5)")
        _choice(f"{S}.rule", self.rule, ["top_k", "sample"])
        _check(self.temperature > 0, f"{S}.temperature", self.temperature, "> 0")
        _check(self.warmup_epochs >= 0, f"{S}.warmup_epochs", self.warmup_epochs, ">= 0")
        _choice(f"{S}.selection_mode", self.selection_mode, ["eval", "train"])
        _choice(f"{S}.selection_precision", self.selection_precision, ["fp32", "bf16", "auto"])
        check_fold(S, self.selection_fold, self.selection_mode)


def check_run(cfg: RhoLossConfig, train) -> None:
    """RHO-LOSS against the rest of the run (a TrainConfig)."""
    _check(cfg.warmup_epochs < train.epochs, f"{S}.warmup_epochs", cfg.warmup_epochs,
           f"< train.epochs ({train.epochs}), or selection never starts")
    _check(train.input.split == "train", "train.input.split", train.input.split,
           "train with RHO-LOSS (the holdout is where its irreducible-loss model trains)")
