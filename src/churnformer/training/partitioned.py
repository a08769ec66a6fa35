"""A training set featurized in bounded memory, partition by partition of the log's customers
(``churnformer-featurize memory_budget_mb=...``), for logs that a process cannot hold whole.

The scoring job's pattern (:mod:`churnformer.serving.partition`): the log is read in chunks, twice. The first
pass finds where the log ends and which customers it holds, and keeps the events of a sample of customers to fit
the featurizer on: every customer while they fit in the budget, then half of them by a hash of the id, then a
quarter, ... (every event of each customer kept). The second pass writes the chunks into hash partitions on disk,
in the fitted featurizer's column types. Each partition, every event of its customers, is then featurized at
every cutoff against the whole log's end and written as shards (:class:`~churnformer.data.store.TrainingSetWriter`):
no step holds more than one partition's events, and the shards read back in the training set's order.

Features and labels are per customer, so when the featurizer is fitted on every customer the shards hold exactly
the training set :func:`~churnformer.data.training_set.build_training_set` builds in memory, whatever the number
of partitions; with a sample, its vocabularies and scales are those of a random share of the customers (the
manifest says which share).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP
from churnformer.data.featurizer import Featurizer, FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.sequences import BuildReport, combined_report
from churnformer.data.sources import EventLogSource
from churnformer.data.store import TrainingSetWriter
from churnformer.data.training_set import (
    fit_training_featurizer,
    observable_grid,
    require_split,
    sampled_customers,
    window_examples,
)
from churnformer.data.window import HorizonGrid, Window, log_end_ns, require_events_before
from churnformer.errors import ConfigError, InputError
from churnformer.serving.job import release_memory
from churnformer.serving.partition import SpillWriter, customer_hash, read_partition, spill_directory

# Peak resident bytes per event of a partition while it is featurized at every cutoff (the partition's frame,
# its sequences and labels, the shards being written; the spill pass before the first), and per event of the
# sample the featurizer is fitted on (the first pass's frames, then the fit). Measured on the training benchmark's
# 10 M-event log (3 rolling cutoffs, in 1 and 4 partitions): at most 310 and 125 bytes; rounded up.
BUILD_BYTES_PER_EVENT = 400
FIT_BYTES_PER_EVENT = 160
# What the process holds besides them: interpreter, pandas, Arrow and torch (530 MB measured), and what the
# partitions featurized so far leave allocated (up to 350 MB over 4 partitions of the 10 M-event log).
BASE_BYTES = 900 * 2**20
# Input rows read at a time in both passes.
CHUNK_ROWS = 500_000


@dataclass
class LogPass:
    """What the first pass over the log learned: its size, period and customers, and the fit sample (every
    event of the customers whose hash is 0 modulo ``fit_buckets``)."""

    events: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    ids: list[np.ndarray] = field(default_factory=list)
    fit_buckets: int = 1
    fit_events: list[pd.DataFrame] = field(default_factory=list)

    def add(self, chunk: pd.DataFrame, fit_cap: int) -> None:
        stamps = chunk[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        self.events += len(chunk)
        self.first_ns = min(stamps.min(), self.first_ns if self.first_ns is not None else stamps.min())
        self.last_ns = max(stamps.max(), self.last_ns if self.last_ns is not None else stamps.max())
        self.ids.append(pd.unique(chunk[CUSTOMER_ID].to_numpy()))
        self.fit_events.append(self._in_sample(chunk))
        while sum(map(len, self.fit_events)) > fit_cap:  # halve the sample: drop the customers of odd buckets
            self.fit_buckets *= 2
            self.fit_events = [self._in_sample(frame) for frame in self.fit_events]

    def _in_sample(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.fit_buckets == 1:
            return frame
        return frame.loc[fit_bucket(frame[CUSTOMER_ID], self.fit_buckets) == 0]


def fit_bucket(ids: pd.Series, buckets: int) -> np.ndarray:
    """The fit-sample bucket of each id (a power-of-two modulus of the stable customer hash, from bits that
    neither job shards nor spill partitions use, so the sample is a random share of every partition)."""
    return ((customer_hash(ids) >> np.uint64(16)) % np.uint64(buckets)).astype(np.int64)


@dataclass
class PartitionedBuild:
    """How a log is featurized in bounded memory: ``memory_budget_mb`` for the process (the number of partitions
    and the fit sample follow from it and the log's size), or ``partitions`` given outright (the featurizer then
    fitted on every customer unless a budget is given too)."""

    memory_budget_mb: float | None = None
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None and (isinstance(self.partitions, bool) or int(self.partitions) < 1):
            raise ConfigError(f"partitions={self.partitions}: give a number of partitions >= 1 (or leave it out)")
        if self.memory_budget_mb is not None and self.memory_budget_mb * 2**20 <= BASE_BYTES:
            raise ConfigError(
                f"memory_budget_mb={self.memory_budget_mb} is below the {BASE_BYTES // 2**20} MB the process takes "
                "before any event is read; raise it"
            )

    @property
    def enabled(self) -> bool:
        return self.memory_budget_mb is not None or self.partitions is not None

    def _events_within(self, bytes_per_event: int) -> int | None:
        if self.memory_budget_mb is None:
            return None
        return max(1, int((self.memory_budget_mb * 2**20 - BASE_BYTES) / bytes_per_event))

    @property
    def fit_cap(self) -> int:
        """The most events the fit sample may hold."""
        return self._events_within(FIT_BYTES_PER_EVENT) or np.iinfo(np.int64).max

    def partitions_for(self, events: int) -> int:
        if self.partitions is not None:
            return int(self.partitions)
        return max(1, math.ceil(events / self._events_within(BUILD_BYTES_PER_EVENT)))


@dataclass
class PartitionedResult:
    """What :func:`featurize_partitioned` wrote, for the manifest and the model card."""

    partitions: int
    fit_share: float
    log_facts: dict


def featurize_partitioned(
    source: EventLogSource,
    writer: TrainingSetWriter,
    windows: list[Window],
    grid: HorizonGrid,
    features: FeaturizerConfig,
    val_fraction: float,
    spec: LabelSpec,
    sample_customers: float | int | None,
    build: PartitionedBuild,
    spill_dir: str | Path | None = None,
) -> tuple[Featurizer, HorizonGrid, PartitionedResult, BuildReport]:
    """Featurize ``source``'s log into ``writer`` partition by partition; returns the featurizer, the observed
    horizon grid, what was done and the main cutoff's build report (for :meth:`TrainingSetWriter.close`)."""
    if features.text:
        raise ConfigError(
            f"data.features.text={list(features.text)} with memory_budget_mb/partitions: a partitioned "
            "featurization does not embed texts yet; featurize in memory (leave both out)"
        )
    log = logging.getLogger(__name__)
    first = LogPass()
    for chunk in source.event_chunks(CHUNK_ROWS):
        first.add(chunk, build.fit_cap)
    if first.events == 0:
        raise InputError("the event log has no events")
    where = "the event log"
    require_events_before(pd.Series(pd.to_datetime([first.first_ns])), windows[0], where)
    end = log_end_ns(np.array([first.last_ns], dtype=np.int64).view("datetime64[ns]"))
    grid = observable_grid(end, windows, grid, where)
    all_ids = np.unique(np.concatenate(first.ids)) if len(first.ids) > 1 else np.sort(first.ids[0])
    kept = sampled_customers(all_ids, sample_customers) if sample_customers is not None else None
    customers = source.customer_table()
    fit_events = pd.concat(first.fit_events, ignore_index=True)
    first.fit_events = []
    if kept is not None:
        fit_events = fit_events.loc[fit_events[CUSTOMER_ID].isin(kept).to_numpy()]
    featurizer = fit_training_featurizer(fit_events, customers, windows[0], features, val_fraction)
    del fit_events
    release_memory()
    count = build.partitions_for(first.events)
    log.info(
        "featurizing %d events in %d partition(s); featurizer fitted on 1/%d of the customers",
        first.events,
        count,
        first.fit_buckets,
    )
    facts = {"events": 0, "customers": 0}
    period: list[pd.Timestamp] = []
    reports, main_count, training, validation = [], 0, 0, 0
    with spill_directory(spill_dir) as directory:
        spill = SpillWriter(directory, count, featurizer)
        for chunk in source.event_chunks(CHUNK_ROWS):
            if kept is not None:
                chunk = chunk.loc[chunk[CUSTOMER_ID].isin(kept).to_numpy()]
            if len(chunk):
                spill.write(_spilled_columns(chunk, featurizer, spec), customer_hash(chunk[CUSTOMER_ID]))
        for path in spill.close():
            events = read_partition(path, where)
            facts["events"] += len(events)
            facts["customers"] += int(events[CUSTOMER_ID].nunique())
            period += [events[TIMESTAMP].min(), events[TIMESTAMP].max()]
            mine = (
                customers.loc[customers[CUSTOMER_ID].isin(events[CUSTOMER_ID]).to_numpy()]
                if customers is not None
                else None
            )
            for part in window_examples(events, mine, windows, grid, featurizer, val_fraction, spec, log_end=end):
                cutoffs = np.full(len(part.sequences), part.cutoff)
                writer.add(part.sequences, part.labels, grid.days, part.is_validation, cutoffs)
                if part.cutoff == 0:
                    reports.append(part.sequences.report)
                    main_count += len(part.sequences)
                    validation += int(part.is_validation.sum())
                training += int((~part.is_validation).sum())
            del events, mine
            release_memory()
    require_split(main_count, training, validation, val_fraction, where)
    facts |= {
        "first_event": str(min(period)),
        "last_event": str(max(period)),
        "static_attributes": [c for c in customers.columns if c != CUSTOMER_ID] if customers is not None else [],
    }
    result = PartitionedResult(count, 1 / first.fit_buckets, facts)
    return featurizer, grid, result, combined_report(reports)


def _spilled_columns(chunk: pd.DataFrame, featurizer: Featurizer, spec: LabelSpec) -> pd.DataFrame:
    """The columns a partition needs: the standard ones, the featurizer's and the one that says what a
    purchase is; every spill file then has the same schema."""
    wanted = [CUSTOMER_ID, TIMESTAMP, AMOUNT, *featurizer.event_attribute_columns]
    if spec.event_type_column in chunk.columns:
        wanted.append(spec.event_type_column)
    return chunk[list(dict.fromkeys(wanted))]
