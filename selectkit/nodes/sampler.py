"""IdBatchSampler: the root of every input graph, emitting batches of example ids."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np
from torchdata.nodes import BaseNode


class IdBatchSampler(BaseNode[Dict[str, Any]]):
    """Shuffles a set of example ids once per epoch and emits them in batches.

    The stream unit is a batch, not an example, so every later node works on whole batches:
    loading is one vectorised gather from the memory map per batch, and selection policies
    score a batch at once. (A per-example chain IterableWrapper -> Batcher alone costs about
    0.2 us per example here, benchmarks/overhead.py; per-example loading would cost far more.)

    Each epoch's order is a pure function of (seed, epoch), so the state is two integers.
    Every item carries its position (``epoch``, ``index``, ``num_batches``) so nodes further
    down, and the trainer's learning-rate schedule, see training progress without asking
    a node that may be running ahead in a prefetch thread.

    With more than one process, every rank draws the same global permutation from (seed,
    epoch) and takes its own shard of it (``rank``, ``rank + world_size``, ...); as in
    ``torch.utils.data.DistributedSampler``, the permutation is padded with its first ids to a
    multiple of ``world_size`` so every rank gets the same number of ids.

    Args:
        ids: the candidate example ids (e.g. all of the train split, or an SVP subset).
        batch_size: ids per emitted batch.
        seed: seeds the per-epoch permutations.
        shuffle: permute each epoch (False keeps ``ids`` order).
        drop_last: drop the last incomplete batch.
        rank, world_size: this process's shard of the global permutation (0 and 1: all of it).
        lengths: per-id example lengths (text: tokens), indexed by id; with ``group`` > 0 each
            window of ``group`` batches of the shuffled order is sorted by length before it is cut
            into batches, and the full batches then run in a seeded random order (the usual
            bucketing of text loaders: batches padded to their longest example pad far less).
        group: batches per length-sorting window (0: no grouping).
    """

    EPOCH_KEY = "epoch"
    INDEX_KEY = "index"
    SHARD_KEY = "shard"

    def __init__(self, ids: np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 lengths: Optional[np.ndarray] = None, group: int = 0):
        super().__init__()
        if group < 0:
            raise ValueError(f"{group=} should be >= 0 (0: no grouping by length)")
        if group and lengths is None:
            raise ValueError("grouping by length (input.group_by_length > 0) needs example lengths: this task's "
                             "examples have none (it is for text); set input.group_by_length: 0")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group = group
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(f"ids must be a non-empty 1-D array, got shape {ids.shape}")
        if batch_size < 1:
            raise ValueError(f"{batch_size=} should be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"{rank=} should be in [0, {world_size=})")
        self.ids = ids
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        n = -(-len(ids) // world_size)  # ids per rank
        if drop_last and n < batch_size:
            raise ValueError(f"{drop_last=} with {n} ids per rank < {batch_size=} would yield no batch")
        self.num_batches = n // batch_size if drop_last else -(-n // batch_size)
        self._epoch = -1
        self._index = 0
        self._order: Optional[np.ndarray] = None

    def reset(self, initial_state: Optional[Dict[str, Any]] = None):
        super().reset(initial_state)
        if initial_state is not None:
            shard = initial_state.get(self.SHARD_KEY, [0, 1])
            if list(shard) != [self.rank, self.world_size]:
                raise ValueError(f"resumed sampler state belongs to rank {shard[0]} of {shard[1]} processes but this "
                                 f"is rank {self.rank} of {self.world_size}: each rank resumes from its own state, "
                                 f"with the same number of processes")
            self._epoch = int(initial_state[self.EPOCH_KEY])
            self._index = int(initial_state[self.INDEX_KEY])
        else:
            self._epoch += 1
            self._index = 0
        self._order = self.order(self._epoch)

    def order(self, epoch: int) -> np.ndarray:
        """This rank's ids in the order epoch ``epoch`` visits them."""
        ids = self.ids
        if self.shuffle:
            ids = ids[np.random.default_rng([self.seed, epoch]).permutation(len(ids))]
        if self.world_size > 1:
            pad = -len(ids) % self.world_size
            if pad:
                ids = np.concatenate([ids, np.resize(ids, pad)])
            ids = ids[self.rank::self.world_size]
        if self.group and self.shuffle:
            ids = self._grouped(ids, epoch)
        return ids

    def _grouped(self, ids: np.ndarray, epoch: int) -> np.ndarray:
        """``ids`` sorted by length within windows of ``group`` batches, then the full batches
        shuffled (seeded by seed and epoch); an incomplete batch stays last."""
        bs, w = self.batch_size, self.group * self.batch_size
        lengths = self.lengths[ids]  # type: ignore[index]
        out = np.concatenate([ids[i:i + w][np.argsort(lengths[i:i + w], kind="stable")] for i in range(0, len(ids), w)])
        full = len(out) // bs
        perm = np.random.default_rng([self.seed, epoch, 0x6B]).permutation(full)
        head = out[:full * bs].reshape(full, bs)[perm].ravel()
        return np.concatenate([head, out[full * bs:]])

    def next(self) -> Dict[str, Any]:
        if self._index >= self.num_batches:
            raise StopIteration()
        i = self._index
        batch = self._order[i * self.batch_size:(i + 1) * self.batch_size]  # type: ignore[index]
        self._index += 1
        return {"ids": batch, "epoch": self._epoch, "index": i, "num_batches": self.num_batches}

    def get_state(self) -> Dict[str, Any]:
        return {self.EPOCH_KEY: self._epoch, self.INDEX_KEY: self._index,
                self.SHARD_KEY: [self.rank, self.world_size]}
