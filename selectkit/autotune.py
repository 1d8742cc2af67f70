"""Settings that depend on the machine, chosen by measuring on it.

Before the input graph is built, ``tune`` resolves the run's other ``auto`` settings on a copy of
the model and a few real candidates (well under a second for the reference CNN):

- ``train.channels_last: auto``: a training forward + backward at the batch size in channels_last
  and in the contiguous format; channels_last unless contiguous is clearly faster.
- ``train.methods.sb.selection_batch_size: auto``: selection forwards of 1, 2 and 4 training
  batches of candidates; the smallest unless a larger one is clearly cheaper per example (larger
  batches amortise per-call costs on a GPU; on a 2-core CPU they ran slower per example).
- ``input.prefetch: auto``: a prefetch thread on CUDA, with a core to spare, or when loading a
  candidate batch costs at least 5 % of a training step; else loading in the training thread
  (a third thread on a CPU whose cores all compute preempts the compute threads, and what
  loading ahead can save is that small share).

"Clearly" is ``MARGIN``: an alternative is taken only under 0.9 of the preferred one's time. A
choice is measured once per machine, model and input shape and remembered
(``~/.cache/selectkit/autotune.json``, or ``$SELECTKIT_AUTOTUNE_CACHE``; ``off`` measures every
run): on a noisy machine two close options could otherwise flip between runs, and runs on one
machine should choose alike so that their errors repeat. Under several processes rank 0
measures and every rank takes its choices. They are kept in the checkpoint (a resumed run uses
them, not a new measurement), written to run.json (``autotune``) and logged to MLflow
(``autotune/*`` metrics at step 0).

``selection_precision: auto``: the first selection forward of a run times the batch it was given
in fp32 and in bf16 autocast (one warm-up and three timed forwards each, the median) and keeps
bf16 only where it is clearly faster. On one EPYC of this project bf16 forwards cost half; a Xeon
with AVX512-BF16 measured 2.67 against fp32's 2.16 ms, and an EPYC of family 25, model 1 42.6
against 7.6 ms (and text models about 15x slower), so no fixed default is right everywhere. The choice is a pure
function of the timings (``pick_precision``), is kept in the run's checkpoint (a resumed run keeps
it) and is reported with its timings (counters ``selection/bf16_fraction``, ``selection/fp32_ms``,
``selection/bf16_ms``; run.json's ``selection``).
"""

from __future__ import annotations

import copy
import json
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# bf16 ranks losses with about 1e-3 relative error: worth it only when clearly faster
BF16_MARGIN = 0.9


def pick_precision(timings_ms: Dict[str, float], margin: float = BF16_MARGIN) -> str:
    """``bf16`` when its forward took under ``margin`` times fp32's, else ``fp32``."""
    return pick(timings_ms, "fp32", margin)


