"""The per-example loss table shared by every method that needs past losses.

One float32 entry per example id (NaN until the example has a loss). The input graph feeds it
once per training step from the trainer's per-example losses (``observe``, a loss listener);
methods read it and may write losses they compute themselves (Selective-Backprop's selection
forwards). Its state is checkpointed with the graph, outside any node, so a method that reads
it in a prefetch thread and one that writes it in the training thread see one table.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np


def as_numpy(a: Any) -> np.ndarray:
    """A CPU tensor or array-like as a numpy array (no copy where possible)."""
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


class LossTable:
    """Latest known loss per example id.

    Args:
        num_examples: ids run over ``[0, num_examples)``.
    """

    def __init__(self, num_examples: int):
        if num_examples < 1:
            raise ValueError(f"{num_examples=} should be >= 1")
        self.num_examples = num_examples
        self.values = np.full(num_examples, np.nan, dtype=np.float32)
        self._channel = None

    def share(self, exchange) -> None:
        """Send the losses methods write (``update``) to the other ranks and apply theirs: under
        several processes every rank's table holds every rank's losses. (The trainer's own
        losses reach the other ranks through the graph, with the listeners'.)"""
        self._channel = exchange.channel("loss_table", self._receive)

    def _receive(self, values: np.ndarray) -> None:
        pairs = values.reshape(-1, 2)  # (id, loss) rows: what several sends concatenate to
        self.values[pairs[:, 0].astype(np.int64)] = pairs[:, 1]

    def __getitem__(self, ids) -> np.ndarray:
        """Losses of ``ids`` (a copy; NaN where none is known)."""
        return self.values[as_numpy(ids)]

    def update(self, ids, losses) -> None:
        ids, losses = as_numpy(ids), as_numpy(losses)
        self.values[ids] = losses
        if self._channel is not None and self._channel.live:
            self._channel.send(np.stack([ids, losses], axis=1))

    def observe(self, ids, losses, step: int) -> None:
        """Loss listener: the trainer's training forward refreshes the rows it trained on."""
        self.values[as_numpy(ids)] = as_numpy(losses)

    def known(self) -> int:
        """How many examples have a loss."""
        return int(np.isfinite(self.values).sum())

    def state_dict(self) -> Dict[str, Any]:
        return {"num_examples": self.num_examples, "values": self.values.copy()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if int(state["num_examples"]) != self.num_examples:
            raise ValueError(f"resumed loss table holds {state['num_examples']} examples but this run has "
                             f"{self.num_examples}: resume with the same store, or start afresh")
        self.values = np.array(state["values"], dtype=np.float32)
