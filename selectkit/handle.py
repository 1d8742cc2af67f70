"""ModelHandle: what selection nodes may do with the live model — score a batch, no graph."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Callable, Dict, Optional

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
        # precision: "auto"'s measured choice and its timings (checkpointed with the graph)
        self.choice: Optional[Dict[str, float | str]] = None

    def state_dict(self) -> Dict[str, object]:
        return {"choice": self.choice}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.choice = state.get("choice")  # type: ignore[assignment]

    def counters(self) -> Dict[str, float]:
        """The ``auto`` precision's choice and timings, once made (else nothing)."""
        if self.choice is None:
            return {}
        return {"selection/bf16_fraction": float(self.choice["precision"] == "bf16"),
                "selection/fp32_ms": float(self.choice["fp32_ms"]), "selection/bf16_ms": float(self.choice["bf16_ms"])}

    def _resolve(self, precision: str, forward) -> str:
        """``auto`` -> the precision measured faster here on the first batch scored (kept)."""
        if precision != "auto":
            return precision
        if self.choice is None:
            from selectkit.autotune import pick_precision, time_forward

            sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
            ms = {p: time_forward(lambda p=p: forward(p), sync=sync) for p in ("fp32", "bf16")}
            self.choice = {"precision": pick_precision(ms), "fp32_ms": ms["fp32"], "bf16_ms": ms["bf16"]}
        return str(self.choice["precision"])

    @torch.inference_mode()
    def losses(self, x: torch.Tensor, y: torch.Tensor, mode: str = "eval", precision: str = "fp32") -> torch.Tensor:
        """Per-example losses of the live model on a loaded (x, y), as a float32 CPU tensor.

        Args:
            mode: ``eval`` (BatchNorm uses running statistics) or ``train`` (batch statistics;
                BatchNorm's running statistics are updated as in a training forward).
            precision: ``fp32``, or ``bf16`` for a bfloat16-autocast forward (selection only
                ranks losses, which bf16's ~1e-3 error does not disturb), or ``auto``: whichever
                measures faster here (selectkit/autotune.py), chosen on the first call.

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

            def forward(p: str):
                ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if p == "bf16" else self.autocast()
                with ctx:
                    return self.task.forward(model, xb)

            out = forward(self._resolve(precision, forward))
            losses = self.task.losses(out, yb)
        finally:
            model.train()
        out_cpu = losses.cpu()
        self.seconds += time.perf_counter() - t0
        return out_cpu
