"""Selection methods in front of your own PyTorch training loop.

``SelectiveLoader`` wraps a map-style dataset whose items are ``(index, input, label)`` and
yields batches that the chosen methods let through; your loop hands the per-example losses
back with ``observe``. It is the same input graph, nodes and loss table the trainer uses::

    loader = SelectiveLoader(dataset, batch_size=64, model=model, methods={"sb": {"beta": 1.0}})
    for epoch in range(epochs):
        for batch in loader:                       # {"ids", "x", "y", "epoch", ...}
            losses = F.cross_entropy(model(batch["x"]), batch["y"], reduction="none")
            loader.observe(batch["ids"], losses)   # feeds SB's loss table, the AutoAssist assistant
            optimizer.zero_grad(); losses.mean().backward(); optimizer.step()
    loader.close()
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from selectkit.autotune import wants_tuning
from selectkit.graph import build_input_graph, candidate_ids
from selectkit.fold import check_foldable
from selectkit.handle import ModelHandle
from selectkit.methods import parse_stack, stack_of
from selectkit.tasks.dataset import DatasetTask


class SelectiveLoader:
    """Batches of a map-style dataset, shaped by a stack of selection methods.

    Args:
        dataset: ``dataset[i]`` returns ``(i, input, label)`` for ``i`` in ``range(len(dataset))``.
        batch_size: rows per batch handed to your loop.
        methods: the method stack, as in params (``{"sb": {"beta": 2.0}}``, ``{"autoassist": {...}}``);
            ``{}`` passes every example (Traditional).
        model: your model; needed by methods that score candidates (Selective-Backprop).
        subset: ids to train on (e.g. an SVP subset: an int array, an ``ids.npy`` or a subset folder).
        labels, num_classes, features, loss_fn, collate: see ``DatasetTask`` (the AutoAssist
            gate needs ``labels`` and ``features``).
        seed: seeds the order, and every method's draws.
        prefetch: batches loaded ahead in a background thread (0: in your loop's thread).
        epochs: the epochs you plan to run (methods with a warm-up or an annealing phase, such as
            InfoBatch's ``delta``, count against it).
        device: where your model lives (default: its parameters' device).
        rank, world_size: this process's shard (default: one process). In your own DDP loop each
            rank's methods then learn from its own shard's losses, and agreeing on the number of
            steps is your loop's business; ``selectkit.train.Trainer`` does both (README,
            "More than one process").

    Raises:
        ConfigError: an unknown method, a key of another method, two methods in one slot.
        ValueError: a method that needs what was not given (a model, labels, features).
    """

    def __init__(self, dataset, *, batch_size: int, methods: Optional[Dict[str, Any]] = None, model=None,
                 subset=None, labels=None, num_classes: Optional[int] = None, features=None,
                 loss_fn: Optional[Callable] = None, collate: Optional[Callable] = None, seed: int = 0,
                 prefetch: int = 2, device=None, rank: int = 0, world_size: int = 1, epochs: int = 1):
        self.task = DatasetTask(dataset, labels=labels, num_classes=num_classes, features=features, loss_fn=loss_fn,
                                collate=collate)
        stack = stack_of(parse_stack(methods or {}, "methods"))
        handle = None
        if model is not None:
            dev = torch.device(device) if device is not None else next(model.parameters()).device
            handle = ModelHandle(model, self.task, dev)
            check_foldable(model, stack)
        elif any(m.name == "sb" for m, _ in stack):
            raise ValueError("Selective-Backprop scores candidates with your model: pass model=")
        if world_size > 1 and wants_tuning(False, 0, stack):
            raise ValueError("a selection_batch_size of auto under several processes would be measured by each rank "
                             "on its own, and ranks choosing differently take different numbers of steps: give "
                             "it a number (e.g. methods={'sb': {'selection_batch_size': 128}})")
        ids = subset if isinstance(subset, np.ndarray) or subset is None else Path(subset)
        self._build = lambda tuned: build_input_graph(
            self.task, stack, candidate_ids(self.task, ids), batch_size=batch_size, seed=seed, model=handle,
            prefetch=prefetch, rank=rank, world_size=world_size, epochs=epochs, tuned=tuned)
        self.graph = self._build(None)
        # settings left auto (SB's selection_batch_size): what was measured and chosen (saved
        # with the state: a loader resumed from it takes the same choices)
        self.tuned = self.graph.tuned
        self._step = 0

    def __iter__(self):
        """One epoch of batches."""
        return iter(self.graph)

    def observe(self, ids, losses: torch.Tensor) -> None:
        """Hand back the per-example training losses of a batch your loop just forwarded."""
        self.graph.observe(torch.as_tensor(ids), losses.detach().float().cpu(), self._step)
        self._step += 1

    def counters(self) -> Dict[str, float]:
        """Every method's counters (e.g. ``sb/kept``, ``aa/passed``)."""
        return self.graph.counters()

    def state_dict(self) -> Dict[str, Any]:
        """Save with your model and optimizer to resume mid-epoch."""
        return {"graph": self.graph.state_dict(), "step": self._step, "tuned": self.tuned}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("tuned") and state["tuned"] != self.tuned:  # the choices the saved loader ran with
            self.graph.shutdown()
            self.graph = self._build(state["tuned"])
            self.tuned = self.graph.tuned
        self.graph.load_state_dict(state["graph"])
        self._step = int(state["step"])

    def close(self) -> None:
        """Stop method workers (the AutoAssist assistant's thread or process)."""
        self.graph.shutdown()

    def __enter__(self) -> "SelectiveLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
