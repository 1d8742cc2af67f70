"""The image-classification task: uint8 N x C x H x W stores, per-channel normalisation,
seeded batch-level augmentation, channels_last on the device, cross-entropy, pooled pixels as
cheap gate features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from selectkit.store import Split
from selectkit.tasks import Task, register_task


@dataclass(frozen=True)
class ImageSpec:
    """What an image model factory receives: the input shape (channels, height, width)."""

    shape: Tuple[int, int, int]

    @property
    def channels(self) -> int:
        return self.shape[0]


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



def pooled_pixels(x: np.ndarray, downsample: int = 2, chunk: int = 8192) -> np.ndarray:
    """uint8 images [N, C, H, W], average-pooled by ``downsample``, scaled to [0, 1], centred per
    column and divided by one global standard deviation (float32, N x D)."""
    if downsample < 1:
        raise ValueError(f"autoassist.downsample={downsample} must be >= 1")
    n, c, h, w = x.shape
    hh, ww = h // downsample, w // downsample
    if hh == 0 or ww == 0:
        raise ValueError(f"autoassist.downsample={downsample} is larger than the images ({h}x{w})")
    out = np.empty((n, c * hh * ww), dtype=np.float32)
    for i in range(0, n, chunk):
        b = np.asarray(x[i:i + chunk, :, :hh * downsample, :ww * downsample], dtype=np.float32) / 255.0
        b = b.reshape(len(b), c, hh, downsample, ww, downsample).mean(axis=(3, 5))
        out[i:i + len(b)] = b.reshape(len(b), -1)
    out -= out.mean(axis=0, keepdims=True)
    out /= max(float(out.std()), 1e-6)
    return out



@register_task
class ImageClassification(Task):
    """Classification of the images of a prepared store.

    Args:
        store: the example store (uint8 images, int64 labels).
        channels_last: the device memory format of inputs and model (fast for convolutions).
    """

    name = "image_classification"

    def __init__(self, store, channels_last: bool = True, **_: Any):
        self.store = store
        self.num_classes = store.num_classes
        self.labels = np.asarray(store.train.y, dtype=np.int64)
        self.fingerprint = store.fingerprint
        self.spec = ImageSpec(tuple(int(v) for v in store.image_shape))
        self.memory_format = self.memory_format_for(channels_last)
        self._mean, self._std = store.meta["mean"], store.meta["std"]

    def loader(self, augment: str = "none", seed: int = 0) -> LoadBatch:
        return LoadBatch(self.store.train, self._mean, self._std, augment, seed=seed)

    def _slices(self, split: Split, batch_size: int, rank: int = 0, world_size: int = 1):
        load = LoadBatch(split, self._mean, self._std)
        for i in range(rank * batch_size, len(split), batch_size * world_size):
            yield load({"ids": np.arange(i, min(i + batch_size, len(split))), "epoch": 0, "index": 0})

    def eval_batches(self, batch_size: int) -> list:
        return list(self._slices(self.store.test, batch_size))

    def train_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        return self._slices(self.store.train, batch_size, rank, world_size)

    def features(self, downsample: int = 2, **_: Any) -> np.ndarray:
        return pooled_pixels(self.store.train.x, downsample)

    def spec_dict(self) -> Dict[str, Any]:
        return {"shape": list(self.spec.shape)}

    @classmethod
    def memory_format_for(cls, channels_last: bool) -> torch.memory_format:
        return torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def make_spec(cls, spec: Dict[str, Any]) -> ImageSpec:
        return ImageSpec(tuple(int(v) for v in spec["shape"]))

    @classmethod
    def dummy_inputs(cls, spec: Dict[str, Any], n: int, device: torch.device,
                     generator: Optional[torch.Generator] = None, channels_last: bool = True) -> torch.Tensor:
        x = torch.randn(n, *spec["shape"], device=device, generator=generator)
        return x.contiguous(memory_format=cls.memory_format_for(channels_last))
