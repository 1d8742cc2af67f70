"""selectkit: train deep networks faster by choosing which examples deserve compute.

Entry points (imported on first use, so ``import selectkit.config`` stays light):
    SelectiveLoader   selection methods in front of your own PyTorch loop (selectkit.loop)
    Trainer           the one training loop behind the DVC stages (selectkit.train)
    METHODS, Method, register   the method registry (selectkit.methods)
    Task, task_for    the task seam (selectkit.tasks)
"""

import importlib

_EXPORTS = {"SelectiveLoader": "selectkit.loop", "Trainer": "selectkit.train", "METHODS": "selectkit.methods",
            "Method": "selectkit.methods", "register": "selectkit.methods", "Task": "selectkit.tasks",
            "task_for": "selectkit.tasks"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'selectkit' has no attribute {name!r}")
