"""selectkit: train deep networks faster by choosing which examples deserve compute.

Entry points:
    SelectiveLoader   selection methods in front of your own PyTorch loop (selectkit.loop)
    Trainer           the one training loop behind the DVC stages (selectkit.train)
    METHODS           the method registry (selectkit.methods); ``register`` adds yours
    Task, task_for    the task seam (selectkit.tasks)
"""

from selectkit.loop import SelectiveLoader
from selectkit.methods import METHODS, Method, register
from selectkit.tasks import Task, task_for
from selectkit.train import Trainer

__all__ = ["METHODS", "Method", "SelectiveLoader", "Task", "Trainer", "register", "task_for"]
