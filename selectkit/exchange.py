"""What ranks tell each other once per training step, so that selection does not depend on the
number of processes.

Each rank selects from its own shard, but what a method learns from losses must be the same
whichever rank saw them: the trained batches' losses (the loss table, SB's warm-up window, the
AutoAssist assistant), the losses SB's selection forwards write to the table, and the losses SB
ranks against (its window). A method sends them on a named ``Channel``; once per step the
trainer calls ``Exchange.sync``, which all-gathers every rank's outboxes (one message per rank:
a small header of per-step flags, then each channel's values) and hands every other rank's
values to each channel's ``receive``. A rank's own values were applied when sent, so a rank sees
the others' one step late, which no statistic here notices.

Alone (one process, or a user's loop that never syncs) channels are inert: ``send`` drops the
values and costs one attribute check.
"""

from __future__ import annotations

import threading
from typing import Callable, List, Sequence

import numpy as np

from selectkit import dist


class Channel:
    """One named stream of float64 values from every rank to every other (ids are exact in
    float64 up to 2**53)."""

    def __init__(self, name: str, receive: Callable[[np.ndarray], None], live: bool):
        self.name, self.receive, self.live = name, receive, live
        self._out: List[np.ndarray] = []
        self._lock = threading.Lock()  # a method in the prefetch thread may send

    def send(self, values) -> None:
        """Queue values for the other ranks (this rank has applied them itself)."""
        if self.live:
            a = np.array(values, dtype=np.float64).ravel()
            with self._lock:
                self._out.append(a)

    def take(self) -> np.ndarray:
        with self._lock:
            out, self._out = self._out, []
        return np.concatenate(out) if out else np.zeros(0)

    def pending(self) -> np.ndarray:
        """What is queued and not yet sent (a copy)."""
        with self._lock:
            return np.concatenate(self._out) if self._out else np.zeros(0)

    def restore(self, values: np.ndarray) -> None:
        with self._lock:
            self._out = [np.array(values, dtype=np.float64)] if len(values) else []


class Exchange:
    """The set of channels of one input graph, and their per-step all-gather.

    Args:
        live: exchange with other ranks (a process group of more than one process is running).
    """

    def __init__(self, live: bool = False):
        self.live = live
        self.channels: List[Channel] = []
        # values per rank that one all-gather carries: grown (identically on every rank, as all
        # see the same lengths) to the largest message seen, so a step costs one collective
        self.capacity = 64

    def channel(self, name: str, receive: Callable[[np.ndarray], None]) -> Channel:
        """A new channel; every rank must open the same channels in the same order (the graph is
        built the same way on every rank, so they do)."""
        if any(c.name == name for c in self.channels):
            raise ValueError(f"two exchange channels named {name!r}")
        ch = Channel(name, receive, self.live)
        self.channels.append(ch)
        return ch

    def state_dict(self) -> dict:
        """The values queued for the other ranks, by channel: a checkpoint taken between two
        syncs resumes with them still to send, so the resumed ranks exchange exactly what an
        uninterrupted run would have."""
        return {c.name: c.pending() for c in self.channels if c.live}

    def load_state_dict(self, state: dict) -> None:
        for c in self.channels:
            if c.name in state:
                c.restore(state[c.name])

    def sync(self, header: Sequence[float]) -> np.ndarray:
        """All-gather ``header`` (the same length on every rank) and every channel's outbox;
        deliver the other ranks' values. Returns the headers, one row per rank (alone: one row).

        A collective: every rank calls it at the same point of the same step."""
        head = np.asarray(header, dtype=np.float64).ravel()
        if not self.live:
            return head[None, :]
        parts = [c.take() for c in self.channels]
        msg = np.concatenate([head, [len(p) for p in parts], *parts])
        rows = dist.all_gather_array(msg, self.capacity)
        longest = max(len(m) for m in rows)
        if longest > self.capacity:
            self.capacity = 1 << (longest - 1).bit_length()
        h, k, me = len(head), len(self.channels), dist.rank()
        for r, m in enumerate(rows):
            if r == me:
                continue
            lengths = m[h:h + k].astype(np.int64)
            at = h + k
            for c, n in zip(self.channels, lengths):
                if n:
                    c.receive(m[at:at + n])
                at += n
        return np.stack([m[:h] for m in rows]) if h else np.zeros((len(rows), 0))
