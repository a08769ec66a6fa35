"""Every bad-input case, one test each: an error with one clear message, or a counted, reported warning.

The table these tests pin down is the README's "Bad input: errors and warnings". Errors are
``ChurnformerError`` subclasses whose message names the file, the column and, where rows are at fault, how
many and the first ones; through the console entry points they end with exit status 2 and no traceback
(checked for a representative subset here, since each entry point runs the same wrapper). Warnings are
asserted as exact counts in the ``BuildReport`` and the scoring summary.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import MAX_ABS_AMOUNT, ColumnMapping, load_customers, load_events
from churnformer.data.featurizer import FeatureMismatchError, FeaturizerConfig, fit_featurizer
from churnformer.data.labels import make_labels
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import HorizonGrid, Window, require_events_before
from churnformer.errors import ConfigError, InputError, ModelFileError
from churnformer.serving.output import ScoringResult
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from tests.conftest import TINY_CUTOFF, Finished, run_in_process

CUTOFF = "2024-06-30"
WINDOW = Window.from_cutoff(CUTOFF, horizon_days=30)  # features before 2024-07-01, labels until 07-31
HEADER = "customer_id,timestamp,amount,channel\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _log(
    rows: list[tuple], columns: tuple[str, ...] = ("customer_id", "timestamp", "amount", "channel")
) -> pd.DataFrame:
    return load_events(pd.DataFrame(rows, columns=list(columns)), name="log.csv")


def _message(error: pytest.ExceptionInfo) -> str:
    return str(error.value)


def _assert_clean_exit(result: Finished) -> str:
    """Exit status 2, the error line alone (nothing before it, no traceback); returns it for the message checks."""
    return result.error_line


def _predict_cli(model: Path, events: Path, tmp_path: Path, *extra: str, cutoff: str = TINY_CUTOFF) -> Finished:
    args = (f"model={model}", f"events={events}", f"cutoff={cutoff}", f"output={tmp_path / 'scores.parquet'}")
    return run_in_process("churnformer-predict", *args, "progress=false", *extra)


def _train_cli(events: Path, tmp_path: Path, *extra: str) -> Finished:
    return run_in_process(
        "churnformer-train", "data=csv", f"data.events={events}", f"hydra.run.dir={tmp_path / 'run'}", *extra
    )


def _same_features(a: Sequences, b: Sequences) -> None:
    assert list(a.customer_ids) == list(b.customer_ids)
    assert np.array_equal(a.offsets, b.offsets) and np.array_equal(a.n_events_total, b.n_events_total)
    for name in a.events:
        assert np.array_equal(a.events[name], b.events[name]), name
    for name in a.customers:
        assert np.array_equal(a.customers[name], b.customers[name]), name


# --------------------------------------------------------------------------------- the event file


@pytest.mark.parametrize("column", ["customer_id", "timestamp", "amount"])
def test_missing_required_column_names_file_and_column(tmp_path, column):
    frame = pd.DataFrame({"customer_id": ["a"], "timestamp": ["2024-01-01"], "amount": [1.0], "channel": ["web"]})
    path = tmp_path / "events.csv"
    frame.drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(InputError) as error:
        load_events(path)
    message = _message(error)
    assert str(path) in message and f"required column(s) ['{column}'] not found" in message
    assert "columns present" in message and "'channel'" in message


def test_missing_required_column_through_the_cli_exits_2(trained_run, tmp_path):
    path = _write(tmp_path, "events.csv", "customer_id,amount\nC1,1.0\n")
    stderr = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path))
    assert f"{path}: required column(s) ['timestamp'] not found" in stderr


def test_column_mapping_to_a_missing_column_names_the_mapped_name(tmp_path):
    path = _write(tmp_path, "events.csv", "user,ts,amount\nu1,2024-01-01,1\n")
    with pytest.raises(InputError) as error:
        load_events(path, ColumnMapping(customer_id="user", timestamp="when"))
    message = _message(error)
    assert str(path) in message and "['when']" in message
    assert "customer_id='user', timestamp='when'" in message  # the mapping that asked for it
    assert "'ts'" in message  # what is there instead


def test_column_mapping_to_a_missing_column_through_the_cli_exits_2(trained_run, tiny_world, tmp_path):
    stderr = _assert_clean_exit(_predict_cli(trained_run, tiny_world[0], tmp_path, "columns={timestamp:when}"))
    assert "['when'] not found" in stderr and "timestamp='when'" in stderr


@pytest.mark.parametrize("name", ["events.csv", "events.parquet", "events.csv.gz"])
def test_empty_file_is_named(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(InputError) as error:
        load_events(path)
    assert _message(error) == f"{path}: the file is empty (0 bytes); expected a header row and events"


def test_empty_file_through_the_predict_cli_exits_2(trained_run, tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(b"")
    stderr = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path))
    assert f"{path}: " in stderr


def test_file_of_blank_lines_has_no_header(tmp_path):
    path = _write(tmp_path, "events.csv", "\n\n")
    with pytest.raises(InputError, match="no header row and no events") as error:
        load_events(path)
    assert str(path) in _message(error)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_header_only_file_has_no_events(tmp_path, kind):
    path = tmp_path / f"events.{kind}"
    if kind == "csv":
        path.write_text(HEADER)
    else:
        pd.DataFrame({"customer_id": pd.Series([], dtype=str), "timestamp": [], "amount": []}).to_parquet(path)
    with pytest.raises(InputError) as error:
        load_events(path)
    assert _message(error) == f"{path}: no events (the table is empty: a header and no rows)"


def test_unparseable_timestamps_name_column_rows_and_an_example(tmp_path):
    path = _write(tmp_path, "events.csv", HEADER + "a,2024-01-01,1,web\nb,yesterday,2,web\nc,2024-13-45,3,app\n")
    with pytest.raises(InputError) as error:
        load_events(path)
    message = _message(error)
    assert message.startswith(f"{path}, column 'timestamp': missing or unparseable timestamps")
    assert "2 row(s), first at row index 1, 2" in message and "'yesterday'" in message


def test_mixed_time_zones_are_converted_to_utc(tmp_path):
    # One instant written with two offsets, once as Z and once naive (naive is taken as UTC).
    path = _write(
        tmp_path,
        "events.csv",
        HEADER + "a,2024-01-01T10:00:00+02:00,1,web\nb,2024-01-01T03:00:00-05:00,1,web\n"
        "c,2024-01-01T08:00:00Z,1,web\nd,2024-01-01 08:00:00,1,web\n",
    )
    stamps = load_events(path)["timestamp"]
    assert stamps.dtype == np.dtype("datetime64[ns]")
    assert stamps.tolist() == [pd.Timestamp("2024-01-01 08:00")] * 4


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", ""])
def test_nan_or_infinite_amounts_name_rows(tmp_path, bad):
    path = _write(
        tmp_path, "events.csv", HEADER + f"a,2024-01-01,1,web\nb,2024-01-02,{bad},web\nc,2024-01-03,{bad},x\n"
    )
    with pytest.raises(InputError) as error:
        load_events(path)
    message = _message(error)
    assert message.startswith(
        f"{path}, column 'amount': missing or infinite amounts in 2 row(s), first at row index 1, 2"
    )


def test_non_numeric_amount_strings_name_rows_and_an_example(tmp_path):
    path = _write(tmp_path, "events.csv", HEADER + "a,2024-01-01,12.50,web\nb,2024-01-02,$3,web\nc,2024-01-03,-1,web\n")
    with pytest.raises(InputError) as error:
        load_events(path, ColumnMapping())
    message = _message(error)
    assert message.startswith(f"{path}, column 'amount': non-numeric amounts in 1 row(s), first at row index 1")
    assert "'$3'" in message


def test_extreme_amounts_name_rows(tmp_path):
    # Epoch milliseconds in the amount column: the mix-up the bound is there to catch.
    path = _write(
        tmp_path,
        "events.csv",
        HEADER + "a,2024-01-01,1,web\nb,2024-01-02,1704153600000,web\nc,2024-01-03,-2e12,web\nd,2024-01-04,5,web\n",
    )
    with pytest.raises(InputError) as error:
        load_events(path)
    message = _message(error)
    assert message.startswith(f"{path}, column 'amount': amounts of absolute value >= 1e+12 in 2 row(s)")
    assert "first at row index 1, 2" in message and "1704153600000.0" in message


def test_amounts_just_below_the_bound_are_accepted():
    events = _log([("a", "2024-01-01", math.nextafter(MAX_ABS_AMOUNT, 0), "web"), ("a", "2024-01-02", -9.9e11, "x")])
    assert events["amount"].abs().max() < MAX_ABS_AMOUNT


def test_customer_ids_of_mixed_types_name_types_and_rows():
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(["a", 7, "b", "c", 8.5], dtype=object),
            "timestamp": ["2024-01-01"] * 5,
            "amount": [1.0] * 5,
        }
    )
    with pytest.raises(InputError) as error:
        load_events(frame, name="events.parquet")
    message = _message(error)
    assert message.startswith("events.parquet, column 'customer_id': customer ids mix types (3 str, 1 int, 1 float)")
    assert "2 row(s), first at row index 1, 4" in message


def test_customer_ids_of_different_types_across_files_still_match(tmp_path):
    """Integer ids in Parquet events and the same ids as CSV text in the customers file are one customer."""
    events = load_events(pd.DataFrame({"customer_id": [1, 2], "timestamp": ["2024-01-01"] * 2, "amount": [1.0, 2.0]}))
    customers = load_customers(_write(tmp_path, "customers.csv", "customer_id,region\n1,north\n2,south\n"))
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    sequences = build_sequences(events, WINDOW, featurizer, customers)
    assert sequences.report.customers_without_static == 0


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("events.parquet", b"customer_id,timestamp,amount\na,2024-01-01,1\n", "not a Parquet file"),
        ("events.parquet", "truncated", "corrupt or truncated Parquet file"),
        ("events.csv", "parquet", "this is a Parquet file; name it .parquet"),
    ],
    ids=["csv-named-parquet", "truncated-parquet", "parquet-named-csv"],
)
def test_misnamed_or_corrupt_parquet_names_the_file(tmp_path, name, content, expected):
    parquet = tmp_path / "real.parquet"
    pd.DataFrame({"customer_id": ["a"] * 50, "timestamp": ["2024-01-01"] * 50, "amount": [1.0] * 50}).to_parquet(
        parquet
    )
    raw = parquet.read_bytes()
    data = {"truncated": raw[: len(raw) // 2], "parquet": raw}.get(content, content)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError) as error:
        load_events(path)
    assert _message(error).startswith(f"{path}: {expected}")


def test_corrupt_parquet_through_the_cli_exits_2(trained_run, tmp_path):
    path = _write(tmp_path, "events.parquet", HEADER + "a,2024-01-01,1,web\n")
    stderr = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path))
    assert f"{path}: not a" in stderr and "Parquet file" in stderr


# -------------------------------------------------------------------------- counted, not errors


def test_duplicate_identical_events_are_dropped_and_counted():
    rows = [
        ("a", "2024-06-01 10:00:00", 5.0, "web"),
        ("a", "2024-06-01 10:00:00", 5.0, "web"),  # duplicate of the row above
        ("a", "2024-06-01 10:00:00", 5.0, "app"),  # same time and amount, other channel: a real event
        ("a", "2024-06-01 10:00:00.5", 5.0, "web"),  # same second, other instant: a real event
        ("b", "2024-06-02", 0.0, None),
        ("b", "2024-06-02", 0.0, None),  # duplicate (missing attributes are equal)
        ("b", "2024-06-02", 0.0, None),  # duplicate
        ("b", "2024-07-05", 9.0, "web"),  # after the cutoff: counted there, not as a duplicate
        ("b", "2024-07-05", 9.0, "web"),
    ]
    events = _log(rows)
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(min_category_count=1))
    built = build_sequences(events, WINDOW, featurizer)
    assert built.report.events_duplicate == 3
    assert built.report.events_after_cutoff == 2
    assert built.n_events_total.tolist() == [3, 1]
    assert built.report.events_read == built.report.events_after_cutoff + 3 + built.n_events_total.sum()
    deduplicated = build_sequences(events.drop_duplicates().reset_index(drop=True), WINDOW, featurizer)
    _same_features(built, deduplicated)
    assert deduplicated.report.events_duplicate == 0
    # Labels count the duplicated purchase in the horizon once.
    labels = make_labels(events, WINDOW, built.customer_ids)
    assert labels.set_index("customer_id")["spend"].to_dict() == {"a": 0.0, "b": 9.0}


def test_unsorted_input_is_fine():
    rows = [(f"c{k % 3}", pd.Timestamp("2024-05-01") + pd.Timedelta(hours=7 * k), float(k), "web") for k in range(30)]
    events = _log(rows)
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=4, min_category_count=1))
    ordered = build_sequences(events, WINDOW, featurizer)
    shuffled = build_sequences(events.sample(frac=1, random_state=1).reset_index(drop=True), WINDOW, featurizer)
    reversed_ = build_sequences(events.iloc[::-1].reset_index(drop=True), WINDOW, featurizer)
    for other in (shuffled, reversed_):
        _same_features(ordered, other)
        assert other.report == ordered.report


def test_events_after_the_cutoff_are_ignored_and_counted():
    rows = [("a", "2024-06-30 23:59:59", 1.0, "web"), ("a", "2024-07-01", 2.0, "web"), ("b", "2025-01-01", 3.0, "x")]
    events = _log(rows)
    built = build_sequences(events, WINDOW, fit_featurizer(events.iloc[:1]))
    assert built.report.events_read == 3 and built.report.events_after_cutoff == 2
    assert list(built.customer_ids) == ["a"] and built.n_events_total.tolist() == [1]


def test_very_long_histories_are_truncated_and_counted():
    rows = [("long", pd.Timestamp("2024-01-01") + pd.Timedelta(days=k), 1.0, "web") for k in range(50)]
    rows += [("short", pd.Timestamp("2024-02-01") + pd.Timedelta(days=k), 1.0, "web") for k in range(3)]
    events = _log(rows)
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=8))
    built = build_sequences(events, WINDOW, featurizer)
    assert built.report.events_truncated == 42 and built.report.customers_truncated == 1
    assert built.lengths.tolist() == [8, 3] and built.n_events_total.tolist() == [50, 3]  # counts keep everything


def test_unseen_categories_go_to_the_unknown_bucket_and_are_counted():
    training = _log([("a", "2024-06-01", 1.0, "web"), ("b", "2024-06-02", 1.0, "app")])
    featurizer = fit_featurizer(training, config=FeaturizerConfig.with_defaults(min_category_count=1))
    scoring = _log(
        [
            ("a", "2024-06-01", 1.0, "web"),
            ("a", "2024-06-03", 1.0, "kiosk"),
            ("b", "2024-06-04", 1.0, "kiosk"),
            ("c", "2024-06-05", 1.0, None),  # missing: unknown, but not counted as unseen
            ("c", "2024-07-09", 1.0, "phone"),  # after the cutoff: never encoded
        ]
    )
    built = build_sequences(scoring, WINDOW, featurizer)
    assert built.report.unknown_categories == {"events.channel": 2}  # missing values are not "unseen"


# ---------------------------------------------------------------------------- the cutoff window


@pytest.mark.parametrize("horizon", [0, -30, math.nan, math.inf, "ninety", True, None])
def test_horizon_not_a_positive_number_of_days_is_an_error(horizon):
    with pytest.raises(ConfigError) as error:
        Window.from_cutoff(CUTOFF, horizon_days=horizon)
    assert _message(error) == f"horizon_days must be a finite number of days > 0, got {horizon!r}"


def test_horizon_zero_through_the_train_cli_exits_2(tiny_world, tmp_path):
    stderr = _assert_clean_exit(
        _train_cli(tiny_world[0], tmp_path, f"data.cutoff={TINY_CUTOFF}", "data.horizon_days=0")
    )
    assert "horizon_days must be a finite number of days > 0, got 0" in stderr


@pytest.mark.parametrize(
    ("horizons", "message"),
    [
        ([90, 30], "data.horizons_days must be sorted and distinct, got [90, 30]"),
        ([30, 30, 90], "data.horizons_days must be sorted and distinct, got [30, 30, 90]"),
        ([0, 30], "data.horizons_days must be a finite number of days > 0, got 0"),
        ([-30, 90], "data.horizons_days must be a finite number of days > 0, got -30"),
        (["soon"], "data.horizons_days must be a finite number of days > 0, got 'soon'"),
    ],
)
def test_horizon_grid_must_be_sorted_distinct_positive_days(horizons, message):
    with pytest.raises(ConfigError) as error:
        HorizonGrid.of(horizons, 90)
    assert _message(error) == message


def test_main_horizon_joins_the_grid_where_it_belongs():
    grid = HorizonGrid.of([30, 180], 90)
    assert grid.days == (30.0, 90.0, 180.0) and grid.main_index == 1
    assert HorizonGrid.of(None, 60).days == (60.0,)


def test_unsorted_horizons_through_the_train_cli_exit_2(tiny_world, tmp_path):
    line = _assert_clean_exit(
        _train_cli(tiny_world[0], tmp_path, f"data.cutoff={TINY_CUTOFF}", "data.horizons_days=[90,30]")
    )
    assert line == "error: data.horizons_days must be sorted and distinct, got [90, 30]"


def test_main_horizon_longer_than_the_log_through_the_train_cli_exits_2(tiny_world, tmp_path):
    line = _assert_clean_exit(
        _train_cli(tiny_world[0], tmp_path, f"data.cutoff={TINY_CUTOFF}", "data.horizon_days=365")
    )
    assert f"the main horizon of 365 days after the cutoff {TINY_CUTOFF} runs past the end of the log" in line


@pytest.mark.parametrize("rate", ["-0.1", "nan", "ten"])
def test_negative_discount_rate_through_the_predict_cli_exits_2(trained_run, tiny_world, tmp_path, rate):
    line = _assert_clean_exit(_predict_cli(trained_run, tiny_world[0], tmp_path, f"clv.discount_rate={rate}"))
    assert line.startswith("error: clv.discount_rate must be a number >= 0 (an annual rate, 0.1 = 10%), got")


@pytest.mark.parametrize("cutoff", [20240630, 2024.5])
def test_cutoff_given_as_a_number_is_an_error(cutoff):
    with pytest.raises(InputError, match="is a number; write it as a date, YYYY-MM-DD"):
        Window.from_cutoff(cutoff)


def test_cutoff_before_every_event_is_an_error():
    stamps = _log([("a", "2024-05-01", 1.0, "web"), ("b", "2024-03-01", 1.0, "web")])["timestamp"]
    with pytest.raises(InputError) as error:
        require_events_before(stamps, Window.from_cutoff("2024-01-31"), "log.csv")
    assert _message(error) == (
        "log.csv: no events up to the cutoff 2024-01-31; the log starts at 2024-03-01 00:00:00 "
        "(and ends at 2024-05-01 00:00:00). Choose a later cutoff."
    )
    require_events_before(stamps, Window.from_cutoff("2024-03-01"), "log.csv")  # one event is enough


def test_cutoff_before_every_event_in_training_exits_2(tiny_world, tmp_path):
    """One line, nothing before it (no seed or hardware report), the cutoff as given, the file named; and
    the run's log file says why the run stopped."""
    line = _assert_clean_exit(_train_cli(tiny_world[0], tmp_path, "data.cutoff=2020-01-01"))
    assert line.startswith(f"error: {tiny_world[0]}: no events up to the cutoff 2020-01-01; the log starts at 2023-")
    assert "Choose a later cutoff" in line
    log = (tmp_path / "run" / "cli.log").read_text()
    assert "[ERROR] - " + line.removeprefix("error: ") in log


