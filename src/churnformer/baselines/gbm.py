"""RFM-style features + LightGBM baseline: the strong tabular answer the sequence model must beat.

Hand-made recency / frequency / monetary aggregates with gradient boosting are what a practitioner would
build first. Churn and spend come from two separate models (a binary classifier and a Tweedie regressor for
the zero-inflated, skewed spend), each with its number of boosting rounds chosen by cross-validation on the
training customers only, so nothing about the test customers' outcomes informs the fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnformer.baselines import history, prediction_frame, scored_ids
from churnformer.data.events import AMOUNT, CUSTOMER_ID, STANDARD_COLUMNS, TIMESTAMP
from churnformer.data.grouping import Grouping
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window
from churnformer.schema import CHURN, SPEND, per_horizon

if TYPE_CHECKING:
    import lightgbm as lgb

RECENT_DAYS = (30, 90, 180)
TREND_DAYS = 90
EVENT_TYPE_COLUMN = "event_type"
TOP_EVENT_TYPES = 10
N_FOLDS = 5
MAX_ROUNDS = 2000
EARLY_STOPPING_ROUNDS = 50
BASE_PARAMS: dict[str, object] = {
    "learning_rate": 0.03,
    "num_leaves": 15,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
CHURN_PARAMS: dict[str, object] = {"objective": "binary", "metric": "binary_logloss"}
SPEND_PARAMS: dict[str, object] = {"objective": "tweedie", "tweedie_variance_power": 1.5, "metric": "tweedie"}


def _sum_by(position: np.ndarray, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-customer count (or weighted sum): one bincount instead of a Python loop over customers."""
    return np.bincount(position, weights=weights, minlength=n).astype(np.float64)


