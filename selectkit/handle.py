"""ModelHandle: what selection nodes may do with the live model — score a batch, no graph."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Optional

import torch


class ModelHandle:
    """Scores batches with a live model for selection nodes (e.g. Selective-Backprop).

    The model's device, the task's memory format and losses, and the run's AMP setting are
    fixed here once; the handle restores the model's training mode after each call and keeps
    the seconds it spent (``seconds``: the trainer charges them to the ``selection`` phase).

    Args:
        model: the model being trained (in training mode between steps).
        task: the run's Task (moves batches to the device, turns outputs into losses).
        device: where the model lives.
        autocast: a context-manager factory for training forwards (AMP), or None.
    """

    def __init__(self, model: torch.nn.Module, task, device: torch.device,
                 autocast: Optional[Callable[[], object]] = None):
        self.model, self.task, self.device = model, task, device
        self.autocast = autocast or nullcontext
        self.seconds = 0.0

    @torch.inference_mode()
    def losses(self, x: torch.Tensor, y: torch.Tensor, mode: str = "eval", precision: str = "fp32") -> torch.Tensor:
        """Per-example losses of the live model on a loaded (x, y), as a float32 CPU tensor.

        Args:
            mode: ``eval`` (BatchNorm uses running statistics) or ``train`` (batch statistics;
                BatchNorm's running statistics are updated as in a training forward).
            precision: ``fp32``, or ``bf16`` for a bfloat16-autocast forward (selection only
                ranks losses, which bf16's ~1e-3 error does not disturb).

        Raises:
            RuntimeError: the model is not in training mode, or not on the handle's device.
        """
        t0 = time.perf_counter()
        model = self.model
        if not model.training:
            raise RuntimeError("the model is in eval mode between training steps: something switched it "
                               "without switching it back; policies must score through ModelHandle.losses")
        dev = next(model.parameters()).device
        if dev != self.device:
            raise RuntimeError(f"the model is on {dev} but selection scores it on {self.device}: move the model "
                               f"before building the loader (or pass device=), and keep it there")
        if mode == "eval":
            model.eval()
        try:
            xb, yb = self.task.to_device({"x": x, "y": y}, self.device)
            ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16" else self.autocast()
            with ctx:
                out = self.task.forward(model, xb)
            losses = self.task.losses(out, yb)
        finally:
            model.train()
        out_cpu = losses.cpu()
        self.seconds += time.perf_counter() - t0
        return out_cpu