def test_cutoff_after_every_event_leaves_no_labels_an_error():
    events = _log([("a", "2024-03-01", 1.0, "web"), ("b", "2024-06-30 23:00", 1.0, "web")])
    with pytest.raises(InputError) as error:
        make_labels(events, WINDOW, np.array(["a", "b"], dtype=object))
    message = _message(error)
    assert message.startswith("log.csv: no events after the cutoff 2024-06-30 (the log ends at 2024-06-30 23:00:00)")
    assert "30-day horizon cannot be observed" in message


def test_cutoff_after_every_event_in_training_exits_2(tiny_world, tmp_path):
    stderr = _assert_clean_exit(_train_cli(tiny_world[0], tmp_path, "data.cutoff=2024-06-30"))
    assert f"{tiny_world[0]}: the main horizon of 90 days after the cutoff 2024-06-30 runs past the end of" in stderr


def test_cutoff_after_every_event_in_evaluation_exits_2(tiny_world, tmp_path):
    scores = pd.DataFrame({"customer_id": ["C0000001"], "churn_probability": [0.5], "expected_spend": [1.0]})
    scores.to_parquet(tmp_path / "scores.parquet", index=False)
    result = run_in_process(
        "churnformer-evaluate",
        f"predictions={tmp_path / 'scores.parquet'}",
        f"events={tiny_world[0]}",
        "cutoff=2024-06-30",
        "horizon_days=30",
        f"output={tmp_path / 'evaluation'}",
    )
    stderr = _assert_clean_exit(result)
    assert f"{tiny_world[0]}: no events after the cutoff" in stderr


