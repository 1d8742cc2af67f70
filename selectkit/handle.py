"""ModelHandle: what selection nodes may do with the live model — score a batch, no graph."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional

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
        # BatchNorm folding: whether selection forwards run on the folded view, and why
        # (measured timings, or the reason there is no view); checkpointed like ``choice``
        self.fold: Optional[Dict[str, Any]] = None
        self._view = None  # the FoldedView, built on first use (and after a resume)

    def state_dict(self) -> Dict[str, object]:
        return {"choice": self.choice, "fold": self.fold}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        self.choice = state.get("choice")  # type: ignore[assignment]
        self.fold = state.get("fold")  # type: ignore[assignment]

    def counters(self) -> Dict[str, float]:
        """The ``auto`` precision's and folding's choices and timings, once made (else nothing)."""
        out: Dict[str, float] = {}
        if self.choice is not None:
            out.update({"selection/bf16_fraction": float(self.choice["precision"] == "bf16"),
                        "selection/fp32_ms": float(self.choice["fp32_ms"]),
                        "selection/bf16_ms": float(self.choice["bf16_ms"])})
        if self.fold is not None:
            out["selection/folded"] = float(self.fold["folded"])
            out.update({f"selection/{k}": float(self.fold[k]) for k in ("live_ms", "folded_ms") if k in self.fold})
        return out

    def _folded(self, fold: Any, forward: Callable, model: torch.nn.Module, xb, yb):
        """The module selection forwards run on: the BatchNorm-folded view (selectkit/fold.py)
        or None (the live model). ``fold``: True, False or ``auto`` (the view unless the live
        model is clearly faster, measured on the first batch). The view is checked once against
        the live model on that batch: per-example losses in fp32, autocast and TF32 off."""
        if fold is False:
            return None
        if self.fold is None:
            from selectkit.autotune import pick, time_forward

            view, why = self._build_checked(model, xb, yb)
            if view is None:
                if fold is True:
                    raise ValueError(f"selection_fold: true, but the model cannot be folded: {why}; "
                                     f"set selection_fold: auto (folds where it can) or false")
                self.fold = {"folded": False, "reason": why}
            elif fold is True:
                self.fold = {"folded": True}
            else:
                sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
                p = str(self.choice["precision"]) if self.choice is not None else "fp32"
                ms = {name: time_forward(lambda net=net: forward(p, net), sync=sync)
                      for name, net in (("live", model), ("folded", view))}
                self.fold = {"folded": pick(ms, "folded") == "folded", "live_ms": ms["live"], "folded_ms": ms["folded"]}
            self._view = view
        if not self.fold["folded"]:
            return None
        if self._view is None:  # resumed with folding chosen: the same model folds again
            self._view, why = self._build_checked(model, xb, yb)
            if self._view is None:
                raise RuntimeError(f"the checkpoint's selection forwards ran BatchNorm-folded, but {why}")
        return self._view

    def _build_checked(self, model: torch.nn.Module, xb, yb):
        """``(view, "")`` where the model folds and the view's losses match the live model's on
        this batch, else ``(None, why)``; any failure of either means 'run live'."""
        from selectkit.fold import FoldedView

        cuda = self.device.type == "cuda"
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) if cuda else None
        try:
            view, why = FoldedView.build(model)
            if view is None:
                return None, why
            if cuda:
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            with torch.autocast(self.device.type, enabled=False):
                live = self.task.losses(self.task.forward(model, xb), yb).float()
                folded = self.task.losses(self.task.forward(view, xb), yb).float()
            err = (live - folded).abs().max().item()
            if not err <= 1e-3 * max(1.0, live.abs().max().item()):
                return None, f"its per-example losses differ from the live model's by up to {err:.3g}"
            return view, ""
        except Exception as e:  # a model the view cannot stand for: run live, saying why
            return None, f"the folded view failed ({type(e).__name__}: {str(e)[:160]})"
        finally:
            if cuda:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

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
    def losses(self, x: torch.Tensor, y: torch.Tensor, mode: str = "eval", precision: str = "fp32",
               fold: Any = False) -> torch.Tensor:
        """Per-example losses of the live model on a loaded (x, y), as a float32 CPU tensor.

        Args:
            mode: ``eval`` (BatchNorm uses running statistics) or ``train`` (batch statistics;
                BatchNorm's running statistics are updated as in a training forward).
            precision: ``fp32``, or ``bf16`` for a bfloat16-autocast forward (selection only
                ranks losses, which bf16's ~1e-3 error does not disturb), or ``auto``: whichever
                measures faster here (selectkit/autotune.py), chosen on the first call.
            fold: in eval mode, forward through a view of the model with BatchNorm folded into
                the convolutions before it (selectkit/fold.py: the same function up to float
                rounding, refreshed from the live weights each call): True, False, or ``auto``
                (folded unless the live model measures clearly faster on the first call). No
                effect in train mode (BatchNorm uses the batch's statistics there).

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

            def forward(p: str, net=model):
                ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if p == "bf16" else self.autocast()
                with ctx:
                    return self.task.forward(net, xb)

            p = self._resolve(precision, forward)
            net = self._folded(fold, forward, model, xb, yb) if mode == "eval" else None
            out = forward(p, model if net is None else net)
            losses = self.task.losses(out, yb)
        finally:
            model.train()
        out_cpu = losses.cpu()
        self.seconds += time.perf_counter() - t0
        return out_cpu
