"""Settings that depend on the machine, chosen by measuring on it.

``selection_precision: auto``: the first selection forward of a run times the batch it was given
in fp32 and in bf16 autocast (one warm-up and three timed forwards each, the median) and keeps
bf16 only where it is clearly faster. On CPUs with AVX512-BF16 bf16 forwards can cost half; on
others they cost more (a Xeon measured 2.67 against 2.16 ms; this project's EPYC model 1 ran text
models about 15x slower in bf16), so no fixed default is right everywhere. The choice is a pure
function of the timings (``pick_precision``), is kept in the run's checkpoint (a resumed run keeps
it) and is reported with its timings (counters ``selection/bf16_fraction``, ``selection/fp32_ms``,
``selection/bf16_ms``; run.json's ``selection``).
"""

from __future__ import annotations

import time
from typing import Callable, Dict

# bf16 ranks losses with about 1e-3 relative error: worth it only when clearly faster
BF16_MARGIN = 0.9


def pick_precision(timings_ms: Dict[str, float], margin: float = BF16_MARGIN) -> str:
    """``bf16`` when its forward took under ``margin`` times fp32's, else ``fp32``."""
    return "bf16" if timings_ms["bf16"] < margin * timings_ms["fp32"] else "fp32"


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
