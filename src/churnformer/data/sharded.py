"""A training set whose arrays stay on disk: the training set of a featurized dataset (``churnformer.data.store``).

The per-event arrays, the per-example customer inputs and the labels are read from the shards one batch at a
time, each example's rows with ``pread(2)`` at their byte offsets in the shard's (uncompressed Arrow IPC) file,
straight into the batch's arrays. A training process holds per example only where it is stored, its length and
the customer id, so its memory does not grow with the log; and nothing is mapped, so its resident memory does not
grow with the epoch either: the page cache, which every rank of a machine shares, holds the shards' pages.

Why not memory-mapping: a mapped page read counts in the reader's resident memory until it is handed back, and a
recent kernel maps 64 KB around every random read (fault-around, which ``MADV_RANDOM`` does not stop), so an
epoch's random reads map most of the shards. Handing them back (``MADV_DONTNEED``) every batch costs more than the
reads. ``pread`` copies only the bytes a batch needs: measured on the 50 M-event benchmark dataset, a batch's events
in 1.5 ms by ``pread`` against 7.5 ms mapped (``docs/benchmarks.md``).
"""

from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from churnformer.data.events import CUSTOMER_ID
from churnformer.data.sequences import BuildReport, Sequences
from churnformer.errors import InputError
from churnformer.schema import per_horizon

# A request for at least this share of a shard's rows reads the shard's whole column once (one read, then a take).
_WHOLE_COLUMN_SHARE = 1 / 16
# Rows grouped by shard at a time when many are read (a statistic over every example): the grouping's int64
# index arrays are of this many rows, not of all of them.
_BLOCK_ROWS = 1 << 20


@dataclass(frozen=True)
class StoredColumn:
    """Where a fixed-width column's values lie in a shard file: ``offset`` bytes in, ``shape`` values per row."""

    offset: int
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class StoredStrings:
    """Where a string column lies in a shard file: its ``offsets`` (a row per string, and one past the last), each
    counting from ``data``, where the bytes start."""

    offsets: StoredColumn
    data: int


