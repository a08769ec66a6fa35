"""Length-bucketed batches: customers of similar length share a batch, so little compute goes to padding."""

from __future__ import annotations

import itertools
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

    Token budget (``batch_tokens``): a batch holds as many customers as fit ``batch_tokens`` padded tokens
    (rows x (longest length + 1), the summary token included), up to ``batch_size`` rows: long histories come
    in small batches, short ones in large batches, and every step does about the same work (what a GPU needs
    to stay busy). The customers are sorted by length once; the cuts between batches depend on that sorted
    list of lengths alone, so every epoch has the same number of batches (Lightning counts them once, for the
    learning-rate schedule and the validation point). Training varies the epochs by ordering customers of
    equal length at random before cutting, and by shuffling the batch order.
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
        batch_tokens: int | None = None,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self._token_cuts = token_budget_cuts(np.sort(self.lengths), batch_tokens, batch_size) if batch_tokens else None
        # Evaluation batches by token budget do not change between epochs: cut once.
        self._evaluation_batches = None
        if self._token_cuts is not None and not shuffle:
            self._evaluation_batches = split_to_multiple(self._cut(np.argsort(self.lengths, kind="stable")), world_size)
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
        if self._token_cuts is not None:
            return self._token_batches()
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

    def _cut(self, by_length: np.ndarray) -> list[np.ndarray]:
        """Rows ordered by length, cut into the token-budget batches."""
        return [by_length[start:end] for start, end in itertools.pairwise(self._token_cuts)]

    def _token_batches(self) -> list[np.ndarray]:
        if self._evaluation_batches is not None:
            return self._evaluation_batches
        rng = np.random.default_rng((self.seed, self.epoch))
        batches = self._cut(np.lexsort((rng.permutation(len(self.lengths)), self.lengths)))  # ties at random
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
        if self._evaluation_batches is not None:
            return len(self._evaluation_batches) // self.world_size
        if self._token_cuts is not None:
            n_batches = len(self._token_cuts) - 1
        else:
            n_batches = max(1, -(-len(self.lengths) // self.batch_size))
        return -(-n_batches // self.world_size)


def token_budget_cuts(sorted_lengths: np.ndarray, batch_tokens: int, max_rows: int) -> np.ndarray:
    """Batch boundaries over customers sorted by length (ascending): each batch as long as its rows x
    (longest length + 1) stay within ``batch_tokens`` and its rows within ``max_rows``; at least one row."""
    widths = np.asarray(sorted_lengths, dtype=np.int64) + 1
    cuts, start = [0], 0
    while start < len(widths):
        window = widths[start : start + max_rows]
        padded_tokens = np.arange(1, len(window) + 1) * window  # rising: the widths are sorted
        start += max(1, int(np.searchsorted(padded_tokens, batch_tokens, side="right")))
        cuts.append(start)
    return np.asarray(cuts if len(cuts) > 1 else [0, 0])


def split_to_multiple(batches: list[np.ndarray], world_size: int) -> list[np.ndarray]:
    """``batches`` with the largest ones halved until their count divides by ``world_size`` (evaluation:
    every rank the same number of batches, every customer exactly once); empty batches when there are
    fewer customers than ranks."""
    sizes = [len(b) for b in batches]
    batches = list(batches)
    while len(batches) % world_size:
        largest = int(np.argmax(sizes))
        if sizes[largest] < 2:
            batches.append(batches[largest][:0])
            sizes.append(0)
            continue
        half = sizes[largest] // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
        sizes[largest : largest + 1] = [half, sizes[largest] - half]
    return batches
