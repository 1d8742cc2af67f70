"""A task over a user's own map-style dataset (``dataset[i] -> (index, input, label)``), for
using selectkit's nodes from a plain PyTorch loop (see selectkit.loop.SelectiveLoader)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from selectkit.tasks import Task


class _LoadItems:
    """Map function: an item holding ``ids`` -> the dataset's examples at those ids, collated."""

    def __init__(self, dataset, collate: Callable):
        self.dataset, self.collate = dataset, collate

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        ids = np.asarray(item["ids"])
        rows = [self.dataset[int(i)] for i in ids]
        for i, row in zip(ids, rows):
            if not isinstance(row, (tuple, list)) or len(row) != 3:
                raise TypeError(f"dataset[{int(i)}] returned {type(row).__name__}; selectkit expects "
                                f"(index, input, label) so that selection can name examples by id")
            if int(row[0]) != int(i):
                raise ValueError(f"dataset[{int(i)}] returned index {int(row[0])}: the first element must be the "
                                 f"index it was asked for (the example's stable id)")
        out = dict(item)
        out.update(ids=torch.as_tensor(ids, dtype=torch.int64), x=self.collate([r[1] for r in rows]),
                   y=torch.as_tensor([int(r[2]) for r in rows], dtype=torch.int64))
        return out


class DatasetTask(Task):
    """Classification over a map-style dataset whose items are ``(index, input, label)``.

    Args:
        dataset: ``len(dataset)`` examples; ``dataset[i]`` returns ``(i, input, label)``.
        labels: int labels by id (needed by the AutoAssist gate's per-class bias); by default
            read from ``dataset.targets`` when present.
        num_classes: by default ``labels.max() + 1``.
        features: float per-example features (N x D) for the AutoAssist gate.
        loss_fn: ``(outputs, targets) -> per-example losses``; default cross-entropy.
        collate: how inputs are batched; default ``torch.utils.data.default_collate``.
        name: a fingerprint naming the data (checked when a saved state is restored).
    """

    name = "dataset"

    def __init__(self, dataset, *, labels=None, num_classes: Optional[int] = None, features=None,
                 loss_fn: Optional[Callable] = None, collate: Optional[Callable] = None, name: Optional[str] = None):
        n = len(dataset)
        if n == 0:
            raise ValueError("the dataset is empty")
        self.dataset = dataset
        if labels is None and hasattr(dataset, "targets"):
            labels = dataset.targets
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        if self.labels is not None and self.labels.shape != (n,):
            raise ValueError(f"labels has shape {self.labels.shape} but the dataset has {n} examples")
        if num_classes is None and self.labels is not None:
            num_classes = int(self.labels.max()) + 1
        self.num_classes = num_classes
        self._n = n
        self._features = features
        self._loss_fn = loss_fn
        self.collate = collate or default_collate
        self.fingerprint = name or f"dataset:{type(dataset).__name__}:{n}"
        self.spec = None

    def __len__(self) -> int:
        return self._n

    def loader(self, augment: str = "none", seed: int = 0) -> _LoadItems:
        if augment != "none":
            raise ValueError(f"{augment=}: augment inside your dataset's __getitem__ instead")
        return _LoadItems(self.dataset, self.collate)

    def to_device(self, batch, device):
        x = batch["x"]
        x = x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x
        return x, batch["y"].to(device, non_blocking=True)

    def losses(self, outputs, targets) -> torch.Tensor:
        if self._loss_fn is not None:
            return self._loss_fn(outputs, targets).float()
        return F.cross_entropy(outputs.float(), targets, reduction="none")

    def features(self, **_: Any) -> np.ndarray:
        if self._features is None:
            raise ValueError("the AutoAssist gate needs cheap per-example features: pass features= (an N x D "
                             "float array, one row per example id) to SelectiveLoader")
        f = np.asarray(self._features, dtype=np.float32)
        if f.ndim != 2 or len(f) != self._n:
            raise ValueError(f"features has shape {f.shape}; expected ({self._n}, D): one row per example id")
        return f

    def spec_dict(self) -> Dict[str, Any]:
        return {}
