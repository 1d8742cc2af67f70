"""Builds the training input graph from a method stack.

    IdBatchSampler(candidate ids)        sampling and batching fused: the stream unit is a batch;
                                         rank and world size pick this process's shard
      -> methods in slot "ids"           e.g. the AutoAssist gate: drops ids before they are loaded
      -> Mapper(task.loader)             read rows, augment, normalise (the task's business)
      -> Prefetcher                      a background thread loads ahead of the trainer
      -> PinMemory                       CUDA only
      -> methods in slot "batches"       e.g. Selective-Backprop; in the training thread, since
                                         they run the live model
      -> Loader                          checkpointable: resumes mid-epoch

The trainer (or a user's own loop) iterates the graph and never learns which methods shaped
the stream. It hands each trained batch's per-example losses back through ``observe``, which
feeds the shared LossTable once and then every method's listener. ``state_dict`` holds the
loader's state, the loss table and the listeners' state; counters are read from that state,
so they count what the consumer received, not what a prefetch thread ran ahead to.

Under several processes (``share=True``) each rank's graph filters its own shard, and the
graph's Exchange carries the trained losses, the loss table's writes and the methods' own
channels between ranks once per step (``sync``, called by the trainer), so every rank's table,
listeners and SB window see every rank's losses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torchdata.nodes import BaseNode, Loader, Mapper, PinMemory, Prefetcher

from selectkit.autotune import Probe, resolve_stack, tune, wants_tuning
from selectkit.dist import rank_seed
from selectkit.exchange import Exchange
from selectkit.losstable import LossTable
from selectkit.methods import MethodStack
from selectkit.methods.base import MethodContext
from selectkit.nodes.filter import COUNTERS_KEY
from selectkit.nodes.sampler import IdBatchSampler
from selectkit.validation import UsageError


def collect_counters(state: Any) -> Dict[str, float]:
    """Every node's counters found in a (nested) state dict, merged."""
    out: Dict[str, float] = {}
    stack = [state]
    while stack:
        s = stack.pop()
        if isinstance(s, dict):
            for k, v in s.items():
                if k == COUNTERS_KEY and isinstance(v, dict):
                    out.update(v)
                else:
                    stack.append(v)
        elif isinstance(s, (list, tuple)):
            stack.extend(s)
    return out


def _nodes(node: Any) -> Iterator[Any]:
    """The node and its upstream chain (through ``source``)."""
    while node is not None:
        yield node
        node = getattr(node, "source", None)