def _reduce_by(ufunc: np.ufunc, position: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per-customer min or max (``np.fmin`` / ``np.fmax``), NaN for customers without values."""
    out = np.full(n, np.nan)
    ufunc.at(out, position, values)
    return out


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (an undefined mean is missing, not zero)."""
    return np.divide(numerator, denominator, out=np.full(len(numerator), np.nan), where=denominator > 0)


def top_event_types(events: pd.DataFrame, column: str = EVENT_TYPE_COLUMN, k: int = TOP_EVENT_TYPES) -> list[str]:
    """The ``k`` most frequent values of ``column`` (ties by name), or none if the column is absent.

    The caller picks them from training history only and passes the same list for every feature call, so
    train and test share one feature layout and test events can never change the columns.
    """
    if column not in events.columns:
        return []
    counts = events[column].astype(str).value_counts()
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [value for value, _ in ranked[:k]]


def _recency_features(age: np.ndarray, purchase: np.ndarray, position: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Days since the last/first event and purchase, and the mean gap between purchases."""
    n_purchases = _sum_by(position[purchase], n)
    last_purchase = _reduce_by(np.fmin, position[purchase], age[purchase], n)
    first_purchase = _reduce_by(np.fmax, position[purchase], age[purchase], n)
    return {
        "days_since_last_event": _reduce_by(np.fmin, position, age, n),
        "days_since_last_purchase": last_purchase,
        "tenure_days": _reduce_by(np.fmax, position, age, n),
        "days_since_first_purchase": first_purchase,
        "purchase_gap_mean_days": _ratio(first_purchase - last_purchase, n_purchases - 1),
    }


def _frequency_monetary_features(
    day: np.ndarray, amount: np.ndarray, position: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    """Event and purchase counts, distinct purchase days, and positive-amount and refund aggregates."""
    purchase = amount > 0
    n_purchases = _sum_by(position[purchase], n)
    spend = _sum_by(position[purchase], n, amount[purchase])
    days = pd.DataFrame({"position": position[purchase], "day": day[purchase]}).drop_duplicates()
    return {
        "n_events": _sum_by(position, n),
        "n_purchases": n_purchases,
        "n_purchase_days": _sum_by(days["position"].to_numpy(), n),
        "spend_sum": spend,
        "spend_mean": _ratio(spend, n_purchases),
        "spend_max": _reduce_by(np.fmax, position[purchase], amount[purchase], n),
        "refund_sum": _sum_by(position[amount < 0], n, amount[amount < 0]),
    }


def _recent_features(age: np.ndarray, amount: np.ndarray, position: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Activity in the last 30/90/180 days, and purchases in the last 90 days minus the 90 before."""
    purchase = amount > 0
    features: dict[str, np.ndarray] = {}
    for days in RECENT_DAYS:
        recent = age < days
        features[f"n_events_{days}d"] = _sum_by(position[recent], n)
        features[f"n_purchases_{days}d"] = _sum_by(position[recent & purchase], n)
        features[f"spend_{days}d"] = _sum_by(position[recent & purchase], n, amount[recent & purchase])
    last = _sum_by(position[purchase & (age < TREND_DAYS)], n)
    previous = _sum_by(position[purchase & (age >= TREND_DAYS) & (age < 2 * TREND_DAYS)], n)
    features[f"purchase_trend_{TREND_DAYS}d"] = last - previous
    return features


def _attribute_features(
    past: pd.DataFrame,
    position: np.ndarray,
    n: int,
    event_types: Sequence[str],
    event_type_column: str,
    group_by: str | None = None,
) -> dict[str, np.ndarray]:
    """Counts per given event type, and the sum of every numeric attribute column (e.g. ``quantity``; not
    the ``group_by`` column, an id)."""
    features: dict[str, np.ndarray] = {}
    if event_types and event_type_column in past.columns:
        values = past[event_type_column].astype(str).to_numpy()
        for value in event_types:
            features[f"n_{event_type_column}_{value}"] = _sum_by(position[values == value], n)
    for column in _numeric_attributes(past, (event_type_column, group_by)):
        features[f"{column}_sum"] = _sum_by(position, n, np.nan_to_num(past[column].to_numpy(dtype=np.float64)))
    return features


def _numeric_attributes(past: pd.DataFrame, exclude: Sequence[str | None]) -> list[str]:
    """The numeric attribute columns (not booleans, not the standard columns or ``exclude``)."""
    return [
        column
        for column in past.columns
        if column not in (*STANDARD_COLUMNS, *exclude)
        and pd.api.types.is_numeric_dtype(past[column].dtype)
        and not pd.api.types.is_bool_dtype(past[column].dtype)
    ]


def rfm_features(
    events: pd.DataFrame,
    window: Window,
    customer_ids: np.ndarray,
    event_types: Sequence[str] | None = None,
    event_type_column: str = EVENT_TYPE_COLUMN,
    group_by: str | None = None,
) -> pd.DataFrame:
    """Recency / frequency / monetary features per customer from events before ``feature_end``.

    Ages are in days before ``feature_end``; a purchase is an event with amount > 0 and refunds are negative
    amounts. Missing values are NaN (no purchase yet: no recency, no mean), which LightGBM handles natively.
    ``event_types`` fixes which event-type counts appear (default: the top values in these customers'
    history; pass a fixed list to keep train and test layouts equal). With ``group_by`` (a basket column of a
    line-item log), the same recipe again over the baskets (``basket_`` features: one event per basket, as
    ``data.features.group_by`` groups them, with its item count): baskets, spend per basket, items per
    basket, days between baskets, recent baskets. Returns ``customer_id`` and the features, one row per given
    customer in the given order (customers without history get zero counts).
    """
    ids = pd.Index(customer_ids)
    if not ids.is_unique:
        raise ValueError("rfm_features: customer_ids must be unique")
    past = history(events, window)
    position = ids.get_indexer(past[CUSTOMER_ID])
    past, position = past.loc[position >= 0], position[position >= 0]
    if event_types is None:
        event_types = top_event_types(past, event_type_column)
    stamps = past[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    age = (window.feature_end_ns - stamps) / NS_PER_DAY
    amount = past[AMOUNT].to_numpy(dtype=np.float64)
    n = len(ids)
    return pd.DataFrame(
        {
            CUSTOMER_ID: ids.to_numpy(),
            **_recency_features(age, amount > 0, position, n),
            **_frequency_monetary_features(stamps // NS_PER_DAY, amount, position, n),
            **_recent_features(age, amount, position, n),
            **_attribute_features(past, position, n, event_types, event_type_column, group_by),
            **(_basket_features(past, window, ids, group_by) if group_by is not None else {}),
        }
    )


def _basket_features(past: pd.DataFrame, window: Window, ids: pd.Index, group_by: str) -> dict[str, np.ndarray]:
    """The RFM recipe over one event per basket (rows without a basket value stay their own events)."""
    numeric = _numeric_attributes(past, (group_by,))
    baskets = Grouping(column=group_by, first=[], summed=numeric).apply(past).drop(columns=group_by)
    features = rfm_features(baskets, window, ids.to_numpy(), event_types=[]).drop(columns=CUSTOMER_ID)
    return {f"basket_{name}": features[name].to_numpy() for name in features.columns}


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs with each label value spread evenly over the folds.

    Built with numpy so that cross-validation needs no scikit-learn; the same folds serve both models
    (stratifying on churn also balances the zero-spend share of the spend folds).
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        fold[members] = np.arange(len(members)) % n_folds
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_folds)]


def cross_validated_booster(
    features: np.ndarray,
    target: np.ndarray,
    params: Mapping[str, object],
    folds: list[tuple[np.ndarray, np.ndarray]],
    max_rounds: int,
    early_stopping_rounds: int,
) -> tuple[lgb.Booster, lgb.CVBooster]:
    """Choose the number of rounds by early-stopped cross-validation, then refit on all rows with it; also the
    folds' boosters (``best_iteration`` set), whose predictions on their held-out rows are out of fold."""
    import lightgbm as lgb

    data = lgb.Dataset(features, label=target, free_raw_data=False)
    result = lgb.cv(
        dict(params),
        data,
        num_boost_round=max_rounds,
        folds=folds,
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)],
        return_cvbooster=True,
    )
    folded = result["cvbooster"]
    return lgb.train(dict(params), data, num_boost_round=folded.best_iteration), folded


