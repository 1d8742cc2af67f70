"""The one training loop. Every method stack (Traditional, an SVP subset, Selective-Backprop,
AutoAssist, ...) is a different input graph feeding this same loop, and every modality a
different Task: the loop speaks only to the task, the graph and the model.

Read top to bottom: build model, optimizer and input graph; restore a checkpoint if asked;
then for each batch the graph yields: forward, per-example losses (handed back to the graph),
backward, optimizer step; evaluate and checkpoint on schedule.

Under ``torchrun`` (``train.processes`` > 1) the same loop runs in every process on its shard
of the candidates, with the model in DistributedDataParallel. Selection leaves the ranks with
different numbers of batches, so before each step the ranks agree (one all-gather, which also
carries their losses, see selectkit.exchange) on whether anyone still has a batch, on the
learning-rate progress, and on stopping, evaluating and checkpointing. A rank whose shard ran
out takes a zero-weight step (forward and backward of a fixed batch, loss times 0) so that
DDP's gradient all-reduce never waits, and the ranks still training scale their loss by
world size / active ranks: the step's gradient is then the mean over the active ranks' batches
and no kept example is dropped. Rank 0 evaluates and writes; a checkpoint holds every rank's
input-graph state and resumes with the same number of processes.
"""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from selectkit import dist
from selectkit.checkpoint import check_compatible, read_checkpoint, save_checkpoint
from selectkit.clock import PhaseClock
from selectkit.config import TrainConfig, to_dict
from selectkit.graph import build_input_graph, candidate_ids
from selectkit.handle import ModelHandle
from selectkit.machine import cpu_name, device_name
from selectkit.fold import check_foldable
from selectkit.models import make_model, model_signature
from selectkit.optim import lr_at, make_optimizer
from selectkit.store import Store
from selectkit.tasks import task_for
from selectkit.validation import ConfigError, UsageError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU. Under several processes on CUDA each
    takes the GPU of its local rank."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available: use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dist.launched():
        raise ConfigError(f"train.device={name!r} under {dist.world_size()} processes would put every process on "
                          f"one GPU: use auto or cuda (each process takes the GPU of its local rank)")
    if dev.type == "cuda" and dev.index is None and dist.launched():
        dev = torch.device("cuda", dist.local_rank())
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"process {dist.local_rank()} of this machine has no GPU of its own: {torch.cuda.device_count()} "
                              f"visible; run at most that many processes per machine (train.processes or "
                              f"torchrun --nproc_per_node)")
    return dev


# TrainConfig keys a checkpoint may differ in and still resume (the world size is checked on its own)
_RESUME_FREE = ("processes", "dist_timeout_s")


def _resume_key(config: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESUME_FREE}


