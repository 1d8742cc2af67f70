"""Selective-Backprop (Jiang et al., 2019) as pure functions: losses in, keep decisions out.

An example with loss ``l`` is kept with probability ``max(floor, CDF_R(l) ** beta)``, where
``CDF_R(l)`` is the fraction of the last R losses at or below ``l``. A whole candidate batch
is scored at once: its losses join the window first (so the window is never empty and the
largest loss seen has CDF 1), then every loss is ranked against the window with two binary
searches on the sorted window: O((R + B) log R) per batch, no Python loop per example.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np


def cdf(losses: np.ndarray, window: np.ndarray, presorted: bool = False) -> np.ndarray:
    """Fraction of ``window`` at or below each loss (ties count as at or below)."""
    s = np.asarray(window, dtype=np.float64) if presorted else np.sort(np.asarray(window, dtype=np.float64))
    return np.searchsorted(s, np.asarray(losses, dtype=np.float64), side="right") / len(s)


def keep_probability(cdf_values: np.ndarray, beta: float, floor: float = 0.0) -> np.ndarray:
    """``max(floor, cdf ** beta)``: beta -> 0 keeps everything, larger beta keeps fewer."""
    return np.maximum(np.asarray(cdf_values, dtype=np.float64) ** beta, floor)


def loss_threshold(sorted_window: np.ndarray, beta: float, p: float = 0.5) -> float:
    """The loss whose keep probability is ``p`` under the current (sorted) window: the
    ``p ** (1 / beta)`` quantile, nearest rank. A readable summary of how selective the node
    is right now."""
    q = p ** (1.0 / beta)
    return float(sorted_window[min(len(sorted_window) - 1, max(0, int(np.ceil(q * len(sorted_window))) - 1))])


class LossWindow:
    """The last ``size`` losses, as a ring buffer whose state is a plain dict."""

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window {size=} should be >= 1")
        self.size = size
        self.values = np.zeros(size, dtype=np.float64)
        self.count = 0  # total losses ever pushed; the ring position is count % size
        self._sorted: Optional[np.ndarray] = None

    def push(self, losses: np.ndarray) -> None:
        losses = np.asarray(losses, dtype=np.float64)[-self.size:]
        n, start = len(losses), self.count % self.size
        head = min(n, self.size - start)  # up to the ring's end, the rest from its start
        self.values[start:start + head] = losses[:head]
        self.values[:n - head] = losses[head:]
        self.count += n
        self._sorted = None

    def current(self) -> np.ndarray:
        return self.values[: min(self.count, self.size)]

    def sorted(self) -> np.ndarray:
        """The window's losses in ascending order (sorted once per push)."""
        if self._sorted is None:
            self._sorted = np.sort(self.current())
        return self._sorted

    def state(self) -> Dict[str, Any]:
        return {"values": self.values.copy(), "count": self.count, "size": self.size}

    def load(self, state: Dict[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"resumed SB window holds {state['size']} losses but sb.window={self.size}: "
                             f"resume with the same sb.window, or start afresh")
        self.values = np.array(state["values"], dtype=np.float64)
        self.count = int(state["count"])
        self._sorted = None


def select(losses: np.ndarray, window: LossWindow, beta: float, floor: float,
           rng: np.random.Generator, out_p: Optional[list] = None) -> np.ndarray:
    """Push a batch of losses into the window and draw which examples to keep (a bool mask)."""
    window.push(losses)
    srt = window.sorted()
    p = (np.searchsorted(srt, np.asarray(losses, dtype=np.float64), side="right") / len(srt)) ** beta
    if floor > 0:
        p = np.maximum(p, floor)
    if out_p is not None:
        out_p.append(p)
    return rng.random(len(p)) < p
