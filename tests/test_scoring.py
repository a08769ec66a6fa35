"""Batch scoring: retention outputs, exact agreement of sharded, spilled and in-memory runs, atomic
output, loud provider fallback, int8 quantization, and no torch in the scoring process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from churnformer.errors import ChurnformerError, ConfigError
from churnformer.model_card import summary_line as card_summary
from churnformer.serving.batching import padded_width, token_budget_batches
from churnformer.serving.job import score_log
from churnformer.serving.output import write_result
from churnformer.serving.partition import (
    SPILL_OWNER,
    SPILL_PREFIX,
    Shard,
    customer_hash,
    partitions_needed,
    streams_within,
    string_columns,
)
from churnformer.serving.predictor import Predictor, stream_layout
from churnformer.serving.retention import ReferencePercentiles, SegmentRules, add_retention_columns, descending_decile
from churnformer.serving.settings import ScoringSettings
from tests.conftest import TINY_CUTOFF, run_predict, tightest_budget_mb, with_settings, write_messy_log

LEVELS = np.arange(1, 100, dtype=float)


def test_deciles_follow_the_reference_percentiles() -> None:
    values = np.array([0.0, 9.99, 10.0, 50.0, 89.99, 90.0, 1000.0])
    assert descending_decile(values, LEVELS.tolist()).tolist() == [10, 10, 9, 5, 2, 1, 1]


def rules(**changes) -> SegmentRules:
    """churnformer-predict's default segment rules with ``changes``."""
    from churnformer.defaults import serving_defaults

    return SegmentRules(**{**serving_defaults("predict")["segments"], **changes})


def test_segments_follow_the_configured_thresholds() -> None:
    predictions = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "churn_probability": [0.9, 0.1, 0.6, 0.2],
            "expected_spend": [50.0, 360.0, 2.0, 0.8],
            "spend_if_retained": [500.0, 400.0, 5.0, 1.0],
        }
    )
    out = add_retention_columns(predictions, rules(risk_threshold=0.5, high_value_quantile=0.5))
    assert out["segment"].tolist() == ["high value at risk", "high value loyal", "low value at risk", "low value loyal"]
    absolute = add_retention_columns(predictions, rules(risk_threshold=0.95, high_value_min_spend=450.0))
    assert absolute["segment"].tolist() == ["high value loyal", "low value loyal", "low value loyal", "low value loyal"]
    reference = ReferencePercentiles(
        {
            "churn_probability": (LEVELS / 100).tolist(),
            "expected_spend": LEVELS.tolist(),
            "spend_if_retained": (LEVELS * 10).tolist(),
        }
    )
    fixed = add_retention_columns(predictions, rules(high_value_quantile=0.45), reference)
    assert fixed["churn_risk_decile"].tolist() == [1, 9, 4, 8]
    assert fixed["segment"].tolist()[:2] == ["high value at risk", "low value loyal"]  # threshold 450
    assert fixed["value_decile"].tolist() == [5, 6, 10, 10]  # spend if retained against 10..990


def test_value_basis_expected_spend_discounts_churn() -> None:
    """On the expected-spend basis the likely churner "a" is not high value: its expected spend already
    counts the 90% chance of losing it. The default basis (spend if retained) puts it at the top."""
    predictions = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d"],
            "churn_probability": [0.9, 0.1, 0.6, 0.2],
            "expected_spend": [50.0, 360.0, 2.0, 0.8],
            "spend_if_retained": [500.0, 400.0, 5.0, 1.0],
        }
    )
    expected = add_retention_columns(predictions, rules(value="expected", high_value_quantile=0.5))
    assert expected["segment"].tolist()[:2] == ["high value at risk", "high value loyal"]  # median split
    top = add_retention_columns(predictions, rules(value="expected", high_value_quantile=0.75))
    retained = add_retention_columns(predictions, rules(high_value_quantile=0.75))
    assert top["segment"].tolist()[0] == "low value at risk"
    assert retained["segment"].tolist()[0] == "high value at risk"
    with pytest.raises(ChurnformerError, match=r"segments\.value='spend'"):
        rules(value="spend")