# ------------------------------------------------------------------------ scoring with a real model


@pytest.fixture(scope="module")
def predictor(trained_run: Path) -> Predictor:
    return Predictor(trained_run, ScoringSettings.defaults(providers=["CPUExecutionProvider"], progress=False))


@pytest.fixture(scope="module")
def baseline(predictor: Predictor, tiny_world: tuple[Path, Path]) -> ScoringResult:
    return predictor.score(tiny_world[0], TINY_CUTOFF, tiny_world[1])


def _feature_end() -> pd.Timestamp:
    return pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)


def _score_csv(predictor: Predictor, frame: pd.DataFrame, path: Path, customers: Path, **kwargs) -> ScoringResult:
    frame.to_csv(path, index=False)
    return predictor.score(path, kwargs.pop("cutoff", TINY_CUTOFF), customers, **kwargs)


def test_scoring_counts_events_after_the_cutoff(baseline, world_events):
    after = int((pd.to_datetime(world_events["timestamp"]) >= _feature_end()).sum())
    assert after > 0
    assert baseline.summary.events_ignored["after_cutoff"] == after
    assert baseline.summary.rows_read == len(world_events)


def test_customers_without_an_event_before_the_cutoff_are_not_scored_but_reported(
    predictor, world_events, tiny_world, tmp_path
):
    late = pd.DataFrame(
        {
            "customer_id": ["LATE1", "LATE1", "LATE2"],
            "timestamp": ["2023-10-01 00:00:00", "2023-11-01 00:00:00", "2023-12-01 00:00:00"],
            "amount": [5.0, 0.0, 1.0],
            "event_type": ["purchase", "visit", "purchase"],
            "channel": ["web", "app", "web"],
        }
    )
    result = _score_csv(
        predictor, pd.concat([world_events, late], ignore_index=True), tmp_path / "e.csv", tiny_world[1]
    )
    assert result.rejects.to_dict("list") == {
        "customer_id": ["LATE1", "LATE2"],
        "reason": ["no_event_before_cutoff", "no_event_before_cutoff"],
    }
    assert result.summary.customers_not_scored == {"no_event_before_cutoff": 2}
    assert not {"LATE1", "LATE2"} & set(result.predictions["customer_id"])
    assert (
        result.summary.customers_scored + 2
        == result.summary.customers_seen
        == world_events["customer_id"].nunique() + 2
    )


