"""Tests for the synthetic customer world: contract, determinism, and that the churn signals are real."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnformer.data.synthetic import SyntheticWorldConfig, generate_world, main, write_world

SMALL = SyntheticWorldConfig.with_defaults(n_customers=400, n_weeks=30, seed=3)
CUTOFF_WEEK = 78
HORIZON = pd.Timedelta(days=90)
RECENT = pd.Timedelta(weeks=8)


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_world(SyntheticWorldConfig.with_defaults(n_customers=6000))


@pytest.fixture(scope="module")
def cutoff() -> pd.Timestamp:
    return pd.Timestamp(SyntheticWorldConfig.with_defaults(n_customers=6000).start) + pd.Timedelta(weeks=CUTOFF_WEEK)


@pytest.fixture(scope="module")
def churned(world: tuple[pd.DataFrame, pd.DataFrame], cutoff: pd.Timestamp) -> pd.Series:
    """Churn label per customer seen before the cutoff: no purchase in (cutoff, cutoff + horizon]."""
    events = world[0]
    seen = events.loc[events["timestamp"] <= cutoff, "customer_id"].unique()
    window = (events["timestamp"] > cutoff) & (events["timestamp"] <= cutoff + HORIZON)
    buyers = events.loc[window & (events["amount"] > 0), "customer_id"].unique()
    return pd.Series(~pd.Index(seen).isin(buyers), index=seen)


def _recent(events: pd.DataFrame, cutoff: pd.Timestamp, event_type: str) -> pd.DataFrame:
    """Events of one type in the RECENT window before the cutoff."""
    in_window = (events["timestamp"] > cutoff - RECENT) & (events["timestamp"] <= cutoff)
    return events[in_window & (events["event_type"] == event_type)]


def test_same_seed_gives_identical_frames():
    first, second = generate_world(SMALL), generate_world(SMALL)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])


def test_different_seeds_differ():
    events, _ = generate_world(SMALL)
    other, _ = generate_world(SyntheticWorldConfig.with_defaults(n_customers=400, n_weeks=30, seed=4))
    assert not events.equals(other)


def test_event_schema(world):
    events, _ = world
    assert list(events.columns) == ["customer_id", "timestamp", "amount", "event_type", "channel", "n_items"]
    assert pd.api.types.is_string_dtype(events["customer_id"])
    assert events["timestamp"].dtype == "datetime64[ns]"
    assert events["amount"].dtype == "float64"
    assert events["n_items"].dtype == "float64"
    assert events["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert set(events["event_type"]) == {"purchase", "visit", "support_ticket", "complaint", "refund"}
    assert set(events["channel"]) == {"web", "app", "store"}
    assert (events["timestamp"] == events["timestamp"].dt.floor("s")).all()


def test_events_sorted_and_inside_log(world):
    events, _ = world
    config = SyntheticWorldConfig.with_defaults(n_customers=6000)
    start = pd.Timestamp(config.start)
    assert events["timestamp"].min() >= start
    assert events["timestamp"].max() < start + pd.Timedelta(weeks=config.n_weeks)
    keys = events[["timestamp", "customer_id"]]
    assert keys.equals(keys.sort_values(["timestamp", "customer_id"], kind="stable"))


def test_customers_table(world):
    events, customers = world
    assert list(customers.columns) == ["customer_id", "region", "age_band", "signup_channel"]
    assert customers["customer_id"].is_unique
    assert set(events["customer_id"]) == set(customers["customer_id"])
    assert customers["region"].nunique() == 4
    assert set(customers["age_band"]) == {"18-24", "25-34", "35-44", "45-54", "55+"}
    assert customers["signup_channel"].nunique() == 3


def test_amounts_follow_event_types(world):
    events, _ = world
    kind = events["event_type"]
    assert (events.loc[kind == "purchase", "amount"] > 0).all()
    assert (events.loc[kind == "refund", "amount"] < 0).all()
    assert (events.loc[~kind.isin(["purchase", "refund"]), "amount"] == 0).all()
    assert np.allclose(events["amount"], events["amount"].round(2), rtol=0, atol=1e-9)
    monetary = kind.isin(["purchase", "refund"])
    assert events.loc[~monetary, "n_items"].isna().all()
    items = events.loc[monetary, "n_items"]
    assert (items >= 1).all() and (items == items.round()).all()


def test_signups_are_staggered_over_the_first_60_percent(world):
    events, _ = world
    config = SyntheticWorldConfig.with_defaults(n_customers=6000)
    first_week = (events.groupby("customer_id")["timestamp"].min() - pd.Timestamp(config.start)).dt.days // 7
    assert first_week.max() < 0.6 * config.n_weeks
    assert first_week.min() < 0.1 * config.n_weeks
    assert first_week.nunique() > 0.5 * config.n_weeks


def test_default_size_is_in_expected_range(world):
    events, _ = world
    assert 100_000 <= len(events) <= 250_000


def test_churn_rate_is_in_band(churned):
    assert 0.3 <= churned.mean() <= 0.6


def test_recent_complaints_raise_churn(world, cutoff, churned):
    """Among customers still buying in the last 8 weeks, those who complained churn clearly more."""
    events, _ = world
    buyers = _recent(events, cutoff, "purchase")["customer_id"].unique()
    complained = pd.Index(buyers).isin(_recent(events, cutoff, "complaint")["customer_id"])
    label = churned.reindex(buyers)
    assert complained.sum() >= 50
    assert label[complained].mean() > label[~complained].mean() + 0.1


def test_purchase_drop_signals_churn(world, cutoff, churned):
    """Customers whose last-8-week purchases fell well below their earlier rate churn far more."""
    events, _ = world
    purchases = events[(events["event_type"] == "purchase") & (events["timestamp"] <= cutoff)]
    recent = purchases["timestamp"] > cutoff - RECENT
    ids = churned.index
    last = purchases[recent].groupby("customer_id").size().reindex(ids, fill_value=0)
    before = purchases[~recent].groupby("customer_id").size().reindex(ids, fill_value=0)
    first_seen = events[events["timestamp"] <= cutoff].groupby("customer_id")["timestamp"].min().reindex(ids)
    earlier_weeks = (cutoff - RECENT - first_seen).dt.days / 7
    expected = (before / earlier_weeks * 8).where(earlier_weeks >= 16)
    dropped = (expected >= 2) & (last <= 0.25 * expected)
    steady = (expected >= 2) & (last >= 0.75 * expected)
    assert dropped.sum() >= 50 and steady.sum() >= 50
    assert churned[dropped].mean() > churned[steady].mean() + 0.3


def test_static_attributes_shift_churn(world, churned):
    _, customers = world
    attributes = customers.set_index("customer_id").reindex(churned.index)
    by_channel = churned.groupby(attributes["signup_channel"]).mean()
    by_age = churned.groupby(attributes["age_band"]).mean()
    by_region = churned.groupby(attributes["region"]).mean()
    assert by_channel.idxmax() == "paid_social"
    assert by_age.idxmax() == "18-24"
    assert by_region.idxmin() == "north"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_world_round_trip(tmp_path, fmt):
    events_path, customers_path = write_world(SMALL, tmp_path / "out", fmt)
    assert (events_path.name, customers_path.name) == (f"events.{fmt}", f"customers.{fmt}")
    events, customers = generate_world(SMALL)
    if fmt == "parquet":
        read_events, read_customers = pd.read_parquet(events_path), pd.read_parquet(customers_path)
    else:
        read_events = pd.read_csv(events_path, dtype={"customer_id": str}, parse_dates=["timestamp"])
        read_customers = pd.read_csv(customers_path, dtype={"customer_id": str})
    read_events["timestamp"] = read_events["timestamp"].astype("datetime64[ns]")
    pd.testing.assert_frame_equal(read_events, events)
    pd.testing.assert_frame_equal(read_customers, customers)


def test_write_world_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="json"):
        write_world(SMALL, tmp_path, "json")
    assert not any(tmp_path.iterdir())


def test_cli_writes_files(tmp_path, capsys):
    out = tmp_path / "world"
    argv = ["--customers", "300", "--weeks", "20", "--start", "2024-03-04", "--seed", "7"]
    assert main([*argv, "--out", str(out), "--format", "csv"]) == 0
    events = pd.read_csv(out / "events.csv", parse_dates=["timestamp"])
    customers = pd.read_csv(out / "customers.csv")
    assert len(customers) == 300
    assert events["timestamp"].min() >= pd.Timestamp("2024-03-04")
    printed = capsys.readouterr().out
    assert str(out / "events.csv") in printed and str(out / "customers.csv") in printed
    assert f"{len(events)} events, 300 customers" in printed
