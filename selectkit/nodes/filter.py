"""What torchdata 0.11 lacks for selection: dropping rows of batches, and re-batching them.

Selection policies (the AutoAssist gate, Selective-Backprop) drop examples from batches and
must still hand the trainer full batches. ``FilterRows`` drops rows by a predicate and
``Rebatch`` regroups the surviving rows; both checkpoint their position and any buffered
rows, so a resumed graph emits exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torchdata.nodes import BaseNode

Batch = Dict[str, Any]
# Keys of a batch that describe its position rather than its rows.
POSITION_KEYS = ("epoch", "index", "num_batches")
# Where a node keeps its counters inside its state (selectkit.graph.collect_counters finds them).
COUNTERS_KEY = "selectkit_counters"


def copy_batch(batch: Batch) -> Batch:
    """A batch whose dict and per-row arrays are its own: what a node stores in its state must
    not change when the consumer mutates what the node handed out."""
    return {k: v.clone() if isinstance(v, torch.Tensor) else np.array(v, copy=True) if isinstance(v, np.ndarray)
            else v for k, v in batch.items()}


def num_rows(batch: Batch) -> int:
    return len(batch["ids"])


def take_rows(batch: Batch, rows) -> Batch:
    """The rows ``rows`` (indices or a boolean mask) of every per-row field of a batch."""
    idx = np.asarray(rows)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64, copy=False)
    index: Optional[torch.Tensor] = None  # one index tensor for every tensor field
    out = {}
    for k, v in batch.items():
        if k in POSITION_KEYS:
            out[k] = v
        elif isinstance(v, torch.Tensor):
            if index is None or index.device != v.device:
                index = torch.from_numpy(idx).to(v.device)
            out[k] = v.index_select(0, index)
        else:
            out[k] = np.asarray(v)[idx]
    return out


def slice_rows(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of every per-row field, as views (no copy)."""
    return {k: v if k in POSITION_KEYS else v[start:stop] for k, v in batch.items()}


def _cat(tensors: List[torch.Tensor]) -> torch.Tensor:
    """torch.cat along rows; tensors that differ past the first dimension (token ids padded to
    each batch's own longest example) are zero-padded to the largest first."""
    shape = tensors[0].shape[1:]
    if all(t.shape[1:] == shape for t in tensors):
        return torch.cat(tensors)
    if any(t.dim() != tensors[0].dim() for t in tensors):
        raise ValueError(f"cannot concatenate rows of shapes {[tuple(t.shape) for t in tensors]}")
    size = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = tensors[0].new_zeros((sum(len(t) for t in tensors), *size))
    i = 0
    for t in tensors:
        out[(slice(i, i + len(t)),) + tuple(slice(0, s) for s in t.shape[1:])] = t
        i += len(t)
    return out


def concat_rows(batches: List[Batch]) -> Batch:
    """Concatenate per-row fields; position fields come from the last batch."""
    if len(batches) == 1:
        return batches[0]
    out = {}
    for k, v in batches[-1].items():
        if k in POSITION_KEYS:
            out[k] = v
        elif isinstance(v, torch.Tensor):
            out[k] = _cat([b[k] for b in batches])
        else:
            out[k] = np.concatenate([b[k] for b in batches])
    return out


class SelectingNode(BaseNode[Batch]):
    """Base of nodes that score loaded candidate batches and pass on some of their rows.

    Subclasses implement ``_process(batch) -> (rows to emit or None, seconds not their own:
    selection forwards, and loading where the node loads rows itself)`` and name ``NODE_S`` (the
    counter of their own bookkeeping time: upstream waits, selection forwards and loading excluded). A batch with no row kept is skipped, not emitted.
    """

    NODE_S = ""
    source: BaseNode[Batch]
    _counters: Dict[str, float]

    def _process(self, batch: Batch):
        raise NotImplementedError

    def next(self) -> Batch:
        own = 0.0
        try:
            while True:
                batch = next(self.source)
                t0 = time.perf_counter()
                out, scored_s = self._process(batch)
                own += time.perf_counter() - t0 - scored_s
                if out is not None:
                    return out
        finally:
            self._counters[self.NODE_S] += own


class FilterRows(BaseNode[Batch]):
    """Keeps the rows of each batch for which ``keep(batch)`` (a boolean mask) is True.

    Batches left empty are skipped. ``keep`` must be deterministic given the batch, or carry
    its own checkpointed state; this node's own state is only its source's.
    """

    SOURCE_KEY = "source"

    def __init__(self, source: BaseNode[Batch], keep: Callable[[Batch], np.ndarray]):
        super().__init__()
        self.source = source
        self.keep = keep

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        self.source.reset(initial_state[self.SOURCE_KEY] if initial_state is not None else None)

    def next(self) -> Batch:
        while True:
            batch = next(self.source)
            mask = np.asarray(self.keep(batch), dtype=bool)
            if mask.shape != (num_rows(batch),):
                raise ValueError(f"keep() returned a mask of shape {mask.shape} for a batch of "
                                 f"{num_rows(batch)} rows")
            if mask.all():
                return batch
            if mask.any():
                return take_rows(batch, np.flatnonzero(mask))

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict()}


class Rebatch(BaseNode[Batch]):
    """Regroups batches of any sizes into batches of exactly ``batch_size`` rows.

    Rows left over at the end of an epoch come out as one smaller batch (or are dropped with
    ``drop_last``). The buffered rows are part of the state.
    """

    SOURCE_KEY = "source"
    BUFFER_KEY = "buffer"

    def __init__(self, source: BaseNode[Batch], batch_size: int, drop_last: bool = False):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"{batch_size=} should be >= 1")
        self.source = source
        self.batch_size = batch_size
        self.drop_last = drop_last
        self._buffer: List[Batch] = []

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is not None:
            self.source.reset(initial_state[self.SOURCE_KEY])
            self._buffer = [copy_batch(b) for b in initial_state[self.BUFFER_KEY]]
        else:
            self.source.reset(None)
            self._buffer = []

    def next(self) -> Batch:
        have = sum(num_rows(b) for b in self._buffer)
        while have < self.batch_size:
            try:
                batch = next(self.source)
            except StopIteration:
                if have == 0 or self.drop_last:
                    self._buffer = []
                    raise
                out, self._buffer = concat_rows(self._buffer), []
                return out
            if num_rows(batch):
                self._buffer.append(batch)
                have += num_rows(batch)
        merged = concat_rows(self._buffer)
        n = self.batch_size
        rest = have - n
        self._buffer = [slice_rows(merged, n, have)] if rest else []
        return merged if rest == 0 else slice_rows(merged, 0, n)

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.BUFFER_KEY: [copy_batch(b) for b in self._buffer]}
