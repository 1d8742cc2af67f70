"""The task seam: everything that depends on the modality lives behind ``Task``.

The trainer, ModelHandle, scoring, cost measurement and the AutoAssist features speak only
to a Task: how a batch of example ids becomes tensors (load, augment, pad, mask), how those
reach the device in the right memory format, how model outputs become per-example losses
and evaluation metrics, what example spec a model factory receives, cheap per-example
features for a gate, and dummy inputs for cost measurement. A new modality is a new Task
subclass registered in ``TASKS``; the loop does not change.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, Dict, Optional, Type

import numpy as np
import torch
import torch.nn.functional as F

Batch = Dict[str, Any]


class Task:
    """A modality and an objective, over examples addressed by integer id.

    Subclasses set ``name`` and implement the methods that raise NotImplementedError.

    Attributes:
        num_classes: number of classes of the labels.
        labels: int64 train labels, indexed by example id (a gate's per-class bias).
        fingerprint: identifies the examples (checkpoints, subsets and features check it).
        spec: the example spec a model factory receives (e.g. ImageSpec).
    """

    name = "task"
    num_classes: int
    labels: np.ndarray
    fingerprint: str
    spec: Any

    def __len__(self) -> int:
        """Number of train examples (ids run over [0, len))."""
        return len(self.labels)

    def holdout_ids(self) -> np.ndarray:
        """Sorted train ids held out from training (the store's ``data.holdout_fraction``;
        none for a task without a store)."""
        store = getattr(self, "store", None)
        return store.holdout_ids if store is not None else np.zeros(0, dtype=np.int64)

    def lengths(self) -> Optional[np.ndarray]:
        """Per-id example lengths for grouping batches by length (text), or None."""
        return None

    # ---------------------------------------------------------------- loading
    def loader(self, augment: str = "none", seed: int = 0) -> Callable[[Batch], Batch]:
        """A stateless map function for ``torchdata.nodes.Mapper``: an item holding ``ids``
        (and its position ``epoch``, ``index``) -> the item with ``ids``, ``x`` and ``y``.
        Runs in the prefetch thread: it must not touch the model."""
        raise NotImplementedError

    def eval_batches(self, batch_size: int) -> list:
        """The test split as loaded batches (computed once; the trainer caches them)."""
        raise NotImplementedError

    def train_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        """The train split as loaded batches (scoring), lazily, each with its ``ids``; with
        ``world_size`` > 1 only every ``world_size``-th batch from ``rank`` on (the batches do not
        depend on the number of processes, so sharded scoring equals one process's)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- device and model
    memory_format = torch.contiguous_format

    @classmethod
    def memory_format_for(cls, channels_last: bool) -> torch.memory_format:
        """The memory format of inputs and model for the ``channels_last`` setting."""
        return torch.contiguous_format

    def to_device(self, batch: Batch, device: torch.device):
        """(inputs, targets) of a loaded batch on ``device``, inputs in the task's memory format."""
        x = batch["x"].to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, batch["y"].to(device, non_blocking=True)

    @classmethod
    def forward(cls, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        """The model's outputs on device inputs (a classmethod: cost measurement calls it
        without a store)."""
        return model(inputs)

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model.to(device, memory_format=self.memory_format)

    def losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-example training losses (float32): cross-entropy for classification."""
        return F.cross_entropy(outputs.float(), targets, reduction="none")

    @torch.inference_mode()
    def evaluate(self, model: torch.nn.Module, batches, device: torch.device, autocast=nullcontext) -> Dict[str, float]:
        """Test error and mean loss of ``model`` over loaded ``batches`` (mode left to the caller)."""
        wrong, loss_sum, n = 0, 0.0, 0
        for b in batches:
            x, y = self.to_device(b, device)
            with autocast():
                out = self.forward(model, x)
            loss_sum += F.cross_entropy(out.float(), y, reduction="sum").item()
            wrong += (out.argmax(1) != y).sum().item()
            n += len(y)
        return {"test_error": wrong / n, "test_loss": loss_sum / n}

    # ---------------------------------------------------------------- gate features and costs
    def features(self, **options: Any) -> np.ndarray:
        """Cheap per-example features (float32, one row per train id) for a gate."""
        raise NotImplementedError(f"task {self.name!r} offers no gate features: pass features explicitly")

    def spec_dict(self) -> Dict[str, Any]:
        """The spec as JSON (recorded in a run's metrics so the report can rebuild dummies)."""
        raise NotImplementedError

    @classmethod
    def make_spec(cls, spec: Dict[str, Any]) -> Any:
        """The spec object a model factory receives, from its ``spec_dict`` form."""
        raise NotImplementedError

    @classmethod
    def dummy_inputs(cls, spec: Dict[str, Any], n: int, device: torch.device,
                     generator: Optional[torch.Generator] = None, **options: Any) -> Any:
        """Random device inputs of ``n`` examples shaped like real ones (cost measurement)."""
        raise NotImplementedError


TASKS: Dict[str, Type[Task]] = {}


def register_task(cls: Type[Task]) -> Type[Task]:
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> Type[Task]:
    if name not in TASKS:
        raise ValueError(f"task {name!r} is not registered: registered are {sorted(TASKS)}")
    return TASKS[name]


def task_for(store, **options: Any) -> Task:
    """The Task for a prepared store: its meta.json names the task (images when absent)."""
    name = store.meta.get("task", "image_classification")
    return task_class(name)(store, **options)


from selectkit.tasks.image import ImageClassification, ImageSpec  # noqa: E402  (registers itself)
from selectkit.tasks.text import TextClassification, TextSpec  # noqa: E402  (registers itself)

__all__ = ["Task", "TASKS", "ImageClassification", "ImageSpec", "TextClassification", "TextSpec", "register_task",
           "task_class", "task_for"]
