"""The text-classification task: ragged token stores, batches padded to their own longest
example (dynamic padding) with a mask, models called as ``model(tokens, mask)``, cross-entropy,
and TF-IDF features (reduced by a truncated SVD) as the AutoAssist gate's cheap features.

A batch's ``x`` is int64 token ids ``[B, L]`` padded with id 0 (``[PAD]``) and ``mask`` is
bool ``[B, L]`` (True on real tokens), where ``L`` is the longest example in the batch. Batches
that selection regroups (rows of different batches concatenated, selectkit.nodes.filter) are
padded to the longest again, and trimmed back to their longest real example on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np
import torch

from selectkit.store.text import PAD_ID
from selectkit.tasks import Task, register_task


@dataclass(frozen=True)
class TextSpec:
    """What a text model factory receives.

    Attributes:
        vocab_size: token ids lie in [0, vocab_size); 0 is padding.
        max_length: the store's longest example (train or test), in tokens (``data.max_length`` at most).
        batch_length: the typical padded length of a training batch (cost measurement).
    """

    vocab_size: int
    max_length: int
    batch_length: int = 32
    pad_id: int = PAD_ID


def pad_rows(tokens: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Token ids of examples ``ids`` as one int64 array [len(ids), longest], padded with 0."""
    ids = np.asarray(ids, dtype=np.int64)
    starts = np.asarray(offsets[ids])
    lengths = np.asarray(offsets[ids + 1]) - starts
    width = max(int(lengths.max()) if len(ids) else 0, 1)
    cols = np.arange(width)
    valid = cols[None, :] < lengths[:, None]
    where = np.where(valid, starts[:, None] + cols[None, :], 0)
    # sorted reads touch the memory map in order; then zero the padding
    flat = where.ravel()
    order = np.argsort(flat, kind="stable")
    out = np.empty(flat.shape, dtype=np.int64)
    out[order] = tokens[flat[order]]
    out = out.reshape(where.shape)
    out[~valid] = PAD_ID
    return out


class LoadTokens:
    """Map function for ``torchdata.nodes.Mapper``: ids -> padded token ids, mask and labels.

    Stateless (no augmentation), so a resumed graph re-creates the same batches.
    """

    def __init__(self, split):
        self.split = split

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        ids = np.asarray(item["ids"], dtype=np.int64)
        x = pad_rows(self.split.tokens, self.split.offsets, ids)
        out = dict(item)
        out.update(ids=torch.from_numpy(np.ascontiguousarray(ids)), x=torch.from_numpy(x),
                   mask=torch.from_numpy(x != PAD_ID), y=torch.from_numpy(np.asarray(self.split.y[ids])))
        return out


