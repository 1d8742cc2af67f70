"""Measured per-example costs of a training step and of an inference (selection) forward.

Every selection speedup is bounded by these costs, so selectkit measures them on the machine
at hand: the report stage uses them for *modelled* speedups (a run's counts times these
costs, free of the machine's noise) and benchmarks/cost_ratio.py prints them per model.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Dict

import torch
import torch.nn.functional as F

from selectkit.config import ModelConfig
from selectkit.models import build_model
from selectkit.tasks import task_class


def measure_costs(model: ModelConfig, task: str, spec: Dict[str, Any], num_classes: int, batch: int,
                  selection_batch: int, *, reps: int = 20, channels_last: bool = True,
                  selection_mode: str = "eval", selection_precision: str = "fp32",
                  selection_fold: bool = False, device: str = "cpu") -> Dict[str, Any]:
    """Median seconds of one train step (at ``batch``) and one no-graph forward (at
    ``selection_batch``, in ``selection_mode``, BatchNorm-folded with ``selection_fold`` where the
    model folds), measured interleaved rep by rep, on random inputs shaped by the task (``task``:
    a registered task name; ``spec``: its spec_dict).

    Returns:
        dict with ``train_step_s``, ``forward_s``, their per-example values and ``ratio``
        (train step / forward at equal batch size, per example).
    """
    dev = torch.device(device)
    torch.manual_seed(0)
    cls = task_class(task)
    net = build_model(model, cls.make_spec(spec), num_classes).to(dev, memory_format=cls.memory_format_for(channels_last))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = cls.dummy_inputs(spec, batch, dev, channels_last=channels_last)
    y = torch.randint(0, num_classes, (batch,), device=dev)
    xs = cls.dummy_inputs(spec, selection_batch, dev, channels_last=channels_last)
    ys = torch.randint(0, num_classes, (selection_batch,), device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        net.train()
        loss = F.cross_entropy(cls.forward(net, x), y, reduction="none").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    view = None
    if selection_fold and selection_mode == "eval":
        from selectkit.fold import FoldedView

        view, _ = FoldedView.build(net)  # None where the model cannot be folded (runs live too)

    def forward():
        net.train(selection_mode == "train")
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                    enabled=selection_precision == "bf16"):
            F.cross_entropy(cls.forward(net if view is None else view, xs).float(), ys, reduction="none").cpu()
        net.train()

    for _ in range(3):
        train_step()
        forward()
    t_train, t_fwd = [], []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        train_step()
        sync()
        t1 = time.perf_counter()
        forward()
        sync()
        t_train.append(t1 - t0)
        t_fwd.append(time.perf_counter() - t1)
    tr, fw = statistics.median(t_train), statistics.median(t_fwd)
    return {"train_step_s": tr, "forward_s": fw, "train_per_example_s": tr / batch,
            "forward_per_example_s": fw / selection_batch,
            "ratio": (tr / batch) / (fw / selection_batch), "batch": batch, "selection_batch": selection_batch,
            "params": sum(p.numel() for p in net.parameters())}
