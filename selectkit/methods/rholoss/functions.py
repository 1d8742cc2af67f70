"""RHO-LOSS (Mindermann et al., ICML 2022) as pure functions: losses in, chosen rows out.

From a candidate batch, train on the examples with the largest *reducible* loss: the live
model's training loss minus the irreducible loss that a model trained on held-out data
predicts for that example. Examples the model already fits (low training loss) and examples
no model can fit (noisy or ambiguous: high irreducible loss) both rank low.
"""

from __future__ import annotations

import numpy as np


def keep_count(n: int, fraction: float) -> int:
    """Rows kept from ``n`` candidates: ``round(fraction * n)``, at least 1."""
    return max(1, min(n, int(round(fraction * n))))


def reducible(losses: np.ndarray, irreducible: np.ndarray) -> np.ndarray:
    """Training loss minus irreducible loss, per example (float64)."""
    return np.asarray(losses, dtype=np.float64) - np.asarray(irreducible, dtype=np.float64)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted row indices of the ``k`` largest scores; ties go to the lower row."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s))
    return np.sort(order[:k])


def sample_k(scores: np.ndarray, k: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of ``k`` rows drawn without replacement with probability proportional
    to ``exp(score / temperature)`` (the Gumbel top-k trick: one draw per row, no loop)."""
    s = np.asarray(scores, dtype=np.float64) / temperature
    return top_k(s + rng.gumbel(size=len(s)), k)
