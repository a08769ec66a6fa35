"""Scoring Spark tables on the driver's side: checks, the bucketed plan, and the job's parts as DataFrames.

The plan: every event gets its customer's bucket (the stable customer hash), the events and the
customer table are grouped by bucket, and each bucket is scored by one Python call
(:mod:`churnformer.spark.buckets`). Everything that can be checked without reading the data (the model
file, the columns, the settings) is checked here, before any task runs. Nothing held on the driver grows
with the log: it collects one summary row per bucket.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_type

from churnformer.data.events import (
    CUSTOMER_ID,
    ColumnMapping,
    check_event_columns,
    load_customers,
    load_events,
)
from churnformer.data.window import Window, require_events_before
from churnformer.errors import ChurnformerError, ConfigError, InputError, ModelFileError
from churnformer.files import ModelBytes
from churnformer.serving.output import ScoringSummary
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from churnformer.spark.buckets import (
    AS_STORED,
    BUCKET,
    EFFECT,
    FIRST_EVENT,
    LAST_EVENT,
    PREDICTION,
    REASON,
    RECORD,
    REJECT,
    SUMMARY,
    SUMMARY_JSON,
    BucketScorer,
    TableReading,
    bucket_of,
    score_bucket,
)

# Events per bucket when the bucket count is left to churnformer: one Python call holds a bucket whole,
# about serving.partition.PEAK_BYTES_PER_EVENT each (450 MB per million), in every Python worker at once.
EVENTS_PER_BUCKET = 1_000_000


@dataclass(frozen=True)
class SparkScoring:
    """A scoring job on Spark, not yet run: its parts are lazy DataFrames over one frame of ``records``.

    Each action on a part scores the log again unless the job is persisted first
    (``job = score_job(...).persist()``), as ``churnformer-predict engine=spark`` does.
    """

    records: DataFrame
    prediction_columns: tuple[str, ...]
    effect_columns: tuple[str, ...]
    window: Window
    source: str
    provider: str
    buckets: int

    @property
    def predictions(self) -> DataFrame:
        """One row per customer scored, with exactly ``churnformer-predict``'s columns (in no set order)."""
        return self._part(PREDICTION, self.prediction_columns)

    @property
    def rejects(self) -> DataFrame:
        """``customer_id, reason`` for every customer seen and not scored."""
        return self._part(REJECT, (CUSTOMER_ID, REASON))

    @property
    def effects(self) -> DataFrame | None:
        """With explanations: every present driver group's effects per customer explained (long format)."""
        return self._part(EFFECT, self.effect_columns) if self.effect_columns else None

    def _part(self, kind: str, columns: tuple[str, ...]) -> DataFrame:
        return self.records.where(F.col(RECORD) == kind).select(*[column(name) for name in columns])

    def persist(self, level: StorageLevel = StorageLevel.MEMORY_AND_DISK) -> SparkScoring:
        self.records.persist(level)
        return self

    def unpersist(self) -> None:
        self.records.unpersist()


@dataclass(frozen=True)
class TableOrigin:
    """Where a job's Spark tables came from: their names in messages, and how their values become what
    churnformer would read from their files (:class:`TableReading`: a CSV file's text, nanosecond
    timestamps). ``churnformer-predict engine=spark`` reads files; a notebook's tables are as stored."""

    events_source: str = "events DataFrame"
    customers_source: str = "customers DataFrame"
    events_reading: TableReading = AS_STORED
    customers_reading: TableReading = AS_STORED