class InputGraph:
    """A built input graph: iterate it for batches, hand losses back with ``observe``.

    Attributes:
        loader: the torchdata Loader (each ``iter`` is one epoch; ``restart_on_stop_iteration``
            is off, so a state saved at an epoch's end resumes as "epoch over").
        loss_table: the shared LossTable, or None when no method needs one.
        candidate_batch_size: ids per sampled batch.
    """

    LOADER_KEY, TABLE_KEY, LISTENERS_KEY, EXCHANGE_KEY, HANDLE_KEY = ("loader", "loss_table", "listeners", "exchange",
                                                                      "model_handle")

    def __init__(self, loader: Loader, root: BaseNode, loss_table: Optional[LossTable],
                 listeners: List[Tuple[str, Any]], candidate_batch_size: int, exchange: Optional[Exchange] = None,
                 handle: Any = None):
        self.loader, self.root, self.loss_table = loader, root, loss_table
        self.listeners = listeners
        self.candidate_batch_size = candidate_batch_size
        self._started = False  # an epoch has been asked for
        self._pending: Optional[Dict[str, Any]] = None  # a loader state loaded, not iterated yet
        self.exchange = exchange if exchange is not None else Exchange(live=False)
        self._trained = self.exchange.channel("trained", self._observe_remote)
        # the ModelHandle selection scores through: its measured choices are part of the state
        self.handle = handle if hasattr(handle, "state_dict") else None
        self._step = 0

    def __iter__(self):
        """One epoch (or the rest of a restored one)."""
        self._started, self._pending = True, None
        return iter(self.loader)

    def _loader_state(self) -> Optional[Dict[str, Any]]:
        """The loader's state without side effects: asking torchdata's Loader before any epoch
        would start one (threads, workers) and make it ignore a state loaded afterwards."""
        if self._pending is not None:
            return self._pending
        return self.loader.state_dict() if self._started else None

    @property
    def listens(self) -> bool:
        """Whether any method wants the trainer's per-example losses handed back."""
        return self.loss_table is not None or bool(self.listeners)

    def observe(self, ids, losses, step: int = 0) -> None:
        """Hand back one trained batch's per-example losses (a float32 CPU tensor, one per id):
        the loss table first, then every method's listener (and, shared, the other ranks)."""
        self._observe_local(ids, losses, step)
        if self.exchange.live and self.listens:
            self._trained.send(np.stack([np.asarray(ids, dtype=np.float64), losses.numpy()], axis=1))

    def _observe_local(self, ids, losses, step: int) -> None:
        self._step = step
        if self.loss_table is not None:
            self.loss_table.observe(ids, losses, step)
        for _, listener in self.listeners:
            listener(ids, losses, step)

    def _observe_remote(self, values: np.ndarray) -> None:
        pairs = values.reshape(-1, 2)  # (id, loss) rows of the other ranks' trained batches
        self._observe_local(torch.from_numpy(pairs[:, 0].astype(np.int64)),
                            torch.from_numpy(pairs[:, 1].astype(np.float32)), self._step)

    def sync(self, header) -> np.ndarray:
        """Exchange this step's flags and losses with the other ranks (a collective; alone it
        returns ``header`` as one row): see selectkit.exchange."""
        return self.exchange.sync(header)

    def state_dict(self) -> Dict[str, Any]:
        return {self.LOADER_KEY: self._loader_state(),
                self.TABLE_KEY: None if self.loss_table is None else self.loss_table.state_dict(),
                self.LISTENERS_KEY: {name: l.state_dict() for name, l in self.listeners if hasattr(l, "state_dict")},
                **({self.EXCHANGE_KEY: self.exchange.state_dict()} if self.exchange.live else {}),
                **({self.HANDLE_KEY: self.handle.state_dict()} if self.handle is not None else {})}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a ``state_dict``; the loader's part takes effect at the next ``iter``."""
        loader_state = state[self.LOADER_KEY]
        if loader_state is None:
            if self._started:
                raise ValueError("this state was saved before the first epoch started: restore it into a "
                                 "newly built graph (or loader), which starts from the beginning anyway")
        else:
            self.loader.load_state_dict(loader_state)
            self._pending = loader_state
        if self.loss_table is not None:
            self.loss_table.load_state_dict(state[self.TABLE_KEY])
        for name, listener in self.listeners:
            if hasattr(listener, "load_state_dict"):
                listener.load_state_dict(state[self.LISTENERS_KEY][name])
        self.exchange.load_state_dict(state.get(self.EXCHANGE_KEY, {}))
        if self.handle is not None and self.HANDLE_KEY in state:
            self.handle.load_state_dict(state[self.HANDLE_KEY])

    def counters(self) -> Dict[str, float]:
        """Every method's counters, as of the batches handed out so far (namespaced keys);
        nodes report none before the first batch."""
        nodes, listeners = self.counter_parts()
        return {**nodes, **listeners}

    def counter_parts(self) -> Tuple[Dict[str, float], Dict[str, float]]:
        """(the nodes' counters, the listeners' counters). Under several processes a node
        counts its own shard, while a shared listener hears every rank's losses: the run's
        figures sum the first over ranks and take the second from any one rank."""
        listeners: Dict[str, float] = {}
        for _, listener in self.listeners:
            if hasattr(listener, "counters"):
                listeners.update(listener.counters())
        nodes = collect_counters(self._loader_state())
        if self.handle is not None:
            nodes.update(self.handle.counters())
        return nodes, listeners

    def shutdown(self) -> None:
        """Stop every node's workers (nodes that hold one implement ``shutdown``, the name later
        torchdata releases give it; torchdata 0.11's own nodes stop their threads when collected)."""
        for node in _nodes(self.root):
            stop = getattr(node, "shutdown", None)
            if callable(stop):
                stop()


def candidate_ids(task, subset: Optional[str | Path | np.ndarray], split: str = "train") -> np.ndarray:
    """The ids training draws from: the train split minus the store's holdout, or those of a
    subset (an SVP subset directory: ids.npy + subset.json, checked against the task's store
    fingerprint; a bare .npy of unique train ids; an array), or with ``split="holdout"`` the
    holdout itself (RHO-LOSS's irreducible-loss model trains there).

    Raises:
        FileNotFoundError: the subset file is missing.
        ValueError: ids out of range, duplicated, empty or not integers; a subset directory
            selected from another store; a subset that overlaps the holdout (names the ids);
            ``split="holdout"`` on a store without one.
    """
    n = len(task)
    holdout = task.holdout_ids()
    if split == "holdout":
        if subset is not None:
            raise UsageError("input.split: holdout trains on the whole holdout: set input.subset to null")
        if not len(holdout):
            raise UsageError("input.split: holdout, but the store holds nothing out: set data.holdout_fraction "
                             "(e.g. 0.1) and rerun the prepare stage")
        return holdout.astype(np.int64)
    if split != "train":
        raise UsageError(f"split={split!r} should be 'train' or 'holdout'")
    if subset is None:
        return np.setdiff1d(np.arange(n, dtype=np.int64), holdout) if len(holdout) else np.arange(n, dtype=np.int64)
    if isinstance(subset, np.ndarray):
        ids, p = subset, "subset"
    else:
        p = Path(subset)
        if p.is_dir() and (p / "subset.json").is_file():
            from selectkit.methods.svp.artifacts import read_subset

            ids, _ = read_subset(p, task)
        elif p.is_file():
            ids = np.load(p, allow_pickle=False)
        else:
            raise FileNotFoundError(f"input.subset={str(subset)!r} not found: run the stage that writes it")
    if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise UsageError(f"subset {p} must be a non-empty 1-D integer array of example ids, got "
                         f"{ids.dtype} {ids.shape}")
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise UsageError(f"subset {p} holds ids {bad[:10].tolist()} outside the store's train split "
                         f"[0, {n}): it was made from another store; rerun the stage that wrote it")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UsageError(f"subset {p} repeats ids {uniq[counts > 1][:10].tolist()}: a subset lists each "
                         f"example once; rerun the stage that wrote it")
    overlap = np.intersect1d(uniq, holdout)
    if overlap.size:
        raise UsageError(f"subset {p} holds {overlap.size} ids of the store's holdout (e.g. {overlap[:10].tolist()}), "
                         f"which training must never see: choose the subset from the train split minus the "
                         f"holdout (the choose stage does), or prepare the store without data.holdout_fraction")
    return ids.astype(np.int64)


