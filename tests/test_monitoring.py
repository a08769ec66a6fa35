"""Drift monitoring (``churnformer-monitor``): PSI and Jensen-Shannon on known cases, the input profile a
scoring job records, two scorings of one log that agree, a shifted log that is flagged with exit status 3,
a model as the reference, and bad input in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import CUSTOMER_ID
from churnformer.errors import ConfigError, InputError
from churnformer.monitoring.drift import ALERT, OK, Shift, Thresholds, binned_counts, js_distance, psi
from churnformer.monitoring.job import ALERT_EXIT_STATUS, RESULT_FILE, run_monitor
from churnformer.serving.input_profile import (
    DAYS_SINCE_LAST_EVENT,
    EVENTS_PER_CUSTOMER,
    SPEND_PER_CUSTOMER,
    numeric_counts,
)
from churnformer.serving.job import score_log
from churnformer.serving.output import write_result
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from tests.conftest import TINY_CUTOFF, run_cli


def test_psi_and_js_are_zero_for_equal_distributions_and_grow_with_the_shift() -> None:
    reference = np.array([10, 20, 30, 40])
    assert psi(reference, 3 * reference) == 0 and js_distance(reference, 3 * reference) == 0
    # By hand: shares 0.25/0.75 against 0.5/0.5: (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5).
    expected = -0.25 * np.log(0.5) + 0.25 * np.log(1.5)
    assert psi(np.array([1, 1]), np.array([1, 3])) == pytest.approx(expected)
    assert js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)
    bump = np.array([1, 0, 0, 0])
    small, large = psi(reference, reference + 5 * bump), psi(reference, reference + 50 * bump)
    assert 0 < small < large


def test_a_bin_one_side_lacks_counts_zero_there_and_statuses_follow_the_thresholds() -> None:
    thresholds = Thresholds(psi_warn=0.1, psi_alert=0.2)
    shift = Shift.of("event_type", "input", {"a": 50, "b": 50}, {"a": 50, "b": 40, "c": 10}, thresholds)
    assert shift.bins == ["a", "b", "c"] and shift.reference_share == [0.5, 0.5, 0.0]
    assert shift.status == ALERT  # a new value from nothing: floored share, a large PSI
    assert Shift.of("x", "output", {"a": 1}, {"a": 7}, thresholds).status == OK
    with pytest.raises(ConfigError, match="psi_warn <= psi_alert"):
        Thresholds(psi_warn=0.3, psi_alert=0.2)


def test_the_input_profile_bins_are_fixed_and_label_their_edges() -> None:
    counts = numeric_counts(np.array([1, 1, 2, 5, 2000]), (1, 2, 3, 4, 6, 1024))
    assert counts == {"[1, 2)": 2, "[2, 3)": 1, "[3, 4)": 0, "[4, 6)": 1, "[6, 1024)": 0, ">= 1024": 1}
    spend = numeric_counts(np.array([0.0, 0.0, 5.0, 12.0]), (0, 1e-9, 10, 20))
    assert spend == {"0": 2, "(0, 10)": 1, "[10, 20)": 1, ">= 20": 0}


def _shifted(events: pd.DataFrame, customers: pd.DataFrame) -> pd.DataFrame:
    """One region's customers lose half their purchases before the cutoff, and a new event type appears."""
    region = customers.loc[customers["region"] == customers["region"].mode()[0], CUSTOMER_ID]
    in_region = events[CUSTOMER_ID].isin(region) & (events["amount"] > 0)
    dropped = events[in_region].sample(frac=0.5, random_state=0).index
    shifted = events.drop(index=dropped).copy()
    chats = shifted.sample(frac=0.3, random_state=1).index
    shifted.loc[chats, "event_type"] = "chat"
    return shifted