def test_scoring_truncates_long_histories_and_counts_them(baseline, world_events, predictor):
    max_len = predictor.featurizer.max_len
    counts = world_events[pd.to_datetime(world_events["timestamp"]) < _feature_end()].groupby("customer_id").size()
    assert (counts > max_len).any(), "the tiny world should have histories longer than the model's max_len"
    assert baseline.summary.events_ignored["truncated"] == int((counts - max_len).clip(lower=0).sum())
    n_events = baseline.predictions.set_index("customer_id")["n_events"]
    assert n_events.to_dict() == counts.to_dict()  # the output counts every event, truncated ones too


def test_scoring_counts_unseen_categories(predictor, baseline, world_events, tiny_world, tmp_path):
    stamps = pd.to_datetime(world_events["timestamp"])
    latest = stamps[stamps < _feature_end()].groupby(world_events["customer_id"]).idxmax().iloc[:3]
    changed = world_events.copy()
    changed.loc[latest.to_numpy(), "channel"] = "brand_new_channel"  # the latest events are never truncated
    result = _score_csv(predictor, changed, tmp_path / "events.csv", tiny_world[1])
    was = baseline.summary.unknown_categories.get("events.channel", 0)
    assert result.summary.unknown_categories["events.channel"] == was + 3


def test_duplicate_events_change_no_score(predictor, baseline, world_events, tiny_world, tmp_path):
    before = world_events[pd.to_datetime(world_events["timestamp"]) < _feature_end()]
    doubled = pd.concat([world_events, before.iloc[::50]], ignore_index=True)
    result = _score_csv(predictor, doubled, tmp_path / "events.csv", tiny_world[1])
    pd.testing.assert_frame_equal(result.predictions, baseline.predictions, check_exact=True)


