"""Split a large event log by customer: job shards (``shard=i/N``) and on-disk spill partitions.

Both use one stable hash of the customer id, so every event of a customer lands in the same job shard
and the same partition whatever the input's row order or chunking, and N independent jobs together
cover every customer exactly once. The log is read in chunks with only the columns the model needs
(Parquet row groups, CSV chunks), so no step needs the whole log in memory.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnformer.data.events import (
    CUSTOMER_ID,
    SOURCE_ATTR,
    TIMESTAMP,
    ColumnMapping,
    check_table_file,
    csv_separator,
    customer_hash,
    load_events,
    read_event_chunks,
    read_table,
    require_columns,
)
from churnformer.data.featurizer import Featurizer
from churnformer.data.values import category_labels, numeric_values
from churnformer.errors import ConfigError, InputError

# Peak resident bytes per input event while one block of events is loaded, featurized and scored: at
# most 260 B measured per spill partition of the benchmark log (scripts/benchmarks/score.py), plus margin.
PEAK_BYTES_PER_EVENT = 448
# Memory in use besides the block being scored: interpreter, libraries and the onnxruntime session (about
# 165 MB), what the spill pass leaves allocated (about 300 MB), and freed heap that scoring keeps for reuse
# (churnformer.memory.reuse_freed_memory; up to about 400 MB measured on the benchmark log), rounded up.
BASE_BYTES = 900 * 2**20
# Each scoring stream after the first holds one more batch in flight (serving.predictor.stream_layout): its
# padded inputs and onnxruntime's intermediates. A second stream added about 70 MB to the benchmark jobs'
# peak RSS; rounded up.
STREAM_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Shard:
    """Job shard ``index`` of ``count``: the customers whose id hash is ``index`` modulo ``count``."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, spec: str | None) -> Shard:
        if spec is None or str(spec).strip() == "":
            return cls()
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
        if not match or not int(match[1]) < int(match[2]):
            raise ConfigError(f"shard={spec!r}: expected i/N with 0 <= i < N, e.g. shard=0/8")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Which of the customers with these :func:`customer_hash` values belong to this shard (low half of
        the hash; spill partitions use the high half)."""
        return hashes % np.uint64(self.count) == self.index


def keep_shard(frame: pd.DataFrame, shard: Shard) -> pd.DataFrame:
    """The rows of ``frame`` (standard columns) whose customer belongs to ``shard``."""
    if shard.count == 1:
        return frame
    return frame.loc[shard.contains(customer_hash(frame[CUSTOMER_ID]))].reset_index(drop=True)


@dataclass(frozen=True)
class EventSource:
    """An event-log file, read with the columns the model needs only."""

    path: Path
    mapping: ColumnMapping
    columns: list[str]  # the file's columns to read (required ones under the user's names + attributes)
    is_parquet: bool
    # Parquet string columns the model reads as categories: read dictionary-encoded, so each distinct value is
    # decoded once and factorizing the column costs nothing, never one string per row.
    dictionary_columns: tuple[str, ...] = ()

    @classmethod
    def open(cls, path: str | Path, mapping: ColumnMapping, featurizer: Featurizer) -> EventSource:
        """Project to the required columns and the model's attribute columns present in the file."""
        path = Path(path)
        is_parquet = check_table_file(path)
        present = file_columns(path, is_parquet)
        require_columns(present, mapping, str(path))  # before projecting, so the message lists every column
        featurizer.require_event_columns(present, str(path))
        wanted = [mapping.customer_id, mapping.timestamp, mapping.amount, *featurizer.event_attribute_columns]
        categories = {encoder.name for encoder in featurizer.event_categorical} - {mapping.customer_id}
        dictionary = string_columns(path, sorted(categories & set(present))) if is_parquet else ()
        return cls(path, mapping, list(dict.fromkeys(wanted)), is_parquet, dictionary)

    def estimated_rows(self) -> int:
        """Exact for Parquet (footer); for CSV, file size over the mean size of the first rows."""
        if self.is_parquet:
            return _parquet_file(self.path).metadata.num_rows
        sample = pd.read_csv(self.path, sep=csv_separator(self.path), nrows=10_000, dtype=str, usecols=self.columns)
        if len(sample) == 0:
            return 0
        size = self.path.stat().st_size * (5 if self.path.suffix.lower() == ".gz" else 1)
        bytes_per_row = max(len(sample.to_csv(index=False).encode()) / (len(sample) + 1), 1.0)
        return math.ceil(size / bytes_per_row)

    def read_all(self) -> pd.DataFrame:
        """The whole file as the standard frame (validated by load_events)."""
        raw = read_table(self.path, self.mapping.customer_id, self.columns, self.dictionary_columns)
        return load_events(raw, self.mapping, name=str(self.path))

    def chunks(self, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
        """Standard frames of at most ``rows_per_chunk`` input rows each, in file order."""
        return read_event_chunks(self.path, self.mapping, rows_per_chunk, self.columns, self.dictionary_columns)


def file_columns(path: Path, is_parquet: bool) -> list[str]:
    """Column names from the Parquet schema or the CSV header, without reading the data."""
    if not is_parquet:
        try:
            return list(pd.read_csv(path, sep=csv_separator(path), nrows=0).columns)
        except (ValueError, OSError, pd.errors.ParserError) as error:
            raise InputError(f"{path}: cannot read the CSV header: {error}") from error
    return list(_parquet_file(path).schema_arrow.names)


def string_columns(path: Path, columns: list[str]) -> tuple[str, ...]:
    """Those of ``columns`` that the Parquet file stores as strings (what Arrow can read dictionary-encoded)."""
    schema = _parquet_file(path).schema_arrow
    return tuple(c for c in columns if pa.types.is_string(t := schema.field(c).type) or pa.types.is_large_string(t))


def _parquet_file(path: Path, dictionary: tuple[str, ...] = ()) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, read_dictionary=list(dictionary) or None)
    except (pa.ArrowInvalid, OSError) as error:
        raise InputError(f"{path}: not a readable Parquet file ({error})") from error


