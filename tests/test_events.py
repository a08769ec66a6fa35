"""Event-log contract: reading files, id types, timestamp parsing, the cutoff window and error messages."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import (
    ColumnMapping,
    load_customers,
    load_events,
    parse_timestamps,
    read_table,
)
from churnformer.data.featurizer import fit_featurizer
from churnformer.data.sequences import build_sequences
from churnformer.data.window import Window
from churnformer.errors import ConfigError, InputError


def _frame(ids, stamps=None, amounts=None, **extra) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "timestamp": stamps if stamps is not None else [f"2024-01-{d % 28 + 1:02d}" for d in range(n)],
            "amount": amounts if amounts is not None else [float(i + 1) for i in range(n)],
            **extra,
        }
    )


def _utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


# ------------------------------------------------------------------------------------ load_events


def test_load_events_returns_standard_frame_in_input_order():
    raw = _frame(["b", "a", "b"], amounts=[1, 2, 3], channel=["web", "app", None], score=[1.0, np.nan, 2.0])
    events = load_events(raw)
    assert list(events.columns) == ["customer_id", "timestamp", "amount", "channel", "score"]
    assert events["timestamp"].dtype == np.dtype("datetime64[ns]")
    assert events["amount"].dtype == np.float64
    assert events["customer_id"].tolist() == ["b", "a", "b"]
    assert events["amount"].tolist() == [1.0, 2.0, 3.0]
    assert events["channel"].iloc[2] is None or pd.isna(events["channel"].iloc[2])
    assert events.index.tolist() == [0, 1, 2]


def test_column_mapping_renames_user_columns():
    raw = pd.DataFrame({"user": [7, 8], "when": ["2024-01-01", "2024-01-02"], "value": [1.5, -2.0], "x": [1, 2]})
    events = load_events(raw, ColumnMapping(customer_id="user", timestamp="when", amount="value"))
    assert list(events.columns) == ["customer_id", "timestamp", "amount", "x"]
    assert events["customer_id"].tolist() == [7, 8]
    assert events["amount"].tolist() == [1.5, -2.0]


def test_load_events_does_not_modify_the_callers_frame():
    raw = _frame(["a", "b"], stamps=["2024-01-01T00:00:00+02:00", "2024-01-02"])
    before = raw.copy()
    load_events(raw)
    pd.testing.assert_frame_equal(raw, before)


def test_non_default_index_is_reset():
    raw = _frame([1, 2, 3]).set_axis([10, 5, 7])
    events = load_events(raw)
    assert events.index.tolist() == [0, 1, 2]
    assert events["customer_id"].tolist() == [1, 2, 3]
    assert events["amount"].tolist() == [1.0, 2.0, 3.0]


# ---------------------------------------------------------------------------------------- ids


def test_string_ids_with_leading_zeros_round_trip_through_csv(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer_id,timestamp,amount\n00042,2024-01-01,1\n42,2024-01-02,2\n007,2024-01-03,3\n")
    events = load_events(path)
    assert events["customer_id"].tolist() == ["00042", "42", "007"]
    sequences = build_sequences(events, Window.from_cutoff("2024-02-01"), fit_featurizer(events))
    assert list(sequences.customer_ids) == ["00042", "007", "42"]
    assert all(type(i) is str for i in sequences.customer_ids)


def test_numeric_looking_csv_ids_stay_strings(tmp_path):
    path = tmp_path / "events.csv"
    pd.DataFrame({"customer_id": [9223372036854775800, 3], "timestamp": ["2024-01-01"] * 2, "amount": [1, 2]}).to_csv(
        path, index=False
    )
    events = load_events(path)
    assert events["customer_id"].tolist() == ["9223372036854775800", "3"]


def test_large_int64_ids_round_trip_through_parquet(tmp_path):
    big = np.iinfo(np.int64).max - 3
    ids = np.array([big, 5, -(2**62), big], dtype=np.int64)
    path = tmp_path / "events.parquet"
    _frame(ids).to_parquet(path)
    events = load_events(path)
    assert events["customer_id"].dtype == np.int64
    assert events["customer_id"].tolist() == [int(i) for i in ids]
    sequences = build_sequences(events, Window.from_cutoff("2024-02-01"), fit_featurizer(events))
    assert sequences.customer_ids.dtype.kind == "i"
    assert sequences.customer_ids.tolist() == [-(2**62), 5, big]
    assert sequences.n_events_total.tolist() == [1, 1, 2]


def test_string_ids_round_trip_through_parquet(tmp_path):
    path = tmp_path / "events.parquet"
    _frame(["00042", "42", "x-1"]).to_parquet(path)
    events = load_events(path)
    sequences = build_sequences(events, Window.from_cutoff("2024-02-01"), fit_featurizer(events))
    assert list(sequences.customer_ids) == ["00042", "42", "x-1"]


def test_whole_float_ids_become_int64():
    events = load_events(_frame([1.0, 2.0, 3.0]))
    assert events["customer_id"].dtype == np.int64
    assert events["customer_id"].tolist() == [1, 2, 3]


def test_categorical_ids_use_their_categories_dtype():
    events = load_events(_frame(pd.Categorical(["b", "a", "b"])))
    assert events["customer_id"].tolist() == ["b", "a", "b"]
    assert pd.api.types.is_string_dtype(events["customer_id"].dtype)


def test_tsv_and_gzipped_csv_are_read(tmp_path):
    tsv = tmp_path / "events.tsv"
    tsv.write_text("customer_id\ttimestamp\tamount\n0001\t2024-01-01\t1.5\n")
    assert load_events(tsv)["customer_id"].tolist() == ["0001"]
    gz = tmp_path / "events.csv.gz"
    _frame(["0002", "0003"]).to_csv(gz, index=False, compression="gzip")
    assert load_events(gz)["customer_id"].tolist() == ["0002", "0003"]


# ------------------------------------------------------------------------------------- timestamps


def test_iso_strings_with_different_offsets_convert_to_utc():
    parsed = parse_timestamps(
        pd.Series(["2024-01-01T10:00:00+02:00", "2024-01-01T10:00:00-05:00", "2024-01-01T10:00:00Z"]), "t"
    )
    assert parsed.dtype == np.dtype("datetime64[ns]")
    assert parsed.tolist() == [_utc("2024-01-01 08:00"), _utc("2024-01-01 15:00"), _utc("2024-01-01 10:00")]


def test_naive_strings_and_dates_are_taken_as_utc():
    parsed = parse_timestamps(pd.Series(["2024-03-10 01:30:00", "2024-03-11", "2024-03-10T23:59:59.5"]), "t")
    assert parsed.tolist() == [_utc("2024-03-10 01:30"), _utc("2024-03-11"), _utc("2024-03-10 23:59:59.5")]


def test_naive_and_offset_strings_mixed():
    parsed = parse_timestamps(pd.Series(["2024-01-01 10:00", "2024-01-01T10:00:00+01:00"]), "t")
    assert parsed.tolist() == [_utc("2024-01-01 10:00"), _utc("2024-01-01 09:00")]


def test_tz_aware_datetime_column_converts_to_utc():
    local = pd.Series(pd.to_datetime(["2024-07-01 12:00", "2024-01-01 12:00"]).tz_localize("Europe/Berlin"))
    assert parse_timestamps(local, "t").tolist() == [_utc("2024-07-01 10:00"), _utc("2024-01-01 11:00")]


def test_python_datetimes_with_different_offsets_convert_to_utc():
    values = pd.Series(
        [
            dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=3))),
            dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=-8))),
        ],
        dtype=object,
    )
    assert parse_timestamps(values, "t").tolist() == [_utc("2024-01-01 09:00"), _utc("2024-01-01 20:00")]


def test_naive_datetime64_is_unchanged_and_made_ns():
    values = pd.Series(np.array(["2024-01-01T05:06:07", "1969-12-31T23:00:00"], dtype="datetime64[s]"))
    parsed = parse_timestamps(values, "t")
    assert parsed.dtype == np.dtype("datetime64[ns]")
    assert parsed.tolist() == [_utc("2024-01-01 05:06:07"), _utc("1969-12-31 23:00")]


def test_epoch_seconds_int_and_float():
    assert parse_timestamps(pd.Series([0, 1_700_000_000]), "t").tolist() == [
        _utc("1970-01-01"),
        _utc("2023-11-14 22:13:20"),
    ]
    assert parse_timestamps(pd.Series([1_700_000_000.5]), "t").tolist() == [_utc("2023-11-14 22:13:20.5")]


def test_python_dates_and_mixed_objects():
    dates = pd.Series([dt.date(2024, 2, 29), dt.date(2024, 3, 1)], dtype=object)
    assert parse_timestamps(dates, "t").tolist() == [_utc("2024-02-29"), _utc("2024-03-01")]
    mixed = pd.Series([dt.date(2024, 1, 1), "2024-01-02T00:00:00+01:00"], dtype=object)
    assert parse_timestamps(mixed, "t").tolist() == [_utc("2024-01-01"), _utc("2024-01-01 23:00")]


def test_load_events_from_csv_with_offsets_gives_utc(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("customer_id,timestamp,amount\n1,2024-01-01T00:30:00+01:00,1\n2,2023-12-31T23:30:00Z,2\n")
    events = load_events(path)
    assert events["timestamp"].tolist() == [_utc("2023-12-31 23:30"), _utc("2023-12-31 23:30")]


# ------------------------------------------------------------------------------------- window


def test_date_cutoff_means_end_of_that_day():
    for cutoff in ("2024-06-30", dt.date(2024, 6, 30)):
        window = Window.from_cutoff(cutoff, horizon_days=10)
        assert window.feature_end == _utc("2024-07-01")
        assert window.label_end_ns == _utc("2024-07-11").value


def test_cutoff_with_time_is_inclusive_of_that_instant():
    window = Window.from_cutoff("2024-06-30 12:00:00")
    assert window.feature_end == _utc("2024-06-30 12:00:00") + pd.Timedelta(1, "ns")
    window = Window.from_cutoff(pd.Timestamp("2024-06-30 12:00"))
    assert window.feature_end == _utc("2024-06-30 12:00:00") + pd.Timedelta(1, "ns")


def test_tz_aware_cutoff_converts_to_utc():
    window = Window.from_cutoff("2024-06-30T12:00:00+02:00")
    assert window.feature_end == _utc("2024-06-30 10:00:00") + pd.Timedelta(1, "ns")


@pytest.mark.parametrize("horizon", [0, -1, None])
def test_bad_horizon_rejected(horizon):
    with pytest.raises(ConfigError, match="horizon_days"):
        Window.from_cutoff("2024-01-01", horizon_days=horizon)


def test_bad_cutoff_rejected():
    with pytest.raises(InputError, match="cutoff"):
        Window.from_cutoff("not a date")


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("column", ["customer_id", "timestamp", "amount"])
def test_missing_required_column_is_named(column):
    raw = _frame(["a"]).drop(columns=[column])
    with pytest.raises(InputError) as info:
        load_events(raw, name="my_events.csv")
    message = str(info.value)
    assert f"['{column}']" in message and "my_events.csv" in message
    # The columns that are present are listed, the ones that exist are not reported missing.
    for other in {"customer_id", "timestamp", "amount"} - {column}:
        assert f"'{other}'" in message.split("columns present")[1]


def test_missing_mapped_column_names_the_users_name():
    raw = pd.DataFrame({"user": ["a"], "timestamp": ["2024-01-01"], "amount": [1.0]})
    with pytest.raises(InputError, match=r"\['when'\]"):
        load_events(raw, ColumnMapping(customer_id="user", timestamp="when"))


def test_unparseable_timestamps_name_column_and_row_count():
    raw = _frame(["a", "b", "c", "d"], stamps=["2024-01-01", "garbage", "2024-01-03", "31/31/2024"])
    with pytest.raises(InputError) as info:
        load_events(raw.rename(columns={"timestamp": "when"}), ColumnMapping(timestamp="when"), name="log.csv")
    message = str(info.value)
    assert "'when'" in message and "log.csv" in message
    assert "2 row(s)" in message and "row index 1, 3" in message
    assert "garbage" in message


def test_missing_timestamps_are_reported():
    raw = _frame(["a", "b"], stamps=[pd.Timestamp("2024-01-01"), pd.NaT])
    with pytest.raises(InputError, match=r"'timestamp'.*1 row\(s\), first at row index 1"):
        load_events(raw)


def test_non_finite_epoch_seconds_are_reported():
    with pytest.raises(InputError, match=r"'timestamp'.*non-finite epoch seconds in 1 row\(s\)"):
        load_events(_frame(["a", "b"], stamps=[1.0e9, np.inf]))


def test_boolean_timestamps_rejected():
    with pytest.raises(InputError, match="boolean"):
        load_events(_frame(["a", "b"], stamps=[True, False]))


def test_non_numeric_amounts_are_reported():
    raw = _frame(["a", "b", "c"], amounts=["1.5", "ten", "3"])
    with pytest.raises(InputError) as info:
        load_events(raw)
    message = str(info.value)
    assert "'amount'" in message and "non-numeric" in message and "1 row(s)" in message and "'ten'" in message


def test_numeric_strings_are_accepted_as_amounts():
    assert load_events(_frame(["a", "b"], amounts=["1.5", "-2"]))["amount"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, None])
def test_missing_or_infinite_amounts_are_reported(bad):
    with pytest.raises(InputError, match=r"'amount'.*1 row\(s\), first at row index 1"):
        load_events(_frame(["a", "b"], amounts=[1.0, bad]))


def test_mixed_type_ids_are_rejected():
    with pytest.raises(InputError, match="mix types") as info:
        load_events(_frame(pd.Series(["a", 1, "b"], dtype=object)))
    assert "'customer_id'" in str(info.value)


@pytest.mark.parametrize("ids", [[1.5, 2.0], [True, False]])
def test_ids_that_are_neither_strings_nor_integers_are_rejected(ids):
    with pytest.raises(InputError, match="strings or integers"):
        load_events(_frame(ids))


def test_missing_ids_are_reported():
    with pytest.raises(InputError, match=r"missing customer ids in 1 row\(s\), first at row index 2"):
        load_events(_frame(["a", "b", None]))


def test_empty_table_is_rejected(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_events(pd.DataFrame({"customer_id": [], "timestamp": [], "amount": []}))
    path = tmp_path / "empty.csv"
    path.write_text("customer_id,timestamp,amount\n")
    with pytest.raises(InputError, match="empty") as info:
        load_events(path)
    assert str(path) in str(info.value)


def test_column_clashing_with_standard_name_is_rejected():
    raw = pd.DataFrame({"user": ["a"], "customer_id": ["b"], "timestamp": ["2024-01-01"], "amount": [1.0]})
    with pytest.raises(InputError, match="clash"):
        load_events(raw, ColumnMapping(customer_id="user"))


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_events(tmp_path / "nope.csv")
    other = tmp_path / "events.xlsx"
    other.write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        read_table(other, "customer_id")
    broken = tmp_path / "broken.parquet"
    broken.write_text("this is not parquet")
    with pytest.raises(InputError, match="not a Parquet file"):
        load_events(broken)


# ---------------------------------------------------------------------------------- customers


def test_load_customers_renames_and_keeps_ids(tmp_path):
    path = tmp_path / "customers.csv"
    path.write_text("cid,region\n0001,north\n0002,south\n")
    customers = load_customers(path, customer_id="cid")
    assert list(customers.columns) == ["customer_id", "region"]
    assert customers["customer_id"].tolist() == ["0001", "0002"]


def test_load_customers_errors():
    with pytest.raises(InputError, match="duplicate customer ids in 1 row"):
        load_customers(pd.DataFrame({"customer_id": [1, 2, 1], "region": ["a", "b", "c"]}))
    with pytest.raises(InputError, match="'cid' not found"):
        load_customers(pd.DataFrame({"customer_id": [1]}), customer_id="cid")
    with pytest.raises(InputError, match="mix types"):
        load_customers(pd.DataFrame({"customer_id": pd.Series([1, "a"], dtype=object)}))
