"""The Spark engine: the same rows as the single-machine job bit for bit (messy logs, explanations, a
2 M-event log with a 5,000-event customer, a task Spark retries), its command line, and its errors.

One local[2, 2] session (two cores; a failed task is retried once, as on a cluster) serves every test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from churnformer.errors import InputError, ModelFileError
from churnformer.schema import META_CALIBRATION, METADATA_PREFIX
from churnformer.serving.predictor import Predictor
from tests.conftest import (
    CAMPAIGN_CUTOFF,
    SPARK_TESTS,
    TINY_CUTOFF,
    run_cli,
    run_in_process,
    run_predict,
    write_messy_log,
)

pytest.importorskip("pyspark", reason="the spark extra is not installed (pip install -e '.[dev]' installs it)")
pytestmark = SPARK_TESTS

from pyspark.sql import SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from churnformer.serving.settings import ScoringSettings  # noqa: E402
from churnformer.spark import TableOrigin, TableReading, score_table, summarize  # noqa: E402
from churnformer.spark.job import flat_settings, read_table  # noqa: E402

CSV_TEXT = TableReading(csv_text=True)
CSV_ORIGIN = TableOrigin(events_reading=CSV_TEXT)


@pytest.fixture(scope="module")
def messy(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spark") / "messy.csv"
    write_messy_log(tiny_world[0], path)
    return path


def sorted_by_customer(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("customer_id", kind="stable", ignore_index=True)


def assert_same_rows(spark_rows: pd.DataFrame, local_rows: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(sorted_by_customer(spark_rows), local_rows, check_exact=True)


def counts(summary) -> dict:
    """What a summary says about the data (not about where or how fast it ran)."""
    skipped = {"provider", "engine", "buckets", "shard", "partitions", "wall_s"}
    return {k: v for k, v in vars(summary).items() if k not in skipped and not k.endswith("_s")}


def explained_csv_job(
    spark: SparkSession, events: Path, customers: Path, model: Path, buckets: int, **settings: object
):
    """The Spark job over CSV events and customers, with explanations, persisted."""
    customers_frame = read_table(spark, customers)[0]
    return score_table(
        read_table(spark, events)[0],
        model,
        TINY_CUTOFF,
        customers=customers_frame,
        settings=ScoringSettings.defaults(explain=True, **settings),
        buckets=buckets,
        origin=TableOrigin(events_reading=CSV_TEXT, customers_reading=CSV_TEXT),
    ).persist()


def test_a_messy_log_with_explanations_scores_exactly_as_one_machine(
    spark: SparkSession, trained_run: Path, tiny_world: tuple[Path, Path], messy: Path
) -> None:
    """Copies, customers with no event before the cutoff, a long history, unknown categories and shuffled rows,
    read from CSV with the customer table, spread over 5 buckets: predictions, drivers, effects, rejects and
    every count equal the local job's."""
    customers = tiny_world[1]
    local = Predictor(trained_run).explaining(True).score(messy, TINY_CUTOFF, customers=customers)
    job = explained_csv_job(spark, messy, customers, trained_run / "model.onnx", buckets=5)
    assert_same_rows(job.predictions.toPandas(), local.predictions)
    assert_same_rows(job.rejects.toPandas(), local.rejects)
    assert len(local.rejects) == local.summary.customers_not_scored["no_event_before_cutoff"] > 0
    assert_same_rows(job.effects.toPandas(), local.effects)
    summary = summarize(job)
    assert counts(summary) == counts(local.summary)
    assert (summary.engine, summary.buckets) == ("spark", 5)
    job.unpersist()


def test_a_text_model_scores_exactly_as_one_machine_with_its_encoder_shipped(
    spark: SparkSession, text_run: Path, text_world: tuple[Path, Path], tmp_path: Path
) -> None:
    """The workers read the texts with the encoder's bytes the driver checked and shipped (here from a model
    copied away from its run directory, the encoder named by path): the local job's rows, explanations too."""
    events, customers = text_world
    local = Predictor(text_run).explaining(True).score(events, TINY_CUTOFF, customers=customers)
    alone = tmp_path / "model.onnx"
    shutil.copy(text_run / "model.onnx", alone)
    job = explained_csv_job(
        spark, events, customers, alone, buckets=3, text_encoder=str(text_run / "text_encoder.onnx")
    )
    assert_same_rows(job.predictions.toPandas(), local.predictions)
    assert_same_rows(job.effects.toPandas(), local.effects)
    assert "text" in set(local.effects["group"])
    assert summarize(job).texts["distinct"] >= local.summary.texts["distinct"] > 0
    job.unpersist()


