"""InfoBatch's rule as pure numpy functions (Qin et al., ICLR 2024; see README.md here)."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def prune_masks(scores: np.ndarray, ratio: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """``(well_learned, pruned)`` boolean masks over example ids for one epoch.

    An example is *well learned* when it has a score (a finite last loss) below the mean of the
    scored examples; unscored examples (NaN: never trained yet, or outside the candidate set) are
    never pruned and do not enter the mean. Each well-learned example is pruned with
    probability ``ratio``, by one draw per id from ``rng``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    scored = np.isfinite(scores)
    draws = rng.random(len(scores))  # one per id, scored or not: the stream does not depend on which
    if not scored.any():
        none = np.zeros(len(scores), dtype=bool)
        return none, none.copy()
    well = scored & (scores < scores[scored].mean())
    return well, well & (draws < ratio)


def loss_weights(well_learned: np.ndarray, ratio: float) -> np.ndarray:
    """Per-row loss weights of kept rows: ``1 / (1 - ratio)`` for the well-learned ones (the
    survivors stand in for the pruned), 1 for the rest; float32."""
    return np.where(well_learned, 1.0 / (1.0 - ratio), 1.0).astype(np.float32)


def prunes_in(epoch: int, epochs: int, delta: float) -> bool:
    """Whether ``epoch`` (0-based) of ``epochs`` prunes: before the fraction ``delta`` of
    training (InfoBatch's annealing: the last ``1 - delta`` of training uses all data)."""
    return epoch < delta * epochs
