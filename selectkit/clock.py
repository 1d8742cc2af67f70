"""Wall-clock per training phase: where a step's seconds go (data, selection, forward, backward,
optimizer, ...), summed over a run for its time split."""

from __future__ import annotations

import time
from typing import Dict

import torch

# "sync" (agreeing with the other ranks, waiting for them included) and "idle" (zero-weight
# steps after this rank's shard ran out) are spent only under several processes
PHASES = ("data", "selection", "forward", "backward", "optimizer", "sync", "idle", "evaluation", "checkpoint",
          "other")


class PhaseClock:
    """Accumulates seconds per phase. On CUDA, synchronises at phase ends so kernels are
    charged to the phase that launched them (a sync point: costs throughput, buys truth)."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.seconds: Dict[str, float] = {p: 0.0 for p in PHASES}
        self._t = time.perf_counter()

    def restart(self) -> None:
        """Start timing afresh from now (time before this is charged to no phase)."""
        self._t = time.perf_counter()

    def move(self, seconds: float, src: str, dst: str) -> None:
        """Re-charge ``seconds`` measured inside phase ``src`` to phase ``dst``."""
        self.seconds[dst] = self.seconds.get(dst, 0.0) + seconds
        self.seconds[src] -= seconds

    def lap(self, phase: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[phase] += now - self._t
        self._t = now

    @property
    def train_s(self) -> float:
        """Wall-clock spent training (evaluation and checkpointing excluded)."""
        return sum(v for k, v in self.seconds.items() if k not in ("evaluation", "checkpoint"))
