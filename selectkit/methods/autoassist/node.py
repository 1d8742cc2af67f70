"""AutoAssist: a gate node before loading, driven by an assistant that learns off the training path.

    IdBatchSampler -> AutoAssistGate -> Rebatch -> Mapper(LoadBatch) -> Prefetcher -> [SB] -> Loader
                          ^  latest assistant (out queue, size 1, coalesced)
                          |
                   AssistantWorker (thread | process | inline)
                          ^  (ids, losses) per step (in queue, bounded; full -> dropped, counted)
                          |
                   Publisher, a loss listener (the boss publishes after each training forward)

The gate sees only example ids, their cheap features and labels: a rejected example is never
loaded, augmented or forwarded. The boss never waits for the assistant: publishing is a
``put_nowait``; when the queue is full the batch is dropped and counted. A failed or dead worker
is noticed at the next gate batch or publish (within one step) and raised as
``AssistantFailed`` with the worker's traceback.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
import traceback
from typing import Any, Dict, Optional

import numpy as np
from torchdata.nodes import BaseNode

from selectkit.losstable import as_numpy
from selectkit.methods.autoassist.functions import Assistant, gate_draw, snapshot_predict
from selectkit.nodes.filter import COUNTERS_KEY, Batch, take_rows

log = logging.getLogger(__name__)

_STOP = None  # the in-queue's shutdown sentinel


class AssistantFailed(RuntimeError):
    """The AutoAssist assistant worker raised or died."""


def _offer(q, item) -> None:
    """Put ``item`` on a size-1 queue, replacing what the reader has not taken yet (coalesce)."""
    while True:
        try:
            q.put_nowait(item)
            return
        except queue.Full:
            try:
                q.get_nowait()
            except queue.Empty:
                pass


class _Learner:
    """The assistant with its feature table: learns from published batches, returns snapshots.

    One implementation for every worker kind (thread, process, inline). Losses must be finite:
    ``Publisher`` names and removes non-finite ones before publishing.
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, kwargs: Dict[str, Any],
                 state: Optional[Dict[str, Any]]):
        self.features, self.labels = features, labels
        self.assistant = Assistant(features.shape[1], num_classes, **kwargs)
        self.update_s = 0.0
        if state is not None:
            self.assistant.load_state_dict(state["assistant"])
            self.update_s = float(state["update_s"])

    def learn(self, ids: np.ndarray, losses: np.ndarray) -> Dict[str, Any]:
        t0 = time.perf_counter()
        self.assistant.update(np.asarray(self.features[ids], dtype=np.float64), self.labels[ids], losses)
        self.update_s += time.perf_counter() - t0
        return {"assistant": self.assistant.state_dict(), "update_s": self.update_s}


def serve(in_q, out_q, features: np.ndarray, labels: np.ndarray, num_classes: int, kwargs: Dict[str, Any],
          state: Optional[Dict[str, Any]]) -> None:
    """The assistant's loop (a thread's or a process's target): learn from each published batch
    and offer the newest state to the gate. Any exception is offered as ``{"error": traceback}``
    and re-raised."""
    try:
        # one BLAS thread: the assistant's products are tiny, and idle BLAS threads spinning for
        # work would take the cores the trainer needs
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        learner = _Learner(features, labels, num_classes, kwargs, state)
        while True:
            item = in_q.get()
            if item is _STOP:
                return
            _offer(out_q, learner.learn(*item))
    except BaseException:
        _offer(out_q, {"error": traceback.format_exc()})
        raise


