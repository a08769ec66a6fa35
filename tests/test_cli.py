"""End to end through the console entry points, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from churnformer.data.events import load_events
from tests.conftest import TINY_CUTOFF, run_cli, run_in_process


def run_predict(model: Path, events: Path, output: Path, *overrides: str) -> None:
    """The ``churnformer-predict`` console script on the tiny world's cutoff."""
    args = (f"model={model}", f"events={events}", f"cutoff={TINY_CUTOFF}", f"output={output}", "progress=false")
    run_cli("churnformer-predict", *args, *overrides, cwd=output.parent)


# The console scripts as a user runs them, each a new interpreter: the slow tier (the fast one runs the same
# entry points in-process).
pytestmark = pytest.mark.slow


def test_train_writes_a_complete_run_directory(cli_run: Path) -> None:
    """The console script, as a user runs it (progress bar on): every file of a run directory."""
    trained_run = cli_run
    assert (trained_run / "cli.log").is_file() and (trained_run / ".hydra" / "overrides.yaml").is_file()
    for name in (
        "model.onnx",
        "metrics.json",
        "config.yaml",
        "run_info.json",
        "calibration.json",
        "checkpoints/last.ckpt",
        "evaluation/report.md",
        "evaluation/churn_calibration.png",
    ):
        assert (trained_run / name).is_file(), name
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["churn/auroc/val"] > 0.6 and metrics["spend/gini/val"] > 0.3  # it learned something
    assert np.isfinite(metrics["joint/loss/val"])


@pytest.fixture(scope="module")
def predictions(trained_run: Path, tiny_world: tuple[Path, Path], tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    events, customers = tiny_world
    out = tmp_path_factory.mktemp("predict") / "scores.parquet"
    run_predict(trained_run, events, out, f"customers={customers}")
    return out, pd.read_parquet(out)


def test_predict_scores_every_eligible_customer_once(predictions, tiny_world) -> None:
    out, scores = predictions
    events = load_events(pd.read_csv(tiny_world[0], dtype={"customer_id": str}))
    eligible = events.loc[events["timestamp"] < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1), "customer_id"]
    assert sorted(scores["customer_id"]) == sorted(eligible.unique())
    assert scores["customer_id"].is_unique
    assert list(scores.columns) == [
        "customer_id",
        "churn_probability",
        "expected_spend",
        "spend_p10",
        "spend_p50",
        "spend_p90",
        "spend_if_retained",
        # the grid the tiny world observes at some training cutoff: the default grid with the main horizon of 60
        # days, but 365
        "churn_probability_30d",
        "expected_spend_30d",
        "churn_probability_60d",
        "expected_spend_60d",
        "churn_probability_90d",
        "expected_spend_90d",
        "churn_probability_180d",
        "expected_spend_180d",
        "n_events",
        "clv",
        "expected_days_to_next_purchase",
        "value_at_risk",
        "churn_risk_decile",
        "value_decile",
        "segment",
    ]
    grid = scores[[f"expected_spend_{h}d" for h in (30, 60, 90, 180)]].to_numpy()
    assert (np.diff(grid, axis=1) >= 0).all()
    assert scores["churn_probability"].equals(scores["churn_probability_60d"])
    assert scores["churn_probability"].between(0, 1).all()
    assert (scores["expected_spend"] >= 0).all()
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    rejects = pd.read_csv(out.with_name(out.name + ".rejects.csv"))
    assert summary["customers_scored"] + len(rejects) == events["customer_id"].nunique()