def test_batches_cover_every_row_once_within_the_token_budget() -> None:
    lengths = np.random.default_rng(0).integers(1, 129, size=5000)
    batches = token_budget_batches(lengths, batch_tokens=4096, max_batch_size=512)
    rows = np.concatenate(batches)
    assert np.array_equal(np.sort(rows), np.arange(len(lengths)))
    for batch in batches:
        widths = padded_width(lengths[batch])
        assert (widths == widths[0]).all() and (widths >= lengths[batch]).all()
        assert len(batch) * widths[0] <= max(4096, widths[0]) and len(batch) <= 512
    assert padded_width(np.array([1, 8, 9, 33, 65, 128])).tolist() == [1, 8, 12, 40, 80, 128]


def test_shard_spec() -> None:
    assert Shard.parse("2/8") == Shard(2, 8) and Shard.parse(None) == Shard()
    for bad in ("8/8", "x", "1/0", "-1/2"):
        with pytest.raises(ChurnformerError, match="shard="):
            Shard.parse(bad)
    ids = np.array(["a", "b", "c"], dtype=object)
    assert np.array_equal(customer_hash(ids), customer_hash(ids.copy()))  # stable


@pytest.mark.parametrize(
    "ids",
    [
        np.array(["C1", "b", "C1", "x-y", "é"], dtype=object),
        pd.Series(["C1", "b", "C1", "x-y", "é"]),  # Arrow strings, as pandas reads Parquet
        pd.Series(["C1", "b", "C1"], dtype=object),
        pd.Series(pd.Categorical(["C1", "b", "C1"])),
        np.array(["C1", "b"]),
        pd.Series([5, 3, 5, 10**15]),
    ],
)
def test_shards_are_those_of_every_earlier_release_whatever_the_id_column_type(ids) -> None:
    """Shard and partition membership comes from this hash: a user's N jobs must keep splitting their
    customers the same way, so the fast path for Arrow strings gives each id the value it always had."""
    assert np.array_equal(customer_hash(ids), pd.util.hash_array(np.asarray(ids), categorize=True))


@pytest.fixture(scope="module")
def model(trained_run: Path) -> Predictor:
    return Predictor(trained_run / "model.onnx", ScoringSettings.defaults(progress=False))


@pytest.fixture(scope="module")
def full(model: Predictor, tiny_world: tuple[Path, Path]):
    events, customers = tiny_world
    return score_log(model, events, TINY_CUTOFF, customers)


def test_model_carries_reference_percentiles(model: Predictor, full) -> None:
    assert model.reference is not None
    for column in ("churn_probability", "expected_spend", "spend_if_retained"):
        assert len(model.reference.percentiles(column)) == 99
    deciles = full.predictions["churn_risk_decile"]
    assert deciles.between(1, 10).all() and deciles.nunique() >= 5


def test_job_shards_concatenate_to_the_full_result(model: Predictor, tiny_world: tuple[Path, Path], full) -> None:
    events, customers = tiny_world
    parts = [score_log(model, events, TINY_CUTOFF, customers, shard=Shard(i, 3)) for i in range(3)]
    assert all(len(p.predictions) for p in parts)
    joined = pd.concat([p.predictions for p in parts]).sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(joined, full.predictions, check_exact=True)
    assert sum(p.summary.customers_seen for p in parts) == full.summary.customers_seen
    assert sum(p.summary.rows_read for p in parts) == full.summary.rows_read