def partitions_needed(estimated_rows: int, memory_budget_mb: float, streams: int = 1) -> int:
    """How many spill partitions keep one partition's processing within the budget (1: in memory)."""
    return max(1, math.ceil(estimated_rows * PEAK_BYTES_PER_EVENT / bytes_for_events(memory_budget_mb, streams)))


def streams_within(memory_budget_mb: float) -> int:
    """The most streams automatic ``streams`` may use under the budget: half of what it leaves beyond the
    process's floor may go to streams (``memory_budget_mb=1024``: one; the default 4096: thirteen)."""
    return 1 + max(0, int((memory_budget_mb * 2**20 - BASE_BYTES) / 2 / STREAM_BYTES))


def memory_floor_bytes(streams: int = 1) -> int:
    """What the process and ``streams`` scoring streams take before any event is read."""
    return BASE_BYTES + (streams - 1) * STREAM_BYTES


def bytes_for_events(memory_budget_mb: float, streams: int = 1) -> float:
    """What ``memory_budget_mb`` leaves for one block of events; a budget at or below the floor is refused."""
    floor = memory_floor_bytes(streams)
    if memory_budget_mb * 2**20 <= floor:
        raise ConfigError(
            f"memory_budget_mb={memory_budget_mb} is below the {floor // 2**20} MB that libraries, the model and "
            f"{streams} scoring stream(s) take before any event is read; raise it or set fewer streams"
        )
    return memory_budget_mb * 2**20 - floor


def spill_columns(frame: pd.DataFrame, featurizer: Featurizer) -> pd.DataFrame:
    """Attribute columns in the form the featurizer reads them, so every chunk has the same Parquet
    schema whatever types a CSV chunk was inferred as (categories as labels, numbers as float64)."""
    converted = {}
    for encoder in featurizer.event_categorical:
        if encoder.name in frame.columns:
            codes, uniques = pd.factorize(frame[encoder.name])
            # Values that print alike (10 and "10") are one category. A Categorical goes to Parquet as a
            # dictionary, with no object per row.
            label_codes, labels = pd.factorize(category_labels(uniques))
            codes = np.where(codes >= 0, label_codes[codes], -1)
            converted[encoder.name] = pd.Categorical.from_codes(codes, categories=labels)
    for scaler in featurizer.event_numeric:
        if scaler.name in frame.columns:
            converted[scaler.name] = numeric_values(frame[scaler.name])
    for column in featurizer.text_columns:  # a CSV chunk without any text reads as float NaN
        if column in frame.columns and not pd.api.types.is_string_dtype(frame[column].dtype):
            converted[column] = frame[column].astype("string")
    return frame.assign(**converted)