class AssistantWorker:
    """Runs ``serve`` off the training thread and talks to it through two bounded queues.

    Args:
        features: per-example features (rows = train ids).
        labels: train labels (the assistant's per-class bias).
        num_classes: the store's number of classes.
        kwargs: Assistant's keyword arguments (lr, weight_decay, loss_ema, accuracy_ema).
        mode: ``thread``, ``process`` (spawned; pickles features once at start) or ``inline``
            (updates synchronously inside ``publish``: deterministic, for tests and debugging).
        queue_size: capacity of the in-queue (published batches waiting for the assistant).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, kwargs: Dict[str, Any],
                 mode: str = "thread", queue_size: int = 16):
        if mode not in ("thread", "process", "inline"):
            raise ValueError(f"autoassist.worker={mode!r} must be thread, process or inline")
        if queue_size < 1:
            raise ValueError(f"autoassist.queue_size={queue_size} must be >= 1")
        Assistant(features.shape[1], num_classes, **kwargs)  # validate the arguments now, not in the worker
        self.features, self.labels, self.kwargs = features, np.asarray(labels, dtype=np.int64), kwargs
        self.num_classes = num_classes
        self.mode, self.queue_size = mode, queue_size
        self._runner: Any = None
        self._in: Any = None
        self._out: Any = None
        self._inline: Optional[_Learner] = None
        self._latest: Optional[Dict[str, Any]] = None
        self._error: Optional[str] = None
        self._closing = False

    @property
    def snapshot(self) -> Optional[Dict[str, Any]]:
        """The newest snapshot taken so far (no draining, no health check): what a checkpoint holds."""
        return self._latest

    @property
    def running(self) -> bool:
        return self._runner is not None or self._inline is not None

    def start(self, state: Optional[Dict[str, Any]] = None) -> None:
        """Start (or restart from ``state``, a snapshot the gate checkpointed)."""
        self.close()
        self._closing, self._error, self._latest = False, None, state
        if self.mode == "inline":
            self._inline = _Learner(self.features, self.labels, self.num_classes, self.kwargs, state)
            return
        if self.mode == "thread":
            self._in, self._out = queue.Queue(self.queue_size), queue.Queue(1)
            self._runner = threading.Thread(target=self._thread_main, args=(state,), daemon=True,
                                            name="selectkit-autoassist")
        else:
            ctx = mp.get_context("spawn")
            self._in, self._out = ctx.Queue(self.queue_size), ctx.Queue(1)
            self._runner = ctx.Process(target=serve, args=(self._in, self._out, np.asarray(self.features),
                                                           self.labels, self.num_classes, self.kwargs, state),
                                       daemon=True, name="selectkit-autoassist")
        self._runner.start()

    def _thread_main(self, state) -> None:
        try:
            serve(self._in, self._out, self.features, self.labels, self.num_classes, self.kwargs, state)
        except BaseException:
            self._error = traceback.format_exc()

    # ------------------------------------------------------------------ the boss's side
    def publish(self, ids: np.ndarray, losses: np.ndarray) -> bool:
        """Hand one trained batch (finite losses) to the assistant; never blocks. Returns False
        when the in-queue was full and the batch was dropped."""
        self.check()
        if self._inline is not None:
            self._latest = self._inline.learn(ids, losses)
            return True
        try:
            self._in.put_nowait((ids, losses))
        except queue.Full:
            return False
        return True

    def queued(self) -> float:
        """Batches waiting for the assistant (thread worker only; NaN where not portable)."""
        return float(self._in.qsize()) if self.mode == "thread" and self._in is not None else float("nan")

    # ------------------------------------------------------------------ the gate's side
    def latest(self) -> Optional[Dict[str, Any]]:
        """The newest assistant snapshot (None before the first update)."""
        self._drain()
        self.check()
        return self._latest

    def _drain(self) -> None:
        if self._out is not None:
            while True:
                try:
                    item = self._out.get_nowait()
                except queue.Empty:
                    break
                except (OSError, ValueError):  # queue closed under us at shutdown
                    break
                if "error" in item:
                    self._error = item["error"]
                else:
                    self._latest = item

    def check(self) -> None:
        """Raise AssistantFailed if the worker raised or died."""
        if self._error is not None:
            raise AssistantFailed(f"the AutoAssist assistant worker ({self.mode}) failed; its traceback:\n"
                                  f"{self._error}")
        r = self._runner
        if r is not None and not self._closing and not r.is_alive():
            code = getattr(r, "exitcode", None)
            # a last error it managed to send says why
            if self._out is not None:
                try:
                    item = self._out.get(timeout=0.5)
                except (queue.Empty, OSError, ValueError):
                    item = {}
                if "error" in item:
                    self._error = item["error"]
                    raise AssistantFailed(f"the AutoAssist assistant worker ({self.mode}) failed; its "
                                          f"traceback:\n{self._error}")
            raise AssistantFailed(f"the AutoAssist assistant worker ({self.mode}) died"
                                  + (f" with exit code {code}" if code is not None else "")
                                  + " without reporting an error: training cannot go on with a stale gate; "
                                  "rerun to resume from the last checkpoint")

    # ------------------------------------------------------------------ shutdown
    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker and wait for it (bounded); leaves no thread or process behind."""
        self._closing = True
        r, self._runner, self._inline = self._runner, None, None
        if r is None:
            return
        if r.is_alive():
            try:
                self._in.put(_STOP, timeout=timeout)
            except queue.Full:
                pass
            r.join(timeout)
        self._drain()  # keep the last state it offered (all published batches learnt)
        if isinstance(r, mp.process.BaseProcess):
            if r.is_alive():
                r.terminate()
                r.join(timeout)
            for q in (self._in, self._out):
                q.cancel_join_thread()
                q.close()
        self._in = self._out = None


