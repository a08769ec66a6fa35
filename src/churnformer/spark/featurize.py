"""``churnformer-featurize engine=spark``: the partitioned featurization (:mod:`churnformer.training.partitioned`,
its parts :mod:`churnformer.data.parts`) with Spark reading the log and grouping it by customer, and each bucket of
customers featurized by the same code in a Python worker, which writes its shards into the output directory: one
that the driver and every worker see (a local one with ``spark.master=local[*]``, a mounted one on a cluster).

The local build reads the log twice; Spark passes over it three times:

1. every batch of rows reports its span, its event count and, per share of the customers (every one, half, a
   quarter, ...), how many of its events the fit sample of that share would keep (and its ids when
   ``data.sample_customers`` is set); the driver picks the share that fits the budget, as the local build does;
2. the rows of the fit sample come to the driver with their place in the file and are read there in file order:
   the featurizer is fitted on exactly the rows, in exactly the order, the local build fits it on;
3. each bucket, every event of its customers and their rows of the customer table, is featurized at every cutoff
   (:func:`~churnformer.data.parts.featurize_part`) and written as shards named after the bucket; one
   summary row per bucket comes back, and the driver writes the manifest.

Features and labels are per customer and the training set is read back in its own order (by cutoff, then
customer), so the dataset equals the local one example for example, whatever the buckets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from churnformer.data.campaigns import check_campaigns
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, ColumnMapping, load_customers, load_events
from churnformer.data.featurizer import Featurizer
from churnformer.data.parts import (
    Featurization,
    FeaturizeRequest,
    PartitionedResult,
    Tally,
    featurize_part,
    fit_bucket,
    fit_buckets_within,
    fit_on_sample,
    fit_sample_counts,
    observed_log,
)
from churnformer.data.sequences import BuildReport
from churnformer.data.store import TrainingSetWriter
from churnformer.data.training_set import require_split, sampled_customers
from churnformer.data.window import HorizonGrid
from churnformer.errors import ConfigError, InputError
from churnformer.spark.buckets import BUCKET, TableReading
from churnformer.spark.job import read_table, start_session
from churnformer.spark.scoring import bucket_column, bucket_count, column, worker_errors

ROW = "churnformer_row"  # an event's place in the file (Spark's monotonically increasing id, read before a shuffle)
SUMMARY = "summary_json"
SUMMARY_SCHEMA = T.StructType([T.StructField(SUMMARY, T.StringType())])


@dataclass(frozen=True)
class Reading:
    """How a worker turns a batch of the events table into the standard frame the local build reads."""

    reading: TableReading
    columns: ColumnMapping
    source: str

    def events(self, table: pa.Table, where: str) -> pd.DataFrame:
        table = table.drop_columns([c for c in (ROW, BUCKET) if c in table.column_names])
        raw = self.reading.frame(table, self.columns.customer_id)
        return load_events(raw, self.columns, f"{self.source} ({where})")


def _summary_batch(summary: dict[str, Any]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({SUMMARY: [json.dumps(summary)]})


def survey(reading: Reading, with_ids: bool, batches: Any) -> Any:
    """Pass 1 (``mapInArrow``): per batch of rows, its span, events, fit-sample counts and (``with_ids``) ids."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        events = reading.events(pa.Table.from_batches([batch]), "a Spark batch of rows")
        stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        summary = {
            "first_ns": int(stamps.min()),
            "last_ns": int(stamps.max()),
            "events": len(events),
            "fit_counts": fit_sample_counts(events[CUSTOMER_ID]).tolist(),
        }
        if with_ids:
            summary["ids"] = pd.unique(events[CUSTOMER_ID].to_numpy()).tolist()
        yield _summary_batch(summary)


def fit_rows(reading: Reading, buckets: int, batches: Any) -> Any:
    """Pass 2 (``mapInArrow``): the rows, as Spark read them, of the customers in the fit sample of ``buckets``."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        events = reading.events(pa.Table.from_batches([batch]), "a Spark batch of rows")
        yield batch.filter(pa.array(fit_bucket(events[CUSTOMER_ID], buckets) == 0))


@dataclass(frozen=True)
class BucketFeaturizer:
    """What every bucket's call needs (pickled to the workers once)."""

    reading: Reading
    customers_reading: TableReading | None
    plan: Featurization
    kept: np.ndarray | None
    output: str
    shard_examples: int


def featurize_bucket(job: BucketFeaturizer, key: tuple[Any, ...], events: pa.Table, customers: pa.Table) -> pa.Table:
    """Pass 3 (``applyInArrow`` over the cogrouped bucket): featurize the bucket into shards of its own; one
    summary row (the writer's state and the bucket's :class:`Tally`)."""
    bucket = key[0].as_py()
    if events.num_rows == 0:  # customers in the customer table without events
        return pa.table({SUMMARY: pa.array([], pa.string())})
    where = f"Spark bucket {bucket}; row numbers count within the bucket"
    frame = job.reading.events(events, where)
    static = None
    if job.customers_reading is not None:
        id_column = job.reading.columns.customer_id
        table = job.customers_reading.frame(customers.drop_columns([BUCKET]), id_column)
        static = load_customers(table, id_column, name=f"the customer table ({where})")
    if job.kept is not None:
        frame = frame.loc[frame[CUSTOMER_ID].isin(job.kept).to_numpy()].reset_index(drop=True)
    if len(frame) == 0:
        return pa.table({SUMMARY: pa.array([], pa.string())})
    if static is not None:
        static = static.loc[static[CUSTOMER_ID].isin(frame[CUSTOMER_ID]).to_numpy()]
    writer = TrainingSetWriter(job.output, job.shard_examples, prefix=f"shard-b{bucket:05d}")
    tally = featurize_part(frame, static, job.plan, writer)
    return pa.table({SUMMARY: [json.dumps({"writer": writer.state(), "tally": asdict(tally)})]})