def tfidf_features(split, vocab_size: int, components: int = 64, seed: int = 0) -> np.ndarray:
    """TF-IDF of every example's tokens (scikit-learn's TfidfTransformer over the store's own
    token counts, sublinear tf), reduced to ``components`` dimensions by a seeded truncated SVD,
    centred and divided by one global standard deviation (float32, N x components)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    n = len(split)
    tokens = np.asarray(split.tokens, dtype=np.int64)
    counts = csr_matrix((np.ones(len(tokens), dtype=np.float32), tokens, np.asarray(split.offsets)),
                        shape=(n, vocab_size))
    counts.sum_duplicates()
    tfidf = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    k = min(components, vocab_size - 1, n - 1)
    if k < 1:
        raise ValueError(f"{n} examples over {vocab_size} tokens leave no TF-IDF component to keep")
    out = TruncatedSVD(n_components=k, algorithm="randomized", random_state=seed).fit_transform(tfidf)
    out = out.astype(np.float32)
    out -= out.mean(axis=0, keepdims=True)
    out /= max(float(out.std()), 1e-6)
    return out


@register_task
class TextClassification(Task):
    """Classification of the texts of a prepared text store.

    Args:
        store: the text store (ragged int32 token ids, int64 labels, tokenizer.json).
        channels_last: ignored (kept so every task takes the same options).
        batch_size, group_by_length: how training batches are drawn (``input``), for the spec's
            ``batch_length``: the mean padded length of one epoch's batches, which is what a
            train step pays per example (cost measurement builds its dummy batches at it).
    """

    name = "text_classification"

    def __init__(self, store, channels_last: bool = True, batch_size: int = 128, group_by_length: int = 0, **_: Any):
        from selectkit.nodes.sampler import IdBatchSampler

        self.store = store
        self.num_classes = store.num_classes
        self.labels = np.asarray(store.train.y, dtype=np.int64)
        self.fingerprint = store.fingerprint
        self._lengths = store.train.lengths()
        sampler = IdBatchSampler(np.arange(len(self._lengths)), batch_size, lengths=self._lengths,
                                 group=group_by_length)
        order = sampler.order(0)
        full = len(order) // batch_size
        widths = (self._lengths[order[:full * batch_size].reshape(full, batch_size)].max(axis=1) if full
                  else self._lengths.max(keepdims=True))
        # the longest example of either split: a model sized by it (positions) fits the test split too
        longest = max(int(self._lengths.max()), int(store.test.lengths().max()), 1)
        self.spec = TextSpec(int(store.meta["tokenizer"]["vocab_size"]), longest,
                             max(int(round(float(widths.mean()))), 1))

    def lengths(self) -> np.ndarray:
        return self._lengths

    def loader(self, augment: str = "none", seed: int = 0) -> LoadTokens:
        if augment != "none":
            raise ValueError(f"input.augment={augment!r}: the text task has no augmentation; use none")
        return LoadTokens(self.store.train)

    def _slices(self, split, batch_size: int, rank: int = 0, world_size: int = 1):
        """Batches of every example of ``split``, shortest first (so each pads little); each
        batch's ``ids`` say which examples it holds. ``rank``/``world_size``: every
        ``world_size``-th batch from ``rank`` on."""
        load = LoadTokens(split)
        order = np.argsort(split.lengths(), kind="stable")
        for i in range(rank * batch_size, len(split), batch_size * world_size):
            yield load({"ids": order[i:i + batch_size], "epoch": 0, "index": 0})

    def eval_batches(self, batch_size: int) -> list:
        return list(self._slices(self.store.test, batch_size))

    def train_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        return self._slices(self.store.train, batch_size, rank, world_size)

    def to_device(self, batch, device: torch.device):
        """((tokens, mask), labels) on ``device``, trimmed to the batch's longest example (rows
        a selection dropped may have left padding-only columns)."""
        x = batch["x"]
        mask = batch.get("mask")
        if mask is None:
            mask = x != PAD_ID
        width = int(mask.sum(1).max()) if len(x) else 1
        if width < x.shape[1]:
            x, mask = x[:, :width], mask[:, :width]
        x = x.to(device, non_blocking=True)
        return (x, mask.to(device, non_blocking=True)), batch["y"].to(device, non_blocking=True)

    @classmethod
    def forward(cls, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        tokens, mask = inputs
        return model(tokens, mask)

    def prepare_model(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        return model.to(device)

    def features(self, components: int = 64, **_: Any) -> np.ndarray:
        return tfidf_features(self.store.train, self.spec.vocab_size, components)

    def spec_dict(self) -> Dict[str, Any]:
        return {"vocab_size": self.spec.vocab_size, "max_length": self.spec.max_length,
                "batch_length": self.spec.batch_length}

    @classmethod
    def make_spec(cls, spec: Dict[str, Any]) -> TextSpec:
        return TextSpec(int(spec["vocab_size"]), int(spec["max_length"]), int(spec.get("batch_length", 32)))

    @classmethod
    def dummy_inputs(cls, spec: Dict[str, Any], n: int, device: torch.device,
                     generator: Optional[torch.Generator] = None, **_: Any):
        """``n`` rows of random token ids at the spec's typical padded batch length, each row's
        real length uniform in [1, that length] (the rest padding)."""
        s = cls.make_spec(spec)
        width = max(1, min(s.batch_length, s.max_length))
        tokens = torch.randint(2, max(s.vocab_size, 3), (n, width), device=device, generator=generator)
        lengths = torch.randint(1, width + 1, (n, 1), device=device, generator=generator)
        mask = torch.arange(width, device=device)[None, :] < lengths
        return tokens.masked_fill(~mask, PAD_ID), mask