def test_a_task_retried_by_spark_gives_the_same_rows(
    spark: SparkSession, trained_run: Path, tiny_world: tuple[Path, Path]
) -> None:
    """The first attempt of one scoring task fails after it scored its buckets; Spark runs it again (its
    shuffle input fetched anew) and the rows are still the local job's."""
    from pyspark import TaskContext

    events = tiny_world[0]
    local = Predictor(trained_run).score(events, TINY_CUTOFF)

    @F.udf("boolean")  # no type hints: pyspark would try to infer a pandas UDF's eval type from them, and warn
    def fail_first_attempt(customer_id):
        context = TaskContext.get()
        if context.partitionId() == 0 and context.attemptNumber() == 0:
            raise RuntimeError("injected task failure")
        return True

    job = score_table(read_table(spark, events)[0], trained_run, TINY_CUTOFF, buckets=3, origin=CSV_ORIGIN)
    tracker = spark.sparkContext.statusTracker()
    jobs_before = set(tracker.getJobIdsForGroup(None))
    retried = job.predictions.where(fail_first_attempt(F.col("customer_id"))).toPandas()
    assert_same_rows(retried, local.predictions)
    stages = [
        stage for j in set(tracker.getJobIdsForGroup(None)) - jobs_before for stage in tracker.getJobInfo(j).stageIds
    ]
    assert sum(tracker.getStageInfo(stage).numFailedTasks for stage in stages) == 1


@pytest.mark.slow
def test_two_million_events_with_a_skewed_customer_score_exactly_as_one_machine(
    spark: SparkSession, trained_run: Path, world_events: pd.DataFrame, tmp_path: Path
) -> None:
    """Parquet, 2 M events of 120 k customers (copies of the tiny world under new ids) and one customer with
    5,000 events, with integer ids: the buckets churnformer chooses itself, and the local job, agree."""
    copies = -(-2_000_000 // len(world_events))
    codes = world_events["customer_id"].str.removeprefix("C").astype(np.int64).to_numpy()
    frame = world_events.iloc[np.tile(np.arange(len(world_events)), copies)].reset_index(drop=True)
    frame["customer_id"] = np.tile(codes, copies) + np.repeat(np.arange(copies, dtype=np.int64) * 10**6, len(codes))
    skewed = world_events.sample(5_000, replace=True, random_state=0).assign(customer_id=-1)
    skewed["timestamp"] = pd.date_range("2023-01-01", "2023-09-29", periods=5_000).astype(str)
    frame = pd.concat([frame, skewed], ignore_index=True)
    path = tmp_path / "events.parquet"
    frame.to_parquet(path, index=False, row_group_size=250_000)
    local = Predictor(trained_run).score(path, TINY_CUTOFF)
    job = score_table(spark.read.parquet(str(path)), trained_run, TINY_CUTOFF).persist()
    assert_same_rows(job.predictions.toPandas(), local.predictions)
    summary = summarize(job)
    assert counts(summary) == counts(local.summary)
    assert summary.rows_read == len(frame) >= 2_000_000
    assert summary.events_ignored["truncated"] >= 5_000 - 32  # the skewed customer, held whole in one bucket
    assert summary.buckets == max(spark.sparkContext.defaultParallelism, 3)
    job.unpersist()


def test_the_command_line_writes_the_local_jobs_files(
    trained_run: Path, tiny_world: tuple[Path, Path], messy: Path, tmp_path: Path
) -> None:
    """``churnformer-predict engine=spark spark.master=local[2]`` as a user types it (progress bars on): a
    Parquet dataset that pandas reads, equal to the local job's file, the same rejects file byte for byte and
    the same summary counts."""
    customers = tiny_world[1]
    local = tmp_path / "local.parquet"
    run_predict(trained_run, messy, local, f"customers={customers}")
    out = tmp_path / "spark.parquet"
    args = ["engine=spark", "spark.master=local[2]", "+spark.conf.spark.sql.shuffle.partitions=3", "progress=true"]
    finished = run_predict(trained_run, messy, out, f"customers={customers}", *args)
    local_summary = json.loads((tmp_path / "local.parquet.summary.json").read_text())
    scored = f"scored {local_summary['customers_scored']:,} of {local_summary['customers_seen']:,} customers"
    assert scored in finished.stdout and ", Spark, " in finished.stdout
    assert out.is_dir() and not list(tmp_path.glob(".*partial*"))
    assert_same_rows(pd.read_parquet(out), pd.read_parquet(local))
    suffix = ".rejects.csv"
    assert (tmp_path / f"spark.parquet{suffix}").read_bytes() == (tmp_path / f"local.parquet{suffix}").read_bytes()
    spark_summary = json.loads((tmp_path / "spark.parquet.summary.json").read_text())
    assert spark_summary["engine"] == "spark" and spark_summary["buckets"] >= 2
    for key in ("rows_read", "customers_seen", "customers_scored", "customers_not_scored", "events_ignored"):
        assert spark_summary[key] == local_summary[key]
    evaluated = tmp_path / "eval"
    args = (f"predictions={out}", f"events={messy}", f"cutoff={TINY_CUTOFF}", "horizon_days=60", f"output={evaluated}")
    run_cli("churnformer-evaluate", *args, cwd=tmp_path)
    assert (evaluated / "metrics.json").is_file()


def test_bad_columns_and_model_files_are_refused_before_any_task(
    spark: SparkSession, trained_run: Path, tiny_world: tuple[Path, Path], world_events: pd.DataFrame, tmp_path: Path
) -> None:
    """The local job's messages, raised on the driver from the schema; no Spark job has run."""
    events = spark.createDataFrame(world_events.drop(columns=["amount"]))
    jobs_before = len(spark.sparkContext.statusTracker().getJobIdsForGroup(None))
    with pytest.raises(InputError, match=r"required column\(s\) \['amount'\] not found"):
        score_table(events, trained_run, TINY_CUTOFF, buckets=2)
    with pytest.raises(ModelFileError, match="model file not found"):
        score_table(events, tmp_path / "missing.onnx", TINY_CUTOFF, buckets=2)
    proto = onnx.load(trained_run / "model.onnx")
    kept = [p for p in proto.metadata_props if p.key != METADATA_PREFIX + META_CALIBRATION]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, tmp_path / "uncalibrated.onnx")
    with pytest.raises(ModelFileError, match="no reference percentiles"):
        score_table(spark.createDataFrame(world_events), tmp_path / "uncalibrated.onnx", TINY_CUTOFF, buckets=2)
    assert len(spark.sparkContext.statusTracker().getJobIdsForGroup(None)) == jobs_before


