"""A training set whose arrays stay on disk: the training set of a featurized dataset (``churnformer.data.store``).

The per-event arrays, the per-example customer inputs and the labels are read from the shards, memory-mapped,
one batch at a time: a training process holds per example only where to find it (shard, row, length) and the
customer id, so its memory does not grow with the log. :meth:`ShardedSequences.release` hands the pages a process
has read back to the page cache (``madvise(MADV_DONTNEED)``), so its resident memory does not grow with the epoch
either: the page cache, which every rank of a machine shares, keeps them.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID
from churnformer.data.sequences import BuildReport, Sequences
from churnformer.schema import per_horizon


@dataclass
class ShardedArray:
    """A per-example array kept in the shards (one memory-mapped part per shard): ``array[rows]`` reads the chosen
    examples (example ``i`` is row ``local[i]`` of part ``shard[i]``); ``np.asarray(array)`` reads them all, for
    what needs the whole array at once."""

    parts: list[np.ndarray]
    shard: np.ndarray
    local: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.shard), *self.parts[0].shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.parts[0].dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.shard)

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
        gathered = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        shards = self.shard[rows]
        order = np.argsort(shards, kind="stable")
        bounds = np.searchsorted(shards[order], np.arange(len(self.parts) + 1))
        for index in np.flatnonzero(np.diff(bounds)):
            chosen = order[bounds[index] : bounds[index + 1]]
            gathered[chosen] = self.parts[index][self.local[rows[chosen]]]
        return gathered

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self[slice(None)]
        return values if dtype is None else values.astype(dtype)


@dataclass
class ShardedLabels:
    """A stored training set's labels: ``by_horizon[label]``, (examples, horizons), read by rows from the shards;
    :meth:`frame` gives chosen rows in the layout of :func:`~churnformer.data.labels.horizon_labels` (``columns``,
    the main horizon's ``churn``/``spend``/``purchases`` included)."""

    customer_ids: np.ndarray
    by_horizon: dict[str, ShardedArray]
    days: tuple[float, ...]
    main: float
    columns: list[str]

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        rows = np.asarray(rows, dtype=np.int64)
        values = {label: array[rows] for label, array in self.by_horizon.items()}
        where = {per_horizon(label, days): (label, k) for label in values for k, days in enumerate(self.days)}
        where |= {label: (label, self.days.index(self.main)) for label in values}
        columns = {CUSTOMER_ID: self.customer_ids[rows]}
        columns |= {name: values[where[name][0]][:, where[name][1]] for name in self.columns}
        return pd.DataFrame(columns)


@dataclass
class Shard:
    """One shard's per-event arrays (memory-mapped) with its examples' offsets into them, and the shard's files'
    mappings (handed back by :meth:`ShardedSequences.release`)."""

    offsets: np.ndarray
    events: dict[str, np.ndarray]
    mappings: tuple[mmap.mmap, ...] = ()

    def event_rows(self, local: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        first = np.cumsum(lengths) - lengths
        return np.arange(int(lengths.sum())) + np.repeat(self.offsets[local] - first, lengths)


@dataclass
class ShardedSequences:
    """The interface of :class:`~churnformer.data.sequences.Sequences` that training uses (``pad``, ``subset``,
    ``slices``, ``lengths``, ``customers``), over shards: example ``i`` of the training set is example
    ``local[i]`` of shard ``shard[i]``. Ids and lengths are in memory, in the training set's order; the customer
    inputs are read from the shards by rows."""

    customer_ids: np.ndarray
    lengths: np.ndarray
    customers: dict[str, ShardedArray | np.ndarray]  # an array where the run changed it (stacked predictions)
    n_events_total: ShardedArray
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
            for mapping in shard.mappings:
                mapping.madvise(mmap.MADV_DONTNEED)