@dataclass
class TrainResult:
    metrics: Dict[str, Any]
    curve: List[Dict[str, float]]
    model: torch.nn.Module
    checkpoint: Optional[Path] = None


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    counters: Dict[str, float] = field(default_factory=lambda: {"examples_forwarded": 0, "examples_backpropagated": 0})
    history: List[Dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``cfg.model`` on ``store`` through the input graph ``cfg`` describes.

    Args:
        store: the example store.
        cfg: the run's TrainConfig.
        tracker: an open selectkit.tracking.Tracker, or None to track nothing.
        checkpoint_path: where to checkpoint; None disables checkpoints.
        ids: candidate train ids (default: ``cfg.input.subset`` or the whole train split).
    """

    def __init__(self, store: Store, cfg: TrainConfig, tracker=None, checkpoint_path: Optional[str | Path] = None,
                 ids: Optional[np.ndarray] = None):
        self.store, self.cfg, self.tracker = store, cfg, tracker
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.device = resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if dist.launched() and cfg.processes > 1 and cfg.processes != dist.world_size():
            raise ConfigError(f"train.processes={cfg.processes} but torchrun started {dist.world_size()} processes: "
                              f"set train.processes: {dist.world_size()} (or 1: take the size from torchrun)")
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.distributed = dist.init(self.device.type, cfg.dist_timeout_s)
        self.main = dist.is_main_process()
        # channels_last: auto starts in channels_last; _apply_tuned switches if measured slower
        self.task = task_for(store, channels_last=cfg.channels_last is not False, batch_size=cfg.input.batch_size,
                             group_by_length=cfg.input.group_by_length)
        torch.manual_seed(cfg.seed)
        self.model = self.task.prepare_model(make_model(cfg.model, self.task), self.device)
        check_foldable(self.model, cfg.stack)
        self.ids = ids if ids is not None else candidate_ids(self.task, cfg.input.subset, cfg.input.split)
        if self.device.type == "cuda" and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            self.amp_dtype = None
        # settings given as auto, measured here before anything depends on them (rank 0's choice)
        self.tuned = self._tune()
        self._apply_tuned(self.tuned)
        self.optimizer = make_optimizer(self.model, cfg)
        # the training forward's module: DDP all-reduces gradients in backward (and broadcasts
        # rank 0's parameters now and its buffers each forward); selection scores the bare model
        self.net = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            # the same initial weights everywhere (above); each rank's own dropout draws from here
            torch.manual_seed(dist.rank_seed(cfg.seed, dist.rank(), dist.world_size()))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.handle = ModelHandle(self.model, self.task, self.device, self.autocast)
        self.graph = self._build_graph()
        self.model_sig = model_signature(cfg.model)
        self.p = _Progress()
        self.clock = PhaseClock(self.device)
        self._stop_reason: Optional[str] = None
        self._carved = 0.0  # selection seconds already moved out of the data phase
        self._test_cache: Optional[List[Dict[str, torch.Tensor]]] = None
        self._live_bar = False  # a live progress bar (a terminal); else one log line per evaluation
        self._bar = None
        self._done = 0.0  # fraction of training done at the last step
        self._epochs_done = 0.0  # epochs of candidates covered, fractional (budget runs stop inside one)
        self._warned_checkpoint = False
        self._budget_hit = False  # under several processes: rank 0's clock ran out (agreed)
        self._idle_steps = 0  # zero-weight steps this rank took after its shard ran out
        self._unsynced = 0  # examples this rank trained since the ranks last agreed
        self._shadow: Optional[Dict[str, Any]] = None  # the batch of those steps
        self._last_eval_step = -1  # every rank's record of the last evaluation (an agreed point)
        self._last_ranks: Optional[List[Dict[str, Any]]] = None  # the ranks' states at the last save

    # ---------------------------------------------------------------- measured settings
    def _tune(self) -> Dict[str, Dict[str, Any]]:
        """The run's ``auto`` settings measured on this machine (selectkit/autotune.py); {} when
        none is auto. Under several processes rank 0 measures and every rank takes its choices."""
        cfg = self.cfg
        from selectkit.autotune import Probe, tune, wants_tuning

        if not wants_tuning(cfg.channels_last, cfg.input.prefetch, cfg.stack):
            return {}
        tuned = None
        if self.main:
            probe = Probe(self.task, self.model, self.device, self.ids, cfg.input.batch_size,
                          autocast=self.autocast, augment=cfg.input.augment, amp=str(self.amp_dtype or "off"))
            tuned = tune(probe, cfg.channels_last, cfg.input.prefetch, cfg.stack)
        if self.distributed:
            tuned = dist.all_gather_object(tuned)[0]
        return tuned

    def _resolve(self, tuned: Dict[str, Dict[str, Any]], config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """The values a run uses for the settings ``auto`` may measure: the measured choice where
        there is one, else the config's value (``config``: a checkpoint's config, as a dict; a
        value it leaves auto and unmeasured keeps this run's)."""
        cfg = to_dict(self.cfg) if config is None else config
        here = getattr(self, "resolved", None) or {}
        cl = tuned.get("channels_last", {}).get("choice", cfg.get("channels_last"))
        pf = tuned.get("prefetch", {}).get("choice", cfg.get("input", {}).get("prefetch"))
        batches = {}
        for method, _ in self.cfg.stack:
            if method.tune_selection_batch is None:
                continue
            n = tuned.get(f"{method.name}/selection_batch_size", {}).get(
                "choice", cfg.get("methods", {}).get(method.name, {}).get("selection_batch_size"))
            batches[method.name] = n if isinstance(n, int) else here.get("selection_batch", {}).get(method.name)
        return {"channels_last": cl if isinstance(cl, bool) else here.get("channels_last", True),
                "prefetch": pf if isinstance(pf, int) and not isinstance(pf, bool) else here.get("prefetch", 2),
                "selection_batch": batches}

    def _apply_tuned(self, tuned: Dict[str, Dict[str, Any]], resolved: Optional[Dict[str, Any]] = None) -> None:
        """Take measured (or checkpointed) choices: the memory format of task and model, the
        input's prefetch depth and the methods' selection batches (``self.stack``)."""
        self.tuned = tuned
        self.resolved = r = resolved if resolved is not None else self._resolve(tuned)
        self.channels_last = bool(r["channels_last"])
        self.task.memory_format = self.task.memory_format_for(self.channels_last)
        self.model.to(memory_format=self.task.memory_format)
        self.prefetch = int(r["prefetch"])
        self.stack = [(m, m.tune_selection_batch(c, int(r["selection_batch"][m.name]))
                       if m.name in r["selection_batch"] else c) for m, c in self.cfg.stack]

    def _build_graph(self):
        cfg = self.cfg
        return build_input_graph(
            self.task, self.stack, self.ids,
            batch_size=cfg.input.batch_size, seed=cfg.seed, model=self.handle, augment=cfg.input.augment,
            prefetch=self.prefetch, pin_memory=self.device.type == "cuda", drop_last=cfg.input.drop_last,
            epochs=cfg.epochs, rank=dist.rank(), world_size=dist.world_size(),
            group_by_length=cfg.input.group_by_length, share=self.distributed)

    # ---------------------------------------------------------------- checkpoint and resume
    def _state(self, complete: bool = False) -> Dict[str, Any]:
        return {
            "model_sig": self.model_sig, "store_fingerprint": self.store.fingerprint,
            "config": to_dict(self.cfg), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "graph": self.graph.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "step": self.p.step, "epoch": self.p.epoch, "counters": dict(self.p.counters),
            "history": list(self.p.history), "seconds": dict(self.clock.seconds), "complete": complete,
            "tracking_run_id": getattr(self.tracker, "run_id", None), "epochs_done": self._epochs_done,
            "world_size": dist.world_size() if self.distributed else 1, "autotune": self.tuned,
            "resolved": self.resolved,
        }

    def _rank_state(self) -> Dict[str, Any]:
        return {"graph": self.graph.state_dict(), "idle_steps": self._idle_steps, "unsynced": self._unsynced,
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}}

    def save(self, complete: bool = False) -> None:
        """Checkpoint (rank 0 writes). Under several processes a collective: every rank hands
        rank 0 its graph state (losses not yet sent to the others included) and RNG, and waits
        until the file is written (a rank that resumes next reads it)."""
        if self.checkpoint_path is None:
            return
        if self.distributed:
            ranks = dist.gather_object(self._rank_state())
            if self.main:
                self._last_ranks = ranks
                self._write_checkpoint(complete)
            dist.barrier()
        elif self.main:
            self._write_checkpoint(complete)
        self.clock.lap("checkpoint")

    def _write_checkpoint(self, complete: bool) -> None:
        """Rank 0's write: the shared state, and every rank's own as last gathered."""
        state = self._state(complete)
        if self._last_ranks is not None:
            state["ranks"] = self._last_ranks
        save_checkpoint(self.checkpoint_path, state)

    def _resumable(self, ckpt: Dict[str, Any]) -> bool:
        return (_resume_key(ckpt["config"]) == _resume_key(to_dict(self.cfg)) and not ckpt["complete"]
                and ckpt["store_fingerprint"] == self.store.fingerprint)

    def _check_world(self, ckpt: Dict[str, Any], path) -> None:
        """A checkpoint resumes with the number of processes that wrote it (each rank's sampler,
        selection and buffers belong to its shard)."""
        saved, now = int(ckpt.get("world_size", 1)), dist.world_size() if self.distributed else 1
        if saved != now:
            raise UsageError(f"checkpoint {path} was written by {saved} training process(es) but this run has {now}: "
                             f"resume with {saved} (train.processes: {saved}, or torchrun --nproc_per_node {saved}), "
                             f"or pass --resume never to train afresh with {now}")

    def resume_source(self, resume: Optional[str | Path]) -> Optional[Dict[str, Any]]:
        """The checkpoint ``fit(resume=resume)`` will continue from, read now (None when it will
        start afresh), so the caller can reopen that run's MLflow run (its ``tracking_run_id``)
        before training. Raises what ``fit`` would: a bad explicit checkpoint fails here, first."""
        if resume is None:
            return None
        if resume == "auto":
            ckpt = self._auto_checkpoint()
            if ckpt is None or not self._resumable(ckpt):
                return None
            self._check_world(ckpt, self.checkpoint_path)
            return ckpt
        ckpt = read_checkpoint(resume)
        check_compatible(ckpt, resume, self.model_sig, self.store.fingerprint)
        self._check_world(ckpt, resume)
        return ckpt

    def _auto_checkpoint(self) -> Optional[Dict[str, Any]]:
        """The checkpoint at ``checkpoint_path`` for automatic resume; one that cannot be read
        (cut short, another format) is not the user's to fix: warn, train afresh, overwrite it."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return None
        try:
            return read_checkpoint(self.checkpoint_path)
        except UsageError as e:
            if not self._warned_checkpoint:
                log.warning("training afresh, not resuming: %s (it will be overwritten)", e)
                self._warned_checkpoint = True
            return None

    def resume(self, path: str | Path, strict: bool = True) -> bool:
        """Restore a checkpoint. With ``strict=False`` (automatic resume), a checkpoint of another
        config, or a finished one, is ignored (returns False) instead of raising."""
        ckpt = read_checkpoint(path) if strict else self._auto_checkpoint()
        if ckpt is None:
            return False
        if not strict and not self._resumable(ckpt):
            log.info("ignoring checkpoint %s: it belongs to another config or store, or is finished", path)
            return False
        check_compatible(ckpt, path, self.model_sig, self.store.fingerprint)
        self._check_world(ckpt, path)
        # keep the settings the run started with (a checkpoint from before auto: its config's)
        resolved = ckpt.get("resolved") or self._resolve(ckpt.get("autotune", {}), ckpt["config"])
        if resolved != self.resolved:
            self._apply_tuned(ckpt.get("autotune", {}), resolved)
            self.graph.shutdown()
            self.graph = self._build_graph()
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if "ranks" in ckpt:  # written by several processes: this rank's own part
            mine = ckpt["ranks"][dist.rank()]
            self.graph.load_state_dict(mine["graph"])
            self._idle_steps, self._unsynced = int(mine["idle_steps"]), int(mine["unsynced"])
            torch.set_rng_state(mine["rng"]["torch"])
            if mine["rng"]["cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["rng"]["cuda"], self.device)
        else:
            self.graph.load_state_dict(ckpt["graph"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            if ckpt["rng"]["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        self.p = _Progress(ckpt["step"], ckpt["epoch"], dict(ckpt["counters"]), list(ckpt["history"]))
        self._last_eval_step = self.p.history[-1]["step"] if self.p.history else -1
        self._epochs_done = ckpt.get("epochs_done", float(ckpt["epoch"]))
        self.clock.seconds.update(ckpt["seconds"])
        log.info("resumed from %s at step %d (epoch %d)", path, self.p.step, self.p.epoch)
        return True

    def request_stop(self, reason: str) -> None:
        """Stop after the current step, checkpoint, and raise KeyboardInterrupt (signals call this)."""
        self._stop_reason = reason

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM finish the current step and checkpoint; a second signal aborts at once."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_reason is not None:
                raise KeyboardInterrupt(signal.Signals(signum).name)
            self.request_stop(signal.Signals(signum).name)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # ---------------------------------------------------------------- evaluation
    def evaluate(self) -> Dict[str, float]:
        """Test error and mean loss over the whole test split."""
        was_training = self.model.training
        self.model.eval()
        if self._test_cache is None:  # loaded once; the test split is read-only
            self._test_cache = self.task.eval_batches(self.cfg.eval_batch_size)
        try:
            return self.task.evaluate(self.model, self._test_cache, self.device, self.autocast)
        finally:
            self.model.train(was_training)

    def autocast(self):
        """The training forward's autocast context (AMP on CUDA when ``amp``; else a no-op)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _eval_point(self) -> None:
        if self._last_eval_step == self.p.step:
            return  # already evaluated at this step (e.g. an epoch end just before a resume)
        self._last_eval_step = self.p.step
        if self.distributed:  # an agreed point: rank 0 gets every rank's counters, then evaluates
            per_rank = dist.gather_object(self.graph.counter_parts())
            if not self.main:
                self.clock.lap("sync")
                return
            counters = run_counters(per_rank)
        else:
            counters = self.graph.counters()  # reads the loader's state: charged to evaluation, not training
        r = self.evaluate()
        self.clock.lap("evaluation")
        row = {"step": self.p.step, "epoch": self.p.epoch, "wall_s": round(self.clock.train_s, 4),
               "examples_seen": self.p.counters["examples_backpropagated"], **r,
               "examples_forwarded": self.p.counters["examples_forwarded"], **counters}
        self.p.history.append(row)
        if self._live_bar and not self._bar.disable:
            self._bar.set_postfix_str(f"test error {100 * r['test_error']:.2f} %", refresh=False)
        elif not self._live_bar:  # output is not a terminal (a log, CI): one line per evaluation
            log.info(self._progress_line(row))
        if self.tracker is not None:
            t = self.tracker
            t.log({"test/error": r["test_error"], "test/loss": r["test_loss"],
                   "time/train_s": self.clock.train_s, **{f"time/{k}_s": v for k, v in self.clock.seconds.items()},
                   **{f"count/{k}": v for k, v in self.p.counters.items()},
                   **{f"count/{k}": v for k, v in counters.items()}}, step=self.p.step)
            t.log({"test/error_by_examples": r["test_error"]}, step=int(row["examples_seen"]))
            t.log({"test/error_by_train_ms": r["test_error"]}, step=int(self.clock.train_s * 1000))
            t.flush()

    def _progress_line(self, row: Dict[str, float]) -> str:
        """``train sb seed 0: epoch 3/10, step 705: test error 9.81 %, 2480 examples/s, about 41 s left``."""
        cfg, done = self.cfg, self._done
        rate = row["examples_seen"] / row["wall_s"] if row["wall_s"] > 0 else 0.0
        where = (f"{100 * min(done, 1.0):.0f} % of a {cfg.budget_s:g} s budget" if cfg.budget_s is not None
                 else f"epoch {min(self.p.epoch + 1, cfg.epochs)}/{cfg.epochs}")
        text = (f"train {cfg.label} seed {cfg.seed}: {where}, step {self.p.step}: test error "
                f"{100 * row['test_error']:.2f} %, {rate:.0f} examples/s")
        if 0 < done < 1:  # training time only: evaluations and checkpoints come on top
            text += f", about {row['wall_s'] * (1 - done) / done:.0f} s of training left"
        return text

    # ---------------------------------------------------------------- the loop
    def _progress(self, batch: Dict[str, Any]) -> float:
        self._epochs_done = batch["epoch"] + (batch["index"] + 1) / batch["num_batches"]
        if self.cfg.budget_s is not None:
            self._done = self.clock.train_s / self.cfg.budget_s
        else:
            self._done = (batch["epoch"] + (batch["index"] + 1) / batch["num_batches"]) / self.cfg.epochs
        return self._done

    def _step(self, batch: Dict[str, Any], done: Optional[float] = None, scale: float = 1.0) -> None:
        """One training step on ``batch``; ``done`` (the agreed progress under several
        processes, else this batch's) sets the learning rate, ``scale`` multiplies the loss."""
        x, y = self.task.to_device(batch, self.device)
        with self.autocast():
            out = self.task.forward(self.net, x)
        losses = self.task.losses(out, y)
        weight = batch.get("weight")  # a "weight"-slot method's per-example loss weights
        if weight is not None:  # numpy from a node before loading, or a tensor
            weight = torch.as_tensor(weight, dtype=losses.dtype).to(self.device, non_blocking=True)
        loss = losses.mean() if weight is None else (losses * weight).mean()
        if scale != 1.0:
            loss = loss * scale
        self.clock.lap("forward")
        check_now = self.device.type == "cpu" or self.p.step % max(self.cfg.log_every, 1) == 0
        if check_now and not torch.isfinite(loss):  # on CUDA only at log steps: this is a sync point
            bad = batch["ids"][~torch.isfinite(losses.detach().cpu())][:10].tolist()
            raise FloatingPointError(
                f"non-finite training loss at step {self.p.step} (epoch {self.p.epoch}) on example ids "
                f"{bad}: lower train.lr, or check those examples in the store")
        if self.graph.listens:  # one device-to-host copy, shared by every listener
            self.graph.observe(batch["ids"], losses.detach().float().cpu(), self.p.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.clock.lap("backward")
        lr = lr_at(self._progress(batch) if done is None else done, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.clock.lap("optimizer")
        n = len(y)
        self._unsynced += n
        self.p.step += 1
        self.p.counters["examples_forwarded"] += n
        self.p.counters["examples_backpropagated"] += n
        if self.tracker is not None and self.cfg.log_every and self.p.step % self.cfg.log_every == 0:
            self.tracker.log({"train/loss": loss.item() / scale, "train/lr": lr}, step=self.p.step)

    def _idle_step(self, done: float) -> None:
        """A step with nothing to train (this rank's shard ran out before the others'): forward
        and backward of a fixed batch with the loss times 0, so DDP's all-reduce gets this rank's
        (zero) gradients, then the same optimizer step as every rank. Eval mode: BatchNorm's
        running statistics do not see the repeated batch."""
        if self._shadow is None:
            self._shadow = self.task.loader("none", seed=self.cfg.seed)(
                {"ids": self.ids[:1], "epoch": 0, "index": 0, "num_batches": 1})
        x, y = self.task.to_device(self._shadow, self.device)
        self.model.eval()
        try:
            with self.autocast():
                out = self.task.forward(self.net, x)
            loss = self.task.losses(out.float().nan_to_num(0.0, 0.0, 0.0), y).sum() * 0.0  # never NaN
        finally:
            self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(done, self.cfg)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.p.step += 1
        self._idle_steps += 1
        self.clock.lap("idle")

    def _count_others(self, flags: np.ndarray) -> None:
        """The other ranks' examples trained since the last agreement (column 0 of ``flags``)
        join this run's counts, which are then the whole run's on every rank."""
        n = int(flags[:, 0].sum()) - self._unsynced
        self._unsynced = 0
        if n:
            self.p.counters["examples_forwarded"] += n
            self.p.counters["examples_backpropagated"] += n

    def _carve_selection_time(self) -> None:
        """Selection forwards run inside ``next(loader)``, through the ModelHandle: move their
        seconds out of the data phase into ``selection``."""
        delta = self.handle.seconds - self._carved
        if delta:
            self.clock.move(delta, "data", "selection")
            self._carved = self.handle.seconds

    def _eval_due_by_time(self) -> bool:
        if not self.cfg.eval_every_s:
            return False
        last = self.p.history[-1]["wall_s"] if self.p.history else 0.0
        return self.clock.train_s - last >= self.cfg.eval_every_s

    def _out_of_budget(self) -> bool:
        return self.cfg.budget_s is not None and self.clock.train_s >= self.cfg.budget_s

    def fit(self, resume: Optional[str | Path] = None, complete: bool = True) -> TrainResult:
        """Train to the end of ``cfg.epochs`` (or ``cfg.budget_s``).

        Args:
            resume: ``"auto"`` resumes from ``checkpoint_path`` when it holds an unfinished run
                of the same config; a path resumes from that checkpoint or fails.
            complete: mark the final checkpoint finished. A stage passes False and calls
                ``mark_complete()`` once its outputs are written: if writing them fails, the
                rerun resumes at the end of training and only writes them (no retraining).

        Raises:
            KeyboardInterrupt: after SIGINT/SIGTERM, once the last step is checkpointed.
            FloatingPointError: a non-finite loss (names the example ids).
        """
        if resume == "auto":
            if self.checkpoint_path is not None and self.checkpoint_path.is_file():
                self.resume(self.checkpoint_path, strict=False)
        elif resume is not None:
            self.resume(resume, strict=True)
        cfg = self.cfg
        if self.tracker is not None and self.main and self.tuned:  # what auto chose, and why
            from selectkit.autotune import counters as tuned_counters

            self.tracker.log(tuned_counters(self.tuned), step=0)
        self.net.train()
        self.clock.restart()
        bar = self._bar = tqdm(total=None, desc=f"train {cfg.label}", disable=None if self.main else True,
                               leave=False, initial=self.p.step)
        self._live_bar = not bar.disable
        try:
            if self.distributed:
                self._loop_lockstep(bar)
            else:
                self._loop(bar)
        finally:
            bar.close()
            self.graph.shutdown()  # stop method workers (e.g. the AutoAssist assistant), also on errors
        self._done = 1.0
        self._eval_point()
        self.save(complete=complete)
        ranks = dist.gather_object(self._rank_summary()) if self.distributed else None
        if not self.main:  # rank 0 reports the run; the others have nothing of their own to say
            return TrainResult({}, [], self.model, self.checkpoint_path)
        summary = self._summary()
        if ranks is not None:
            summary["world_size"] = len(ranks)
            summary["ranks"] = ranks
            summary["counters"] = run_counters([r.pop("counter_parts") for r in ranks])
        return TrainResult(summary, list(self.p.history), self.model, self.checkpoint_path)

    def _rank_summary(self) -> Dict[str, Any]:
        """What one rank did: its steps with nothing to train, its methods' counters."""
        nodes, listeners = parts = self.graph.counter_parts()
        return {"rank": dist.rank(), "idle_steps": self._idle_steps, "counters": {**nodes, **listeners},
                "counter_parts": parts, "seconds": {k: round(v, 3) for k, v in self.clock.seconds.items()}}

    def mark_complete(self) -> None:
        """Mark the checkpoint finished (after a ``fit(complete=False)``'s outputs are written):
        an automatic resume then ignores it and a rerun trains afresh. Under several processes
        rank 0 alone rewrites the last checkpoint (the ranks' states from the end of ``fit``),
        so the others need not wait while it writes the outputs."""
        if not self.distributed:
            self.save(complete=True)
        elif self.main and self.checkpoint_path is not None and self._last_ranks is not None:
            self._write_checkpoint(complete=True)

    def _after_step(self, eval_due: bool, stop: bool) -> None:
        """What follows every step: evaluate on schedule (or when ``eval_due``), checkpoint and
        stop when ``stop`` (a signal), checkpoint every ``checkpoint_every`` steps."""
        cfg = self.cfg
        if (cfg.eval_every and self.p.step % cfg.eval_every == 0) or eval_due:
            self._eval_point()
        if stop:
            self.save()
            raise KeyboardInterrupt(f"{self._stop_reason} at step {self.p.step}; checkpoint "
                                    f"saved to {self.checkpoint_path}; rerun to resume")
        if cfg.checkpoint_every and self.p.step % cfg.checkpoint_every == 0:
            self.save()
        self.clock.lap("other")

    def _loop(self, bar) -> None:
        cfg = self.cfg
        with self._signals():
            while self.p.epoch < cfg.epochs and not self._out_of_budget():
                it = iter(self.graph)
                while True:
                    try:
                        batch = next(it)
                    except StopIteration:
                        break
                    self.clock.lap("data")
                    self._carve_selection_time()
                    self._step(batch)
                    bar.update(1)
                    self._after_step(self._eval_due_by_time(), self._stop_reason is not None)
                    if self._out_of_budget():
                        break
                if self._out_of_budget():
                    break
                if not cfg.eval_every and not cfg.eval_every_s:
                    self._eval_point()
                self.save()  # epoch end: the loader sits at the end of epoch self.p.epoch
                self.p.epoch += 1

    def _loop_lockstep(self, bar) -> None:
        """``_loop`` for several processes: the same steps, with the ranks agreeing before each
        (see the module's docstring). Decisions that depend on a clock (evaluate by time, the
        budget) are rank 0's; a signal on any rank stops every rank at the same step."""
        cfg = self.cfg
        world = dist.world_size()
        with self._signals():
            while self.p.epoch < cfg.epochs and not self._budget_hit:
                it = iter(self.graph)
                while True:
                    try:
                        batch = next(it)
                    except StopIteration:
                        batch = None
                    self.clock.lap("data")
                    self._carve_selection_time()
                    covered = self._epochs_done
                    done = self._progress(batch) if batch is not None else self._done
                    if cfg.budget_s is not None:  # progress is time: rank 0's clock (below) rules
                        done = self.clock.train_s / cfg.budget_s
                    flags = self.graph.sync([self._unsynced, batch is not None, done, self._stop_reason is not None,
                                             self.main and self._eval_due_by_time(),
                                             self.main and self._out_of_budget()])
                    self._count_others(flags)
                    self.clock.lap("sync")
                    active = int(flags[:, 1].sum())
                    if active == 0:
                        break  # every shard is done: the epoch is over on every rank
                    if flags[0, 5]:
                        self._budget_hit = True
                        self._epochs_done = covered  # the batch fetched above is not trained
                        break
                    # the learning rate follows the furthest rank (by epochs), or rank 0's clock
                    self._done = float(flags[0, 2] if cfg.budget_s is not None else flags[:, 2].max())
                    if batch is not None:
                        self._step(batch, done=self._done, scale=world / active)
                    else:
                        self._idle_step(self._done)
                    bar.update(1)
                    if flags[:, 3].any():
                        self._stop_reason = self._stop_reason or "a signal on another rank"
                    self._after_step(bool(flags[0, 4]), bool(flags[:, 3].any()))
                if self._budget_hit:
                    break
                if not cfg.eval_every and not cfg.eval_every_s:
                    self._eval_point()
                self.save()  # epoch end: every rank's loader sits at the end of epoch self.p.epoch
                self.p.epoch += 1

    def _full_epochs_examples(self) -> float:
        """The examples Traditional training on the whole train split (less the store's holdout;
        or the whole holdout, for a run on it) would backpropagate in the epochs (or the fraction
        of them) this run covered."""
        epochs = self.cfg.epochs if self.cfg.budget_s is None else min(self.cfg.epochs, self._epochs_done)
        held = len(self.task.holdout_ids())
        pool = held if self.cfg.input.split == "holdout" else len(self.task) - held
        return pool * epochs

    def _summary(self) -> Dict[str, Any]:
        last = self.p.history[-1]
        selection = next((s for m, c in self.stack if (s := m.selection(c)) is not None),
                         {"batch_size": self.cfg.input.batch_size, "mode": "eval", "precision": "fp32"})
        if selection.get("precision") == "auto":  # what the measurement chose (modelled costs use it)
            choice = self.handle.choice or {"precision": "fp32"}  # none made: no selection forward ran
            selection = {**selection, "precision": choice["precision"], "auto": dict(choice)}
        if "fold" in selection:  # what ran: folded or live (modelled costs use it)
            fold = self.handle.fold  # None: no selection forward ran
            folded = bool(fold["folded"]) if fold is not None else (selection["fold"] is True
                                                                    and selection["mode"] == "eval")
            selection = {**selection, "fold": folded, **({"fold_auto": dict(fold)} if fold is not None else {})}
        return {
            "label": self.cfg.label, "methods": to_dict(self.cfg)["methods"], "seed": self.cfg.seed,
            "final_test_error": last["test_error"], "final_test_loss": last["test_loss"],
            "train_s": round(self.clock.train_s, 3), "steps": self.p.step, "epochs": self.p.epoch,
            "examples_forwarded": self.p.counters["examples_forwarded"],
            "examples_backpropagated": self.p.counters["examples_backpropagated"],
            "counters": self.graph.counters(),
            "seconds": {k: round(v, 3) for k, v in self.clock.seconds.items()},
            "kept_fraction": self.p.counters["examples_backpropagated"] / max(self._full_epochs_examples(), 1),
            "store_fingerprint": self.store.fingerprint, "device": str(self.device),
            "device_name": device_name(self.device), "cpu": cpu_name(),
            "torch_threads": torch.get_num_threads(),
            # what the report needs to measure this run's per-example costs (modelled speedups)
            "model": self.model_sig, "task": self.task.name, "spec": self.task.spec_dict(),
            "num_classes": self.task.num_classes, "batch_size": self.cfg.input.batch_size,
            "channels_last": self.channels_last, "selection": selection, "prefetch": self.prefetch,
            "autotune": self.tuned,
            # seconds of cached upstream stages this run consumed (SVP proxies, an irreducible-loss
            # model): the report adds them end to end
            "upstream_s": round(self._upstream_s(), 3),
        }

    def _upstream_s(self) -> float:
        from selectkit.methods.svp.artifacts import subset_upstream_s

        subset = self.cfg.input.subset
        return (subset_upstream_s(subset) if subset else 0.0) + sum(m.upstream_s(c) for m, c in self.cfg.stack)


# Counters that are a rate, a model's figure or seconds, not a count: averaged over ranks; every
# other counter is a count, summed (a method naming its counters this way needs nothing more).
_AVERAGED = ("_fraction", "_rate", "/accuracy", "/auc", "/lambda", "/threshold", "_overlap", "_s", "_ms", "/updates",
             "/tested", "/pruning_epochs", "_in")


def merge_counters(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
    """The run's counters from every rank's: counts summed, rates and seconds averaged, and a
    ``<ns>/kept_fraction`` recomputed from the summed ``<ns>/kept`` and ``<ns>/candidates``."""
    out: Dict[str, float] = {}
    for k in sorted({k for c in per_rank for k in c}):
        vals = [float(c[k]) for c in per_rank if k in c]
        out[k] = float(np.mean(vals)) if k.endswith(_AVERAGED) else float(np.sum(vals))
    for k in [k for k in out if k.endswith("/kept_fraction")]:
        ns = k[: -len("/kept_fraction")]
        if out.get(f"{ns}/candidates"):
            out[k] = out[f"{ns}/kept"] / out[f"{ns}/candidates"]
    return out


def run_counters(parts: List[Any]) -> Dict[str, float]:
    """The run's counters from every rank's ``InputGraph.counter_parts()``: the nodes' merged
    over ranks, the shared listeners' (which heard every rank) from rank 0."""
    return {**merge_counters([nodes for nodes, _ in parts]), **parts[0][1]}


HEADLINE = ("final_test_error", "train_s", "examples_backpropagated", "kept_fraction", "epochs")


def headline(summary: Dict[str, Any]) -> Dict[str, float]:
    """The handful of flat figures a user compares across runs (a stage's DVC ``metrics.json``):
    final test error, training wall-clock, examples backpropagated, the fraction of a full-data
    run's backpropagation that was kept, epochs. Everything else stays in ``run.json``."""
    return {k: summary[k] for k in HEADLINE}
