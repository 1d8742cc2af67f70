"""The process seam: which rank this is, and the one "main process" check every writer uses.

Under ``torchrun`` (or any launcher that sets ``RANK``/``WORLD_SIZE``) these report the
process's place; alone they report rank 0 of 1. Checkpoints, MLflow runs and stage outputs
are written only where ``is_main_process()`` holds (selectkit.io and selectkit.tracking ask).
"""

from __future__ import annotations

import os


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 alone)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1 alone)."""
    if _initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Whether this process writes outputs, checkpoints and tracking (rank 0)."""
    return rank() == 0
