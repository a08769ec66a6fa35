"""What runs in Spark's Python workers: one bucket of customers scored by the single-machine code path.

Spark sends each bucket (every event of its customers, and their rows of the customer table) to one
call of :func:`score_bucket` as Arrow tables; the call reads them as churnformer reads a file, scores
them with :meth:`Predictor.score_frame` and returns one Arrow table of *records*: the bucket's
predictions, rejects, explanation effects and one summary row, told apart by the ``record`` column.
Returning everything in one frame lets the driver persist the scoring once and read each part from it.

Nothing here depends on which customers share a bucket: a customer's events are ordered by content
(``data.sequences``), batches are bit-invariant and retention columns use the model's reference
percentiles, so a bucket's rows equal the single-machine job's rows for those customers, and a task
that Spark retries returns the same rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from churnformer.data.events import TIMESTAMP, ColumnMapping, customer_hash, load_customers, load_events, read_csv
from churnformer.files import ModelBytes
from churnformer.serving.partition import spill_partition
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings

BUCKET = "churnformer_bucket"
RECORD = "record"
PREDICTION, REJECT, EFFECT, SUMMARY = "prediction", "reject", "effect", "summary"
REASON = "reason"
SUMMARY_JSON = "summary_json"
# Time span of a bucket's events, beside its ScoringSummary in the summary record: the driver checks that
# some event precedes the cutoff, as the single-machine job does over the whole log.
FIRST_EVENT, LAST_EVENT = "first_event_ns", "last_event_ns"


def bucket_of(ids: pd.Series, buckets: int) -> np.ndarray:
    """The bucket of each customer id: the spill partition of the single-machine job with ``buckets``
    partitions (the high half of :func:`customer_hash`), so a customer's bucket never depends on the input."""
    return spill_partition(customer_hash(ids), buckets).astype(np.int32)


@dataclass(frozen=True)
class TableReading:
    """How a Spark table's Arrow batches become what churnformer reads from the file they came from.

    ``csv_text``: every column holds the CSV file's raw text (Spark read it without inferring types), and is
    typed again by pandas' CSV reader exactly as a CSV file is read on one machine. ``nanosecond_timestamps``:
    columns that Spark holds as int64 nanoseconds since the epoch (it cannot hold a Parquet file's nanosecond
    timestamps, pandas' default, as timestamps: ``spark.sql.legacy.parquet.nanosAsLong=true`` reads them so),
    turned back into timestamps to the nanosecond, as pandas reads them.
    """

    csv_text: bool = False
    nanosecond_timestamps: tuple[str, ...] = ()

    def frame(self, table: pa.Table, id_column: str) -> pd.DataFrame:
        for name in self.nanosecond_timestamps:
            if name in table.column_names:
                index = table.column_names.index(name)
                table = table.set_column(index, name, table[name].cast(pa.timestamp("ns")))
        if not self.csv_text:
            return table.to_pandas()
        buffer = io.BytesIO()
        pacsv.write_csv(table, buffer)
        buffer.seek(0)
        return read_csv(buffer, ",", id_column)


# A table whose values are what churnformer would read from its file (a Delta table, Spark-written Parquet).
AS_STORED = TableReading()


@dataclass
class WorkerState:
    """One onnxruntime session per Python worker process, reused by every bucket it scores (sessions
    cannot be pickled, so each worker builds its own from the model bytes)."""

    predictors: dict[tuple[str, str], Predictor] = field(default_factory=dict)

    def predictor(self, model: ModelBytes, settings: ScoringSettings) -> Predictor:
        key = (model.digest, repr(settings))
        if key not in self.predictors:
            self.predictors.clear()  # one model at a time: a worker that moves on frees the last one
            self.predictors[key] = Predictor(model, settings)
        return self.predictors[key]


_WORKER = WorkerState()


@dataclass(frozen=True)
class BucketScorer:
    """What every bucket's call needs, pickled to the workers with the model's bytes (Spark broadcasts a
    command this large once per worker instead of sending it with every task)."""

    model: ModelBytes
    settings: ScoringSettings
    cutoff: str
    columns: ColumnMapping
    events_reading: TableReading
    customers_reading: TableReading | None
    source: str
    schema: pa.Schema


def score_bucket(scorer: BucketScorer, key: tuple[Any, ...], events: pa.Table, customers: pa.Table) -> pa.Table:
    """The function Spark calls once per bucket (with ``scorer`` bound): its events and customer rows in,
    its records out."""
    if events.num_rows == 0:  # a bucket with rows in the customer table and no events
        return scorer.schema.empty_table()
    where = f"{scorer.source} (Spark bucket {key[0].as_py()}; row numbers count within the bucket)"
    predictor = _WORKER.predictor(scorer.model, scorer.settings)
    id_column = scorer.columns.customer_id
    frame = load_events(scorer.events_reading.frame(events.drop_columns([BUCKET]), id_column), scorer.columns, where)
    static = None
    if scorer.customers_reading is not None:
        table = scorer.customers_reading.frame(customers.drop_columns([BUCKET]), id_column)
        static = load_customers(table, id_column, name=where)
    result = predictor.score_frame(frame, predictor.window(scorer.cutoff), static)
    stamps = frame[TIMESTAMP].to_numpy().view(np.int64)
    summary = {"summary": asdict(result.summary), FIRST_EVENT: int(stamps.min()), LAST_EVENT: int(stamps.max())}
    parts = [
        (PREDICTION, predictor.retention(result.predictions)),
        (REJECT, result.rejects),
        (EFFECT, result.effects),
        (SUMMARY, pd.DataFrame({SUMMARY_JSON: [json.dumps(summary)]})),
    ]
    return records(parts, scorer.schema)


def records(parts: list[tuple[str, pd.DataFrame | None]], schema: pa.Schema) -> pa.Table:
    """The parts as one table of ``schema``: each part's columns, null in the columns of the others."""
    tables = []
    for kind, frame in parts:
        if frame is None or len(frame) == 0:
            continue
        fields = pa.schema([schema.field(name) for name in frame.columns])
        table = pa.Table.from_pandas(frame, schema=fields, preserve_index=False)
        tables.append(table.append_column(RECORD, pa.array([kind] * len(frame), pa.string())))
    if not tables:
        return schema.empty_table()
    combined = pa.concat_tables(tables, promote_options="default")
    present = set(combined.column_names)
    columns = [combined[f.name] if f.name in present else pa.nulls(combined.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
