"""RhoLoss: the node that trains on the candidates with the largest reducible loss.

Placed like Selective-Backprop, after the prefetch thread (it runs the live model) and
followed by a ``Rebatch`` to the training batch size:

    ... -> Prefetcher -> RhoLoss -> Rebatch(batch_size) -> Loader

Every candidate batch gets one selection forward (no graph) of the live model; its losses
minus the cached irreducible losses rank the candidates, and ``round(fraction * n)`` rows are
kept (the top ones, or a Gumbel top-k sample).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import numpy as np
from torchdata.nodes import BaseNode

from selectkit.losstable import as_numpy
from selectkit.methods.rholoss.functions import keep_count, reducible, sample_k, top_k
from selectkit.nodes.filter import COUNTERS_KEY, Batch, SelectingNode, take_rows

COUNTERS = ("rho/candidates", "rho/kept", "rho/selection_forwarded", "rho/kept_fraction", "rho/selection_s",
            "rho/node_s", "rho/reducible_kept_sum", "rho/reducible_sum", "rho/irreducible_kept_sum",
            "rho/irreducible_sum", "rho/loss_topk_overlap")


class RhoLoss(SelectingNode):
    """Keeps the candidates with the largest reducible loss; emits them (variable-size batches).

    Args:
        source: upstream node yielding loaded candidate batches (``ids``, ``x``, ``y``, ``epoch``).
        scorer: ``scorer(x, y) -> per-example losses`` (a ModelHandle's ``losses``).
        irreducible: float irreducible loss per train id.
        fingerprint: the store's fingerprint; ``irreducible_id`` names the losses (a resumed
            state must match both).
        fraction, rule, temperature, warmup_epochs: see RhoLossConfig.
        seed: seeds the ``sample`` rule's draws.
    """

    NODE_S = "rho/node_s"
    SOURCE_KEY, RNG_KEY, META_KEY = "source", "rng", "meta"

    def __init__(self, source: BaseNode[Batch], scorer, irreducible: np.ndarray, fingerprint: str, *,
                 irreducible_id: str = "", fraction: float, rule: str = "top_k", temperature: float = 1.0,
                 warmup_epochs: int = 0, seed: int = 0):
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"{fraction=} should be in (0, 1]")
        if rule not in ("top_k", "sample"):
            raise ValueError(f"{rule=} should be 'top_k' or 'sample'")
        self.source, self.scorer = source, scorer
        self.irreducible = np.asarray(irreducible, dtype=np.float32)
        self.meta = {"fingerprint": fingerprint, "irreducible": irreducible_id, "fraction": fraction, "rule": rule}
        self.fraction, self.rule, self.temperature, self.warmup_epochs = fraction, rule, temperature, warmup_epochs
        self.rng = np.random.default_rng([seed, 0x4B0])
        self._counters: Dict[str, float] = {k: 0.0 for k in COUNTERS}

    def counters(self) -> Dict[str, float]:
        return dict(self._counters)

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            return
        if initial_state[self.META_KEY] != self.meta:
            raise ValueError(f"resumed RHO-LOSS state was made for {initial_state[self.META_KEY]} but this run has "
                             f"{self.meta}: resume with the same store, irreducible losses and rholoss params, "
                             f"or start afresh")
        self.source.reset(initial_state[self.SOURCE_KEY])
        self.rng.bit_generator.state = initial_state[self.RNG_KEY]
        self._counters = dict(initial_state[COUNTERS_KEY])

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.RNG_KEY: self.rng.bit_generator.state,
                COUNTERS_KEY: dict(self._counters), self.META_KEY: dict(self.meta)}


    def choose(self, losses: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Sorted rows to keep for one candidate batch's training losses."""
        red = reducible(losses, self.irreducible[ids])
        k = keep_count(len(ids), self.fraction)
        if self.rule == "top_k":
            return top_k(red, k)
        return sample_k(red, k, self.temperature, self.rng)

    def _process(self, batch: Batch):
        if int(batch["epoch"]) < self.warmup_epochs:
            return batch, 0.0
        c = self._counters
        ids = as_numpy(batch["ids"])
        t0 = time.perf_counter()
        losses = self.scorer(batch["x"], batch["y"]).numpy()
        scored_s = time.perf_counter() - t0
        bad = ~np.isfinite(losses)
        if bad.any():
            raise FloatingPointError(f"RHO-LOSS selection forward gave non-finite losses in epoch {int(batch['epoch'])} "
                                     f"for example ids {ids[bad][:10].tolist()}: lower train.lr, or check those "
                                     f"examples in the store")
        rows = self.choose(losses, ids)
        il = self.irreducible[ids].astype(np.float64)
        red = losses.astype(np.float64) - il
        c["rho/selection_forwarded"] += len(ids)
        c["rho/selection_s"] += scored_s
        c["rho/candidates"] += len(ids)
        c["rho/kept"] += len(rows)
        c["rho/kept_fraction"] = c["rho/kept"] / c["rho/candidates"]
        c["rho/reducible_sum"] += float(red.sum())
        c["rho/reducible_kept_sum"] += float(red[rows].sum())
        c["rho/irreducible_sum"] += float(il.sum())
        c["rho/irreducible_kept_sum"] += float(il[rows].sum())
        # how many of the kept rows picking by training loss alone would have kept too
        c["rho/loss_topk_overlap"] += len(np.intersect1d(rows, top_k(losses, len(rows)), assume_unique=True))
        if len(rows) == len(ids):
            return batch, scored_s
        return take_rows(batch, rows), scored_s