def test_scoring_summary_counts_duplicate_events(predictor, world_events, tiny_world, tmp_path):
    before = world_events[pd.to_datetime(world_events["timestamp"]) < _feature_end()]
    extra = before.iloc[::50]
    result = _score_csv(
        predictor, pd.concat([world_events, extra], ignore_index=True), tmp_path / "e.csv", tiny_world[1]
    )
    assert result.summary.events_ignored["duplicate"] == len(extra)


def test_cutoff_after_every_event_at_scoring_is_fine(predictor, world_events, tiny_world):
    result = predictor.score(tiny_world[0], "2030-01-01", tiny_world[1])
    assert result.summary.customers_scored == world_events["customer_id"].nunique()
    assert result.summary.events_ignored["after_cutoff"] == 0


def test_cutoff_before_every_event_at_scoring_is_an_error(predictor, tiny_world):
    with pytest.raises(InputError) as error:
        predictor.score(tiny_world[0], "2020-01-01", tiny_world[1])
    assert _message(error).startswith(f"{tiny_world[0]}: no events up to the cutoff 2020-01-01; the log starts at")


def test_cutoff_before_every_event_through_the_predict_cli_exits_2(trained_run, tiny_world, tmp_path):
    stderr = _assert_clean_exit(_predict_cli(trained_run, tiny_world[0], tmp_path, cutoff="2020-01-01"))
    assert "no events up to the cutoff 2020-01-01" in stderr


