"""``churnformer-backtest``: the cutoffs it picks, a run in each mode with the baselines, a stopped backtest that
continues from the cutoffs it finished, and no event after a cutoff reaching the model scored at it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from churnformer.backtest import BacktestSettings, backtest_cutoffs
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP
from churnformer.errors import ConfigError
from tests.conftest import run_cli, run_in_process

TINY = (
    "data=csv",
    "data.horizon_days=60",
    "data.features.max_len=32",
    "model.network.d_model=16",
    "model.network.n_layers=1",
    "model.network.n_heads=2",
    "trainer.max_epochs=1",
    "backtest.progress=false",
)


def _settings(**changes: object) -> BacktestSettings:
    values = {"cutoffs": None, "count": 3, "step_days": 30, "retrain": True, "baselines": [], "output": None}
    return BacktestSettings(**{**values, "progress": False, **changes})


def _log(first: str, last: str) -> pd.DataFrame:
    return pd.DataFrame({CUSTOMER_ID: ["a", "b"], TIMESTAMP: [pd.Timestamp(first), pd.Timestamp(last)]})


def test_cutoffs_step_back_from_the_last_one_whose_horizon_the_log_covers() -> None:
    events = _log("2023-01-01", "2023-12-31 10:00")
    assert backtest_cutoffs(_settings(), events, 60) == ["2023-09-01", "2023-10-01", "2023-10-31"]
    given = _settings(cutoffs=["2023-07-31", "2023-06-30"])
    assert backtest_cutoffs(given, events, 60) == ["2023-06-30", "2023-07-31"]


def test_cutoffs_without_history_or_future_and_unknown_baselines_are_named() -> None:
    events = _log("2023-06-01", "2023-12-31")
    with pytest.raises(ConfigError, match=r"training cutoff 2023-05-02 .* before the log starts"):
        backtest_cutoffs(_settings(cutoffs=["2023-07-01"]), events, 60)
    with pytest.raises(ConfigError, match="nothing happens after it"):
        backtest_cutoffs(_settings(cutoffs=["2024-01-05"]), events, 60)
    with pytest.raises(ConfigError, match=r"unknown \['xgboost'\]"):
        _settings(baselines=["xgboost"])


@pytest.mark.slow
@pytest.mark.parametrize("retrain", [True, False])
def test_a_backtest_runs_every_cutoff_and_model_and_continues_where_it_stopped(
    tiny_world: tuple[Path, Path], tmp_path: Path, retrain: bool
) -> None:
    events, customers = tiny_world
    out = tmp_path / "backtest"
    args = (
        *TINY,
        f"data.events={events}",
        f"data.customers={customers}",
        "backtest.count=2",
        f"backtest.retrain={str(retrain).lower()}",
        "backtest.baselines=[btyd]" if retrain else "backtest.baselines=[lightgbm]",
        f"backtest.output={out}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    first = run_cli("churnformer-backtest", *args, cwd=tmp_path)
    table = pd.read_csv(out / "backtest.csv")
    cutoffs = ["2023-09-30", "2023-10-30"]
    assert sorted(table["cutoff"].unique()) == cutoffs and set(table["model"]) == {
        "churnformer",
        "btyd" if retrain else "lightgbm",
    }
    main = table[(table["horizon_days"] == 60) & (table["model"] == "churnformer")]
    assert len(main) == 2 and main["churn_auc"].between(0.5, 1).all() and main["churn_pr_auc"].notna().all()
    # retrain: a model per cutoff, trained 60 days before it on the log as it stood; otherwise one, at the first.
    expected_training = ["2023-08-01", "2023-08-31"] if retrain else ["2023-08-01", "2023-08-01"]
    assert main.sort_values("cutoff")["trained_cutoff"].tolist() == expected_training
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == (["known-2023-09-30", "known-2023-10-30"] if retrain else ["known-2023-09-30"])
    log = pd.read_csv(events, parse_dates=["timestamp"])
    for run, trained in zip(runs, dict.fromkeys(expected_training), strict=True):
        # Trained on the events up to the end of its cutoff day only, at the cutoff 60 days before it.
        known_until = pd.Timestamp(run.removeprefix("known-")) + pd.Timedelta(days=1)
        info = json.loads((out / "runs" / run / "run_info.json").read_text())
        assert info["data"]["events"]["rows"] == int((log["timestamp"] < known_until).sum())
        assert info["data"]["cutoff"] == trained
    assert (out / "backtest.md").is_file() and (out / "backtest.png").stat().st_size > 0
    logs = EventAccumulator(str(out / "tensorboard" / "churnformer")).Reload()
    assert [e.step for e in logs.Scalars("backtest/churn_auc/60d")] == [0, 30]
    # Stopped after the first cutoff: the second is computed again, the first is kept as it was.
    kept = (out / "cutoffs" / cutoffs[0] / "churnformer.json").read_text()
    for path in (out / "cutoffs" / cutoffs[1]).iterdir():
        path.unlink()
    again = run_cli("churnformer-backtest", *args, cwd=tmp_path)
    assert (out / "cutoffs" / cutoffs[0] / "churnformer.json").read_text() == kept
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "backtest.csv").drop(columns="seconds"), table.drop(columns="seconds")
    )
    assert "backtest: 2 cutoffs" in first.stdout and "backtest: 2 cutoffs" in again.stdout


@pytest.mark.slow  # reads the log and imports the baselines
def test_bad_backtest_settings_end_in_one_line_with_status_2(tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, _ = tiny_world
    common = (
        *TINY,
        f"data.events={events}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"backtest.output={tmp_path / 'out'}",
    )
    for extra, message in (
        ("backtest.baselines=[xgboost]", "unknown ['xgboost']"),
        ("backtest.cutoffs=[2023-02-01]", "before the log starts"),
    ):
        assert message in run_in_process("churnformer-backtest", *common, extra).error_line
    assert not (tmp_path / "out" / "backtest.csv").exists()