def test_predictions_ignore_events_after_the_cutoff(predictions, trained_run, tiny_world, tmp_path) -> None:
    """Truncating the events file at the cutoff changes no score."""
    _, scores = predictions
    events = pd.read_csv(tiny_world[0], dtype={"customer_id": str})
    truncated = events[pd.to_datetime(events["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)]
    path = tmp_path / "truncated.csv"
    truncated.to_csv(path, index=False)
    out = tmp_path / "scores.parquet"
    run_cli(
        "churnformer-predict",
        f"model={trained_run / 'model.onnx'}",
        f"events={path}",
        f"customers={tiny_world[1]}",
        f"cutoff={TINY_CUTOFF}",
        f"output={out}",
        "progress=false",
        cwd=tmp_path,
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), scores, check_exact=True)


def test_csv_output_keeps_ids_as_given(trained_run, world_events, tmp_path) -> None:
    """Numeric-looking ids with leading zeros come back as written, not as numbers."""
    renamed = world_events.assign(customer_id="00" + world_events["customer_id"].str.removeprefix("C"))
    events = tmp_path / "events.csv"
    renamed.to_csv(events, index=False)
    out = tmp_path / "scores.csv"
    run_predict(trained_run, events, out)
    scores = pd.read_csv(out, dtype={"customer_id": str})
    assert scores["customer_id"].str.startswith("00").all() and scores["customer_id"].str.len().eq(8).all()
    assert set(scores["customer_id"]) <= set(renamed["customer_id"])


def test_export_cli_writes_the_portable_form(trained_run: Path, tmp_path: Path) -> None:
    """``fused_attention=false``: standard ONNX ops only (the default, fused form is what the README's export
    command and training write)."""
    out = tmp_path / "portable.onnx"
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_cli("churnformer-export", f"ckpt={ckpt}", f"output={out}", "fused_attention=false", cwd=tmp_path)
    assert out.is_file() and f"exported {out}" in result.stdout
    assert not list(tmp_path.glob("outputs"))  # export writes only what it was asked to
    assert not any(node.domain == "com.microsoft" for node in onnx.load(out).graph.node)


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        (
            "churnformer-predict",
            ("model=missing.onnx", "events=e.csv", "cutoff=2024-01-01"),
            "missing.onnx: model file",
        ),
        (
            "churnformer-evaluate",
            ("predictions=missing.parquet", "labels=missing.csv"),
            "missing.parquet: file not found",
        ),
        ("churnformer-train", ("model=tranformer",), "Could not find 'model/tranformer'"),
    ],
    ids=["predict", "evaluate", "train"],
)
def test_each_entry_point_reports_an_error_in_one_line(tool: str, arguments: tuple, message: str, tmp_path) -> None:
    """The console scripts themselves, each a new interpreter: nothing but the error line, on stderr (the error
    paths are tested in process in test_validation.py)."""
    result = run_cli(tool, *arguments, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and message in line


@pytest.mark.parametrize(
    ("tool", "arguments", "message"),
    [
        (
            "churnformer-train",
            ("data=csv", "data.events=missing.csv", "data.cutoff=2024-01-01"),
            "missing.csv: file not",
        ),
        ("churnformer-export", ("ckpt=missing.ckpt",), "missing.ckpt: checkpoint file not found"),
    ],
    ids=["train", "export"],
)
def test_a_missing_input_file_is_one_error_line(tool: str, arguments: tuple, message: str, tmp_path) -> None:
    """The entry points that import torch before they read their input, run in this process (a new interpreter
    costs them seconds of imports; the console scripts run as users run them in the tests above)."""
    paths = (a.replace("=missing", f"={tmp_path}/missing") for a in arguments)
    finished = run_in_process(tool, *paths, f"hydra.run.dir={tmp_path / 'run'}")
    assert message in finished.error_line


def test_evaluate_cli_scores_predictions_against_the_horizon(predictions, tiny_world, tmp_path: Path) -> None:
    scores_path, scores = predictions
    out = tmp_path / "eval"
    result = run_cli(
        "churnformer-evaluate",
        f"predictions={scores_path}",
        f"events={tiny_world[0]}",
        f"cutoff={TINY_CUTOFF}",
        "horizon_days=60",
        f"output={out}",
        cwd=tmp_path,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_customers"] == len(scores)
    assert metrics["churn_auc"] > 0.6 and "churn_auc" in result.stdout
    assert (out / "report.md").is_file() and (out / "cumulative_gains.png").is_file()
