"""The InfoBatch node: prunes well-learned ids before loading and attaches each kept row's loss
weight (``weight``), which the trainer multiplies into the per-example loss."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
from torchdata.nodes import BaseNode

from selectkit.methods.infobatch.functions import loss_weights, prune_masks, prunes_in
from selectkit.nodes.filter import COUNTERS_KEY, Batch, take_rows

COUNTERS = ("ib/candidates", "ib/kept", "ib/pruned", "ib/well_learned", "ib/epoch_pruned_fraction",
            "ib/epoch_well_learned_fraction", "ib/pruning_epochs", "ib/prune_s")


class InfoBatchPrune(BaseNode[Batch]):
    """At the first batch of each epoch, snapshots the shared loss table and draws which
    well-learned examples this epoch prunes (``functions.prune_masks``, a generator seeded by
    the run's seed and the epoch); then drops those ids from every id batch and adds a
    ``weight`` row field (``1 / (1 - r)`` for kept well-learned rows, else 1). Epochs from the
    fraction ``delta`` of training on prune nothing (every weight 1). Empty batches are skipped.

    Args:
        source: a node yielding id batches (``ids``, ``epoch``, ...), e.g. IdBatchSampler.
        table: the shared LossTable (the trainer's last loss of each example).
        ratio, delta: InfoBatch's r and delta.
        epochs: the run's planned epochs (for ``delta``).
        seed: the run's seed.

    The epoch's masks are part of the state: a run resumed mid-epoch prunes exactly what the
    uninterrupted one would, whatever the table holds by then. ``ib/epoch_pruned_fraction`` is
    the share of the scored candidates this epoch prunes (the number InfoBatch's users asked
    for: ``r`` times the share below the mean, not ``r``).
    """

    SOURCE_KEY, EPOCH_KEY, WELL_KEY, PRUNED_KEY = "source", "epoch", "well_learned", "pruned"

    def __init__(self, source: BaseNode[Batch], table, *, ratio: float, delta: float, epochs: int, seed: int = 0):
        super().__init__()
        self.source, self.table = source, table
        self.ratio, self.delta, self.epochs, self.seed = ratio, delta, epochs, seed
        self._epoch: Optional[int] = None
        self._well = self._pruned = np.zeros(table.num_examples, dtype=bool)
        self._counters = {k: 0.0 for k in COUNTERS}

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            return
        self.source.reset(initial_state[self.SOURCE_KEY])
        self._epoch = initial_state[self.EPOCH_KEY]
        self._well = np.unpackbits(initial_state[self.WELL_KEY], count=self.table.num_examples).astype(bool)
        self._pruned = np.unpackbits(initial_state[self.PRUNED_KEY], count=self.table.num_examples).astype(bool)
        self._counters = dict(initial_state[COUNTERS_KEY])

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.EPOCH_KEY: self._epoch,
                self.WELL_KEY: np.packbits(self._well), self.PRUNED_KEY: np.packbits(self._pruned),
                COUNTERS_KEY: dict(self._counters)}

    def _start_epoch(self, epoch: int) -> None:
        c = self._counters
        if prunes_in(epoch, self.epochs, self.delta):
            rng = np.random.default_rng([self.seed, 0x1B, epoch])
            self._well, self._pruned = prune_masks(self.table.values, self.ratio, rng)
            c["ib/pruning_epochs"] += 1
        else:
            self._well = self._pruned = np.zeros(self.table.num_examples, dtype=bool)
        scored = max(int(np.isfinite(self.table.values).sum()), 1)
        c["ib/epoch_pruned_fraction"] = float(self._pruned.sum()) / scored
        c["ib/epoch_well_learned_fraction"] = float(self._well.sum()) / scored
        self._epoch = epoch

    def next(self) -> Batch:
        while True:
            batch = next(self.source)
            t0 = time.perf_counter()
            if int(batch["epoch"]) != self._epoch:
                self._start_epoch(int(batch["epoch"]))
            ids = np.asarray(batch["ids"])
            keep = ~self._pruned[ids]
            c = self._counters
            k = int(keep.sum())
            c["ib/candidates"] += len(ids)
            c["ib/kept"] += k
            c["ib/pruned"] += len(ids) - k
            c["ib/well_learned"] += int(self._well[ids].sum())
            out = None
            if k:
                out = batch if k == len(ids) else take_rows(batch, np.flatnonzero(keep))
                out = dict(out)
                out["weight"] = loss_weights(self._well[np.asarray(out["ids"])], self.ratio)
            c["ib/prune_s"] += time.perf_counter() - t0
            if out is not None:
                return out