@pytest.mark.parametrize("column", ["channel", "event_type"])
def test_model_needing_an_event_column_the_file_lacks_names_file_and_column(predictor, world_events, tmp_path, column):
    path = tmp_path / "events.csv"
    world_events.drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(FeatureMismatchError) as error:
        predictor.score(path, TINY_CUTOFF)
    message = _message(error)
    assert message.startswith(f"{path}: lacks attribute column(s) ['{column}'] that the model was trained with")


def test_model_needing_a_customers_column_the_file_lacks_names_file_and_column(predictor, tiny_world, tmp_path):
    customers = pd.read_csv(tiny_world[1], dtype={"customer_id": str}).drop(columns=["region"])
    path = tmp_path / "customers.csv"
    customers.to_csv(path, index=False)
    with pytest.raises(FeatureMismatchError) as error:
        predictor.score(tiny_world[0], TINY_CUTOFF, path)
    assert _message(error).startswith(f"{path}: lacks column(s) ['region'] that the model was trained with")


def test_model_mismatch_names_the_model(predictor, world_events, tmp_path):
    path = tmp_path / "events.csv"
    world_events.drop(columns=["channel"]).to_csv(path, index=False)
    with pytest.raises(FeatureMismatchError) as error:
        predictor.score(path, TINY_CUTOFF)
    assert str(predictor.path) in _message(error)