@dataclass(frozen=True)
class Boosting:
    """How the boosters are fitted: ``params`` override the LightGBM parameters (:data:`BASE_PARAMS` and the
    per-model objective settings); rounds are chosen by early-stopped ``n_folds``-fold cross-validation."""

    num_threads: int = 2
    params: Mapping[str, object] | None = None
    n_folds: int = N_FOLDS
    max_rounds: int = MAX_ROUNDS
    early_stopping_rounds: int = EARLY_STOPPING_ROUNDS


def fit_predict_gbm(
    events: pd.DataFrame,
    window: Window,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    seed: int = 0,
    horizons: Sequence[float] = (),
    group_by: str | None = None,
    spec: LabelSpec = LabelSpec(),
    boosting: Boosting = Boosting(),
) -> pd.DataFrame:
    """Fit churn and spend boosters on ``train_ids``; predict for ``test_ids`` from their history only.

    Training rows are the training customers with any event before ``feature_end``, labelled from the
    horizon window (:func:`horizon_labels`; spend is floored at 0). With ``horizons``, a separate pair of
    boosters per horizon answers it (the usual way, one model per window: nothing ties the horizons together,
    so nothing keeps their answers consistent). ``boosting``: how the boosters are fitted. Deterministic for a
    given ``seed`` and ``boosting.num_threads``. Returns one row per test customer with any event before
    ``feature_end``, sorted by customer id. ``group_by``: a line-item log's basket column, for basket-level features too
    (:func:`rfm_features`). ``spec``: what the boosters learn (a purchase, and a churn: no purchase, or a
    decline).
    """
    past = history(events, window)
    train, test = scored_ids(past, train_ids), scored_ids(past, test_ids)
    event_types = top_event_types(past.loc[past[CUSTOMER_ID].isin(train).to_numpy()])
    x_train, x_test = (feature_rows(past, window, ids, event_types, group_by) for ids in (train, test))
    return fit_predict_features(events, window, (train, x_train), (test, x_test), seed, horizons, spec, boosting)


