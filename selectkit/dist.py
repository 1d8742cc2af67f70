"""The process seam: which rank this is, the one "main process" check every writer uses, and
the few collectives selectkit needs under ``torchrun``.

Under ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``) these report the
process's place; alone they report rank 0 of 1. Checkpoints, MLflow runs and stage outputs
are written only where ``is_main_process()`` holds (selectkit.io and selectkit.tracking ask).

``init(device)`` starts PyTorch's process group (gloo on the CPU, nccl on CUDA) when the
launcher asked for more than one process; selectkit's own small exchanges (loss statistics,
step agreement, checkpoint state, scores) always run over gloo on CPU tensors, on a gloo
group beside nccl's when training on CUDA. Nothing here is a distribution layer of its own:
gradients are DistributedDataParallel's business.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any, List, Optional

import numpy as np

_cpu_group: Any = None  # the gloo group for CPU-side exchanges (None: the default group)


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 alone)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's rank on its machine (picks its CUDA device)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1 alone)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes outputs, checkpoints and tracking (rank 0)."""
    return rank() == 0


def rank_seed(seed: int, rank: int, world_size: int) -> int:
    """The seed of rank ``rank``'s own random draws (augmentation, keep/skip draws, dropout):
    ``seed`` itself alone, so one process is unchanged; under several processes a distinct
    seed per rank, so the ranks' draws are independent rather than the same draws repeated."""
    if world_size <= 1:
        return seed
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1)[0])


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group of more than one process is running (collectives are live)."""
    return _initialized() and world_size() > 1


def init(device_type: str = "cpu", timeout_s: float = 600.0) -> bool:
    """Start the process group when launched as one of several processes (idempotent).

    Args:
        device_type: ``cpu`` (gloo) or ``cuda`` (nccl, plus a gloo group for CPU exchanges).
        timeout_s: how long a collective waits for a missing rank before failing.

    Returns:
        Whether a group of more than one process is running.
    """
    global _cpu_group
    if not launched():
        return False
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        _cpu_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s)) if backend == "nccl" else None
    return True


def shutdown() -> None:
    """Tear the process group down (a stage's last act; safe when none runs)."""
    global _cpu_group
    if "torch.distributed" in sys.modules and _initialized():  # never import torch just to check
        import torch.distributed as dist

        dist.destroy_process_group()
    _cpu_group = None


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier(group=_cpu_group)


def all_gather_array(a: np.ndarray, capacity: int = 0) -> List[np.ndarray]:
    """Every rank's 1-D float64 array (lengths may differ), in rank order. Alone: ``[a]``.

    One all-gather of ``capacity + 1`` values per rank (the length, then the array padded) when
    every array fits, which is the common case; a second one for what did not fit. Every rank
    must pass the same ``capacity`` (a collective's latency, about 1 ms over gloo on a small
    VM, is what one step pays here, so one round matters more than the bytes).
    """
    a = np.ascontiguousarray(a, dtype=np.float64).ravel()
    if not active():
        return [a]
    import torch
    import torch.distributed as dist

    w = world_size()
    buf = torch.zeros(capacity + 1, dtype=torch.float64)
    buf[0] = len(a)
    head = min(len(a), capacity)
    buf[1:1 + head] = torch.from_numpy(a[:head])
    out = [torch.empty_like(buf) for _ in range(w)]
    dist.all_gather(out, buf, group=_cpu_group)
    lengths = [int(o[0]) for o in out]
    over = max(lengths) - capacity
    if over <= 0:
        return [o[1:1 + n].numpy() for o, n in zip(out, lengths)]
    rest = torch.zeros(over, dtype=torch.float64)
    if len(a) > capacity:
        rest[:len(a) - capacity] = torch.from_numpy(a[capacity:])
    out2 = [torch.empty_like(rest) for _ in range(w)]
    dist.all_gather(out2, rest, group=_cpu_group)
    return [torch.cat([o[1:], o2])[:n].numpy() for o, o2, n in zip(out, out2, lengths)]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's picklable ``obj``, in rank order (alone: ``[obj]``)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=_cpu_group)
    return out


def gather_object(obj: Any) -> Optional[List[Any]]:
    """Every rank's ``obj`` on rank 0, in rank order (None elsewhere; alone: ``[obj]``)."""
    if not active():
        return [obj]
    import torch.distributed as dist

    out: Optional[List[Any]] = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_cpu_group)
    return out
