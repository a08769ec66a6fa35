"""Length-bucketed batches: customers of similar length share a batch, so little compute goes to padding."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Yields lists of row indices.

    Training: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length, cut into
    batches, shuffle the batch order. Evaluation (``shuffle=False``): sorted by length, in order.
    With several processes (DDP) each rank takes every ``world_size``-th batch of the same order, and
    in training all ranks get the same number of batches. Deterministic given ``seed`` and the epoch
    (Lightning calls :meth:`set_epoch`).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        pool_batches: int = 50,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return np.array_split(order, max(1, -(-len(order) // self.batch_size)))
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        batches = []
        pool_size = self.batch_size * self.pool_batches
        for start in range(0, len(order), pool_size):
            pool = order[start : start + pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()[self.rank :: self.world_size]
        for batch in batches[: len(self)]:
            yield batch.tolist()

    def __len__(self) -> int:
        n_batches = -(-len(self.lengths) // self.batch_size)
        if self.shuffle:  # equal counts keep DDP ranks in step during training
            return n_batches // self.world_size
        return len(range(self.rank, n_batches, self.world_size))
