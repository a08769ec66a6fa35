"""Labels from the horizon window: churn (no purchase, or a decline), net spend and purchase days, for the feature
population."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnformer.data.events import load_events
from churnformer.data.featurizer import fit_featurizer
from churnformer.data.labels import ChurnDefinition, LabelSpec, horizon_labels, make_labels
from churnformer.data.sequences import build_sequences
from churnformer.data.window import HorizonGrid, Window
from churnformer.errors import ConfigError, InputError

WINDOW = Window.from_cutoff("2024-06-30", horizon_days=30)  # features < 07-01, labels in [07-01, 07-31)


def _events(rows, event_type: bool = False) -> pd.DataFrame:
    columns = ["customer_id", "timestamp", "amount"] + (["event_type"] if event_type else [])
    return load_events(pd.DataFrame(rows, columns=columns))


def _labels_by_id(labels: pd.DataFrame) -> dict:
    return {row.customer_id: (row.churn, row.spend) for row in labels.itertuples()}


def test_churn_and_spend():
    events = _events(
        [
            ("buyer", "2024-06-01", 10.0),
            ("buyer", "2024-07-02", 25.0),
            ("buyer", "2024-07-03", 0.0),
            ("visitor", "2024-06-02", 0.0),
            ("visitor", "2024-07-05", 0.0),  # activity without a purchase: churned
            ("silent", "2024-06-03", 50.0),  # nothing in the horizon
            ("refunder", "2024-06-04", 30.0),
            ("refunder", "2024-07-06", -40.0),  # only a refund: churned, spend floored at 0
            ("mixed", "2024-06-05", 5.0),
            ("mixed", "2024-07-07", 20.0),
            ("mixed", "2024-07-08", -5.0),  # refunds subtract
        ]
    )
    customer_ids = build_sequences(events, WINDOW, fit_featurizer(events)).customer_ids
    labels = make_labels(events, WINDOW, customer_ids)
    assert list(labels.columns) == ["customer_id", "churn", "spend"]
    assert labels["churn"].dtype == np.float32 and labels["spend"].dtype == np.float32
    assert list(labels["customer_id"]) == list(customer_ids)
    assert _labels_by_id(labels) == {
        "buyer": (0.0, 25.0),
        "visitor": (1.0, 0.0),
        "silent": (1.0, 0.0),
        "refunder": (1.0, 0.0),
        "mixed": (0.0, 15.0),
    }


DECLINE = ChurnDefinition("decline", decline_threshold=0.5)


def test_a_decline_is_spend_below_half_of_the_same_window_before_the_cutoff():
    events = _events(
        [
            ("faded", "2024-06-10", 100.0),
            ("faded", "2024-07-10", 40.0),  # 40 < 50: declined, though it bought
            ("steady", "2024-06-10", 100.0),
            ("steady", "2024-07-10", 50.0),  # exactly half is not below it
            ("steady", "2024-05-20", 900.0),  # before the 30-day window: not what the decline is measured against
            ("gone", "2024-06-20", 30.0),  # bought before, nothing after: declined (and no purchase)
            ("idle", "2024-05-01", 80.0),  # nothing in the 30 days before: cannot decline
            ("refunded", "2024-06-15", 60.0),
            ("refunded", "2024-06-16", -60.0),  # net 0 before: cannot decline
            ("refunded", "2024-07-02", 5.0),
            ("copied", "2024-06-11", 10.0),
            ("copied", "2024-06-11", 10.0),  # an identical duplicate counts once: 10 before
            ("copied", "2024-07-11", 4.0),  # 4 < 5
        ]
    )
    ids = np.array(["faded", "steady", "gone", "idle", "refunded", "copied"], dtype=object)
    declines = make_labels(events, WINDOW, ids, LabelSpec(churn=DECLINE))
    assert _labels_by_id(declines) == {
        "faded": (1.0, 40.0),
        "steady": (0.0, 50.0),
        "gone": (1.0, 0.0),
        "idle": (0.0, 0.0),
        "refunded": (0.0, 5.0),
        "copied": (1.0, 4.0),
    }
    no_purchase = make_labels(events, WINDOW, ids)
    assert no_purchase["churn"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert no_purchase["spend"].tolist() == declines["spend"].tolist()


def test_each_horizon_of_a_decline_compares_windows_of_its_own_length():
    events = _events(
        [
            ("a", "2024-05-15", 100.0),  # 47 days before the cutoff: in the 60-day window only
            ("a", "2024-06-25", 20.0),
            ("a", "2024-07-05", 15.0),  # 15 >= 10 at 30 days; 15 < 60 at 60 days
        ]
    )
    grid = HorizonGrid.of([30, 60], 30)
    labels = horizon_labels(events, WINDOW, grid, np.array(["a"], dtype=object), LabelSpec(churn=DECLINE))
    assert labels[["churn_30d", "churn_60d", "no_purchase_30d", "no_purchase_60d"]].iloc[0].tolist() == [
        0.0,
        1.0,
        0.0,
        0.0,
    ]


@pytest.mark.parametrize(
    ("name", "threshold", "message"),
    [
        ("lapse", 0.5, "churn_definition='lapse'"),
        ("decline", 0.0, "decline_threshold=0.0"),
        ("decline", 1.5, "(0, 1]"),
        ("decline", "half", "decline_threshold='half'"),
    ],
)
def test_an_unknown_churn_definition_or_threshold_is_a_config_error(name: str, threshold: object, message: str):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ChurnDefinition(name, threshold)


def test_horizon_boundaries():
    events = _events(
        [
            ("a", "2024-06-30 23:59:59", 100.0),  # feature window, not a label
            ("b", "2024-06-30", 1.0),
            ("b", "2024-07-01 00:00:00", 7.0),  # first instant of the horizon
            ("c", "2024-06-30", 1.0),
            ("c", "2024-07-31 00:00:00", 9.0),  # first instant after the horizon
            ("d", "2024-06-30", 1.0),
            ("d", "2024-07-30 23:59:59.999999999", 3.0),  # last instant of the horizon
        ]
    )
    labels = make_labels(events, WINDOW, np.array(["a", "b", "c", "d"], dtype=object))
    assert _labels_by_id(labels) == {"a": (1.0, 0.0), "b": (0.0, 7.0), "c": (1.0, 0.0), "d": (0.0, 3.0)}


def test_customers_only_after_the_cutoff_are_not_in_the_population():
    events = _events(
        [
            (1, "2024-06-10", 5.0),
            (2, "2024-07-10", 50.0),  # first seen in the horizon
            (3, "2024-08-10", 50.0),  # first seen after the horizon
            (1, "2024-07-11", 6.0),
        ]
    )
    customer_ids = build_sequences(events, WINDOW, fit_featurizer(events)).customer_ids
    labels = make_labels(events, WINDOW, customer_ids)
    assert labels["customer_id"].tolist() == [1]
    assert _labels_by_id(labels) == {1: (0.0, 6.0)}


def test_labels_follow_the_given_order_and_ids():
    events = _events([("x", "2024-07-02", 1.0), ("y", "2024-07-03", 2.0), ("00z", "2024-07-04", 3.0)])
    order = np.array(["y", "nobody", "00z", "x"], dtype=object)
    labels = make_labels(events, WINDOW, order)
    assert labels["customer_id"].tolist() == ["y", "nobody", "00z", "x"]
    assert labels["churn"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert labels["spend"].tolist() == [2.0, 0.0, 3.0, 1.0]


def test_purchase_types_use_the_event_type_column():
    events = _events(
        [
            ("a", "2024-06-01", 0.0, "visit"),
            ("a", "2024-07-02", 0.0, "order"),  # a zero-amount order is a purchase by type
            ("b", "2024-06-01", 0.0, "visit"),
            ("b", "2024-07-02", 30.0, "top_up"),  # positive amount, but not a purchase type
            ("c", "2024-06-01", 0.0, "visit"),
            ("c", "2024-07-03", 12.0, "subscription"),
            ("c", "2024-07-04", -2.0, "refund"),
        ],
        event_type=True,
    )
    ids = np.array(["a", "b", "c"], dtype=object)
    by_type = make_labels(events, WINDOW, ids, LabelSpec(purchase_types=("order", "subscription")))
    assert _labels_by_id(by_type) == {"a": (0.0, 0.0), "b": (1.0, 30.0), "c": (0.0, 10.0)}
    by_amount = make_labels(events, WINDOW, ids)
    assert _labels_by_id(by_amount) == {"a": (1.0, 0.0), "b": (0.0, 30.0), "c": (0.0, 10.0)}


def test_purchase_types_with_a_renamed_or_categorical_column():
    raw = pd.DataFrame(
        {
            "customer_id": [1, 2],
            "timestamp": ["2024-07-02", "2024-07-02"],
            "amount": [0.0, 0.0],
            "kind": pd.Categorical([3, 4]),  # non-string types compare as strings
        }
    )
    events = load_events(raw)
    labels = make_labels(events, WINDOW, np.array([1, 2]), LabelSpec.of(["3"], "kind"))
    assert labels["churn"].tolist() == [0.0, 1.0]


def test_purchase_types_without_the_column_are_an_error():
    events = _events([("a", "2024-07-02", 1.0)])
    with pytest.raises(InputError, match="'event_type'"):
        make_labels(events, WINDOW, np.array(["a"], dtype=object), LabelSpec(purchase_types=("order",)))


def test_is_purchase_default_is_positive_amount():
    events = _events([("a", "2024-07-02", 1.0), ("a", "2024-07-02", 0.0), ("a", "2024-07-02", -1.0)])
    assert LabelSpec().is_purchase(events).tolist() == [True, False, False]


def test_integer_ids():
    big = 2**62 + 1
    events = _events([(big, "2024-06-01", 1.0), (big, "2024-07-01", 4.0), (7, "2024-06-01", 1.0)])
    customer_ids = build_sequences(events, WINDOW, fit_featurizer(events)).customer_ids
    labels = make_labels(events, WINDOW, customer_ids)
    assert labels["customer_id"].tolist() == [7, big]
    assert labels["churn"].tolist() == [1.0, 0.0]
    assert labels["spend"].tolist() == [0.0, 4.0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.integers(-40, 80), st.integers(-20, 50) | st.just(0)),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 60),
)
def test_property_labels_match_a_pandas_reference(rows, horizon_days):
    start = pd.Timestamp("2024-07-01")
    events = load_events(
        pd.DataFrame(
            {
                "customer_id": [r[0] for r in rows],
                "timestamp": [start + pd.Timedelta(days=r[1], hours=r[1] % 5) for r in rows],
                "amount": [float(r[2]) for r in rows],
            }
        )
    )
    window = Window.from_cutoff("2024-06-30", horizon_days=horizon_days)
    population = np.array(["a", "b", "c", "d", "e"], dtype=object)
    if (events["timestamp"] < window.feature_end).all():  # the log ends before the cutoff: nothing observed
        with pytest.raises(InputError, match="no events after the cutoff"):
            make_labels(events, window, population)
        return
    labels = make_labels(events, window, population)

    label_end = start + pd.Timedelta(days=horizon_days)
    in_horizon = events[(events["timestamp"] >= window.feature_end) & (events["timestamp"] < label_end)]
    in_horizon = in_horizon.drop_duplicates()  # identical events count once
    grouped = in_horizon.groupby("customer_id")["amount"]
    purchases = grouped.apply(lambda a: int((a > 0).sum()))
    net = grouped.sum()
    for row in labels.itertuples():
        expected_churn = 0.0 if purchases.get(row.customer_id, 0) > 0 else 1.0
        expected_spend = max(float(net.get(row.customer_id, 0.0)), 0.0)
        assert row.churn == expected_churn
        assert row.spend == pytest.approx(expected_spend)
    # Purchases count days with a purchase, as BG/NBD counts transactions.
    days = in_horizon.loc[in_horizon["amount"] > 0].assign(day=lambda f: f["timestamp"].dt.floor("D"))
    purchase_days = days.groupby("customer_id")["day"].nunique()
    grid = HorizonGrid((float(horizon_days),), float(horizon_days))
    counted = horizon_labels(events, window, grid, population)
    assert counted["purchases"].tolist() == [float(purchase_days.get(c, 0)) for c in population]


def test_purchases_count_days_with_a_purchase_of_the_configured_types():
    events = _events(
        [
            ("a", "2024-07-02 09:00", 5.0, "order"),
            ("a", "2024-07-02 18:00", 7.0, "order"),  # the same day: one purchase day
            ("a", "2024-07-20", 3.0, "order"),
            ("a", "2024-07-21", 3.0, "visit"),  # not a purchase type
            ("a", "2024-09-15", 3.0, "order"),  # after 30 days, within 90
            ("b", "2024-07-05", -4.0, "refund"),
        ],
        event_type=True,
    )
    grid = HorizonGrid.of([30, 90], 30)
    labels = horizon_labels(events, WINDOW, grid, np.array(["a", "b"], dtype=object), LabelSpec(("order",)))
    assert labels[["purchases_30d", "purchases_90d", "purchases"]].to_numpy().tolist() == [[2, 3, 2], [0, 0, 0]]