def test_a_score_does_not_depend_on_the_batch_it_is_in(model: Predictor, tiny_world: tuple[Path, Path]) -> None:
    """Thousands of copies of one customer fill batches of every size and position: every copy must score
    bit for bit the same. Shards and spill partitions of a small log cannot show this: onnxruntime splits
    only large tensors between threads, and an elementwise kernel that rounds a block's tail differently
    (Softplus, Log) changes a few customers by one ulp in a 500,000-customer job."""
    events = pd.read_csv(tiny_world[0], dtype={"customer_id": str}, parse_dates=["timestamp"])
    before = events.loc[events["timestamp"] <= TINY_CUTOFF]
    lengths = before.groupby("customer_id").size()
    for customer in (lengths.idxmin(), lengths.index[len(lengths) // 2]):  # the shortest history, a typical one
        mine = events.loc[events["customer_id"] == customer]
        copies = pd.concat([mine.assign(customer_id=f"copy{i:05d}") for i in range(6000)], ignore_index=True)
        scores = model.score(copies, TINY_CUTOFF).predictions
        numeric = scores.select_dtypes("number")
        assert (numeric.nunique() == 1).all(), numeric.nunique()[numeric.nunique() > 1].to_dict()


def test_stream_layout_shares_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("churnformer.serving.predictor.available_cores", lambda: 4)
    assert stream_layout(0, 0) == (4, 1)  # one single-threaded stream per core
    assert stream_layout(0, 2) == (2, 2)
    assert stream_layout(1, 0) == (1, 4)
    assert stream_layout(3, 0) == (3, 1)
    assert stream_layout(8, 1) == (8, 1)  # asked for: oversubscribed as asked
    assert stream_layout(0, 0, gpu=True) == (2, 0)
    assert stream_layout(0, 0, most=3) == (3, 1)  # automatic streams fit the memory budget
    assert stream_layout(0, 0, most=1) == (1, 4)
    assert stream_layout(6, 0, most=1) == (6, 1)  # asked for: as asked
    assert (streams_within(1024), streams_within(4096)) == (1, 13)


def test_the_memory_budget_counts_every_stream() -> None:
    """Each stream after the first holds one more batch: the budget left for events shrinks, and a budget that
    cannot hold the streams is refused with a way out."""
    assert partitions_needed(10_000_000, 2048, streams=4) > partitions_needed(10_000_000, 2048, streams=1)
    assert partitions_needed(0, 1100, streams=1) == 1
    with pytest.raises(ConfigError, match=r"memory_budget_mb=1100 is below the 1284 MB .* 4 scoring stream"):
        partitions_needed(0, 1100, streams=4)


@pytest.mark.parametrize(("streams", "threads"), [(1, 1), (1, 2), (3, 1)])
def test_a_score_does_not_depend_on_streams_or_threads(
    trained_run: Path, tiny_world: tuple[Path, Path], full, streams: int, threads: int
) -> None:
    """Batches run side by side on single-threaded sessions by default; a customer's score is the same
    however many streams and threads the job has."""
    predictor = Predictor(
        trained_run / "model.onnx", ScoringSettings.defaults(streams=streams, threads=threads, batch_tokens=256)
    )
    assert predictor.streams == streams
    events, customers = tiny_world
    result = score_log(predictor, events, TINY_CUTOFF, customers)
    pd.testing.assert_frame_equal(result.predictions, full.predictions, check_exact=True)


def test_parquet_string_categories_are_read_dictionary_encoded(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    pd.DataFrame({"event_type": ["a", None], "store": [1, 2], "note": ["x", "y"]}).to_parquet(path)
    assert string_columns(path, ["event_type", "store"]) == ("event_type",)  # numbers are read as they are


@pytest.mark.parametrize("fmt", ["csv", pytest.param("parquet", marks=pytest.mark.slow)])
def test_spilled_chunks_score_exactly_like_memory(
    model: Predictor, tiny_world: tuple[Path, Path], full, tmp_path: Path, fmt: str
) -> None:
    events, customers = tiny_world
    if fmt == "parquet":
        path = tmp_path / "events.parquet"
        pd.read_csv(events, dtype={"customer_id": str}).to_parquet(path, row_group_size=997)
        events = path
        assert "event_type" in model.open_events(path, model.columns).dictionary_columns
    budget = tightest_budget_mb(model.streams)
    spilled = score_log(with_settings(model, memory_budget_mb=budget), events, TINY_CUTOFF, customers, chunk_rows=1000)
    assert spilled.summary.partitions > 1
    pd.testing.assert_frame_equal(spilled.predictions, full.predictions, check_exact=True)
    pd.testing.assert_frame_equal(spilled.rejects, full.rejects)
    assert spilled.summary.events_ignored == full.summary.events_ignored
    assert spilled.summary.input_profile == full.summary.input_profile  # the partitions' profiles add up


def test_scores_are_identical_when_the_log_is_truncated_at_the_cutoff(
    model: Predictor, tiny_world: tuple[Path, Path], full, tmp_path: Path
) -> None:
    """No event after the cutoff reaches any feature: removing them all changes no score."""
    events, customers = tiny_world
    frame = pd.read_csv(events, dtype={"customer_id": str})
    before = pd.to_datetime(frame["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)
    assert 0 < before.sum() < len(frame)
    truncated = tmp_path / "truncated.csv"
    frame[before].to_csv(truncated, index=False)
    result = score_log(model, truncated, TINY_CUTOFF, customers)
    pd.testing.assert_frame_equal(result.predictions, full.predictions, check_exact=True)
    assert result.summary.events_ignored["after_cutoff"] == 0 < full.summary.events_ignored["after_cutoff"]


@pytest.mark.parametrize("spilled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_customer_of_a_messy_log_is_scored_or_rejected(
    model: Predictor, tiny_world: tuple[Path, Path], tmp_path: Path, spilled: bool
) -> None:
    """Duplicates, future-only customers, unseen categories, long histories, shuffled rows: the accounting
    still adds up, in memory and spilled, for the whole log and for each shard."""
    events, customers = tiny_world
    budget = tightest_budget_mb(model.streams) if spilled else 4096
    path = tmp_path / "messy.csv"
    messy, copies, odd = write_messy_log(events, path)
    distinct = set(messy["customer_id"])
    for shard in (Shard(), Shard(0, 2), Shard(1, 2)):
        tight = with_settings(model, memory_budget_mb=budget)
        result = score_log(tight, path, TINY_CUTOFF, customers, shard=shard, chunk_rows=777)
        mine = {c for c in distinct if customer_hash(np.array([c], dtype=object))[0] % shard.count == shard.index}
        scored, rejected = set(result.predictions["customer_id"]), set(result.rejects["customer_id"])
        assert scored | rejected == mine and not scored & rejected
        summary = result.summary
        not_scored = sum(summary.customers_not_scored.values())
        assert summary.customers_scored + not_scored == summary.customers_seen == len(mine)
        assert {c for c in mine if c.startswith("late-")} <= rejected
        if "busy" in mine:
            assert summary.events_ignored["truncated"] > 0
    full = score_log(with_settings(model, memory_budget_mb=budget), path, TINY_CUTOFF, customers, chunk_rows=777)
    full = full.summary

    def before_cutoff(rows: pd.DataFrame) -> int:
        return int((pd.to_datetime(rows["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)).sum())

    copies_before = before_cutoff(copies)
    assert full.events_ignored["duplicate"] == copies_before > 0
    assert full.events_ignored["after_cutoff"] >= 40 + len(copies) - copies_before
    assert full.unknown_categories["events.event_type"] == before_cutoff(odd) > 0
    assert full.rows_read == len(messy)


def test_a_shard_with_no_event_before_the_cutoff_rejects_everyone(model: Predictor, tmp_path: Path) -> None:
    """Found by fuzzing: an empty shard used to crash the batcher."""
    path = tmp_path / "events.csv"
    ids = [f"c{i}" for i in range(40)]
    late = [c for c in ids if customer_hash(np.array([c], dtype=object))[0] % 2 == 1]
    stamps = ["2030-01-01" if c in late else "2023-06-01" for c in ids]
    columns = {"amount": 1.0, "event_type": "purchase", "channel": "web", "n_items": 1}
    pd.DataFrame({"customer_id": ids, "timestamp": stamps, **columns}).to_csv(path, index=False)
    result = score_log(model, path, TINY_CUTOFF, shard=Shard(1, 2))
    assert result.predictions.empty and sorted(result.rejects["customer_id"]) == sorted(late)


def test_interrupted_write_leaves_no_file(full, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "scores.parquet"

    def interrupted(self, path, **kwargs) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_result(full, output)
    assert not output.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial left behind


def test_rescoring_is_byte_identical(trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, customers = tiny_world
    outputs = []
    for name in ("a", "b"):
        output = tmp_path / name / "scores.parquet"
        output.parent.mkdir()
        finished = run_predict(trained_run, events, output, f"customers={customers}")
        outputs.append(output.read_bytes())
    assert outputs[0] == outputs[1]
    assert finished.out.splitlines()[0] == card_summary(Predictor(trained_run).card)  # the model card's line first


def test_unavailable_provider_fallback_is_loud(trained_run: Path, capsys: pytest.CaptureFixture) -> None:
    predictor = Predictor(
        trained_run, ScoringSettings.defaults(providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    )
    if predictor.provider == "CUDAExecutionProvider":
        pytest.skip("this machine has a usable CUDA provider")
    assert predictor.provider == "CPUExecutionProvider"
    assert "CUDAExecutionProvider was requested but is not usable" in capsys.readouterr().err


def test_int8_quantization_is_checked_on_validation(
    trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from churnformer.artifacts import quantize

    fp32 = tmp_path / "model.onnx"
    fp32.write_bytes((trained_run / "model.onnx").read_bytes())
    events, customers, cutoff, labels = quantize.run_validation_data(trained_run)
    int8, check = quantize.quantize_checked(fp32, events, customers, cutoff, labels)
    assert check.customers == len(labels) and 0 <= check.max_abs_churn_change < 0.1
    if check.accepted:
        assert int8 == tmp_path / "model.int8.onnx"
        props = {p.key: p.value for p in onnx.load(int8).metadata_props}
        assert props["churnformer.quantized"] == "int8"
        assert "MatMulInteger" in {n.op_type for n in onnx.load(int8).graph.node} or any(
            n.op_type == "DynamicQuantizeMatMul" for n in onnx.load(int8).graph.node
        )
        Predictor(int8)  # loads with its featurizer
    monkeypatch.setattr(quantize, "MAX_AUC_DROP", -1.0)  # any change refused
    refused, check = quantize.quantize_checked(fp32, events, customers, cutoff, labels)
    assert refused is None and not check.accepted and not (tmp_path / "model.int8.onnx").exists()


def test_scoring_and_evaluation_never_import_torch() -> None:
    """A batch scoring job needs onnxruntime, numpy, pandas and pyarrow only: every module of serving/ and
    evaluation/, the schema and the CLI load without torch or Lightning."""
    import churnformer

    package = Path(churnformer.__file__).parent
    modules = [
        f"churnformer.{part}.{path.stem}"
        for part in ("serving", "evaluation")
        for path in (package / part).glob("*.py")
    ]
    code = (
        f"import sys, churnformer.schema, churnformer.cli, {', '.join(modules)}; "
        "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


def test_without_pyspark_the_spark_engine_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from churnformer.cli import engine_job

    for name in [n for n in sys.modules if n.startswith(("churnformer.spark", "pyspark"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(ConfigError, match=r"pip install 'churnformer\[spark\]'"):
        engine_job("spark")
    with pytest.raises(ConfigError, match="engine=ray: choose one of local, spark"):
        engine_job("ray")


def test_spill_directories_of_jobs_that_are_gone_are_removed_by_the_next_job(
    model: Predictor, tiny_world: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A job killed while spilling (SIGKILL) cannot remove its spill directory; the next job that spills there
    removes it, and only such ones: not those of live jobs, of other machines or without an owner."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {
        "dead": f"{socket.gethostname()} {dead.pid}",
        "alive": f"{socket.gethostname()} {os.getpid()}",
        "elsewhere": f"another-host {dead.pid}",
    }
    for name, owner in owners.items():
        (tmp_path / f"{SPILL_PREFIX}{name}").mkdir()
        (tmp_path / f"{SPILL_PREFIX}{name}" / SPILL_OWNER).write_text(owner)
        (tmp_path / f"{SPILL_PREFIX}{name}" / "partition-0.parquet").write_bytes(b"x" * 2**20)
    (tmp_path / f"{SPILL_PREFIX}unowned").mkdir()
    events, customers = tiny_world
    tight = with_settings(model, memory_budget_mb=tightest_budget_mb(model.streams), spill_dir=str(tmp_path))
    result = score_log(tight, events, TINY_CUTOFF, customers, chunk_rows=1000)
    assert result.summary.partitions > 1
    left = sorted(path.name.removeprefix(SPILL_PREFIX) for path in tmp_path.iterdir())
    assert left == ["alive", "elsewhere", "unowned"]  # the job's own directory is gone too
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "removed 1 spill directory (1 MB) left by scoring jobs on this machine that did not finish"
