"""SelectiveBackprop: the node that keeps each candidate with probability CDF_R(loss) ** beta.

Placed after the prefetch thread (it runs the live model, which only the training thread may
touch) and followed by a ``Rebatch`` that turns the kept rows into full training batches:

    ... -> Prefetcher -> SelectiveBackprop -> Rebatch(batch_size) -> Loader

Epochs before ``warmup_epochs`` pass every candidate (Traditional). After that, every
``staleness``-th epoch is *fresh*: each candidate batch gets one selection forward (no graph)
and its losses refresh the loss table. The other epochs are *stale*: losses come from the
table (the shared LossTable, keyed by example id) with no forward at all. The trainer's own
training forward of every kept example also refreshes the table (the graph feeds it).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
import torch
from torchdata.nodes import BaseNode

from selectkit.losstable import LossTable, as_numpy
from selectkit.methods.sb.functions import LossWindow, loss_threshold, select
from selectkit.nodes.filter import COUNTERS_KEY, Batch, SelectingNode, take_rows

COUNTERS = ("sb/candidates", "sb/kept", "sb/selection_forwarded", "sb/stale_selected", "sb/kept_fraction",
            "sb/loss_threshold", "sb/selection_s", "sb/node_s")


class SelectiveBackprop(SelectingNode):
    """Drops low-loss rows of candidate batches; emits the kept rows (variable-size batches).

    Args:
        source: upstream node yielding loaded candidate batches (``ids``, ``x``, ``y``, ``epoch``).
        scorer: ``scorer(x, y) -> per-example losses`` (a ModelHandle's ``losses``).
        table: the shared LossTable (its length is the number of examples).
        fingerprint: the store's fingerprint (a resumed state must match it).
        beta, window, floor, warmup_epochs, staleness: see SBConfig (config.py beside this file).
        seed: seeds the keep/skip draws.
        channel: an exchange channel sharing the window's losses with the other ranks, whose
            ``receive`` is ``window.push`` (None or inert alone).

    Its counters (``sb/*``, part of its state) come out through ``counters()``.
    """

    NODE_S = "sb/node_s"
    SOURCE_KEY, WINDOW_KEY, RNG_KEY, META_KEY = "source", "window", "rng", "meta"

    def __init__(self, source: BaseNode[Batch], scorer, table: LossTable, fingerprint: str, *,
                 beta: float, window: int, floor: float = 0.0, warmup_epochs: int = 0, staleness: int = 1,
                 seed: int = 0, channel=None):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"{beta=} should be > 0 (beta -> 0 keeps everything)")
        if not 0.0 <= floor <= 1.0:
            raise ValueError(f"{floor=} should be in [0, 1]")
        if staleness < 1 or warmup_epochs < 0:
            raise ValueError(f"{staleness=} should be >= 1 and {warmup_epochs=} >= 0")
        self.source, self.scorer, self.table = source, scorer, table
        self.num_examples, self.fingerprint = table.num_examples, fingerprint
        self.beta, self.floor, self.warmup_epochs, self.staleness = beta, floor, warmup_epochs, staleness
        self.seed = seed
        self.window = LossWindow(window)
        # under several processes, the candidate losses this rank ranks go to the other ranks'
        # windows (and theirs come here), so the keep probabilities do not depend on the ranks
        self.channel = channel
        self.rng = np.random.default_rng([seed, 0x5B])
        # the graph's loading function, where stale epochs' candidates come unloaded (the
        # graph's ``MethodContext.defer``); None: every candidate arrives loaded
        self.load = None
        self._counters: Dict[str, float] = {k: 0.0 for k in COUNTERS}
        self._counters["sb/loss_threshold"] = float("nan")

    def counters(self) -> Dict[str, float]:
        """This node's counters as of the last batch it emitted (a copy)."""
        return dict(self._with_threshold())

    def _with_threshold(self) -> Dict[str, float]:
        """The counters, with the current window's loss threshold (computed when read, not per batch)."""
        if self._counters["sb/candidates"]:
            self._counters["sb/loss_threshold"] = loss_threshold(self.window.sorted(), self.beta)
        return self._counters

    # ------------------------------------------------------------------ protocol
    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is None:
            # a new epoch keeps the window, the draws and the counts; only the source restarts
            self.source.reset(None)
            return
        meta = initial_state[self.META_KEY]
        want = {"fingerprint": self.fingerprint, "num_examples": self.num_examples, "staleness": self.staleness}
        if {k: meta[k] for k in want} != want:
            raise ValueError(f"resumed Selective-Backprop state was made for {meta} but this run has {want}: "
                             f"resume with the same store and sb.staleness, or start afresh")
        self.source.reset(initial_state[self.SOURCE_KEY])
        self.window.load(initial_state[self.WINDOW_KEY])
        self.rng.bit_generator.state = initial_state[self.RNG_KEY]
        self._counters = dict(initial_state[COUNTERS_KEY])

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.WINDOW_KEY: self.window.state(),
                self.RNG_KEY: self.rng.bit_generator.state, COUNTERS_KEY: dict(self._with_threshold()),
                self.META_KEY: {"fingerprint": self.fingerprint, "num_examples": self.num_examples,
                                "staleness": self.staleness}}

    # ------------------------------------------------------------------ selection
    def is_fresh(self, epoch: int) -> bool:
        """Whether ``epoch`` runs selection forwards (else it selects from the loss table)."""
        return (epoch - self.warmup_epochs) % self.staleness == 0

    def is_stale(self, epoch: int) -> bool:
        """Whether ``epoch`` selects from the loss table alone (after warm-up, not fresh)."""
        return epoch >= self.warmup_epochs and not self.is_fresh(epoch)

    def _load(self, batch: Batch, rows: np.ndarray) -> Batch:
        """Rows ``rows`` (positions) of an unloaded (deferred) candidate batch, loaded: every
        per-row field an earlier method added (e.g. InfoBatch's weights) cut alike."""
        return self.load(take_rows({k: v for k, v in batch.items() if k != "deferred"}, rows))


    def _process(self, batch: Batch):
        """(kept rows or None, seconds spent in selection forwards) for one candidate batch."""
        scored_s = 0.0
        c = self._counters
        epoch = int(batch["epoch"])
        if epoch < self.warmup_epochs:
            return batch, scored_s
        ids = as_numpy(batch["ids"])
        deferred = bool(batch.get("deferred"))  # a stale epoch's unloaded candidates (ids only)
        losses = self.table[ids]
        # Fresh epochs score every candidate; stale ones only those never scored (e.g. when
        # the candidate set grew), so every loss used belongs to its own example.
        rows = np.arange(len(ids)) if self.is_fresh(epoch) else np.flatnonzero(np.isnan(losses))
        load_s = 0.0  # loading of deferred rows: the data phase's time, neither selection's nor the node's
        if len(rows):
            sel = torch.from_numpy(rows)
            if deferred:
                t0 = time.perf_counter()
                part = self._load(batch, rows)
                x, y = part["x"], part["y"]
                load_s = time.perf_counter() - t0
            else:
                x, y = (batch["x"], batch["y"]) if len(rows) == len(ids) else (batch["x"][sel], batch["y"][sel])
            t0 = time.perf_counter()
            fresh = self.scorer(x, y).numpy()
            self._check_finite(fresh, ids[rows], epoch)
            losses[rows] = fresh
            self.table.update(ids[rows], fresh)
            scored_s = time.perf_counter() - t0
            c["sb/selection_forwarded"] += len(rows)
            c["sb/selection_s"] += scored_s
        c["sb/stale_selected"] += len(ids) - len(rows)
        keep = select(losses, self.window, self.beta, self.floor, self.rng)
        if self.channel is not None:
            self.channel.send(losses)
        c["sb/candidates"] += len(ids)
        c["sb/kept"] += int(keep.sum())
        c["sb/kept_fraction"] = c["sb/kept"] / c["sb/candidates"]
        if deferred:  # load the kept rows only (loading is the data phase's, not the node's time)
            if not keep.any():
                return None, scored_s + load_s
            t0 = time.perf_counter()
            out = self._load(batch, np.flatnonzero(keep))
            return out, scored_s + load_s + time.perf_counter() - t0
        if keep.all():
            return batch, scored_s
        if keep.any():
            return take_rows(batch, np.flatnonzero(keep)), scored_s
        return None, scored_s

    def observe(self, ids: torch.Tensor, losses: torch.Tensor, step: int) -> None:
        """Loss listener: during warm-up the trainer's losses fill the window, so the first
        selective epoch starts with a full history. (The graph feeds the table itself.)"""
        if not self._counters["sb/candidates"]:  # still in warm-up: nothing selected yet
            self.window.push(as_numpy(losses))

    @staticmethod
    def _check_finite(losses: np.ndarray, ids: np.ndarray, epoch: int) -> None:
        bad = ~np.isfinite(losses)
        if bad.any():
            raise FloatingPointError(
                f"Selective-Backprop selection pass gave non-finite losses in epoch {epoch} for example ids "
                f"{ids[bad][:10].tolist()}: lower train.lr, or check those examples in the store")