def featurize_with_spark(
    request: FeaturizeRequest, spark_settings: dict[str, Any]
) -> tuple[Featurizer, HorizonGrid, PartitionedResult, BuildReport]:
    """:func:`~churnformer.training.partitioned.featurize_partitioned` on Spark: the same returns, the same shards'
    contents. ``spark_settings``: ``master``, ``buckets``, ``conf`` (as ``churnformer-predict``'s)."""
    source, writer, windows, features = request.source, request.writer, request.windows, request.features
    if features.text:  # each bucket's worker would embed into its own table: rows that do not agree
        raise ConfigError(
            f"data.features.text={list(features.text)} with engine=spark: Spark does not embed texts yet; "
            "featurize on this machine (engine=local, with memory_budget_mb or partitions)"
        )
    files = source.event_files()
    if files is None:
        raise ConfigError("engine=spark featurizes files: a log given as files (data=csv, data=synthetic)")
    events_path, customers_path = files
    spark = start_session(spark_settings, progress=False, debug=False, app="churnformer-featurize")
    frame, reading = read_table(spark, events_path)
    frame = frame.withColumn(ROW, F.monotonically_increasing_id())
    events_reading = Reading(reading, source.columns, str(events_path))
    with worker_errors():
        first, ids, kept = _survey(frame, events_reading, request.sample_customers, request.campaigns is not None)
        end, grid = observed_log(first["first_ns"], first["last_ns"], windows, request.grid)
        campaigns = None
        if request.campaigns is not None:  # checked on the driver, against the customers featurized
            featurized = pd.DataFrame({CUSTOMER_ID: kept if kept is not None else ids})
            campaigns = check_campaigns(request.campaigns, featurized, end)
        buckets = fit_buckets_within(np.asarray(first["fit_counts"]), request.build.fit_cap)
        sample = frame.mapInArrow(partial(fit_rows, events_reading, buckets), schema=frame.schema).toArrow()
        order = np.argsort(sample[ROW].to_numpy(), kind="stable")
        fit_events = events_reading.events(sample.take(order), "the featurizer's sample")
        customers = source.customer_table()
        featurizer = fit_on_sample(request, fit_events, kept, customers)
        plan = Featurization(featurizer, windows, grid, request.val_fraction, request.spec, end, None, campaigns)
        tally, count = _featurize_buckets(
            spark, frame, events_reading, customers_path, plan, kept, writer, spark_settings
        )
    require_split(tally.main_count, tally.training, tally.validation, request.val_fraction, str(events_path))
    summary = campaigns.summary() if campaigns is not None else None
    result = PartitionedResult(count, 1 / buckets, tally.log_facts(customers), summary)
    return featurizer, grid, result, tally.report()


def _survey(
    frame: DataFrame, reading: Reading, sample_customers: float | int | None, with_ids: bool
) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """Pass 1 summed over the batches; every customer's id (when ``data.sample_customers`` or ``with_ids`` asks
    for them, else None) and the customers ``data.sample_customers`` keeps (None: everyone)."""
    with_ids = with_ids or sample_customers is not None
    rows = frame.mapInArrow(partial(survey, reading, with_ids), SUMMARY_SCHEMA).collect()
    if not rows:
        raise InputError(f"{reading.source}: no events (the table is empty)")
    parts = [json.loads(row[SUMMARY]) for row in rows]
    total = {
        "first_ns": min(p["first_ns"] for p in parts),
        "last_ns": max(p["last_ns"] for p in parts),
        "events": sum(p["events"] for p in parts),
        "fit_counts": np.sum([p["fit_counts"] for p in parts], axis=0),
    }
    if not with_ids:
        return total, None, None
    ids = pd.unique(np.concatenate([np.asarray(p["ids"]) for p in parts]))
    return total, ids, sampled_customers(ids, sample_customers) if sample_customers is not None else None


def _featurize_buckets(
    spark: SparkSession,
    frame: DataFrame,
    reading: Reading,
    customers_path: Path | None,
    plan: Featurization,
    kept: np.ndarray | None,
    writer: TrainingSetWriter,
    spark_settings: dict[str, Any],
) -> tuple[Tally, int]:
    """Pass 3: every bucket featurized into ``writer``'s directory, their shards counted in ``writer``; what they
    hold, and how many buckets there were."""
    count = spark_settings.get("buckets") or bucket_count(spark, frame)
    bucket = bucket_column(count)
    id_column = reading.columns.customer_id
    events = frame.drop(ROW).withColumn(BUCKET, bucket(column(id_column)))
    if customers_path is not None:
        customers, customers_reading = read_table(spark, customers_path)
        customers = customers.withColumn(BUCKET, bucket(column(id_column)))
    else:
        customers_reading = None
        customers = spark.createDataFrame([], T.StructType([T.StructField(BUCKET, T.IntegerType())]))
    events, customers = (part.repartition(count, BUCKET) for part in (events, customers))
    job = BucketFeaturizer(reading, customers_reading, plan, kept, str(writer.directory), writer.shard_examples)
    rows = (
        events.groupBy(BUCKET)
        .cogroup(customers.groupBy(BUCKET))
        .applyInArrow(partial(featurize_bucket, job), schema=SUMMARY_SCHEMA)
        .collect()
    )
    tally = Tally()
    for row in rows:
        part = json.loads(row[SUMMARY])
        writer.absorb(part["writer"])
        tally.add(Tally(**part["tally"]))
    return tally, count
