"""Builds the training input graph from config.

    IdBatchSampler(candidate ids)        (sampling and batching fused: the stream unit is a batch)
      -> AutoAssistGate -> Rebatch       optional: drops ids before they are loaded
      -> Mapper(LoadBatch)               read rows from the memory-mapped store, augment, normalise
      -> Prefetcher                      a background thread loads ahead of the trainer
      -> PinMemory                       CUDA only
      -> policy nodes                    e.g. Selective-Backprop; in the training thread, since
                                         they run the live model
      -> Loader                          checkpointable: Loader.state_dict() resumes mid-epoch

The trainer iterates the Loader and never learns which policy shaped the stream. A policy
is a ``Policy`` registered in ``POLICIES``: the candidate batch size it wants from the sampler,
and a function ``(node, ctx) -> node`` that wraps the stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torchdata.nodes import BaseNode, Loader, Mapper, PinMemory, Prefetcher

from selectkit.nodes.filter import Rebatch
from selectkit.nodes.load import LoadBatch
from selectkit.nodes.sampler import IdBatchSampler
from selectkit.nodes.selective_backprop import SelectiveBackprop
from selectkit.store import Store


# Called by the trainer after every training forward with (ids, per-example losses as a float32
# CPU tensor, step).
LossListener = Callable[[torch.Tensor, torch.Tensor, int], None]


@dataclass
class GraphContext:
    """What policy nodes may use, and how they talk back to the trainer.

    Attributes:
        store: the example store.
        cfg: the run's TrainConfig.
        device: where the trainer's model lives.
        model: the trainer's ModelHandle: ``model.losses(x, y, mode)`` scores a batch with the
            live model without building a graph (the trainer owns device, AMP and mode).
        listeners: policies append callables here to receive the trainer's per-example losses.
        counters: policies add their own counters (namespaced, e.g. ``sb/selection_forwarded``);
            the trainer logs them with its own.
        closers: callables the trainer calls when training ends or fails (stop workers).
    """

    store: Store
    cfg: Any
    device: torch.device
    model: Any = None
    listeners: List[LossListener] = field(default_factory=list)
    counters: Dict[str, float] = field(default_factory=dict)
    closers: List[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        for close in self.closers:
            close()


@dataclass(frozen=True)
class Policy:
    """A selection policy: the candidate batch size it wants, and how it wraps the stream."""

    build: Callable[[BaseNode, GraphContext], BaseNode]
    candidate_batch_size: Callable[[Any], int] = lambda cfg: cfg.input.batch_size


def _traditional(node: BaseNode, ctx: GraphContext) -> BaseNode:
    """Every candidate is trained on: the stream passes through unchanged."""
    return node


def _selective_backprop(node: BaseNode, ctx: GraphContext) -> BaseNode:
    """SB / Stale-SB: score candidates, keep by CDF_R(loss) ** beta, re-batch the kept rows."""
    sb = ctx.cfg.sb
    node = SelectiveBackprop(
        node, lambda x, y: ctx.model.losses(x, y, sb.selection_mode, sb.selection_precision), len(ctx.store.train), ctx.store.fingerprint,
        beta=sb.beta, window=sb.window, floor=sb.floor, warmup_epochs=sb.warmup_epochs,
        staleness=sb.staleness, seed=ctx.cfg.seed, counters=ctx.counters)
    ctx.listeners.append(node.observe)
    return Rebatch(node, ctx.cfg.input.batch_size)


def autoassist_gate(node: BaseNode, ctx: GraphContext, batch_size: int) -> BaseNode:
    """The AutoAssist gate on a stream of id batches, re-batched to ``batch_size`` ids."""
    from selectkit.features import features_for
    from selectkit.nodes.autoassist import AssistantWorker, AutoAssistGate

    aa = ctx.cfg.autoassist
    features = features_for(ctx.store, aa.features, aa.downsample)
    labels = np.asarray(ctx.store.train.y, dtype=np.int64)
    worker = AssistantWorker(features, labels, ctx.store.num_classes, {"lr": aa.lr, "weight_decay": aa.weight_decay,
                                                "loss_ema": aa.loss_ema, "accuracy_ema": aa.accuracy_ema},
                             mode=aa.worker, queue_size=aa.queue_size, counters=ctx.counters)
    gate = AutoAssistGate(node, worker, features, labels, ctx.store.fingerprint, seed=ctx.cfg.seed,
                          shadow=aa.shadow, warmup_epochs=aa.warmup_epochs, max_lambda=aa.max_lambda,
                          counters=ctx.counters)
    ctx.listeners.append(gate.observe)
    ctx.closers.append(worker.close)
    ctx.closers.append(gate.refresh_counters)  # the final figures, once the worker has drained
    return Rebatch(gate, batch_size)


POLICIES: Dict[str, Policy] = {
    "traditional": Policy(_traditional),
    "sb": Policy(_selective_backprop, lambda cfg: cfg.sb.selection_batch_size),
}


def candidate_ids(store: Store, subset: Optional[str]) -> np.ndarray:
    """All train ids, or those of a subset: an SVP subset directory (ids.npy + subset.json,
    checked against the store's fingerprint) or a bare .npy of unique train ids.

    Raises:
        FileNotFoundError: the subset file is missing.
        ValueError: ids out of range, duplicated, empty or not integers; a subset directory
            selected from another store.
    """
    n = len(store.train)
    if subset is None:
        return np.arange(n, dtype=np.int64)
    p = Path(subset)
    if p.is_dir() and (p / "subset.json").is_file():
        from selectkit.subsets import read_subset

        ids, _ = read_subset(p, store)
    elif p.is_file():
        ids = np.load(p, allow_pickle=False)
    else:
        raise FileNotFoundError(f"input.subset={subset!r} not found: run the stage that writes it")
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"subset {p} must be a non-empty 1-D integer array of example ids, got "
                         f"{ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise ValueError(f"subset {p} holds ids {bad[:10].tolist()} outside the store's train split "
                         f"[0, {n}): it was made from another store; rerun the stage that wrote it")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"subset {p} repeats ids {uniq[counts > 1][:10].tolist()}: a subset lists each "
                         f"example once; rerun the stage that wrote it")
    return ids.astype(np.int64)


def build_input_graph(ctx: GraphContext, ids: Optional[np.ndarray] = None) -> Loader:
    """The training input graph for ``ctx.cfg`` (a TrainConfig) as a checkpointable Loader."""
    store, cfg, device = ctx.store, ctx.cfg, ctx.device
    if ids is None:
        ids = candidate_ids(store, cfg.input.subset)
    policy = POLICIES[cfg.policy]
    node: BaseNode = IdBatchSampler(ids, policy.candidate_batch_size(cfg), seed=cfg.seed,
                                    drop_last=cfg.input.drop_last)
    if cfg.autoassist.enabled:
        node = autoassist_gate(node, ctx, policy.candidate_batch_size(cfg))
    node = Mapper(node, LoadBatch(store.train, store.meta["mean"], store.meta["std"],
                                  cfg.input.augment, seed=cfg.seed))
    if cfg.input.prefetch > 0:
        node = Prefetcher(node, prefetch_factor=cfg.input.prefetch)
    if device.type == "cuda":
        node = PinMemory(node)
    node = policy.build(node, ctx)
    # A state saved at the end of an epoch must resume as "epoch over", not silently roll
    # into the next epoch: the trainer counts epochs by the iterator running out.
    return Loader(node, restart_on_stop_iteration=False)