def time_forward(forward: Callable[[], object], reps: int = 3, sync: Callable[[], None] = lambda: None) -> float:
    """Median milliseconds of ``forward()`` over ``reps`` calls after one warm-up call."""
    forward()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        forward()
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    return sorted(times)[len(times) // 2]


# ---------------------------------------------------------------- settings chosen before a run
# A setting is switched away from its preferred value only when the alternative measured
# clearly faster: runs on one machine then choose alike (the errors repeat bit for bit), and a
# near tie, where the choice hardly matters, does not flip with the machine's noise.
MARGIN = 0.9
# Loading a candidate batch in the training thread costs under this share of a training step:
# a prefetch thread can save at most that, and on a CPU whose cores all compute it costs more
# (it preempts the compute threads; README, "Overhead of the input graph").
PREFETCH_SHARE = 0.05
PREFETCH_DEPTH = 2


def pick(timings: Dict[Any, float], prefer: Any, margin: float = MARGIN) -> Any:
    """``prefer``, unless another option took under ``margin`` of its time: then the fastest."""
    best = min(timings, key=lambda k: (timings[k], k != prefer))
    return best if timings[best] < margin * timings[prefer] else prefer


def pick_batch_size(per_example: Dict[int, float], margin: float = MARGIN) -> int:
    """The smallest selection batch that no other size beats clearly (under ``margin`` of its
    time per example). Smaller batches rank fresher losses and hold less memory."""
    best = min(per_example.values())
    return min(n for n, t in per_example.items() if best >= margin * t)


def pick_prefetch(load_ms: float, step_ms: float, spare_cores: bool, cuda: bool) -> int:
    """Batches to load ahead: a prefetch thread pays on CUDA (the CPU is otherwise idle), with a
    core to spare, or when loading costs a sizeable share of a step; else 0 (load in the
    training thread, which leaves every core to the training step)."""
    if cuda or spare_cores or load_ms >= PREFETCH_SHARE * step_ms:
        return PREFETCH_DEPTH
    return 0


# Where measured choices are remembered, per machine and model (a path, or "off").
CACHE_ENV = "SELECTKIT_AUTOTUNE_CACHE"


def cache_path() -> Optional[Path]:
    """``$SELECTKIT_AUTOTUNE_CACHE`` (``off``: no cache), else ``~/.cache/selectkit/autotune.json``."""
    v = os.environ.get(CACHE_ENV)
    if v is not None:
        return None if v.strip().lower() in ("", "off", "0", "none", "false") else Path(v)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "selectkit" / "autotune.json"


def remembered(key: Dict[str, Any], measure: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``measure()`` the first time ``key`` (machine, model, shapes, setting) is seen on this
    machine; later runs take that result (``cached: true``), so runs on one machine choose alike
    even where two options measure close and the machine is noisy. Delete the file to measure
    afresh. A cache that cannot be read or written is measured around, never an error."""
    path = cache_path()
    if path is None:
        return {**measure(), "cached": False}
    k = json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str)
    with _locked(path):  # runs started together measure one at a time; the second takes the first's
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table = table if isinstance(table, dict) else {}
        if isinstance(table.get(k), dict):
            return {**table[k], "cached": True}
        out = measure()
        try:
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**table, k: out}, indent=1, sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            pass
    return {**out, "cached": False}


# Bumped when what a choice depends on changes (its rule, MARGIN, PREFETCH_SHARE): older entries
# are then measured afresh rather than kept
CACHE_VERSION = 1


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s lock file (where the platform has one; else none)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + ".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class Probe:
    """What ``tune`` measures on: the run's task, a model like the one trained (deep-copied,
    never trained), the device, some candidate ids, the training batch size, the training
    forward's autocast (AMP) and the input's augmentation (loading costs include it)."""

    task: Any
    model: torch.nn.Module
    device: torch.device
    ids: np.ndarray
    batch_size: int
    autocast: Callable[[], Any] = nullcontext
    augment: str = "none"
    amp: str = "off"  # names the autocast in the cache key

    def key(self, setting: str, **more: Any) -> Dict[str, Any]:
        """What a measurement depends on: the machine, the model's shapes, the task's inputs."""
        from selectkit.machine import cpu_name, device_name

        return {"setting": setting, **more, "cpu": cpu_name(), "device": device_name(self.device),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "processes_here": os.environ.get("LOCAL_WORLD_SIZE", "1"),
                "model": [type(self.model).__name__, [list(p.shape) for p in self.model.parameters()]],
                "task": getattr(self.task, "name", type(self.task).__name__), "batch_size": self.batch_size,
                "inputs": self.task.spec_dict() if hasattr(self.task, "spec_dict") else None,
                "amp": self.amp, "augment": self.augment}

    def batch(self, n: int) -> Dict[str, Any]:
        ids = np.sort(self.ids[:n]) if len(self.ids) >= n else np.resize(self.ids, n)
        return self.task.loader(self.augment, seed=0)({"ids": ids, "epoch": 0, "index": 0, "num_batches": 1})

    def _inputs(self, n: int, fmt: torch.memory_format):
        xb, yb = self.task.to_device(self.batch(n), self.device)
        return (xb.contiguous(memory_format=fmt) if torch.is_tensor(xb) else xb), yb

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step_ms(self, channels_last: bool) -> float:
        """A training forward + backward at the batch size, in a memory format (no optimizer
        step; the copy's weights never change)."""
        fmt = self.task.memory_format_for(channels_last)
        model = copy.deepcopy(self.model).to(self.device, memory_format=fmt).train()
        xb, yb = self._inputs(self.batch_size, fmt)

        def step():
            model.zero_grad(set_to_none=True)
            with self.autocast():
                out = self.task.forward(model, xb)
            self.task.losses(out, yb).mean().backward()
        return time_forward(step, reps=5, sync=self._sync)

    def forward_us(self, n: int, channels_last: bool, mode: str, precision: str) -> float:
        """Microseconds per example of a selection forward (no graph) on ``n`` candidates."""
        fmt = self.task.memory_format_for(channels_last)
        model = copy.deepcopy(self.model).to(self.device, memory_format=fmt).train(mode == "train")
        xb, yb = self._inputs(n, fmt)

        @torch.inference_mode()
        def forward():
            ctx = torch.autocast(self.device.type, dtype=torch.bfloat16) if precision == "bf16" else self.autocast()
            with ctx:
                self.task.losses(self.task.forward(model, xb), yb).cpu()
        try:
            return 1000 * time_forward(forward, reps=5, sync=self._sync) / n
        except torch.cuda.OutOfMemoryError:  # too large for this GPU: never the choice
            torch.cuda.empty_cache()
            return float("inf")

    def load_ms(self, n: int) -> float:
        """Loading ``n`` candidates (what the prefetch thread would do ahead)."""
        return time_forward(lambda: self.batch(n))


def selection_batch_sizes(batch_size: int, num_ids: int) -> List[int]:
    """The selection batches ``auto`` tries: 1, 2 and 4 training batches (no more than the ids)."""
    return sorted({min(k * batch_size, max(num_ids, batch_size)) for k in (1, 2, 4)})


def tune(probe: Probe, channels_last: Any, prefetch: Any,
         stack: Sequence[Tuple[Any, Any]]) -> Dict[str, Dict[str, Any]]:
    """Resolve a run's ``auto`` settings by measuring on ``probe`` (one entry per setting that was
    ``auto``: its ``choice`` and the timings it came from). Settings given explicitly are not
    measured. The torch RNG is left as it was: a run with ``auto`` trains exactly like one given
    the values it chose.

    Args:
        channels_last: ``train.channels_last`` (True, False or "auto").
        prefetch: ``input.prefetch`` (an int or "auto").
        stack: the run's (Method, config) pairs; a method whose ``selection(cfg)["batch_size"]``
            is "auto" gets a measured selection batch size.
    """
    out: Dict[str, Dict[str, Any]] = {}
    with torch.random.fork_rng(devices=[probe.device] if probe.device.type == "cuda" else []):
        cl = channels_last
        applies = probe.task.memory_format_for(True) != probe.task.memory_format_for(False)
        step = None
        if cl == "auto":
            if applies:
                def formats():
                    ms = {True: probe.step_ms(True), False: probe.step_ms(False)}
                    return {"choice": bool(pick(ms, True)), "channels_last_ms": ms[True], "contiguous_ms": ms[False]}
                out["channels_last"] = remembered(probe.key("channels_last"), formats)
                cl = out["channels_last"]["choice"]
                step = out["channels_last"]["channels_last_ms" if cl else "contiguous_ms"]
            else:  # the task has one memory format (text): nothing to measure
                cl = False
                out["channels_last"] = {"choice": False, "channels_last_ms": None, "contiguous_ms": None}
        cand = probe.batch_size
        for method, mcfg in stack:
            sel = method.selection(mcfg)
            if _auto_batch(method, mcfg):
                sizes = selection_batch_sizes(probe.batch_size, len(probe.ids))
                precision = "fp32" if sel.get("precision") == "auto" else sel.get("precision", "fp32")
                mode = sel.get("mode", "eval")

                def batches(sizes=sizes, precision=precision, mode=mode):
                    us = {n: probe.forward_us(n, bool(cl), mode, precision) for n in sizes}
                    return {"choice": pick_batch_size(us), "per_example_us": {str(k): v for k, v in us.items()},
                            "precision": precision}
                out[f"{method.name}/selection_batch_size"] = remembered(
                    probe.key("selection_batch_size", sizes=sizes, mode=mode, precision=precision,
                              channels_last=bool(cl)), batches)
            if sel is not None:
                cand = max(cand, out.get(f"{method.name}/selection_batch_size", {}).get("choice", sel["batch_size"]))
        if prefetch == "auto":
            cuda = probe.device.type == "cuda"
            spare = spare_cores()

            def loading(cand=cand, step=step):
                load = probe.load_ms(cand)
                step = step if step is not None else probe.step_ms(bool(cl))
                return {"choice": pick_prefetch(load, step, spare, cuda), "load_ms": load, "step_ms": step,
                        "candidate_batch": cand, "spare_cores": spare}
            out["prefetch"] = remembered(probe.key("prefetch", candidate_batch=cand, channels_last=bool(cl),
                                                   spare_cores=spare), loading)
    return out


def _auto_batch(method, mcfg) -> bool:
    sel = method.selection(mcfg)
    return method.tune_selection_batch is not None and sel is not None and sel.get("batch_size") == "auto"


def wants_tuning(channels_last: Any, prefetch: Any, stack: Sequence[Tuple[Any, Any]]) -> bool:
    """Whether any of these settings is ``auto`` (else ``tune`` has nothing to measure)."""
    return channels_last == "auto" or prefetch == "auto" or any(_auto_batch(m, c) for m, c in stack)


def resolve_stack(stack: Sequence[Tuple[Any, Any]], tuned: Dict[str, Dict[str, Any]]) -> List[Tuple[Any, Any]]:
    """The stack with each measured selection batch size put into its method's config."""
    out = []
    for method, mcfg in stack:
        t = tuned.get(f"{method.name}/selection_batch_size")
        if t is not None:
            mcfg = method.tune_selection_batch(mcfg, int(t["choice"]))
        elif _auto_batch(method, mcfg):
            raise ValueError(f"{method.name}'s selection batch size is auto but was not measured: "
                             f"resolve it with selectkit.autotune.tune first")
        out.append((method, mcfg))
    return out


def spare_cores() -> bool:
    """Whether this machine's cores outnumber the compute threads of every process on it."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return cores > torch.get_num_threads() * per_machine


def counters(tuned: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """The choices and their timings as flat numbers (MLflow metrics at step 0)."""
    out: Dict[str, float] = {}
    for key, t in tuned.items():
        out[f"autotune/{key}"] = float(t["choice"])
        for k, v in t.items():
            if k != "choice" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"autotune/{key}/{k}"] = float(v)
            elif isinstance(v, dict):
                out.update({f"autotune/{key}/{k}/{kk}": float(vv) for kk, vv in v.items()})
    return out