def score_table(
    events: DataFrame,
    model: str | Path | ModelBytes,
    cutoff: str,
    customers: DataFrame | None = None,
    columns: ColumnMapping | Mapping[str, str | None] | None = None,
    settings: ScoringSettings | None = None,
    *,
    buckets: int | None = None,
    origin: TableOrigin = TableOrigin(),
) -> SparkScoring:
    """Score every customer of the ``events`` table at ``cutoff`` on Spark, as ``churnformer-predict`` does
    on one machine, bit for bit; see :class:`SparkScoring` for the parts.

    ``columns`` maps the table's column names as in :meth:`Predictor.score`; ``settings``: how to score
    (default: ``conf/serving/predict.yaml``'s; with ``settings.explain`` the customers it selects are
    explained), with onnxruntime given ``spark.task.cpus`` threads and one stream per task unless ``threads``
    or ``streams`` is set. ``buckets``: how many groups of customers (each scored by one Python call); default:
    about a million events each, at least one per core (counting the events costs one pass). ``origin``: where
    the tables came from (:class:`TableOrigin`; the defaults: tables as they are stored).
    """
    source = origin.events_source
    if buckets is not None and not (isinstance(buckets, int) and buckets >= 1):
        raise ConfigError(f"buckets={buckets!r}: a whole number >= 1, or null to choose from the event count")
    spark = events.sparkSession
    model = model if isinstance(model, ModelBytes) else ModelBytes.read(model)
    settings = for_spark(settings or ScoringSettings.defaults(), int(spark.conf.get("spark.task.cpus", "1")))
    predictor = Predictor(model, settings)  # the model file is checked here, before any task
    if predictor.texts is not None:  # workers read the texts with the encoder the driver checked
        model = replace(model, text_encoder=predictor.texts.encoder.file)
        settings = replace(settings, text_encoder=None)
    if predictor.reference is None:
        raise ModelFileError(
            f"{predictor.path}: the model stores no reference percentiles, so deciles and segments would depend "
            "on how customers are split over buckets; export it from a training run (which stores them)"
        )
    mapping = predictor.column_mapping(columns)
    with predictor.naming_the_model():
        check_event_columns(events.columns, mapping, source)
        predictor.featurizer.require_event_columns(events.columns, source)
    wanted = [mapping.customer_id, mapping.timestamp, mapping.amount, *predictor.featurizer.event_attribute_columns]
    events = events.select(*[column(name) for name in dict.fromkeys(wanted)])
    if customers is not None:  # the id column, checked as the single-machine job checks it
        load_customers(pd.DataFrame(columns=customers.columns), mapping.customer_id, name=origin.customers_source)
    csv_ids = origin.events_reading.csv_text
    id_type = pa.string() if csv_ids else to_arrow_type(events.schema[mapping.customer_id].dataType)
    schema = records_schema(predictor, mapping, id_type, cutoff)
    count = buckets or bucket_count(spark, events)
    scorer = BucketScorer(
        model=model,
        settings=settings,
        cutoff=cutoff,
        columns=mapping,
        events_reading=origin.events_reading,
        customers_reading=origin.customers_reading if customers is not None else None,
        source=source,
        schema=schema,
    )
    bucket = bucket_column(count)
    keyed_events = events.withColumn(BUCKET, bucket(column(mapping.customer_id)))
    keyed_customers = (
        customers.withColumn(BUCKET, bucket(column(mapping.customer_id)))
        if customers is not None
        else spark.createDataFrame([], T.StructType([T.StructField(BUCKET, T.IntegerType())]))
    )
    # Both sides partitioned alike, `count` tasks: the grouping below needs no shuffle of its own, and
    # Spark's default of 200 shuffle partitions would mean 200 tasks however few buckets there are.
    keyed_events, keyed_customers = (frame.repartition(count, BUCKET) for frame in (keyed_events, keyed_customers))
    records = (
        keyed_events.groupBy(BUCKET)
        .cogroup(keyed_customers.groupBy(BUCKET))
        .applyInArrow(partial(score_bucket, scorer), schema=from_arrow_schema(schema))
    )
    effects = records_part_columns(schema, EFFECT)
    return SparkScoring(
        records=records,
        prediction_columns=records_part_columns(schema, PREDICTION),
        effect_columns=effects if settings.explain is not None else (),
        window=predictor.window(cutoff),
        source=source,
        provider=predictor.provider,
        buckets=count,
    )


def for_spark(settings: ScoringSettings, task_cpus: int) -> ScoringSettings:
    """``settings`` as a Spark task scores with them: one stream (Spark runs tasks side by side) of
    ``spark.task.cpus`` onnxruntime threads unless set; a text cache is refused (each worker embeds the texts of
    its own buckets)."""
    if settings.text_cache is not None:
        raise ConfigError(
            f"text_cache={settings.text_cache}: engine=local only; with engine=spark each worker embeds the texts "
            "of its own buckets"
        )
    return replace(settings, streams=settings.streams or 1, threads=settings.threads or task_cpus)


def summarize(job: SparkScoring) -> ScoringSummary:
    """The counts a single-machine job reports (rows read, customers scored and not scored by reason,
    events ignored by reason, unknown categories), summed over the buckets. An action: it runs the
    scoring unless the job is persisted and already ran."""
    with worker_errors():
        rows = job.records.where(F.col(RECORD) == SUMMARY).select(SUMMARY_JSON).collect()
    if not rows:
        raise InputError(f"{job.source}: no events (the table is empty)")
    summary = ScoringSummary(provider=job.provider, engine="spark", buckets=job.buckets)
    span = []
    for row in rows:
        part = json.loads(row[SUMMARY_JSON])
        summary.add(ScoringSummary(**part["summary"]))
        span += [part[FIRST_EVENT], part[LAST_EVENT]]
    require_events_before(np.array(span, dtype=np.int64).view("datetime64[ns]"), job.window, job.source)
    for name in ("featurize_s", "infer_s", "explain_s"):  # worker seconds, summed over buckets
        setattr(summary, name, round(getattr(summary, name), 3))
    return summary


