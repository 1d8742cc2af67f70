"""Loading a batch of example ids from the store, with seeded batch-level augmentation."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from selectkit.store import Split

AUGMENTATIONS = ("none", "flip", "crop_flip")


class LoadBatch:
    """Map function for ``torchdata.nodes.Mapper``: ids -> normalised float images and labels.

    Augmentation randomness is a pure function of (seed, epoch, batch index), both carried
    by the item, so this map holds no state and a resumed graph re-creates the same batches.

    Args:
        split: the store split to read (memory-mapped).
        mean, std: per-channel statistics of the train split, for normalisation.
        augment: ``none``, ``flip`` (horizontal) or ``crop_flip`` (2-pixel padded random crop + flip).
        seed: seeds augmentation.
    """

    def __init__(self, split: Split, mean, std, augment: str = "none", seed: int = 0):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"{augment=} should be one of {AUGMENTATIONS}")
        self.split = split
        c = split.x.shape[1]
        self.scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32).reshape(1, c, 1, 1)
        self.shift = np.array([m / s for m, s in zip(mean, std)], dtype=np.float32).reshape(1, c, 1, 1)
        self.augment = augment
        self.seed = seed

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        ids = item["ids"]
        # Sorted reads touch the memory map sequentially; the result is put back in order.
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        x = np.empty((len(ids),) + self.split.x.shape[1:], dtype=np.uint8)
        x[order] = self.split.x[sorted_ids]
        if self.augment != "none":
            x = self._augment(x, item)
        # numpy, not torch: this runs in the prefetch thread, where torch ops would start a
        # second OpenMP team that spins on the cores the training step is using.
        xf = x.astype(np.float32)
        xf *= self.scale
        xf -= self.shift
        xt = torch.from_numpy(xf)
        out = dict(item)
        out.update(ids=torch.from_numpy(np.ascontiguousarray(ids)), x=xt,
                   y=torch.from_numpy(np.asarray(self.split.y[ids])))
        return out

    def _augment(self, x: np.ndarray, item: Dict[str, Any]) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1 + int(item["epoch"]), int(item["index"])])
        n, _, h, w = x.shape
        if self.augment == "crop_flip":
            pad = 2
            padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
            dy = rng.integers(0, 2 * pad + 1, n)
            dx = rng.integers(0, 2 * pad + 1, n)
            rows = dy[:, None] + np.arange(h)[None, :]  # [n, h]
            cols = dx[:, None] + np.arange(w)[None, :]  # [n, w]
            x = padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                       rows[:, None, :, None], cols[:, None, None, :]]
        flip = rng.random(n) < 0.5
        x[flip] = x[flip][..., ::-1]
        return x


def load_eval(split: Split, mean, std, start: int, stop: int) -> Dict[str, torch.Tensor]:
    """A contiguous slice of a split as normalised tensors (evaluation and scoring)."""
    item = {"ids": np.arange(start, stop), "epoch": 0, "index": 0}
    return LoadBatch(split, mean, std)(item)
