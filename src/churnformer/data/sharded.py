"""Sequences whose per-event arrays stay on disk: the training set of a featurized dataset (``churnformer.data.store``).

What a training process holds per example (ids, lengths, customer inputs; the labels are the training set's) is
small next to what it holds per event, so only the per-event arrays are read from the shards, memory-mapped, one
batch's events at a time. :meth:`ShardedSequences.release` hands the pages a process has read back to the page
cache (``madvise(MADV_DONTNEED)``), so its resident memory does not grow with the epoch: the page cache, which
every rank of a machine shares, keeps them.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from churnformer.data.sequences import BuildReport, Sequences


@dataclass
class Shard:
    """One shard's per-event arrays (memory-mapped) with its examples' offsets into them."""

    offsets: np.ndarray
    events: dict[str, np.ndarray]
    mapping: mmap.mmap | None = None

    def event_rows(self, local: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        first = np.cumsum(lengths) - lengths
        return np.arange(int(lengths.sum())) + np.repeat(self.offsets[local] - first, lengths)


@dataclass
class ShardedSequences:
    """The interface of :class:`~churnformer.data.sequences.Sequences` that training uses (``pad``, ``subset``,
    ``slices``, ``lengths``, ``customers``), over shards: example ``i`` of the training set is example
    ``local[i]`` of shard ``shard[i]``. The per-example arrays are in memory, in the training set's order."""

    customer_ids: np.ndarray
    lengths: np.ndarray
    customers: dict[str, np.ndarray]
    n_events_total: np.ndarray
    report: BuildReport
    shards: list[Shard]
    shard: np.ndarray
    local: np.ndarray
    text_table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.customer_ids)

    @property
    def events(self) -> dict[str, np.ndarray]:
        """The per-event arrays by name, of the first shard (their names, dtypes and widths)."""
        return self.shards[0].events

    def lengths_of(self, rows: np.ndarray) -> np.ndarray:
        return self.lengths[rows]

    def _gather(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The events of examples ``rows``, back to back in the order of ``rows``, and their lengths."""
        lengths = self.lengths[rows]
        starts = np.cumsum(lengths) - lengths
        total = int(lengths.sum())
        gathered = {
            name: np.empty((total, *values.shape[1:]), dtype=values.dtype) for name, values in self.events.items()
        }
        for index in np.unique(self.shard[rows]):
            chosen = np.flatnonzero(self.shard[rows] == index)
            shard, chosen_lengths = self.shards[index], lengths[chosen]
            source = shard.event_rows(self.local[rows[chosen]], chosen_lengths)
            destination = np.arange(int(chosen_lengths.sum())) + np.repeat(
                starts[chosen] - (np.cumsum(chosen_lengths) - chosen_lengths), chosen_lengths
            )
            for name, values in shard.events.items():
                gathered[name][destination] = values[source]
        return gathered, lengths

    def subset(self, rows: np.ndarray) -> Sequences:
        """The chosen examples as an in-memory ragged set."""
        rows = np.asarray(rows, dtype=np.int64)
        events, lengths = self._gather(rows)
        return Sequences(
            customer_ids=self.customer_ids[rows],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            events=events,
            customers={name: values[rows] for name, values in self.customers.items()},
            n_events_total=self.n_events_total[rows],
            report=self.report,
            text_table=self.text_table,
        )

    def slices(self, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Sequences:
        """As :meth:`Sequences.slices`: runs of events of the chosen examples."""
        distinct, position = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        return self.subset(distinct).slices(position, starts, lengths)

    def pad(self, rows: np.ndarray | None = None, width: int | None = None) -> dict[str, np.ndarray]:
        """As :meth:`Sequences.pad`: the model inputs of the chosen examples (their events gathered from the
        shards, then padded as in memory)."""
        rows = np.arange(len(self)) if rows is None else rows
        return self.subset(rows).pad(width=width)

    def release(self) -> None:
        """Give the shards' pages this process has read back to the page cache (its RSS falls; the next read of
        them costs a page fault, not a disk read, while the cache holds them)."""
        for shard in self.shards:
            if shard.mapping is not None:
                shard.mapping.madvise(mmap.MADV_DONTNEED)