class SpillWriter:
    """Appends chunks of a standard frame to ``count`` Parquet files, one per hash partition."""

    def __init__(self, directory: Path, count: int, featurizer: Featurizer) -> None:
        self.paths = [directory / f"partition-{k:05d}.parquet" for k in range(count)]
        self.count = count
        self.featurizer = featurizer
        self._writers: dict[int, pq.ParquetWriter] = {}
        self._schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame, hashes: np.ndarray) -> None:
        frame = spill_columns(frame, self.featurizer)
        partition = spill_partition(hashes, self.count)
        order = np.argsort(partition, kind="stable")
        bounds = np.searchsorted(partition[order], np.arange(self.count + 1))
        table = pa.Table.from_pandas(frame.iloc[order], preserve_index=False)
        if self._schema is None:
            self._schema = self._fixed_schema(table.schema)
        table = table.cast(self._schema)
        for k in range(self.count):
            if bounds[k + 1] > bounds[k]:
                if k not in self._writers:
                    # Uncompressed: a spill file is read back once, from the page cache (snappy: 1.7x slower to write).
                    self._writers[k] = pq.ParquetWriter(self.paths[k], self._schema, compression="none")
                self._writers[k].write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]))

    def _fixed_schema(self, inferred: pa.Schema) -> pa.Schema:
        """The first chunk's schema with attribute types fixed (a chunk of all-missing values infers null)."""
        types = {e.name: pa.dictionary(pa.int32(), pa.string()) for e in self.featurizer.event_categorical}
        types |= {s.name: pa.float64() for s in self.featurizer.event_numeric}
        types |= {column: pa.string() for column in self.featurizer.text_columns}
        # Categories stay dictionary-encoded, so a partition reads back as a compact pandas category.
        return pa.schema([field.with_type(types[field.name]) if field.name in types else field for field in inferred])

    def close(self) -> list[Path]:
        """The partition files written (partitions without customers have none)."""
        for writer in self._writers.values():
            writer.close()
        return [self.paths[k] for k in sorted(self._writers)]


def spill_partition(hashes: np.ndarray, count: int) -> np.ndarray:
    """Partition from the high half of the hash; job shards use the low half, so a job's customers
    spread over all partitions whatever ``count`` and the job count are."""
    return ((hashes >> np.uint64(32)) % np.uint64(count)).astype(np.int64)


def read_partition(path: Path, source: str) -> pd.DataFrame:
    """A spill partition as a standard frame; messages about it name the original ``source``."""
    frame = pd.read_parquet(path)
    frame[TIMESTAMP] = frame[TIMESTAMP].astype("datetime64[ns]")
    frame.attrs[SOURCE_ATTR] = source
    return frame


SPILL_PREFIX = "churnformer-spill-"
SPILL_OWNER = "owner"  # inside a spill directory: "<host> <pid>" of the job that made it


@contextmanager
def spill_directory(spill_dir: str | Path | None) -> Iterator[Path]:
    """A new spill directory under ``spill_dir`` (default: the system's temporary directory), removed when the
    job ends; it names the job that owns it, so that a job killed before it could remove it (SIGKILL, the
    machine's memory killer) leaves nothing behind for long: :func:`remove_orphaned_spill_directories`."""
    with tempfile.TemporaryDirectory(prefix=SPILL_PREFIX, dir=spill_dir) as directory:
        (Path(directory) / SPILL_OWNER).write_text(f"{socket.gethostname()} {os.getpid()}")
        yield Path(directory)


def remove_orphaned_spill_directories(spill_dir: str | Path | None) -> tuple[int, int]:
    """Remove the spill directories under ``spill_dir`` whose owning job, on this machine, is gone; returns how
    many and their bytes. Directories of live jobs, of other machines (a shared ``spill_dir``) and without an
    owner (not churnformer's, or from a release that did not name it) are left alone."""
    root = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    removed, size = 0, 0
    for directory in root.glob(f"{SPILL_PREFIX}*"):
        try:
            host, pid = (directory / SPILL_OWNER).read_text().split()
        except (OSError, ValueError):
            continue
        if host != socket.gethostname() or process_alive(int(pid)):
            continue
        size += sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())
        shutil.rmtree(directory, ignore_errors=True)
        removed += 1
    return removed, size


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
