"""Length-bucketed batches: customers of similar length share a batch, so little compute goes to padding."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class LengthBucketBatchSampler(Sampler[list[int]]):
    """Yields lists of row indices.

    Training: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length, cut into
    batches, shuffle the batch order. Evaluation (``shuffle=False``): sorted by length, in order.
    Deterministic given ``seed`` and the epoch.

    With several processes (DDP) each rank takes every ``world_size``-th batch of the same order, and every
    rank gets the same number of batches (ranks that step a different number of times wait for each other
    forever). Training pads: the first batches of the epoch's order are repeated until the count divides by
    ``world_size``, so no customer is left out of an epoch and at most ``world_size - 1`` batches are seen
    twice. Evaluation splits the customers into a multiple of ``world_size`` batches of nearly equal size
    instead, so every customer is counted exactly once (batches are a little smaller than ``batch_size``).

    Resumable: :meth:`state_dict` holds the epoch and how many of its batches were handed out; after
    :meth:`load_state_dict` the next pass over that epoch starts with the following batch, so a run
    resumed from a mid-epoch checkpoint trains on exactly the batches of the uninterrupted run. The
    count is of batches handed to the loader, which equals batches trained on only when the loader has
    no worker processes (workers read ahead).
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
        self._handed_out = 0
        self._resume_at: tuple[int, int] | None = None

    @property
    def sampler(self) -> LengthBucketBatchSampler:
        """Lightning calls ``set_epoch`` on ``loader.sampler`` and ``loader.batch_sampler.sampler`` (torch's
        ``BatchSampler`` layout), never on a batch sampler itself; this one is its own sampler, so every epoch
        gets its own shuffle."""
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self._handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self._resume_at = (self.epoch, int(state["batches"]))

    def _batches(self) -> list[np.ndarray]:
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            count = max(1, -(-len(order) // self.batch_size))
            return np.array_split(order, -(-count // self.world_size) * self.world_size)
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
        # A generator: this body runs at the first batch, after Lightning has set the epoch.
        skip = self._resume_at[1] if self._resume_at is not None and self._resume_at[0] == self.epoch else 0
        self._resume_at = None
        batches = self._batches()
        batches += batches[: len(self) * self.world_size - len(batches)]  # training: pad to equal counts
        batches = batches[self.rank :: self.world_size]
        self._handed_out = skip
        for batch in batches[skip:]:
            self._handed_out += 1
            yield batch.tolist()

    def __len__(self) -> int:
        """Batches per rank, the same on every rank."""
        n_batches = max(1, -(-len(self.lengths) // self.batch_size))
        return -(-n_batches // self.world_size)