GATE_COUNTERS = ("aa/candidates", "aa/passed", "aa/tested", "aa/would_pass", "aa/gate_s", "aa/updates", "aa/update_s")
ASSISTANT_FIGURES = ("aa/lambda", "aa/safeguard_rate", "aa/accuracy", "aa/positives", "aa/auc", "aa/threshold",
                     "aa/pass_rate")
PUBLISH_COUNTERS = ("aa/published", "aa/dropped", "aa/publish_s", "aa/nan_losses")


def assistant_figures(snap: Optional[Dict[str, Any]], max_lambda: float) -> Dict[str, float]:
    """The assistant's figures (lambda, accuracy, T_k, updates) from a worker snapshot."""
    if snap is None:
        return {}
    a = snap["assistant"]
    return {"aa/lambda": a["lam"], "aa/safeguard_rate": 1.0 - min(a["lam"], max_lambda),
            "aa/accuracy": a["accuracy"], "aa/positives": a["positives"], "aa/auc": a.get("auc", float("nan")),
            "aa/threshold": a["threshold"],
            "aa/updates": a["updates"], "aa/update_s": snap["update_s"]}


class AutoAssistGate(BaseNode[Batch]):
    """Passes each candidate id with probability ``(1 - lambda) + lambda * g`` (see
    functions.py beside this file); emits the passed ids of each candidate batch (empty ones are
    skipped), for a ``Rebatch`` and the loader downstream.

    Args:
        source: a node yielding id batches (``ids``, ``epoch``, ...), e.g. IdBatchSampler.
        worker: the AssistantWorker (started at the first reset, restarted on resume, stopped
            by ``shutdown``).
        features, labels: per-example features and labels, indexed by id.
        fingerprint: the store's fingerprint (a resumed state must match it).
        seed: seeds the gate's draws.
        shadow: decide and count as usual but pass everything (measures the assistant without
            letting it change training).
        warmup_epochs: epochs that pass everything (the reference accepts the whole first epoch).
        max_lambda: cap on the assistant's lambda (a minimum safeguard rate of ``1 - max_lambda``).

    Its counters (``aa/*`` of the gate's side, part of its state) come out through
    ``counters()``; a prefetcher's snapshot of that state matches what the trainer consumed.
    """

    SOURCE_KEY, RNG_KEY, ASSISTANT_KEY, META_KEY = "source", "rng", "assistant", "meta"

    def __init__(self, source: BaseNode[Batch], worker: AssistantWorker, features: np.ndarray, labels: np.ndarray,
                 fingerprint: str, *, seed: int = 0, shadow: bool = False, warmup_epochs: int = 0,
                 max_lambda: float = 1.0):
        super().__init__()
        self.source, self.worker = source, worker
        self.features, self.labels = features, np.asarray(labels, dtype=np.int64)
        self.fingerprint, self.shadow, self.warmup_epochs = fingerprint, shadow, warmup_epochs
        self.max_lambda, self.seed = max_lambda, seed
        self.rng = np.random.default_rng([seed, 0xAA])
        self._counters = self._zero_counters()
        self._meta = {"fingerprint": fingerprint, "rows": int(features.shape[0]), "dim": int(features.shape[1])}

    @staticmethod
    def _zero_counters() -> Dict[str, float]:
        return {**{k: 0.0 for k in GATE_COUNTERS}, **{k: float("nan") for k in ASSISTANT_FIGURES}}

    def counters(self) -> Dict[str, float]:
        """The gate's counters as of the last batch it emitted (a copy)."""
        return dict(self._counters)

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            if not self.worker.running:
                self.worker.start(None)
            return
        meta = initial_state[self.META_KEY]
        if meta != self._meta:
            raise ValueError(f"resumed AutoAssist state was made for {meta} but this run has {self._meta}: "
                             f"resume with the same store and features, or start afresh")
        self.source.reset(initial_state[self.SOURCE_KEY])
        self.rng.bit_generator.state = initial_state[self.RNG_KEY]
        self._counters = dict(initial_state[COUNTERS_KEY])
        self.worker.start(initial_state[self.ASSISTANT_KEY])

    def get_state(self) -> Dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.RNG_KEY: self.rng.bit_generator.state,
                self.ASSISTANT_KEY: self.worker.snapshot, self.META_KEY: dict(self._meta),
                COUNTERS_KEY: dict(self._counters)}

    def shutdown(self) -> None:
        """Stop the assistant worker (bounded wait; leaves no thread or process behind)."""
        self.worker.close()

    def next(self) -> Batch:
        while True:
            batch = next(self.source)
            t0 = time.perf_counter()
            out = self._gate(batch)
            self._counters["aa/gate_s"] += time.perf_counter() - t0
            if out is not None:
                return out

    def _gate(self, batch: Batch) -> Optional[Batch]:
        snap = self.worker.latest()
        ids = np.asarray(batch["ids"])
        n = len(ids)
        c = self._counters
        self._counters.update(assistant_figures(snap, self.max_lambda))  # as seen by this decision
        if snap is not None and int(batch["epoch"]) >= self.warmup_epochs:
            lam = min(float(snap["assistant"]["lam"]), self.max_lambda)
        else:
            lam = 0.0
        g = snapshot_predict(snap["assistant"], np.asarray(self.features[ids], dtype=np.float64),
                             self.labels[ids]) if lam > 0 else np.zeros(n)
        passed, tested = gate_draw(g, lam, self.rng)
        k = int(passed.sum())
        c["aa/candidates"] += n
        c["aa/tested"] += int(tested.sum())
        c["aa/would_pass"] += k
        if self.shadow:
            passed = np.ones(n, dtype=bool)
            k = n
        c["aa/passed"] += k
        c["aa/pass_rate"] = c["aa/passed"] / c["aa/candidates"]
        if k == n:
            return batch
        if k == 0:
            return None
        return take_rows(batch, np.flatnonzero(passed))


