"""Sequence builder: leakage safety, truncation, order invariance, encodings, static table, padding.

The property-based tests at the end compare the builder with a slow pandas reference on random
small logs (string or integer ids, ties, sub-second stamps, negative and zero amounts, NaN numerics).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from churnformer.data.events import load_customers, load_events
from churnformer.data.featurizer import BASE_CUSTOMER_NUMERIC, Featurizer, FeaturizerConfig, fit_featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.values import PADDING_ID, UNKNOWN_ID
from churnformer.data.window import NS_PER_DAY, Window
from churnformer.errors import InputError
from churnformer.schema import CUSTOMER_CAT, CUSTOMER_NUM, EVENT_CAT, EVENT_NUM, LENGTHS, MODEL_INPUTS

CUTOFF = "2024-06-30"
WINDOW = Window.from_cutoff(CUTOFF, horizon_days=30)
FEATURE_END = pd.Timestamp("2024-07-01")


def _events(rows: list[tuple], columns=("customer_id", "timestamp", "amount", "channel", "score")) -> pd.DataFrame:
    return load_events(pd.DataFrame(rows, columns=list(columns)))


def _num(featurizer: Featurizer, sequences: Sequences, name: str) -> np.ndarray:
    return sequences.events[EVENT_NUM][:, featurizer.event_numeric_names.index(name)]


def _cat(featurizer: Featurizer, sequences: Sequences, name: str) -> np.ndarray:
    return sequences.events[EVENT_CAT][:, featurizer.event_categorical_names.index(name)]


def _customer_rows(sequences: Sequences, customer) -> slice:
    i = list(sequences.customer_ids).index(customer)
    return slice(int(sequences.offsets[i]), int(sequences.offsets[i + 1]))


def _decode_amounts(encoded: np.ndarray) -> np.ndarray:
    return np.sign(encoded) * np.expm1(np.abs(encoded.astype(np.float64)))


def assert_same_sequences(a: Sequences, b: Sequences, compare_report: bool = True) -> None:
    assert a.customer_ids.dtype.kind == b.customer_ids.dtype.kind
    assert list(a.customer_ids) == list(b.customer_ids)
    assert a.events.keys() == b.events.keys() and a.customers.keys() == b.customers.keys()
    pairs = {"offsets": (a.offsets, b.offsets), "n_events_total": (a.n_events_total, b.n_events_total)}
    pairs |= {name: (a.events[name], b.events[name]) for name in a.events}
    pairs |= {name: (a.customers[name], b.customers[name]) for name in a.customers}
    for name, (left, right) in pairs.items():
        assert left.dtype == right.dtype, name
        assert left.shape == right.shape, name
        assert np.array_equal(left, right), name
    if compare_report:
        assert a.report == b.report


def _base_log() -> pd.DataFrame:
    rows = []
    for c, customer in enumerate(["c1", "c2", "c3", "c4"]):
        for k in range(3 + 2 * c):
            stamp = pd.Timestamp("2024-05-01") + pd.Timedelta(days=7 * k + c, hours=k)
            channel = ["web", "app", "store", None][(k + c) % 4]
            rows.append((customer, stamp, float(10 * k - 5 * c), channel, float(k) if k % 3 else np.nan))
    return _events(rows)


# ------------------------------------------------------------------------------------- leakage


def test_no_event_after_the_cutoff_reaches_any_feature():
    base = _base_log()
    featurizer = fit_featurizer(base, config=FeaturizerConfig.with_defaults(max_len=4, min_category_count=1))
    before = build_sequences(base, WINDOW, featurizer)

    future = _events(
        [
            ("c1", FEATURE_END, 9.99e11, "brand_new_channel", 1e12),  # exactly at feature_end, largest amounts
            ("c2", FEATURE_END + pd.Timedelta(1, "ns"), -9.99e11, "web", np.nan),
            ("c3", pd.Timestamp("2030-01-01"), 0.0, None, -1e12),
            ("a0", FEATURE_END, 5.0, "web", 1.0),  # new customers sorting before, between and after
            ("c25", FEATURE_END + pd.Timedelta(days=3), 99.0, "app", 2.0),
            ("zz", pd.Timestamp("2200-01-01"), 1.0, "other", 3.0),
            ("c4", FEATURE_END + pd.Timedelta(days=1), 1e6, "store", 0.0),
        ]
    )
    combined = pd.concat([base, future], ignore_index=True).sample(frac=1, random_state=7).reset_index(drop=True)
    after = build_sequences(combined, WINDOW, featurizer)

    assert_same_sequences(before, after, compare_report=False)
    assert after.report.events_read == len(base) + len(future)
    assert after.report.events_after_cutoff == len(future)
    assert before.report.events_after_cutoff == 0
    for field in ("events_truncated", "customers", "customers_truncated", "unknown_categories"):
        assert getattr(after.report, field) == getattr(before.report, field), field


def test_events_at_end_of_cutoff_day_included_next_midnight_excluded():
    events = _events(
        [
            ("a", pd.Timestamp("2024-06-30 23:59:59.999999999"), 1.0, "web", 1.0),
            ("a", pd.Timestamp("2024-07-01 00:00:00"), 2.0, "web", 1.0),
            ("b", pd.Timestamp("2024-07-01 00:00:00"), 3.0, "web", 1.0),
            ("c", pd.Timestamp("2024-06-30 00:00:00"), 4.0, "web", 1.0),
        ]
    )
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(min_category_count=1))
    sequences = build_sequences(events, Window.from_cutoff(CUTOFF), featurizer)
    assert list(sequences.customer_ids) == ["a", "c"]
    assert sequences.n_events_total.tolist() == [1, 1]
    assert np.allclose(_decode_amounts(_num(featurizer, sequences, "amount_signed_log")), [1.0, 4.0], rtol=1e-5)
    assert sequences.report.events_after_cutoff == 2
    # A cutoff with a time of day is inclusive of that instant and nothing later.
    at_noon = Window.from_cutoff("2024-06-30 00:00:00")
    sequences = build_sequences(events, at_noon, featurizer)
    assert list(sequences.customer_ids) == ["c"]


# ------------------------------------------------------------------------------------ truncation


def test_truncation_keeps_the_latest_events_and_reports_it():
    day = pd.Timestamp("2024-06-01")
    rows = [("a", day + pd.Timedelta(days=k), float(k + 1), "web", 1.0) for k in range(10)]
    rows += [("b", day + pd.Timedelta(days=k), float(100 + k), "web", 1.0) for k in range(4)]
    rows += [("c", day + pd.Timedelta(days=k), float(200 + k), "web", 1.0) for k in range(2)]
    events = _events(rows).sample(frac=1, random_state=3).reset_index(drop=True)
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=4, min_category_count=1))
    sequences = build_sequences(events, WINDOW, featurizer)

    assert list(sequences.customer_ids) == ["a", "b", "c"]
    assert sequences.n_events_total.tolist() == [10, 4, 2]
    assert sequences.lengths.tolist() == [4, 4, 2]
    assert sequences.offsets.tolist() == [0, 4, 8, 10]
    report = sequences.report
    assert (report.events_read, report.events_truncated, report.customers, report.customers_truncated) == (16, 6, 3, 1)

    a = _customer_rows(sequences, "a")
    amounts = _decode_amounts(_num(featurizer, sequences, "amount_signed_log")[a])
    assert np.allclose(amounts, [7, 8, 9, 10], rtol=1e-5)
    days_before = np.expm1(_num(featurizer, sequences, "log_days_before_cutoff")[a].astype(np.float64))
    assert np.allclose(days_before, [24, 23, 22, 21], rtol=1e-5)
    # The first kept event's gap is measured from the truncated event before it, not zero.
    gaps = np.expm1(_num(featurizer, sequences, "log_gap_days")[a].astype(np.float64))
    assert np.allclose(gaps, [1, 1, 1, 1], rtol=1e-5)
    assert _num(featurizer, sequences, "is_first_event")[a].tolist() == [0, 0, 0, 0]
    b = _customer_rows(sequences, "b")
    assert _num(featurizer, sequences, "is_first_event")[b].tolist() == [1, 0, 0, 0]
    assert np.expm1(_num(featurizer, sequences, "log_gap_days")[b].astype(np.float64))[0] == 0

    # Customer features count every event and date tenure from the true (truncated) first event.
    names = featurizer.customer_numeric_names
    log_n = sequences.customers[CUSTOMER_NUM][:, names.index("log_n_events")]
    assert np.allclose(np.expm1(log_n.astype(np.float64)), [10, 4, 2], rtol=1e-5)
    tenure = np.expm1(sequences.customers[CUSTOMER_NUM][:, names.index("log_tenure_days")].astype(np.float64))
    assert np.allclose(tenure, [30, 30, 30], rtol=1e-5)


def test_max_len_one():
    rows = [("a", pd.Timestamp("2024-06-01") + pd.Timedelta(hours=k), float(k), "web", 1.0) for k in range(5)]
    events = _events(rows)
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=1))
    sequences = build_sequences(events, WINDOW, featurizer)
    assert sequences.offsets.tolist() == [0, 1]
    assert np.allclose(_decode_amounts(_num(featurizer, sequences, "amount_signed_log")), [4.0], rtol=1e-5)
    assert np.allclose(np.expm1(_num(featurizer, sequences, "log_gap_days").astype(np.float64)), [1 / 24], rtol=1e-4)
    assert sequences.report.events_truncated == 4


# ---------------------------------------------------------------------------------- row order


def test_shuffling_rows_changes_nothing_even_with_ties():
    stamp = pd.Timestamp("2024-06-10 12:00:00")
    rows = [
        ("a", stamp, 5.0, "web", 1.0),
        ("a", stamp, 5.0, "app", 1.0),
        ("a", stamp, -3.0, "web", np.nan),
        ("a", stamp, 0.0, None, 2.0),
        ("a", stamp, 5.0, "web", 3.0),
        ("a", stamp + pd.Timedelta(1, "ns"), 7.0, "web", 1.0),
        ("a", stamp - pd.Timedelta(days=1), 1.0, "store", 1.0),
        ("b", stamp, 1.0, "web", 1.0),
        ("b", stamp, 2.0, "web", 1.0),
        ("c", stamp, 1.0, "web", 1.0),
    ]
    events = _events(rows)
    for max_len in (3, 10):  # truncation falling inside the tied group, and none
        featurizer = fit_featurizer(
            events, config=FeaturizerConfig.with_defaults(max_len=max_len, min_category_count=1)
        )
        expected = build_sequences(events, WINDOW, featurizer)
        for seed in range(12):
            shuffled = events.sample(frac=1, random_state=seed).reset_index(drop=True)
            assert_same_sequences(expected, build_sequences(shuffled, WINDOW, featurizer))
        reversed_rows = events.iloc[::-1].reset_index(drop=True)
        assert_same_sequences(expected, build_sequences(reversed_rows, WINDOW, featurizer))


def test_unsorted_index_is_irrelevant():
    events = _base_log()
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=3))
    expected = build_sequences(events, WINDOW, featurizer)
    shuffled = events.sample(frac=1, random_state=1)  # index not reset: positions != labels
    assert_same_sequences(expected, build_sequences(shuffled, WINDOW, featurizer))


# ----------------------------------------------------------------------------------- encodings


def _category_log() -> pd.DataFrame:
    stamp = pd.Timestamp("2024-06-01")
    channels = ["web"] * 5 + ["app"] * 5 + ["store"] * 2 + [None]
    scores = [float(i) for i in range(len(channels) - 1)] + [np.nan]
    pairs = enumerate(zip(channels, scores, strict=True))
    rows = [("a", stamp + pd.Timedelta(hours=i), 1.0, ch, sc) for i, (ch, sc) in pairs]
    return _events(rows)


def test_vocabulary_rare_values_unknown_and_missing():
    train = _category_log()
    featurizer = fit_featurizer(train, config=FeaturizerConfig.with_defaults(max_len=100, min_category_count=3))
    encoder = featurizer.event_categorical[0]
    assert encoder.name == "channel"
    assert encoder.vocabulary == ["app", "web"]  # frequency, then value; "store" is rare
    assert featurizer.event_categorical_cardinalities[0] == 4

    score = _events(
        [
            ("a", pd.Timestamp("2024-06-01 01:00"), 1.0, "web", 1.0),
            ("a", pd.Timestamp("2024-06-01 02:00"), 1.0, "app", 1.0),
            ("a", pd.Timestamp("2024-06-01 03:00"), 1.0, "store", 1.0),  # rare in training
            ("a", pd.Timestamp("2024-06-01 04:00"), 1.0, "kiosk", 1.0),  # never seen
            ("a", pd.Timestamp("2024-06-01 05:00"), 1.0, None, 1.0),  # missing
            ("a", pd.Timestamp("2024-06-01 06:00"), 1.0, "kiosk", 1.0),
        ]
    )
    sequences = build_sequences(score, WINDOW, featurizer)
    assert _cat(featurizer, sequences, "channel").tolist() == [3, 2, UNKNOWN_ID, UNKNOWN_ID, UNKNOWN_ID, UNKNOWN_ID]
    # Non-missing values in the unknown bucket are counted; missing ones are not.
    assert sequences.report.unknown_categories == {"events.channel": 3}

    on_train = build_sequences(train, WINDOW, featurizer)
    assert on_train.report.unknown_categories == {"events.channel": 2}


def test_vocabulary_size_cap():
    train = _category_log()
    featurizer = fit_featurizer(train, config=FeaturizerConfig.with_defaults(max_vocab_size=1, min_category_count=1))
    assert featurizer.event_categorical[0].vocabulary == ["app"]
    sequences = build_sequences(train, WINDOW, featurizer)
    ids = _cat(featurizer, sequences, "channel")
    assert sorted(Counter(ids.tolist()).items()) == [(UNKNOWN_ID, 8), (2, 5)]
    assert sequences.report.unknown_categories == {"events.channel": 7}


def test_vocabulary_does_not_depend_on_row_order():
    train = _category_log()
    config = FeaturizerConfig.with_defaults(min_category_count=1)
    expected = fit_featurizer(train, config=config).to_json()
    for seed in range(5):
        assert fit_featurizer(train.sample(frac=1, random_state=seed), config=config).to_json() == expected


def test_numeric_attribute_nan_is_zero_with_indicator():
    train = _category_log()
    featurizer = fit_featurizer(train, config=FeaturizerConfig.with_defaults(max_len=100))
    scaler = featurizer.event_numeric[0]
    assert scaler.name == "score"
    assert scaler.mean == pytest.approx(5.5)
    assert scaler.std == pytest.approx(np.std(np.arange(12.0)))
    assert featurizer.event_numeric_names[-2:] == ["score", "score__missing"]

    sequences = build_sequences(train, WINDOW, featurizer)
    values, missing = _num(featurizer, sequences, "score"), _num(featurizer, sequences, "score__missing")
    assert missing.tolist() == [0.0] * 12 + [1.0]
    assert values[-1] == 0.0
    assert np.allclose(values[:12], (np.arange(12.0) - scaler.mean) / scaler.std, rtol=1e-6)

    extreme = _events(
        [("a", pd.Timestamp("2024-06-01"), 1.0, "web", 1e12), ("a", pd.Timestamp("2024-06-02"), 1.0, "web", -1e12)]
    )
    clipped = _num(featurizer, build_sequences(extreme, WINDOW, featurizer), "score")
    assert clipped.tolist() == [10.0, -10.0]


def test_string_categories_booleans_and_category_dtype_are_categorical():
    events = load_events(
        pd.DataFrame(
            {
                "customer_id": [1, 1, 2],
                "timestamp": ["2024-06-01", "2024-06-02", "2024-06-03"],
                "amount": [1.0, 2.0, 3.0],
                "kind": pd.Categorical(["x", "y", "x"]),
                "flag": [True, False, True],
                "qty": [1, 2, 3],
            }
        )
    )
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(min_category_count=1))
    assert [e.name for e in featurizer.event_categorical] == ["kind", "flag"]
    assert [s.name for s in featurizer.event_numeric] == ["qty"]
    sequences = build_sequences(events, WINDOW, featurizer)
    assert _cat(featurizer, sequences, "kind").tolist() == [2, 3, 2]
    assert _cat(featurizer, sequences, "flag").tolist() == [2, 3, 2]


def test_forced_categorical_and_dropped_columns():
    events = _category_log()
    featurizer = fit_featurizer(
        events, config=FeaturizerConfig.with_defaults(categorical=["score"], drop=["channel"], min_category_count=1)
    )
    assert [e.name for e in featurizer.event_categorical] == ["score"]
    assert featurizer.event_numeric == []
    sequences = build_sequences(events, WINDOW, featurizer)
    ids = _cat(featurizer, sequences, "score")
    assert ids[-1] == UNKNOWN_ID  # NaN
    assert len(set(ids[:-1].tolist())) == 12 and min(ids[:-1]) >= 2


def test_forced_categorical_numbers_encode_the_same_with_and_without_nan():
    def log(stores) -> pd.DataFrame:
        n = len(stores)
        return load_events(
            pd.DataFrame(
                {
                    "customer_id": [1] * n,
                    "timestamp": pd.date_range("2024-06-01", periods=n, freq="h"),
                    "amount": [1.0] * n,
                    "store": stores,
                }
            )
        )

    config = FeaturizerConfig.with_defaults(categorical=["store"], min_category_count=1)
    featurizer = fit_featurizer(log([10, 11, np.nan]), config=config)
    sequences = build_sequences(log([10, 11]), WINDOW, featurizer)
    assert _cat(featurizer, sequences, "store").tolist() == [2, 3]
    assert sequences.report.unknown_categories == {"events.store": 0}


@pytest.mark.parametrize("where", ["events", "customers", "encoder"])
def test_all_missing_categorical_values_are_unknown(where):
    events = _events(
        [
            ("a", pd.Timestamp("2024-06-01"), 1.0, "web", 1.0),
            ("b", pd.Timestamp("2024-06-02"), 1.0, "app", 1.0),
            ("a", pd.Timestamp("2024-07-05"), 1.0, "web", 1.0),  # after the cutoff
        ]
    )
    if where == "encoder":
        encoder = fit_featurizer(events, config=FeaturizerConfig.with_defaults(min_category_count=1)).event_categorical[
            0
        ]
        ids, unseen = encoder.encode(pd.Series([None, np.nan], dtype=object))
        assert ids.tolist() == [UNKNOWN_ID, UNKNOWN_ID] and unseen == 0
        return
    customers = load_customers(pd.DataFrame({"customer_id": ["a", "b", "z"], "region": ["n", "s", "n"]}))
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    if where == "events":  # the scoring batch has no channel for any event in the window
        events["channel"] = events["channel"].where(events["timestamp"] >= FEATURE_END, None)
    else:  # the customers that have events have no region
        customers["region"] = [None, None, "n"]
    sequences = build_sequences(events, WINDOW, featurizer, customers)
    column = _cat(featurizer, sequences, "channel") if where == "events" else sequences.customers[CUSTOMER_CAT][:, 0]
    assert column.tolist() == [UNKNOWN_ID, UNKNOWN_ID]
    assert sum(sequences.report.unknown_categories.values()) == 0


def test_calendar_features():
    # 2024-01-01 was a Monday; 2024-12-29 a Sunday; ids are value + 2.
    events = _events(
        [
            ("a", pd.Timestamp("2024-01-01 23:59"), 1.0, "web", 1.0),
            ("a", pd.Timestamp("2024-12-29 00:01"), 1.0, "web", 1.0),
            ("b", pd.Timestamp("1969-12-31 12:00"), 1.0, "web", 1.0),  # a Wednesday, before the epoch
        ]
    )
    featurizer = fit_featurizer(events)
    sequences = build_sequences(events, Window.from_cutoff("2024-12-31"), featurizer)
    assert featurizer.event_categorical_names[-2:] == ["day_of_week", "month"]
    assert _cat(featurizer, sequences, "day_of_week").tolist() == [0 + 2, 6 + 2, 2 + 2]
    assert _cat(featurizer, sequences, "month").tolist() == [1 + 1, 12 + 1, 12 + 1]
    cards = featurizer.event_categorical_cardinalities
    assert cards[-2:] == [9, 14]


# -------------------------------------------------------------------------------- featurizer state


def _static_setup():
    events = _base_log()
    customers = load_customers(
        pd.DataFrame(
            {
                "customer_id": ["c1", "c2", "c3"],
                "region": ["north", "south", "north"],
                "age": [30.0, np.nan, 50.0],
            }
        )
    )
    return events, customers


def test_featurizer_json_round_trip():
    events, customers = _static_setup()
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(max_len=3, min_category_count=1))
    text = featurizer.to_json()
    json.loads(text)  # plain JSON
    restored = Featurizer.from_json(text)
    assert restored == featurizer
    assert restored.to_json() == text
    assert_same_sequences(
        build_sequences(events, WINDOW, featurizer, customers), build_sequences(events, WINDOW, restored, customers)
    )


@pytest.mark.parametrize("version", [0, 3, "1", None])
def test_wrong_format_version_rejected(version):
    state = json.loads(fit_featurizer(_base_log()).to_json())
    if version is None:
        del state["format_version"]
    else:
        state["format_version"] = version
    with pytest.raises(InputError, match="format version"):
        Featurizer.from_json(json.dumps(state))


# ---------------------------------------------------------------------------------- static table


def test_static_attributes_are_joined_and_absent_customers_unknown():
    events, customers = _static_setup()  # c4 has events but no row in the table
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    assert featurizer.customer_categorical_names == ["region"]
    assert featurizer.customer_numeric_names == [*BASE_CUSTOMER_NUMERIC, "age", "age__missing"]
    sequences = build_sequences(events, WINDOW, featurizer, customers)
    assert list(sequences.customer_ids) == ["c1", "c2", "c3", "c4"]
    vocab = featurizer.customer_categorical[0].vocabulary
    assert vocab == ["north", "south"]
    assert sequences.customers[CUSTOMER_CAT][:, 0].tolist() == [2, 3, 2, UNKNOWN_ID]
    names = featurizer.customer_numeric_names
    age = sequences.customers[CUSTOMER_NUM][:, names.index("age")]
    age_missing = sequences.customers[CUSTOMER_NUM][:, names.index("age__missing")]
    assert age_missing.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert age.tolist()[1] == 0.0 and age.tolist()[3] == 0.0
    assert age[0] == pytest.approx(-1.0) and age[2] == pytest.approx(1.0)
    assert sequences.report.customers_without_static == 1
    assert sequences.report.unknown_categories["customers.region"] == 0


def test_static_table_unknown_region_counted():
    events, customers = _static_setup()
    featurizer = fit_featurizer(
        events, customers, FeaturizerConfig.with_defaults(min_category_count=2)
    )  # "south" is rare
    sequences = build_sequences(events, WINDOW, featurizer, customers)
    assert sequences.customers[CUSTOMER_CAT][:, 0].tolist() == [2, UNKNOWN_ID, 2, UNKNOWN_ID]
    assert sequences.report.unknown_categories["customers.region"] == 1


@pytest.mark.parametrize("table_ids", [["1", "2"], [1, 2]])
@pytest.mark.parametrize("event_ids", [[1, 1, 2, 3], ["1", "1", "2", "3"]])
def test_int_and_string_ids_match_across_tables(event_ids, table_ids):
    events = load_events(
        pd.DataFrame(
            {
                "customer_id": event_ids,
                "timestamp": ["2024-06-01", "2024-06-02", "2024-06-03", "2024-06-04"],
                "amount": [1.0, 2.0, 3.0, 4.0],
            }
        )
    )
    customers = load_customers(pd.DataFrame({"customer_id": table_ids, "segment": ["gold", "silver"]}))
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    sequences = build_sequences(events, WINDOW, featurizer, customers)
    assert list(sequences.customer_ids) == event_ids[1:]  # ids come back as given in the events
    vocab = featurizer.customer_categorical[0].vocabulary
    expected = [vocab.index("gold") + 2, vocab.index("silver") + 2, UNKNOWN_ID]
    assert sequences.customers[CUSTOMER_CAT][:, 0].tolist() == expected
    assert sequences.report.customers_without_static == 1


def test_static_table_row_order_and_extra_customers_do_not_matter():
    events, customers = _static_setup()
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    expected = build_sequences(events, WINDOW, featurizer, customers)
    extra = pd.DataFrame({"customer_id": ["zz", "c0"], "region": ["east", "west"], "age": [1.0, 2.0]})
    shuffled = load_customers(pd.concat([customers, extra]).sample(frac=1, random_state=4))
    assert_same_sequences(expected, build_sequences(events, WINDOW, featurizer, shuffled))


def test_static_featurizer_without_a_table_gives_unknowns():
    events, customers = _static_setup()
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    sequences = build_sequences(events, WINDOW, featurizer, None)
    assert sequences.customers[CUSTOMER_CAT][:, 0].tolist() == [UNKNOWN_ID] * 4
    missing = featurizer.customer_numeric_names.index("age__missing")
    assert sequences.customers[CUSTOMER_NUM][:, missing].tolist() == [1.0] * 4
    assert sequences.report.customers_without_static == 4


def test_attribute_columns_missing_at_build_time_are_named():
    events, customers = _static_setup()
    featurizer = fit_featurizer(events, customers, FeaturizerConfig.with_defaults(min_category_count=1))
    with pytest.raises(InputError, match=r"\['channel'\]"):
        build_sequences(events.drop(columns=["channel"]), WINDOW, featurizer, customers)
    with pytest.raises(InputError, match=r"\['age'\]"):
        build_sequences(events, WINDOW, featurizer, customers.drop(columns=["age"]))


def test_no_static_attributes():
    events = _base_log()
    sequences = build_sequences(events, WINDOW, fit_featurizer(events))
    assert sequences.customers[CUSTOMER_CAT].shape == (4, 0)
    assert sequences.customers[CUSTOMER_NUM].shape == (4, len(BASE_CUSTOMER_NUMERIC))
    assert sequences.report.customers_without_static == 0


# ---------------------------------------------------------------------------------------- padding


def test_pad_subset_equals_rows_of_full_padding():
    events = _base_log()
    featurizer = fit_featurizer(events, config=FeaturizerConfig.with_defaults(max_len=6, min_category_count=1))
    sequences = build_sequences(events, WINDOW, featurizer)
    assert sequences.lengths.tolist() == [3, 5, 6, 6]
    full = sequences.pad()
    assert full[EVENT_CAT].shape == (4, 6, sequences.events[EVENT_CAT].shape[1])
    assert full[EVENT_NUM].shape == (4, 6, sequences.events[EVENT_NUM].shape[1])
    assert full[EVENT_CAT].dtype == np.int32 and full[EVENT_NUM].dtype == np.float32
    assert full[LENGTHS].dtype == np.int64

    for rows in ([2, 0], [0], [1, 0], [3, 3, 0], list(range(4))):
        batch = sequences.pad(np.array(rows))
        width = max(sequences.lengths[rows])
        assert batch[EVENT_CAT].shape[1] == width
        assert np.array_equal(batch[EVENT_CAT], full[EVENT_CAT][rows, :width])
        assert np.array_equal(batch[EVENT_NUM], full[EVENT_NUM][rows, :width])
        assert batch[LENGTHS].tolist() == sequences.lengths[rows].tolist()
        assert np.array_equal(batch[CUSTOMER_CAT], sequences.customers[CUSTOMER_CAT][rows])
        assert np.array_equal(batch[CUSTOMER_NUM], sequences.customers[CUSTOMER_NUM][rows])

    for b in range(4):
        length = int(full[LENGTHS][b])
        rows = slice(int(sequences.offsets[b]), int(sequences.offsets[b + 1]))
        assert np.array_equal(full[EVENT_CAT][b, :length], sequences.events[EVENT_CAT][rows])
        assert np.array_equal(full[EVENT_NUM][b, :length], sequences.events[EVENT_NUM][rows])
        assert (full[EVENT_CAT][b, length:] == PADDING_ID).all()
        assert (full[EVENT_NUM][b, length:] == 0).all()
    assert (sequences.events[EVENT_CAT] != PADDING_ID).all()  # real events never use the padding id

    assert set(full) == set(MODEL_INPUTS)


def test_pad_empty_selection():
    events = _base_log()
    sequences = build_sequences(events, WINDOW, fit_featurizer(events))
    batch = sequences.pad(np.array([], dtype=np.int64))
    assert batch[EVENT_CAT].shape[0] == 0 and batch[LENGTHS].tolist() == []


def test_no_event_before_cutoff_gives_empty_sequences():
    events = _base_log()
    featurizer = fit_featurizer(events)
    sequences = build_sequences(events, Window.from_cutoff("2020-01-01"), featurizer)
    assert len(sequences) == 0
    assert sequences.offsets.tolist() == [0]
    assert sequences.report.events_after_cutoff == len(events)
    assert sequences.pad()[EVENT_NUM].shape[0] == 0


# ------------------------------------------------------------------------------ property-based

BASE = pd.Timestamp("2024-03-01")
SPAN_SECONDS = 60 * 86_400
CHANNELS = ["a", "b", "c", None]


@st.composite
def event_logs(draw):
    """(raw frame, window, max_len, min_count, id kind) for a random small log."""
    id_kind = draw(st.sampled_from(["str", "int"]))
    pool_size = draw(st.integers(1, 6))
    if id_kind == "str":
        pool = draw(
            st.lists(st.text("0a1Z_", min_size=1, max_size=4), min_size=pool_size, max_size=pool_size, unique=True)
        )
    else:
        pool = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=pool_size, max_size=pool_size, unique=True))
    n = draw(st.integers(1, 40))
    granularity = draw(st.sampled_from([1, 3600, 86_400, 7 * 86_400]))  # coarse -> many ties
    rows = draw(
        st.lists(
            st.tuples(
                st.sampled_from(pool),
                st.integers(0, SPAN_SECONDS // granularity),
                st.sampled_from([0, 0, 0, 1, 999_999_999]),  # sub-second offsets
                st.integers(-50, 500) | st.just(0),
                st.sampled_from(CHANNELS),
                st.none() | st.integers(-5, 5),
            ),
            min_size=n,
            max_size=n,
        )
    )
    stamps = np.array([BASE.value + s * granularity * 10**9 + ns for _, s, ns, *_ in rows], dtype=np.int64)
    raw = pd.DataFrame(
        {
            "customer_id": pd.Series([r[0] for r in rows], dtype=object if id_kind == "str" else np.int64),
            "timestamp": stamps.view("datetime64[ns]"),
            "amount": [float(r[3]) for r in rows],
            "channel": pd.Series([r[4] for r in rows], dtype=object),
            "score": [np.nan if r[5] is None else float(r[5]) for r in rows],
        }
    )
    cutoff_seconds = draw(st.integers(-86_400, SPAN_SECONDS + 86_400))
    cutoff = BASE + pd.Timedelta(seconds=cutoff_seconds)
    cutoff_as = draw(st.sampled_from(["date_string", "date", "timestamp"]))
    if cutoff_as == "date_string":
        cutoff = cutoff.strftime("%Y-%m-%d")
    elif cutoff_as == "date":
        cutoff = cutoff.date()
    window = Window.from_cutoff(cutoff, horizon_days=30)
    max_len = draw(st.integers(1, 6))
    min_count = draw(st.integers(1, 3))
    return raw, window, max_len, min_count, id_kind


PROPERTY_SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _build(raw: pd.DataFrame, window: Window, max_len: int, min_count: int):
    events = load_events(raw)
    featurizer = fit_featurizer(
        events, config=FeaturizerConfig.with_defaults(max_len=max_len, min_category_count=min_count)
    )
    return events, featurizer, build_sequences(events, window, featurizer)


def _expected_tuple(row, vocab: dict[str, int]) -> tuple:
    """(amount, channel id, score) of an input event, encoded independently of the builder."""
    channel = row.channel if isinstance(row.channel, str) else None
    score = None if np.isnan(row.score) else round(row.score)
    return (round(row.amount), vocab.get(channel, UNKNOWN_ID), score)


def _got_tuple(featurizer: Featurizer, num: np.ndarray, cat: np.ndarray) -> tuple:
    """(amount, channel id, score) decoded from one built event row."""
    names, cat_names = featurizer.event_numeric_names, featurizer.event_categorical_names
    scaler = featurizer.event_numeric[0]
    amount = round(float(_decode_amounts(num[names.index("amount_signed_log")])))
    missing = num[names.index("score__missing")] == 1.0
    score = None if missing else round(float(num[names.index("score")]) * scaler.std + scaler.mean)
    return (amount, int(cat[cat_names.index("channel")]), score)


@PROPERTY_SETTINGS
@given(event_logs())
def test_property_structure_and_pandas_reference(log):
    raw, window, max_len, min_count, id_kind = log
    events, featurizer, sequences = _build(raw, window, max_len, min_count)
    fe = window.feature_end_ns
    stamps = events["timestamp"].to_numpy().view(np.int64)
    in_window = events[stamps < fe].assign(ns=stamps[stamps < fe])
    features = in_window.drop_duplicates()  # identical events count once

    # Population: every customer with an event before feature_end, exactly once, sorted, nobody else.
    ids = list(sequences.customer_ids)
    assert len(ids) == len(set(ids))
    assert ids == sorted(set(features["customer_id"].tolist()))
    if id_kind == "int":
        assert sequences.customer_ids.dtype.kind == "i"
    else:
        assert all(type(i) is str for i in ids)

    counts = features.groupby("customer_id").size()
    reference_counts = [int(counts[i]) for i in ids]
    assert sequences.n_events_total.tolist() == reference_counts

    offsets = sequences.offsets
    assert offsets[0] == 0 and len(offsets) == len(ids) + 1
    assert (np.diff(offsets) >= 1).all()
    assert offsets[-1] == sum(min(c, max_len) for c in reference_counts)
    assert (sequences.lengths <= max_len).all()
    assert len(sequences.events[EVENT_CAT]) == len(sequences.events[EVENT_NUM]) == offsets[-1]
    assert np.isfinite(sequences.events[EVENT_NUM]).all() and np.isfinite(sequences.customers[CUSTOMER_NUM]).all()
    for j, cardinality in enumerate(featurizer.event_categorical_cardinalities):
        assert sequences.events[EVENT_CAT][:, j].min(initial=1) >= 1
        assert sequences.events[EVENT_CAT][:, j].max(initial=1) < cardinality

    report = sequences.report
    assert report.events_read == len(events)
    assert report.events_after_cutoff == len(events) - len(in_window)
    assert report.events_duplicate == len(in_window) - len(features)
    assert report.customers == len(ids)
    assert report.events_truncated == sum(max(c - max_len, 0) for c in reference_counts)
    assert report.customers_truncated == sum(c > max_len for c in reference_counts)

    # Per customer: which events were kept (the latest max_len; ties at the boundary may go either
    # way), their order, and the features computed from the full history.
    names = featurizer.event_numeric_names
    cat_names = featurizer.event_categorical_names
    encoder = featurizer.event_categorical[0]
    vocab = {v: k + 2 for k, v in enumerate(encoder.vocabulary)}
    for i, customer in enumerate(ids):
        group = features[features["customer_id"] == customer]
        ns = np.sort(group["ns"].to_numpy())
        n, length = len(ns), min(len(ns), max_len)
        kept_ns = ns[n - length :]
        rows = slice(int(offsets[i]), int(offsets[i + 1]))
        num, cat = sequences.events[EVENT_NUM][rows], sequences.events[EVENT_CAT][rows]

        days_before = np.log1p((fe - kept_ns) / NS_PER_DAY)
        assert np.allclose(num[:, names.index("log_days_before_cutoff")], days_before, rtol=1e-6, atol=1e-6)
        previous = ns[n - length - 1 : n - 1] if n > length else np.concatenate([[ns[0]], ns[: n - 1]])
        gaps = np.log1p((kept_ns - previous) / NS_PER_DAY)
        assert np.allclose(num[:, names.index("log_gap_days")], gaps, rtol=1e-6, atol=1e-6)
        first = np.zeros(length)
        first[0] = float(n == length)
        assert num[:, names.index("is_first_event")].tolist() == first.tolist()
        weekdays = pd.DatetimeIndex(kept_ns.view("datetime64[ns]"))
        assert cat[:, cat_names.index("day_of_week")].tolist() == (weekdays.day_of_week + 2).tolist()
        assert cat[:, cat_names.index("month")].tolist() == (weekdays.month + 1).tolist()

        tenure = np.log1p((fe - ns[0]) / NS_PER_DAY)
        customer_names = featurizer.customer_numeric_names
        assert sequences.customers[CUSTOMER_NUM][i, customer_names.index("log_n_events")] == pytest.approx(
            np.log1p(n), rel=1e-6
        )
        assert sequences.customers[CUSTOMER_NUM][i, customer_names.index("log_tenure_days")] == pytest.approx(
            tenure, rel=1e-6
        )
        # History summary over every event up to the cutoff (truncated ones too); a purchase is amount > 0.
        bought = group[group["amount"] > 0]
        summary = dict(zip(customer_names, sequences.customers[CUSTOMER_NUM][i].astype(np.float64), strict=False))
        assert summary["log_purchases"] == pytest.approx(np.log1p(len(bought)), rel=1e-6)
        assert summary["has_purchase"] == float(len(bought) > 0)
        purchase_days = np.unique(bought["ns"].to_numpy() // NS_PER_DAY)
        assert summary["log_purchase_days"] == pytest.approx(np.log1p(len(purchase_days)), rel=1e-6)
        since = (fe - bought["ns"].max()) / NS_PER_DAY if len(bought) else (fe - ns[0]) / NS_PER_DAY
        assert summary["log_days_since_last_purchase"] == pytest.approx(np.log1p(since), rel=1e-5)
        assert summary["log_days_since_last_event"] == pytest.approx(np.log1p((fe - ns[-1]) / NS_PER_DAY), rel=1e-5)
        net = group["amount"].sum()
        assert summary["signed_log_net_amount"] == pytest.approx(np.sign(net) * np.log1p(abs(net)), rel=1e-5, abs=1e-6)
        recent = (bought["ns"] >= fe - 90 * NS_PER_DAY).sum()
        assert summary["log_purchases_last_90d"] == pytest.approx(np.log1p(recent), rel=1e-6)

        boundary = kept_ns[0]
        for stamp in np.unique(kept_ns):
            got = Counter(_got_tuple(featurizer, num[k], cat[k]) for k in np.flatnonzero(kept_ns == stamp))
            reference = Counter(_expected_tuple(r, vocab) for r in group[group["ns"] == stamp].itertuples())
            if stamp > boundary or n == length:
                assert got == reference
            else:  # the truncation cut through these tied events: a sub-multiset was kept
                assert not (got - reference)


@PROPERTY_SETTINGS
@given(event_logs(), st.randoms(use_true_random=False))
def test_property_row_shuffle_invariance(log, random):
    raw, window, max_len, min_count, _ = log
    events, featurizer, expected = _build(raw, window, max_len, min_count)
    order = list(range(len(events)))
    random.shuffle(order)
    shuffled = events.iloc[order].reset_index(drop=True)
    assert_same_sequences(expected, build_sequences(shuffled, window, featurizer))


@PROPERTY_SETTINGS
@given(event_logs(), st.data())
def test_property_future_events_change_nothing(log, data):
    raw, window, max_len, min_count, id_kind = log
    _, featurizer, expected = _build(raw, window, max_len, min_count)
    n_future = data.draw(st.integers(1, 10))
    id_strategy = (
        st.sampled_from(raw["customer_id"].tolist()) | st.text("xyz", min_size=1, max_size=3)
        if id_kind == "str"
        else st.sampled_from(raw["customer_id"].tolist()) | st.integers(-(2**63), 2**63 - 1)
    )
    future = data.draw(
        st.lists(
            st.tuples(
                id_strategy,
                st.integers(0, 10**9 * 86_400 * 400),
                st.sampled_from([0.0, 9.99e11, -9.99e11, 123.0, -5.0]),
                st.sampled_from(["a", "never_seen", None]),
                st.sampled_from([np.nan, 1e12, -3.0]),
            ),
            min_size=n_future,
            max_size=n_future,
        )
    )
    extra = pd.DataFrame(
        {
            "customer_id": pd.Series([f[0] for f in future], dtype=raw["customer_id"].dtype),
            "timestamp": np.array([window.feature_end_ns + f[1] for f in future], dtype=np.int64).view(
                "datetime64[ns]"
            ),
            "amount": [f[2] for f in future],
            "channel": pd.Series([f[3] for f in future], dtype=object),
            "score": [f[4] for f in future],
        }
    )
    combined = load_events(pd.concat([raw, extra], ignore_index=True))
    positions = data.draw(st.permutations(range(len(combined))))
    combined = combined.iloc[list(positions)].reset_index(drop=True)
    after = build_sequences(combined, window, featurizer)
    assert_same_sequences(expected, after, compare_report=False)
    assert after.report.events_after_cutoff == expected.report.events_after_cutoff + n_future
    assert after.report.unknown_categories == expected.report.unknown_categories
    assert after.report.events_truncated == expected.report.events_truncated


def test_property_tests_see_string_and_integer_ids_and_ties():
    """Guard against a strategy that silently stops generating the interesting cases."""
    seen = Counter()

    @settings(max_examples=60, deadline=None, database=None)
    @given(event_logs())
    def probe(log):
        raw, window, *_ = log
        stamps = raw["timestamp"].to_numpy().view(np.int64)
        seen[log[4]] += 1
        seen["ties"] += int(raw.assign(ns=stamps).duplicated(["customer_id", "ns"]).any())
        seen["duplicates"] += int(raw.duplicated().any())
        seen["after_cutoff"] += int((stamps >= window.feature_end_ns).any())

    probe()
    assert seen["str"] and seen["int"] and seen["ties"] and seen["duplicates"] and seen["after_cutoff"]


def test_date_object_cutoff_matches_string_cutoff():
    events = _base_log()
    featurizer = fit_featurizer(events)
    assert_same_sequences(
        build_sequences(events, Window.from_cutoff(dt.date(2024, 6, 30)), featurizer),
        build_sequences(events, Window.from_cutoff("2024-06-30"), featurizer),
    )
