"""Selective-Backprop's params (``train.methods.sb``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selectkit.validation import check as _check, check_fold, choice as _choice


@dataclass
class SBConfig:
    """Selective-Backprop and Stale-SB, params section `train.methods.sb`."""

    beta: float = 2.0  # keep probability CDF_R(loss) ** beta; larger keeps fewer
    window: int = 1024  # R: how many recent losses the percentile is taken over
    # Candidates scored per selection forward; larger than input.batch_size amortises calls;
    # auto: 1, 2 or 4 training batches, measured at the start of the run (selectkit/autotune.py)
    selection_batch_size: Any = "auto"
    floor: float = 0.0  # minimum keep probability
    warmup_epochs: int = 0  # epochs of Traditional training before selection starts
    selection_mode: str = "eval"  # eval | train: the model's mode during selection forwards
    # fp32 | bf16 | auto: precision of selection forwards (bf16 autocast; on CPUs with AVX512-BF16
    # it halves their cost, elsewhere it may be slower); auto measures both on the first batch
    # and keeps the faster (selectkit/autotune.py; the choice is in run.json and MLflow)
    selection_precision: str = "auto"
    # true | false | auto: selection forwards (eval mode) through a view of the model with each
    # BatchNorm folded into the convolution before it (selectkit/fold.py: the same function up
    # to float rounding, fewer passes over the activations); auto folds unless the live model
    # measures clearly faster on the first batch, and runs live where the model cannot be folded
    selection_fold: Any = "auto"
    staleness: int = 1  # 1 = SB; n > 1 = Stale-SB: selection forwards every n-th epoch only

    def __post_init__(self) -> None:
        _check(self.beta > 0, "train.methods.sb.beta", self.beta, "> 0 (beta -> 0 keeps everything)")
        _check(self.window >= 1, "train.methods.sb.window", self.window, ">= 1")
        _check(self.selection_batch_size == "auto" or (
            isinstance(self.selection_batch_size, int) and not isinstance(self.selection_batch_size, bool)
            and self.selection_batch_size >= 1), "train.methods.sb.selection_batch_size", self.selection_batch_size,
            "an integer >= input.batch_size, or auto")
        _check(0.0 <= self.floor <= 1.0, "train.methods.sb.floor", self.floor, "0 <= x <= 1")
        _check(self.warmup_epochs >= 0, "train.methods.sb.warmup_epochs", self.warmup_epochs, ">= 0")
        _check(self.staleness >= 1, "train.methods.sb.staleness", self.staleness, ">= 1 (1 is plain SB)")
        _choice("train.methods.sb.selection_mode", self.selection_mode, ["eval", "train"])
        _choice("train.methods.sb.selection_precision", self.selection_precision, ["fp32", "bf16", "auto"])
        check_fold("train.methods.sb", self.selection_fold, self.selection_mode)


def check_run(cfg: SBConfig, train) -> None:
    """SB against the rest of the run (a TrainConfig)."""
    _check(cfg.selection_batch_size == "auto" or cfg.selection_batch_size >= train.input.batch_size, "train.methods.sb.selection_batch_size",
           cfg.selection_batch_size, f">= input.batch_size ({train.input.batch_size}): smaller selection "
           f"batches only add per-call overhead")
    _check(cfg.warmup_epochs < train.epochs, "train.methods.sb.warmup_epochs", cfg.warmup_epochs,
           f"< train.epochs ({train.epochs}), or selection never starts")