def records_schema(predictor: Predictor, mapping: ColumnMapping, id_type: pa.DataType, cutoff: str) -> pa.Schema:
    """The Arrow schema of a bucket's records: taken from scoring one made-up customer on the driver, so
    the columns and types are the ones the scoring code produces, never a second list of them."""
    window = predictor.window(cutoff)
    raw = pd.DataFrame(
        {
            mapping.customer_id: pa.array([0] if pa.types.is_integer(id_type) else ["0"]).cast(id_type).to_pandas(),
            mapping.timestamp: [window.feature_end - pd.Timedelta(days=1)],
            mapping.amount: [0.0],
            **{encoder.name: ["?"] for encoder in predictor.featurizer.event_categorical},
            **{scaler.name: [0.0] for scaler in predictor.featurizer.event_numeric},
            **{column: [None] for column in predictor.featurizer.text_columns},
        }
    )
    explain = predictor.settings.explain
    if explain is not None:  # explained whatever the selection, so the schema has the explanation columns
        predictor = predictor.explaining(replace(explain, only=None))
    result = predictor.score_frame(load_events(raw, mapping), window, None)
    fields = [pa.field(RECORD, pa.string())]
    fields += arrow_fields(predictor.retention(result.predictions))
    fields += [pa.field(REASON, pa.string())]
    if result.effects is not None:
        fields += [f for f in arrow_fields(result.effects) if f.name != CUSTOMER_ID]
    fields += [pa.field(SUMMARY_JSON, pa.string())]
    names = [f.name for f in fields]
    assert len(set(names)) == len(names), f"record columns clash: {names}"
    return pa.schema(fields)


def records_part_columns(schema: pa.Schema, kind: str) -> tuple[str, ...]:
    """The columns of one part, in the order the single-machine job writes them."""
    names = schema.names
    if kind == PREDICTION:
        return tuple(names[1 : names.index(REASON)])
    return (CUSTOMER_ID, *names[names.index(REASON) + 1 : names.index(SUMMARY_JSON)])


def arrow_fields(frame: pd.DataFrame) -> list[pa.Field]:
    """Nullable Arrow fields of a frame's columns; strings as Spark's StringType reads them."""
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    return [
        pa.field(f.name, pa.string() if pa.types.is_large_string(f.type) else f.type, nullable=True) for f in schema
    ]


def bucket_column(buckets: int) -> Any:
    """A pandas UDF: the bucket of each customer id (:func:`bucket_of`), vectorized over Arrow batches."""

    def bucket(ids: pd.Series) -> pd.Series:
        return pd.Series(bucket_of(ids, buckets))

    return F.pandas_udf(bucket, T.IntegerType())


def bucket_count(spark: SparkSession, events: DataFrame) -> int:
    """About EVENTS_PER_BUCKET events per bucket, and at least one bucket per core."""
    try:
        cores = spark.sparkContext.defaultParallelism
    except Exception:  # Spark Connect has no SparkContext
        cores = int(spark.conf.get("spark.sql.shuffle.partitions", "8"))
    return max(cores, math.ceil(events.count() / EVENTS_PER_BUCKET))


def column(name: str) -> Any:
    """A column by its exact name (dots and spaces included, as a file's header may have them)."""
    return F.col("`" + name.replace("`", "``") + "`")


CHURNFORMER_ERROR = re.compile(r"^(churnformer(?:\.\w+)+)\.(\w+): (.+)$", re.MULTILINE)


@contextmanager
def worker_errors() -> Iterator[None]:
    """A user error raised in a Python worker (bad input found while reading a bucket) reaches the driver
    as Spark's exception around the worker's traceback; raise it again as the churnformer error it was."""
    try:
        yield
    except Exception as error:
        match = CHURNFORMER_ERROR.search(str(error))
        if match is None:
            raise
        kind = getattr(importlib.import_module(match[1]), match[2], None)
        if not (isinstance(kind, type) and issubclass(kind, ChurnformerError)):
            raise
        raise kind(match[3]) from error
