"""A training set featurized in bounded memory, partition by partition of the log's customers
(``churnformer-featurize memory_budget_mb=...``), for logs that a process cannot hold whole.

The scoring job's pattern (:mod:`churnformer.serving.partition`): the log is read in chunks, twice. The first
pass finds where the log ends and which customers it holds, and keeps the events of a sample of customers to fit
the featurizer on: every customer while they fit in the budget, then half of them by a hash of the id, then a
quarter, ... (every event of each customer kept). The second pass writes the chunks into hash partitions on disk,
in the fitted featurizer's column types. Each partition, every event of its customers, is then featurized at
every cutoff against the whole log's end and written as shards (:class:`~churnformer.data.store.TrainingSetWriter`),
with its customers' contacts (``data.campaigns``): no step holds more than one partition's events, and the shards
read back in the training set's order.

Features and labels are per customer, so when the featurizer is fitted on every customer the shards hold exactly
the training set :func:`~churnformer.data.training_set.build_training_set` builds in memory, whatever the number
of partitions; with a sample, its vocabularies and scales are those of a random share of the customers (the
manifest says which share).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.campaigns import check_campaigns
from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, customer_hash
from churnformer.data.featurizer import Featurizer
from churnformer.data.labels import LabelSpec
from churnformer.data.parts import (
    Featurization,
    FeaturizeRequest,
    PartitionedResult,
    Tally,
    customers_of,
    featurize_part,
    fit_bucket,
    fit_on_sample,
    observed_log,
)
from churnformer.data.sequences import BuildReport
from churnformer.data.training_set import require_split, sampled_customers
from churnformer.data.window import HorizonGrid
from churnformer.errors import InputError
from churnformer.memory import release_memory
from churnformer.serving.partition import SpillWriter, read_partition, spill_directory

# Chunks after which the first pass merges the ids it has seen (each chunk's distinct ids, kept until then).
IDS_MERGED_EVERY = 8
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
        if len(self.ids) >= IDS_MERGED_EVERY:  # a customer's id once, not once per chunk it appears in
            self.ids = [pd.unique(np.concatenate(self.ids))]
        self.fit_events.append(self._in_sample(chunk))
        while sum(map(len, self.fit_events)) > fit_cap:  # halve the sample: drop the customers of odd buckets
            self.fit_buckets *= 2
            self.fit_events = [self._in_sample(frame) for frame in self.fit_events]

    def _in_sample(self, frame: pd.DataFrame) -> pd.DataFrame:
        if self.fit_buckets == 1:
            return frame
        return frame.loc[fit_bucket(frame[CUSTOMER_ID], self.fit_buckets) == 0]


def featurize_partitioned(
    request: FeaturizeRequest, spill_dir: str | Path | None = None
) -> tuple[Featurizer, HorizonGrid, PartitionedResult, BuildReport]:
    """Featurize the request's log into its writer partition by partition (spill files under ``spill_dir``);
    returns the featurizer, the observed horizon grid, what was done and the main cutoff's build report (for
    :meth:`TrainingSetWriter.close`)."""
    source, writer, windows, build = request.source, request.writer, request.windows, request.build
    val_fraction, spec = request.val_fraction, request.spec
    first = LogPass()
    for chunk in source.event_chunks(CHUNK_ROWS):
        first.add(chunk, build.fit_cap)
    if first.events == 0:
        raise InputError("the event log has no events")
    end, grid = observed_log(first.first_ns, first.last_ns, windows, request.grid)
    all_ids = np.unique(np.concatenate(first.ids)) if len(first.ids) > 1 else np.sort(first.ids[0])
    sample = request.sample_customers
    kept = sampled_customers(all_ids, sample) if sample is not None else None
    customers = source.customer_table()
    fit_events = pd.concat(first.fit_events, ignore_index=True)
    first.fit_events = []
    featurizer = fit_on_sample(request, fit_events, kept, customers)
    del fit_events
    release_memory()
    campaigns = None
    if request.campaigns is not None:  # checked against the customers featurized and the whole log's end
        featurized = pd.DataFrame({CUSTOMER_ID: kept if kept is not None else all_ids})
        campaigns = check_campaigns(request.campaigns, featurized, end)
    plan = Featurization(featurizer, windows, grid, val_fraction, spec, end, request.texts, campaigns)
    count = build.partitions_for(first.events)
    logging.getLogger(__name__).info(
        "featurizing %d events in %d partition(s); featurizer fitted on 1/%d of the customers",
        first.events,
        count,
        first.fit_buckets,
    )
    tally = Tally()
    with spill_directory(spill_dir) as directory:
        spill = SpillWriter(directory, count, featurizer)
        for chunk in source.event_chunks(CHUNK_ROWS):
            if kept is not None:
                chunk = chunk.loc[chunk[CUSTOMER_ID].isin(kept).to_numpy()]
            if len(chunk):
                spill.write(partition_columns(chunk, featurizer, spec), customer_hash(chunk[CUSTOMER_ID]))
        for path in spill.close():
            events = read_partition(path, "the event log")
            tally.add(featurize_part(events, customers_of(customers, events), plan, writer))
            del events
            release_memory()
    require_split(tally.main_count, tally.training, tally.validation, val_fraction, "the event log")
    summary = campaigns.summary() if campaigns is not None else None
    result = PartitionedResult(count, 1 / first.fit_buckets, tally.log_facts(customers), summary)
    return featurizer, grid, result, tally.report()


def partition_columns(chunk: pd.DataFrame, featurizer: Featurizer, spec: LabelSpec) -> pd.DataFrame:
    """The columns a partition needs: the standard ones, the featurizer's and the one that says what a
    purchase is; every spill file then has the same schema."""
    wanted = [CUSTOMER_ID, TIMESTAMP, AMOUNT, *featurizer.event_attribute_columns]
    if spec.event_type_column in chunk.columns:
        wanted.append(spec.event_type_column)
    return chunk[list(dict.fromkeys(wanted))]