def feature_rows(
    past: pd.DataFrame, window: Window, ids: np.ndarray, event_types: list[str], group_by: str | None
) -> np.ndarray:
    """:func:`rfm_features` of ``ids`` as the boosters read them (no id column, float64)."""
    return (
        rfm_features(past, window, ids, event_types, group_by=group_by).drop(columns=CUSTOMER_ID).to_numpy(np.float64)
    )


def fit_predict_gbm_forward(
    events: pd.DataFrame,
    train_window: Window,
    score_window: Window,
    seed: int = 0,
    horizons: Sequence[float] = (),
    group_by: str | None = None,
    spec: LabelSpec = LabelSpec(),
    boosting: Boosting = Boosting(),
) -> pd.DataFrame:
    """:func:`fit_predict_gbm` forward in time: boosters fitted on every customer at ``train_window`` (features
    from the history before it, labels from its horizons), scoring every customer at the later
    ``score_window`` from the history before that: what a model retrained at the later cutoff knows. The
    caller keeps the labels inside what was known then: ``events`` end at ``score_window``'s cutoff and the
    ``horizons`` end by it (``churnformer-backtest``)."""
    ids = events[CUSTOMER_ID].unique()
    past_train, past_score = history(events, train_window), history(events, score_window)
    train, test = scored_ids(past_train, ids), scored_ids(past_score, ids)
    event_types = top_event_types(past_train)
    x_train = feature_rows(past_train, train_window, train, event_types, group_by)
    x_test = feature_rows(past_score, score_window, test, event_types, group_by)
    return fit_predict_features(events, train_window, (train, x_train), (test, x_test), seed, horizons, spec, boosting)


def fit_predict_features(
    events: pd.DataFrame,
    window: Window,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int = 0,
    horizons: Sequence[float] = (),
    spec: LabelSpec = LabelSpec(),
    boosting: Boosting = Boosting(),
) -> pd.DataFrame:
    """:func:`fit_predict_gbm`'s boosters on given features: ``train`` and ``test`` are (sorted customer ids,
    their feature rows); labels from ``events`` as there. For other feature sets in the same protocol (e.g.
    sequence embeddings, ``scripts/experiments/lifestream.py``)."""
    (train, x_train), (test, x_test) = train, test
    grid = HorizonGrid.of(horizons, window.horizon_days)
    labels = horizon_labels(events, window, grid, train, spec)
    folds = stratified_folds(labels[CHURN].to_numpy(dtype=np.float64), boosting.n_folds, seed)
    common = {**BASE_PARAMS, "seed": seed, "num_threads": boosting.num_threads}
    fit = {"folds": folds, "max_rounds": boosting.max_rounds, "early_stopping_rounds": boosting.early_stopping_rounds}
    params = boosting.params
    answers = {}
    for days in grid.days:
        churn, spend = (labels[per_horizon(c, days)].to_numpy(dtype=np.float64) for c in (CHURN, SPEND))
        churn_model, _ = cross_validated_booster(x_train, churn, {**common, **CHURN_PARAMS, **(params or {})}, **fit)
        spend_model, _ = cross_validated_booster(x_train, spend, {**common, **SPEND_PARAMS, **(params or {})}, **fit)
        answers[days] = (churn_model.predict(x_test), spend_model.predict(x_test))
    by_horizon = {days: answers[days] for days in horizons}
    return prediction_frame(test, *answers[grid.main], by_horizon=by_horizon)