class Publisher:
    """The boss's side, a loss listener: hands each trained batch's (ids, losses) to the
    worker. Non-finite losses are named in a warning and not learnt from. Its counters are
    checkpointed by the graph in the training thread, so they match the steps trained; the
    assistant's figures it reports are those of the worker's newest snapshot (after the worker
    drained, once training ended: the final ones)."""

    def __init__(self, worker: AssistantWorker, max_lambda: float = 1.0):
        self.worker, self.max_lambda = worker, max_lambda
        self._counters = {k: 0.0 for k in PUBLISH_COUNTERS}
        self._counters["aa/queue_in"] = float("nan")

    def __call__(self, ids, losses, step: int) -> None:
        t0 = time.perf_counter()
        ids_np, values = as_numpy(ids), as_numpy(losses)  # the trainer hands float32 CPU tensors
        c = self._counters
        bad = ~np.isfinite(values)
        if bad.any():
            c["aa/nan_losses"] += int(bad.sum())
            log.warning("AutoAssist: non-finite losses at step %d for example ids %s are not learnt from",
                        step, ids_np[bad][:10].tolist())
            ids_np, values = ids_np[~bad], values[~bad]
        if len(ids_np):
            c["aa/published"] += 1
            if not self.worker.publish(np.array(ids_np, dtype=np.int64), values):
                c["aa/dropped"] += 1
            c["aa/queue_in"] = self.worker.queued()
        c["aa/publish_s"] += time.perf_counter() - t0

    def counters(self) -> Dict[str, float]:
        return {**self._counters, **assistant_figures(self.worker.snapshot, self.max_lambda)}

    def state_dict(self) -> Dict[str, Any]:
        return {COUNTERS_KEY: dict(self._counters)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._counters = dict(state[COUNTERS_KEY])
