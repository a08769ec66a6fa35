"""Line items grouped into one event per basket (``data.features.group_by``): what a group event holds, the
accounting of every row, no dependence on row order, no leakage across the cutoff, the state in the model
file, and a line-item log with its own column names through the real commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import ColumnMapping, load_events
from churnformer.data.featurizer import Featurizer, FeaturizerConfig, fit_featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window
from churnformer.errors import ConfigError, InputError
from tests.conftest import TINY_CUTOFF, TRAIN_OVERRIDES, run_in_process, run_predict

CUTOFF = "2024-02-29"
ROWS = [  # customer, time, amount, event type, basket, department, store, quantity
    ("A", "2024-01-05 10:00", 2.0, "purchase", 1, "dairy", 7, 1.0),
    ("A", "2024-01-05 10:00", 2.0, "purchase", 1, "dairy", 7, 1.0),  # the same product twice: two items
    ("A", "2024-01-05 10:01", 3.0, "purchase", 1, "bakery", 7, 2.0),
    ("A", "2024-01-09 09:00", 0.0, "coupon", None, None, None, None),
    ("A", "2024-01-09 09:00", 0.0, "coupon", None, None, None, None),  # the log written twice: one copy
    ("A", "2024-02-01 12:00", 5.0, "purchase", 2, "produce", 8, None),
    ("B", "2024-01-20 08:00", 4.0, "purchase", 3, "dairy", 7, 1.0),
    ("B", "2024-01-20 08:00", 1.0, "purchase", 3, "produce", 7, 3.0),
    ("B", "2024-02-29 23:59", 6.0, "purchase", 4, "dairy", 7, 1.0),
    ("B", "2024-03-01 00:01", 8.0, "purchase", 4, "bakery", 7, 1.0),  # after the cutoff, in the same basket
    ("C", "2024-03-05 10:00", 1.0, "purchase", 5, "dairy", 7, 1.0),  # only after the cutoff
]
CONFIG = FeaturizerConfig.with_defaults(group_by="basket", categorical=["store"], min_category_count=1)


def line_items() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=["user", "ts", "value", "event_type", "basket", "department", "store", "qty"])
    return load_events(
        frame.assign(ts=pd.to_datetime(frame["ts"])), ColumnMapping(customer_id="user", timestamp="ts", amount="value")
    )


@pytest.fixture(scope="module")
def fitted() -> Featurizer:
    events = line_items()
    return fit_featurizer(events[events["timestamp"] < Window.from_cutoff(CUTOFF, 30).feature_end], None, CONFIG)


def test_a_basket_is_one_event_with_its_totals_items_and_shares(fitted: Featurizer) -> None:
    grouping = fitted.grouping
    assert (grouping.first, grouping.summed) == (["event_type", "store"], ["qty"])
    assert [(bag.name, sorted(bag.vocabulary)) for bag in grouping.bags] == [
        ("department", ["bakery", "dairy", "produce"])
    ]
    events = line_items()
    grouped = grouping.apply(events[events["timestamp"] < pd.Timestamp("2024-03-01")]).set_index(
        ["customer_id", "basket"]
    )

    def row(key: tuple[str, float]) -> pd.Series:  # the index is not unique: rows without a basket share NaN
        return grouped.loc[[key]].iloc[0]

    basket = row(("A", 1.0))
    assert basket["amount"] == 7.0 and basket["qty"] == 4.0 and basket["basket_items"] == 3
    assert basket["timestamp"] == pd.Timestamp("2024-01-05 10:00") and basket["store"] == 7
    assert (basket["department=dairy"], basket["department=bakery"], basket["department=other"]) == (2 / 3, 1 / 3, 0)
    assert np.isnan(row(("A", 2.0))["qty"])  # every item's quantity missing: the sum is missing
    assert row(("B", 4.0))["amount"] == 6.0  # the item after the cutoff was never read
    coupons = grouped[grouped["event_type"] == "coupon"]
    assert len(coupons) == 2 and (coupons["basket_items"] == 1).all()  # rows without a basket stay their own
    assert {"department=dairy", "basket_items", "qty"} <= set(fitted.event_numeric_names)
    assert "basket" not in fitted.event_categorical_names + fitted.event_numeric_names


def test_every_row_is_accounted_for_and_row_order_never_matters(fitted: Featurizer) -> None:
    window = Window.from_cutoff(CUTOFF, 30)
    events = line_items()
    sequences = build_sequences(events, window, fitted)
    report = sequences.report
    assert list(sequences.customer_ids) == ["A", "B"] and list(sequences.n_events_total) == [3, 2]
    assert (report.events_after_cutoff, report.events_duplicate, report.events_grouped) == (2, 1, 3)
    assert report.events_read == (
        report.events_after_cutoff + report.events_duplicate + report.events_grouped + sequences.n_events_total.sum()
    )
    for seed in range(3):
        shuffled = build_sequences(events.sample(frac=1, random_state=seed), window, fitted)
        assert_same(shuffled, sequences)
    later = build_sequences(events[events["timestamp"] >= window.feature_end], window, fitted)  # a spill part
    assert len(later) == 0 and later.report.events_after_cutoff == 2


def test_nothing_after_the_cutoff_reaches_a_group(fitted: Featurizer) -> None:
    window = Window.from_cutoff(CUTOFF, 30)
    events = line_items()
    later = events[events["customer_id"] == "A"].assign(timestamp=pd.Timestamp("2024-03-02"), amount=99.0)
    assert_same(
        build_sequences(pd.concat([events, later], ignore_index=True), window, fitted),
        build_sequences(events, window, fitted),
    )


def test_the_grouping_is_part_of_the_model_state(fitted: Featurizer) -> None:
    again = Featurizer.from_json(fitted.to_json())
    assert again == fitted and again.event_attribute_columns == ["basket", "event_type", "store", "qty", "department"]


def test_a_missing_group_column_or_text_with_groups_is_one_clear_error() -> None:
    events = line_items()
    with pytest.raises(InputError, match=r"data.features.group_by=order names a column the log lacks; columns present"):
        fit_featurizer(events, None, FeaturizerConfig.with_defaults(group_by="order"))
    with pytest.raises(ConfigError, match="grouped events do not carry texts yet"):
        fit_featurizer(events.assign(note="x"), None, FeaturizerConfig.with_defaults(group_by="basket", text=["note"]))


@pytest.mark.slow
def test_a_line_item_log_with_its_own_column_names_trains_and_scores(
    tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    """The Day-one commands on a line-item export (their entry points, in this process): each purchase of the
    tiny world split into items of two departments sharing an order number, columns renamed; training scores
    after itself (the default)."""
    events = pd.read_csv(tiny_world[0])
    purchases = events[events["event_type"] == "purchase"].assign(order_no=lambda frame: np.arange(len(frame)))
    items = pd.concat(
        [
            purchases.assign(amount=purchases["amount"] * 0.25, dept="fresh"),
            purchases.assign(amount=purchases["amount"] * 0.75, dept="dry"),
            events[events["event_type"] != "purchase"],
        ]
    ).rename(columns={"customer_id": "household", "timestamp": "when", "amount": "paid"})
    log = tmp_path / "items.csv"
    items.sample(frac=1, random_state=0).to_csv(log, index=False)
    columns = ("data.columns.customer_id=household", "data.columns.timestamp=when", "data.columns.amount=paid")
    run_dir = tmp_path / "run"
    overrides = (
        *TRAIN_OVERRIDES,
        f"data.events={log}",
        *columns,
        "data.features.group_by=order_no",
        f"hydra.run.dir={run_dir}",
    )
    trained = run_in_process("churnformer-train", *overrides, "trainer.enable_progress_bar=false")
    assert trained.code == 0, trained.err[-5000:]
    assert "scored" in trained.stdout and "events grouped into others" in trained.stdout
    output = tmp_path / "scores.parquet"
    mapped = (f"columns.{c.split('.')[-1]}" for c in columns)
    run_predict(run_dir, log, output, *mapped, "explain.enabled=true", "explain.event_type_column=dept")
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    drivers = pd.read_parquet(output.with_name(output.name + ".drivers.parquet"))
    assert {"fresh", "dry"} <= set(drivers["group"])  # removing a department's items from the baskets
    before_cutoff = pd.to_datetime(purchases["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)
    assert summary["events_grouped"] == int(before_cutoff.sum())  # one item of each two-item order
    assert summary["customers_scored"] + sum(summary["customers_not_scored"].values()) == items["household"].nunique()
    line = run_in_process(
        "churnformer-train",
        *overrides[:-1],
        "data.features.group_by=basket",
        "data.horizons_days=[60]",
        f"hydra.run.dir={tmp_path / 'bad'}",
    ).error_line
    assert "data.features.group_by=basket names a column the log lacks" in line and "'order_no'" in line


def assert_same(actual: Sequences, expected: Sequences) -> None:
    assert list(actual.customer_ids) == list(expected.customer_ids)
    for name in expected.events:
        np.testing.assert_array_equal(actual.events[name], expected.events[name])
    for name in expected.customers:
        np.testing.assert_array_equal(actual.customers[name], expected.customers[name])