class DeferrableLoad:
    """The loading map function, which leaves candidates unloaded in epochs a later node asked
    to decide on ids alone (``MethodContext.defer``): the item passes with ``deferred`` True."""

    def __init__(self, load, defer: List[Any]):
        self.load, self.defer = load, defer

    def __call__(self, item):
        if self.defer and any(p(int(item["epoch"])) for p in self.defer):
            return {**item, "deferred": True}
        return self.load(item)


def build_input_graph(task, stack: MethodStack, ids: np.ndarray, *, batch_size: int, seed: int = 0,
                      model=None, augment: str = "none", prefetch: int = 2, pin_memory: bool = False,
                      drop_last: bool = False, epochs: int = 1, rank: int = 0, world_size: int = 1,
                      group_by_length: int = 0, share: bool = False,
                      tuned: Optional[Dict[str, Any]] = None) -> InputGraph:
    """The input graph for a method stack, as a checkpointable InputGraph.

    Args:
        task: the Task loading examples.
        stack: (Method, config) pairs in stack order (``TrainConfig.stack``, or ``methods.stack_of``).
        ids: candidate train ids.
        batch_size: rows per training batch out of the graph.
        seed: seeds the sampler, augmentation and every method's draws.
        model: a ModelHandle for methods that score with the live model.
        augment: the task's augmentation name.
        prefetch: batches loaded ahead in a background thread (0: in the consumer's thread).
        pin_memory: pin host memory (CUDA).
        drop_last: drop the last incomplete candidate batch of each epoch.
        epochs: planned epochs (methods check warm-ups against it).
        rank, world_size: this process's shard of every epoch's permutation.
        group_by_length: batches per length-sorting window of the sampler (text; 0: off).
        share: exchange losses with the other ranks of a running process group (the trainer's
            ``sync`` each step); off, each rank's methods learn from their own shard only.
        tuned: choices already made for the stack's ``auto`` selection batch sizes (a resumed
            graph's ``tuned``); without them they are measured here with ``model``.
    """
    tuned = dict(tuned or {})
    if wants_tuning(False, 0, stack):  # e.g. SB's selection_batch_size: auto, not resolved by the caller
        if not tuned:
            if model is None:
                raise ValueError("an auto selection batch size is measured with the model: build the input graph "
                                 "with a model (selectkit.SelectiveLoader(..., model=model))")
            tuned = tune(Probe(task, model.model, model.device, np.asarray(ids), batch_size),
                         task.memory_format == torch.channels_last, 0, stack)
        stack = resolve_stack(stack, tuned)
    cand = batch_size
    for method, mcfg in stack:
        cand = method.candidate_batch_size(mcfg, cand)
    exchange = Exchange(live=share)
    table = LossTable(len(task)) if any(m.uses_loss_table for m, _ in stack) else None
    if table is not None:
        table.share(exchange)
    own = rank_seed(seed, rank, world_size)
    load = task.loader(augment, seed=own)
    # nodes after loading that decide on ids alone in some epochs may have those epochs' candidates
    # come unloaded and load only what they keep; only without a prefetch thread (a thread loads
    # ahead in parallel, where deferring would move loading into the training thread)
    defer: Optional[List[Any]] = [] if prefetch == 0 and not pin_memory else None
    ctx = MethodContext(task=task, seed=seed, batch_size=batch_size, candidate_batch_size=cand, epochs=epochs,
                        model=model, loss_table=table, exchange=exchange, rank_seed=own, load=load, defer=defer)
    node: BaseNode = IdBatchSampler(ids, cand, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                                    lengths=task.lengths() if group_by_length else None, group=group_by_length)
    for method, mcfg in stack:
        if method.slot == "ids":
            node = method.build(node, ctx, mcfg)
    node = Mapper(node, DeferrableLoad(load, defer if defer is not None else []))
    if prefetch > 0:
        node = Prefetcher(node, prefetch_factor=prefetch)
    if pin_memory:
        node = PinMemory(node)
    for method, mcfg in stack:
        if method.slot in ("batches", "weight"):
            node = method.build(node, ctx, mcfg)
    graph = InputGraph(Loader(node, restart_on_stop_iteration=False), node, table, ctx.listeners, cand, exchange,
                       handle=model)
    graph.tuned = tuned  # what was measured here (the trainer measures before and passes a resolved stack)
    return graph