def test_model_mismatch_through_the_cli_exits_2(trained_run, world_events, tmp_path):
    path = tmp_path / "events.csv"
    world_events.drop(columns=["channel"]).to_csv(path, index=False)
    stderr = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path))
    assert f"{path}: lacks attribute column(s) ['channel']" in stderr


# ----------------------------------------------------------------------------------- model files


def _bad_model(trained_run: Path, tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "model.onnx"
    raw = (trained_run / "model.onnx").read_bytes()
    if kind == "missing":
        return tmp_path / "no_such_model.onnx"
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-onnx":
        path.write_text("customer_id,timestamp,amount\n")
    elif kind == "checkpoint":
        path.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:4096])
    return path


MODEL_CASES = {
    "missing": "model file not found",
    "truncated": "not a valid ONNX model",
    "empty": "not a valid ONNX model",
    "not-onnx": "not a valid ONNX model",
    "checkpoint": "not a valid ONNX model",
}


@pytest.mark.parametrize("kind", list(MODEL_CASES))
def test_bad_model_file_is_named(trained_run, tmp_path, kind):
    path = _bad_model(trained_run, tmp_path, kind)
    with pytest.raises(ModelFileError) as error:
        Predictor(path)
    assert _message(error).startswith(f"{path}: {MODEL_CASES[kind]}")


@pytest.mark.parametrize("kind", ["missing", "truncated", "not-onnx"])
def test_bad_model_file_through_the_cli_exits_2(trained_run, tiny_world, tmp_path, kind):
    path = _bad_model(trained_run, tmp_path, kind)
    stderr = _assert_clean_exit(_predict_cli(path, tiny_world[0], tmp_path))
    assert f"{path}: {MODEL_CASES[kind]}" in stderr


# --------------------------------------------------------------------------------- entry points


def test_missing_required_setting_exits_2():
    stderr = _assert_clean_exit(run_in_process("churnformer-predict", "model=m.onnx"))
    assert "missing required setting(s) events, cutoff" in stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("model=tranformer",), "Could not find 'model/tranformer'; Available options in 'model': base, gru, small"),
        (("trainer=gpus",), "Could not find 'trainer/gpus'; Available options in 'trainer': cpu, ddp, gpu"),
        (("data.nope=1",), "Could not override 'data.nope'; there is no setting 'nope' there"),
        (
            ("data=csv", "data.events=no/such/events.csv", "data.cutoff=2024-01-01"),
            "no/such/events.csv: file not found",
        ),
        (
            ("model.network.backbone._target_=os.system", "data.synthetic.n_customers=50"),
            "model.network.backbone._target_='os.system' is not a churnformer backbone",
        ),
    ],
    ids=["group-option", "trainer-option", "unknown-key", "missing-file", "backbone-not-a-backbone"],
)
def test_config_errors_a_user_can_fix_are_one_line(overrides, expected, tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNFORMER_DATA_DIR", str(tmp_path / "data"))
    line = _assert_clean_exit(run_in_process("churnformer-train", *overrides, f"hydra.run.dir={tmp_path / 'run'}"))
    assert expected in line


def test_cdnow_without_its_package_is_one_line(tmp_path, monkeypatch):
    from importlib import metadata

    def not_installed(name: str) -> metadata.Distribution:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", not_installed)
    line = _assert_clean_exit(run_in_process("churnformer-train", "data=cdnow", f"hydra.run.dir={tmp_path / 'run'}"))
    assert "the CDNOW master log comes with the 'lifetimes' package" in line


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", b"customer_id,timestamp\nC1,2024-01-01\n", b"", b"PK\x03\x04 not a zip file"],
    ids=["text", "two-line-csv", "empty", "broken-zip"],
)
def test_export_of_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, content):
    """A text file used to end in torch's unpickler traceback (IndexError: pop from empty list)."""
    path = tmp_path / "notes.csv"
    path.write_bytes(content)
    line = _assert_clean_exit(run_in_process("churnformer-export", f"ckpt={path}", f"output={tmp_path / 'm.onnx'}"))
    assert line.startswith(f"error: {path}: not a churnformer training checkpoint")


