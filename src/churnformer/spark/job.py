"""``churnformer-predict engine=spark``: the batch job of ``serving.job`` with Spark doing the reading, the
grouping by customer and the scoring in parallel.

The files are checked on the driver before Spark starts (the same checks and messages as the local job).
Spark reads them (CSV with every column as text, typed again in the workers exactly as the local job
types a CSV file), scores the customers bucket by bucket (:mod:`churnformer.spark.scoring`), and the job
is persisted so the predictions, the rejects and the summary come from one scoring pass. The predictions
are a Parquet dataset directory written through Spark's committer to a hidden name and renamed into place
last, so ``output`` only ever holds a complete result.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession

from churnformer.data.events import check_table_file, csv_separator, load_customers
from churnformer.errors import ConfigError
from churnformer.files import ModelBytes, write_atomically
from churnformer.model_card import summary_line as card_summary
from churnformer.serving.output import check_output_path, describe, finished_at
from churnformer.serving.partition import file_columns
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from churnformer.spark.buckets import AS_STORED, TableReading
from churnformer.spark.scoring import TableOrigin, column, for_spark, score_table, summarize, worker_errors

# Rows the driver holds at a time while it writes the rejects file.
REJECTS_CHUNK_ROWS = 100_000


def run_spark_prediction(config: dict[str, Any]) -> dict[str, Path]:
    """The job from ``conf/serving/predict.yaml``'s settings, ``spark.*`` included."""
    started = time.perf_counter()
    output = check_output_path(config["output"]).resolve()
    if output.suffix.lower() == ".csv":
        raise ConfigError(f"output={config['output']}: engine=spark writes a Parquet dataset; name it .parquet")
    if config["shard"] not in (None, ""):
        raise ConfigError(f"shard={config['shard']}: engine=spark spreads the customers over its workers itself")
    settings = ScoringSettings.of(config)
    model = ModelBytes.read(config["model"])
    predictor = Predictor(model, for_spark(settings, task_cpus=1))  # the model and files, checked before Spark starts
    if predictor.card is not None:
        print(card_summary(predictor.card))
    mapping = predictor.column_mapping(config["columns"])
    events = predictor.open_events(config["events"], mapping)
    customers = Path(config["customers"]) if config["customers"] is not None else None
    if customers is not None:
        columns = file_columns(customers, check_table_file(customers))
        load_customers(pd.DataFrame(columns=columns), mapping.customer_id, name=str(customers))
    spark = start_session(config["spark"], progress=config["progress"], debug=config["debug"])
    events_frame, events_reading = read_table(spark, events.path, events.columns)
    customers_frame, customers_reading = read_table(spark, customers) if customers is not None else (None, None)
    job = score_table(
        events_frame,
        model,
        config["cutoff"],
        customers=customers_frame,
        columns=mapping,
        settings=settings,
        buckets=config["spark"]["buckets"],
        origin=TableOrigin(str(events.path), str(customers), events_reading, customers_reading or AS_STORED),
    ).persist()
    with worker_errors():
        summary = summarize(job)
        paths = {"rejects": write_rejects(job.rejects, output.with_name(output.name + ".rejects.csv"))}
        if job.effects is not None:
            paths["drivers"] = write_dataset(job.effects, output.with_name(output.name + ".drivers.parquet"))
        summary.wall_s = round(time.perf_counter() - started, 3)
        summary.scored_at = finished_at()
        summary_text = json.dumps(asdict(summary), indent=2)
        paths["summary"] = write_atomically(
            output.with_name(output.name + ".summary.json"), lambda p: p.write_text(summary_text)
        )
        paths = {"predictions": write_dataset(job.predictions, output), **paths}  # last: it marks completion
    job.unpersist()
    print(describe(summary))
    print("  ".join(f"{name}: {path}" for name, path in paths.items()))
    return paths


def start_session(
    settings: dict[str, Any], progress: bool, debug: bool, app: str = "churnformer-predict"
) -> SparkSession:
    """The session the job (Spark's application ``app``) runs in: ``spark.master`` and every ``spark.conf.*``
    setting passed through; an active session (the job called from a notebook) is used as it is."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise ConfigError("engine=spark needs a Java 17 (or newer) runtime: java is not on PATH and JAVA_HOME is unset")
    # Workers run this interpreter, which has churnformer installed; a cluster sets its own.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app)
    if settings["master"]:
        builder = builder.master(settings["master"])
    logging = files("churnformer.spark").joinpath("log4j2.properties")
    level = "warn" if debug else "off"
    builder = builder.config(
        "spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={logging} -Dchurnformer.spark.log.level={level}"
    )
    builder = builder.config("spark.ui.showConsoleProgress", str(bool(progress)).lower())
    for key, value in flat_settings(settings["conf"]).items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()


def flat_settings(conf: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``+spark.conf.spark.sql.shuffle.partitions=8`` arrives nested, key by key; Spark wants dotted names."""
    flat = {}
    for key, value in conf.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_table(spark: SparkSession, path: Path, columns: list[str] | None = None) -> tuple[DataFrame, TableReading]:
    """A CSV or Parquet file as a Spark DataFrame (``columns`` only), and how its values become what the local
    job reads from the file: CSV as text (quoting as pandas reads it), typed in the workers; Parquet's
    nanosecond timestamps as int64 nanoseconds, turned back into timestamps there."""
    if not check_table_file(path):
        reader = spark.read.options(header=True, sep=csv_separator(path), quote='"', escape='"', inferSchema=False)
        frame, reading = reader.csv(str(path)), TableReading(csv_text=True)
    else:
        schema = pq.read_schema(path)
        nanos = tuple(
            f.name
            for f in schema
            if pa.types.is_timestamp(f.type) and f.type.unit == "ns" and (columns is None or f.name in columns)
        )
        if nanos:
            spark.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")
        frame, reading = spark.read.parquet(str(path)), TableReading(nanosecond_timestamps=nanos)
    return (frame.select(*[column(name) for name in columns]) if columns else frame), reading


def write_dataset(frame: DataFrame, path: Path) -> Path:
    """A Parquet dataset directory at ``path``, written through Spark's committer under a hidden name and
    renamed into place when complete (what was at ``path`` before is replaced only then)."""
    partial = path.with_name(f".{path.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        frame.write.mode("overwrite").parquet(str(partial))
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        os.replace(partial, path)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def write_rejects(rejects: DataFrame, path: Path) -> Path:
    """The rejects as the local job writes them (one CSV, sorted by customer id), streamed through the driver
    one chunk at a time."""
    columns = rejects.columns

    def write(partial: Path) -> None:
        rows = rejects.orderBy(*columns).toLocalIterator()
        pd.DataFrame(columns=columns).to_csv(partial, index=False)
        while chunk := [tuple(row) for _, row in zip(range(REJECTS_CHUNK_ROWS), rows, strict=False)]:
            pd.DataFrame(chunk, columns=columns).to_csv(partial, mode="a", header=False, index=False)

    return write_atomically(path, write)