def test_unparseable_timestamps_found_by_a_worker_end_in_one_line(
    spark: SparkSession, trained_run: Path, world_events: pd.DataFrame, tmp_path: Path
) -> None:
    """The worker's InputError comes back as itself, not as Spark's exception around a traceback; the command
    line prints it as its one line and leaves nothing at ``output``."""
    bad = world_events.copy()
    bad.loc[100, "timestamp"] = "garbage"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    job = score_table(read_table(spark, path)[0], trained_run, TINY_CUTOFF, buckets=2, origin=CSV_ORIGIN)
    with pytest.raises(InputError, match=r"column 'timestamp': missing or unparseable timestamps .*'garbage'"):
        summarize(job)
    out = tmp_path / "out.parquet"
    args = (f"model={trained_run}", f"events={path}", f"cutoff={TINY_CUTOFF}", f"output={out}", "progress=false")
    line = run_in_process("churnformer-predict", *args, "engine=spark").error_line
    assert "unparseable timestamps" in line and "'garbage'" in line
    assert list(tmp_path.iterdir()) == [path]


def test_command_line_settings(trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events = tiny_world[0]
    common = (f"model={trained_run}", f"events={events}", f"cutoff={TINY_CUTOFF}", "engine=spark")
    line = run_in_process("churnformer-predict", *common, f"output={tmp_path / 'out.csv'}").error_line
    assert "engine=spark writes a Parquet dataset" in line
    line = run_in_process("churnformer-predict", *common, f"output={tmp_path / 'o.parquet'}", "shard=0/2").error_line
    assert "engine=spark spreads the customers" in line
    line = run_in_process(
        "churnformer-predict", *common, f"output={tmp_path / 'o.parquet'}", "text_cache=t.npz"
    ).error_line
    assert "text_cache=t.npz: engine=local only" in line
    line = run_in_process("churnformer-predict", *common, "spark.conf.spark.executor.memory=2g").error_line
    assert "Spark settings are added with +spark.conf.spark.executor.memory=2g" in line
    assert flat_settings({"spark": {"sql": {"shuffle": {"partitions": 8}}}, "spark.a": 1}) == {
        "spark.sql.shuffle.partitions": 8,
        "spark.a": 1,
    }


def test_a_model_with_aggregates_stacked_trees_and_embeddings_scores_exactly_as_one_machine(
    spark: SparkSession, stacked_run: Path, tiny_world: tuple[Path, Path], messy: Path
) -> None:
    """The aggregates are computed per customer in the buckets as on one machine, the stacked trees run there,
    and the embedding columns come with the predictions, bit-identical."""
    customers = tiny_world[1]
    settings = ScoringSettings.defaults(embeddings=True)
    local = Predictor(stacked_run, settings).score(messy, TINY_CUTOFF, customers=customers)
    assert "embedding_0" in local.predictions.columns
    job = score_table(
        read_table(spark, messy)[0],
        stacked_run / "model.onnx",
        TINY_CUTOFF,
        customers=read_table(spark, customers)[0],
        settings=settings,
        buckets=4,
        origin=TableOrigin(events_reading=CSV_TEXT, customers_reading=CSV_TEXT),
    )
    assert_same_rows(job.predictions.toPandas(), local.predictions)


def test_a_model_trained_with_campaigns_scores_exactly_as_one_machine(
    spark: SparkSession, campaign_run: Path, campaign_world: dict[str, Path]
) -> None:
    """What a contact changes (churn_uplift_*, spend_uplift_*, contact_value, response_segment) per customer in
    the buckets as on one machine."""
    events, customers = campaign_world["events"], campaign_world["customers"]
    local = Predictor(campaign_run).score(events, CAMPAIGN_CUTOFF, customers=customers)
    assert {"contact_value", "response_segment", "churn_uplift_60d"} <= set(local.predictions.columns)
    job = score_table(
        read_table(spark, events)[0],
        campaign_run / "model.onnx",
        CAMPAIGN_CUTOFF,
        customers=read_table(spark, customers)[0],
        buckets=3,
        origin=TableOrigin(events_reading=CSV_TEXT, customers_reading=CSV_TEXT),
    )
    assert_same_rows(job.predictions.toPandas(), local.predictions)