@dataclass
class ShardFile:
    """One Arrow IPC file of a shard, read by rows with ``pread`` (its descriptor opened once per process: a
    forked loader worker or a pickled copy opens its own)."""

    path: Path
    rows: int
    columns: dict[str, StoredColumn | StoredStrings]
    _descriptor: tuple[int, int] | None = field(default=None, repr=False)  # (process id, file descriptor)

    @classmethod
    def locate(cls, path: Path, names: list[str]) -> tuple[ShardFile, pa.Table]:
        """The file at ``path`` with where each of the columns ``names`` lies (fixed-width values, or strings),
        and its table (memory-mapped, for the columns read whole once at load time; drop it when done)."""
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        buffer = pa.py_buffer(mapping)
        table = pa.ipc.open_file(buffer).read_all()
        columns: dict[str, StoredColumn | StoredStrings] = {}
        for name in names:
            array = table[name].chunk(0) if table[name].num_chunks == 1 else None
            if array is None or array.null_count:
                raise InputError(f"{path}: column {name!r} is not as churnformer-featurize writes it")
            if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
                offsets, data = array.buffers()[1:]
                width = np.dtype(np.int64 if pa.types.is_large_string(array.type) else np.int32)
                at = offsets.address + array.offset * width.itemsize - buffer.address
                columns[name] = StoredStrings(StoredColumn(at, width, ()), data.address - buffer.address)
                continue
            shape: tuple[int, ...] = ()
            while pa.types.is_fixed_size_list(array.type):
                shape, array = (*shape, array.type.list_size), array.flatten()
            dtype = np.dtype(array.type.to_pandas_dtype())
            offset = array.buffers()[1].address + array.offset * dtype.itemsize - buffer.address
            columns[name] = StoredColumn(offset, dtype, shape)
        return cls(path, table.num_rows, columns), table

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptor": None}

    def __del__(self) -> None:  # a notebook that loads many datasets does not run out of descriptors
        if self._descriptor is not None and self._descriptor[0] == os.getpid():
            os.close(self._descriptor[1])

    def _fd(self) -> int:
        if self._descriptor is None or self._descriptor[0] != os.getpid():
            self._descriptor = (os.getpid(), os.open(self.path, os.O_RDONLY | os.O_CLOEXEC))
        return self._descriptor[1]

    def _read(self, destination: memoryview, offset: int) -> None:
        if os.preadv(self._fd(), [destination], offset) != len(destination):
            raise self._truncated()

    def _truncated(self) -> InputError:
        return InputError(f"{self.path}: shorter than its columns say (truncated? featurize the dataset again)")

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of column ``name``: one read per row, or the whole column once for many rows."""
        column, whole = self.columns[name], len(rows) >= self.rows * _WHOLE_COLUMN_SHARE
        if isinstance(column, StoredStrings):
            return self._whole_strings(column)[rows] if whole else self._strings(column, rows)
        if whole:
            return self._runs(column, np.zeros(1, dtype=np.int64), np.array([self.rows]))[rows]
        return self._runs(column, rows, np.ones(len(rows), dtype=np.int64))

    def read_runs(self, name: str, firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Runs of consecutive rows of column ``name`` (``counts[i]`` rows from row ``firsts[i]``), back to back."""
        column = self.columns[name]
        assert isinstance(column, StoredColumn)
        return self._runs(column, firsts, counts)

    def _runs(self, column: StoredColumn, firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        values = np.empty((int(counts.sum()), *column.shape), dtype=column.dtype)
        if values.nbytes:
            view, at, row_bytes, fd = memoryview(values).cast("B"), 0, column.row_bytes, self._fd()
            for first, count in zip(firsts.tolist(), counts.tolist(), strict=True):
                size = count * row_bytes
                if os.preadv(fd, [view[at : at + size]], column.offset + first * row_bytes) != size:
                    raise self._truncated()
                at += size
        return values

    def _strings(self, column: StoredStrings, rows: np.ndarray) -> np.ndarray:
        """String rows (customer ids): each one's offsets, then its bytes."""
        bounds = self._runs(column.offsets, rows, np.full(len(rows), 2)).reshape(-1, 2)
        texts = np.empty(len(rows), dtype=object)
        for index, (start, end) in enumerate(bounds.tolist()):
            data = bytearray(end - start)
            self._read(memoryview(data), column.data + start)
            texts[index] = data.decode()
        return texts

    def _whole_strings(self, column: StoredStrings) -> np.ndarray:
        offsets = self._runs(column.offsets, np.zeros(1, dtype=np.int64), np.array([self.rows + 1]))
        data = bytearray(int(offsets[-1] - offsets[0]))
        if data:
            self._read(memoryview(data), column.data + int(offsets[0]))
        buffers = [None, pa.py_buffer(offsets - offsets[0]), pa.py_buffer(data)]
        kind = pa.large_string() if offsets.dtype == np.int64 else pa.string()
        return pa.Array.from_buffers(kind, self.rows, buffers).to_numpy(zero_copy_only=False)


@dataclass
class Placement:
    """Where each example of a training set is stored: ``place[i]``, its row among all the shards' rows in file
    order (int32 up to 2 billion examples), and ``bounds``, each shard's first such row (and the total)."""

    place: np.ndarray
    bounds: np.ndarray

    def __len__(self) -> int:
        return len(self.place)

    def by_shard(self, rows: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Examples ``rows`` grouped by shard: ``(shard, which of rows, their rows in the shard)`` per shard."""
        place = self.place[rows]
        shard = np.searchsorted(self.bounds, place, side="right") - 1
        order = np.argsort(shard, kind="stable")
        edges = np.searchsorted(shard[order], np.arange(len(self.bounds)))
        groups = []
        for index in np.flatnonzero(np.diff(edges)):
            chosen = order[edges[index] : edges[index + 1]]
            groups.append((int(index), chosen, place[chosen] - self.bounds[index]))
        return groups


@dataclass
class ShardedArray:
    """A per-example array kept in the shards (column ``name`` of each shard's examples file): ``array[rows]``
    reads the chosen examples; ``np.asarray(array)`` reads them all, for what needs the whole array at once. A
    column with no values per row is not stored (Arrow has no empty fixed-size list): it reads as zeros."""

    files: list[ShardFile]
    name: str
    placement: Placement
    dtype: np.dtype
    row_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.placement), *self.row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.placement)

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        rows = np.arange(len(self))[rows] if isinstance(rows, slice) else np.asarray(rows)
        gathered = np.zeros((len(rows), *self.row_shape), dtype=self.dtype)
        if not gathered.size:
            return gathered
        for start in range(0, len(rows), _BLOCK_ROWS):  # the grouping's index arrays stay small
            block = rows[start : start + _BLOCK_ROWS]
            for shard, chosen, local in self.placement.by_shard(block):
                gathered[start + chosen] = self.files[shard].read_rows(self.name, local)
        return gathered

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        values = self[slice(None)]
        return values if dtype is None else values.astype(dtype)


@dataclass
class ShardedLabels:
    """A stored training set's labels: ``by_horizon[label]``, (examples, horizons), read by rows from the shards;
    :meth:`frame` gives chosen rows in the layout of :func:`~churnformer.data.labels.horizon_labels` (``columns``,
    the main horizon's ``churn``/``spend``/``purchases`` included)."""

    customer_ids: ShardedArray
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
class ShardedSequences:
    """The interface of :class:`~churnformer.data.sequences.Sequences` that training uses (``pad``, ``subset``,
    ``slices``, ``lengths``, ``customers``), over shards. Lengths are in memory, in the training set's order (the
    samplers need them all); the ids, the customer inputs and the events are read from the shards by rows
    (``event_files[s]``: shard ``s``'s events, one row per event; ``event_offsets[s]``: where each of its
    examples' events start)."""

    customer_ids: ShardedArray
    lengths: np.ndarray
    customers: dict[str, ShardedArray | np.ndarray]  # an array where the run changed it (stacked predictions)
    n_events_total: ShardedArray
    report: BuildReport
    placement: Placement
    event_files: list[ShardFile]
    event_offsets: list[np.ndarray]
    text_table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.customer_ids)

    def lengths_of(self, rows: np.ndarray) -> np.ndarray:
        return self.lengths[rows].astype(np.int64)  # stored narrow (uint16): callers subtract

    def _gather(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The events of examples ``rows``, back to back in the order of ``rows``, and their lengths."""
        lengths = self.lengths[rows].astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        columns = self.event_files[0].columns
        gathered = {
            name: np.empty((int(lengths.sum()), *column.shape), dtype=column.dtype) for name, column in columns.items()
        }
        for shard, chosen, local in self.placement.by_shard(rows):
            file, chosen_lengths = self.event_files[shard], lengths[chosen]
            destination = np.arange(int(chosen_lengths.sum())) + np.repeat(
                starts[chosen] - (np.cumsum(chosen_lengths) - chosen_lengths), chosen_lengths
            )
            for name in columns:
                gathered[name][destination] = file.read_runs(name, self.event_offsets[shard][local], chosen_lengths)
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