@pytest.mark.parametrize("content", [b"", b"texts\n", b"PK\x03\x04 not a zip file"], ids=["empty", "csv", "broken-zip"])
def test_a_text_cache_that_is_not_one_is_named(tmp_path, content):
    from churnformer.text.embeddings import SavedTable

    path = tmp_path / "cache.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=f"{path}: not a table of text embeddings saved by churnformer"):
        SavedTable.read(path, "0" * 64, 8)


def test_debug_true_shows_the_traceback_above_the_same_line(trained_run, tmp_path):
    path = _write(tmp_path, "events.csv", "customer_id,amount\nC1,1.0\n")
    result = _predict_cli(trained_run, path, tmp_path, "debug=true")
    assert result.code == 2
    assert result.err.startswith("Traceback") and "InputError" in result.err
    assert result.err.splitlines()[-1] == _predict_cli(trained_run, path, tmp_path).error_line


def test_columns_present_lists_every_column_of_the_file(trained_run, world_events, tmp_path):
    """Scoring reads only the columns the model needs; the message still lists every column the file has,
    including the user's own id column that a wrong mapping missed."""
    path = tmp_path / "events.parquet"
    world_events.rename(columns={"customer_id": "user"}).assign(note="x").to_parquet(path)
    line = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path))
    assert "required column(s) ['customer_id'] not found" in line
    assert "columns present: ['user', 'timestamp', 'amount', 'event_type', 'channel', 'n_items', 'note']" in line


def test_column_mapping_keys_work_one_by_one(trained_run, world_events, tmp_path):
    """``columns.customer_id=user`` (what the error message suggests) works like ``data.columns.*`` does in
    training: the other names stay the model's."""
    path = tmp_path / "events.parquet"
    world_events.rename(columns={"customer_id": "user"}).to_parquet(path)
    result = _predict_cli(trained_run, path, tmp_path, "columns.customer_id=user")
    assert result.code == 0, result.err
    assert pd.read_parquet(tmp_path / "scores.parquet")["customer_id"].isin(world_events["customer_id"]).all()
    line = _assert_clean_exit(_predict_cli(trained_run, path, tmp_path, "columns.id=user"))
    assert line == "error: Could not override 'columns.id'; there is no setting 'id' there"


def test_missing_spill_dir_is_refused_at_start_up(trained_run, tiny_world, tmp_path):
    line = _assert_clean_exit(_predict_cli(trained_run, tiny_world[0], tmp_path, f"spill_dir={tmp_path / 'nope'}"))
    assert line == f"error: spill_dir={tmp_path / 'nope'}: no such directory; create it or leave spill_dir unset"
    assert not list(tmp_path.glob("scores*"))


def test_memory_budget_below_the_floor_is_refused_at_start_up(trained_run, tiny_world, tmp_path):
    line = _assert_clean_exit(_predict_cli(trained_run, tiny_world[0], tmp_path, "memory_budget_mb=512"))
    assert "memory_budget_mb=512 is below the " in line and "scoring stream(s) take before any event" in line


def test_a_failed_run_is_marked_in_the_runs_table(tiny_world, tmp_path, capsys):
    from churnformer.training.runs import main

    _train_cli(tiny_world[0], tmp_path, "data.cutoff=2020-01-01")
    assert main([str(tmp_path), "--format", "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    (status,) = table.loc[table["run"] == "run", "status"]
    assert status.startswith("failed: ") and "no events up to the cutoff 2020-01-01" in status


@pytest.mark.parametrize(
    ("timestamps", "expected"),
    [(["2024-01-01", "9999-12-31"], "timestamps outside"), ([1_700_000_000, 1_700_000_000_000], "milliseconds")],
    ids=["never-sentinel", "epoch-milliseconds"],
)
def test_timestamps_outside_the_representable_range_name_rows(timestamps: list, expected: str) -> None:
    """Found by fuzzing: these used to crash with pandas' OutOfBoundsDatetime."""
    frame = pd.DataFrame({"customer_id": ["a", "b"], "timestamp": timestamps, "amount": [1.0, 2.0]})
    with pytest.raises(InputError, match=expected) as error:
        load_events(frame)
    assert "1 row(s), first at row index 1" in str(error.value)