@pytest.fixture(scope="module")
def scorings(trained_run: Path, tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world scored twice (in memory, and as the batch job reads a file) and a shifted copy once."""
    out = tmp_path_factory.mktemp("scorings")
    events_path, customers_path = tiny_world
    predictor = Predictor(trained_run, ScoringSettings.defaults(progress=False))
    write_result(predictor.score(events_path, TINY_CUTOFF, customers_path), out / "first.parquet")
    write_result(score_log(predictor, events_path, TINY_CUTOFF, customers_path), out / "second.csv")
    events, customers = pd.read_csv(events_path), pd.read_csv(customers_path)
    shifted = _shifted(events, customers)
    write_result(predictor.score(shifted, TINY_CUTOFF, customers), out / "shifted.parquet")
    return out


def test_two_scorings_of_one_log_show_no_drift(scorings: Path, tmp_path: Path) -> None:
    status = run_monitor(
        {"current": str(scorings / "second.csv"), "reference": str(scorings / "first.parquet"), "output": str(tmp_path)}
    )
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    assert status == 0 and result["status"] == OK
    names = {shift["name"] for shift in result["shifts"]}
    assert {"churn_probability", "expected_spend", "clv", "segment", EVENTS_PER_CUSTOMER, "event_type"} <= names
    assert all(shift["psi"] == 0 for shift in result["shifts"]), [s for s in result["shifts"] if s["psi"]]
    assert (tmp_path / "drift.md").is_file() and (tmp_path / "drift.png").stat().st_size > 0


def test_a_shifted_log_is_flagged_in_its_inputs_and_outputs_and_exits_3(scorings: Path, tmp_path: Path) -> None:
    status = run_monitor(
        {
            "current": str(scorings / "shifted.parquet"),
            "reference": str(scorings / "first.parquet"),
            "output": str(tmp_path),
        }
    )
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    by_name = {shift["name"]: shift for shift in result["shifts"]}
    assert status == ALERT_EXIT_STATUS and result["status"] == ALERT
    assert by_name["event_type"]["status"] == ALERT  # the new type: all unknown to the model
    assert by_name["unknown_category_rate:events.event_type"]["status"] == ALERT
    assert by_name[SPEND_PER_CUSTOMER]["psi"] > 0 and by_name[EVENTS_PER_CUSTOMER]["psi"] > 0
    assert max(by_name[name]["psi"] for name in ("churn_probability", "expected_spend", "clv")) > 0.01
    assert by_name[DAYS_SINCE_LAST_EVENT]["psi"] >= 0


def test_the_model_is_a_reference_with_its_validation_customers(
    trained_run: Path, scorings: Path, tmp_path: Path
) -> None:
    status = run_monitor(
        {"current": str(scorings / "first.parquet"), "reference": str(trained_run), "output": str(tmp_path)}
    )
    result = json.loads((tmp_path / RESULT_FILE).read_text())
    by_name = {shift["name"]: shift for shift in result["shifts"]}
    # The stored deciles hold 10% each of the validation customers; the whole log is close to them.
    assert by_name["churn_probability"]["reference_share"] == pytest.approx([0.1] * 10, abs=1e-6)
    assert by_name["churn_probability"]["psi"] < 0.2
    assert EVENTS_PER_CUSTOMER in by_name and "event_type" in by_name  # the stored input profile
    assert status in (0, ALERT_EXIT_STATUS)


def test_a_spark_style_directory_is_read_as_one_output(scorings: Path, tmp_path: Path) -> None:
    predictions = pd.read_parquet(scorings / "first.parquet")
    directory = tmp_path / "scored.parquet"
    directory.mkdir()
    half = len(predictions) // 2
    predictions.iloc[:half].to_parquet(directory / "part-0.parquet")
    predictions.iloc[half:].to_parquet(directory / "part-1.parquet")
    (tmp_path / "scored.parquet.summary.json").write_text((scorings / "first.parquet.summary.json").read_text())
    status = run_monitor(
        {"current": str(directory), "reference": str(scorings / "first.parquet"), "output": str(tmp_path / "m")}
    )
    assert status == 0


def test_bad_input_is_named(scorings: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        run_monitor({"current": str(tmp_path / "nope.parquet"), "reference": str(scorings / "first.parquet")})
    with pytest.raises(InputError, match="not a churnformer-predict output"):
        pd.DataFrame({CUSTOMER_ID: ["a"]}).to_csv(tmp_path / "other.csv", index=False)
        run_monitor({"current": str(tmp_path / "other.csv"), "reference": str(scorings / "first.parquet")})
    assert not (tmp_path / "monitoring").exists()


@pytest.mark.slow
def test_the_console_script_exits_3_on_an_alert_and_2_on_bad_input(scorings: Path, tmp_path: Path) -> None:
    alert = run_cli(
        "churnformer-monitor",
        f"current={scorings / 'shifted.parquet'}",
        f"reference={scorings / 'first.parquet'}",
        f"output={tmp_path / 'out'}",
        cwd=tmp_path,
        check=False,
    )
    assert alert.returncode == ALERT_EXIT_STATUS and "alert" in alert.stdout
    bad = run_cli("churnformer-monitor", f"current={tmp_path / 'x.csv'}", "reference=y", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "file not found" in bad.stderr


def test_bins_of_close_edges_keep_distinct_names() -> None:
    counts = binned_counts(np.array([0.123451, 0.123459, 0.5]), np.array([0.123450, 0.123455, 0.3]))
    assert list(counts.values()) == [0.0, 1.0, 1.0, 1.0] and len(counts) == 4
