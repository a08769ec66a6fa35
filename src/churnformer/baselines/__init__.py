"""Classical baselines the sequence model has to beat, behind one call signature.

Every baseline answers the model's question (per customer, as of ``window.feature_end``: the probability of
no purchase in the horizon and the expected net spend over it) from the same standard event log, and reads
only events before ``feature_end`` for the customers it scores, so its output can be compared row by row with
the model's. Given a horizon grid, a baseline answers at each horizon too (``churn_probability_<h>d``,
``expected_spend_<h>d``), as churnformer does, so ``churnformer-evaluate`` reports both per horizon. The
helpers here are the parts of that contract every baseline shares.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP
from churnformer.data.window import Window
from churnformer.schema import CHURN_PROBABILITY, EXPECTED_SPEND, per_horizon

# A baseline answers the two questions every model answers (no quantiles, no retention columns).
BASELINE_COLUMNS = (CUSTOMER_ID, CHURN_PROBABILITY, EXPECTED_SPEND)


def history(events: pd.DataFrame, window: Window) -> pd.DataFrame:
    """Events strictly before ``feature_end``: the only events a baseline may read as features.

    Filtering once, up front, is what makes the no-leakage guarantee hold whatever a baseline does next.
    """
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    return events.loc[stamps < window.feature_end_ns]


def scored_ids(past: pd.DataFrame, customer_ids: np.ndarray) -> np.ndarray:
    """``customer_ids`` with at least one event in ``past``, de-duplicated and sorted.

    A customer with no history has nothing to predict from, so every baseline returns exactly these rows,
    in this order, and trains on the same kind of rows.
    """
    ids = pd.Index(customer_ids).unique()
    return ids[ids.isin(past[CUSTOMER_ID])].sort_values().to_numpy()


def prediction_frame(
    customer_ids: np.ndarray,
    churn_probability: np.ndarray,
    expected_spend: np.ndarray,
    by_horizon: Mapping[float, tuple[np.ndarray, np.ndarray]] | None = None,
    expectations: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """The common output: probabilities clipped to [0, 1] and spends floored at 0, whatever the model emits;
    ``by_horizon`` (days: churn probability, expected spend) adds the columns at each horizon, ``expectations``
    more expected amounts or counts by column name (``expected_purchases_30d``), floored at 0 too."""
    answers = {(CHURN_PROBABILITY, EXPECTED_SPEND): (churn_probability, expected_spend)}
    for days, pair in (by_horizon or {}).items():
        answers[per_horizon(CHURN_PROBABILITY, days), per_horizon(EXPECTED_SPEND, days)] = pair
    columns: dict[str, np.ndarray] = {CUSTOMER_ID: customer_ids}
    for (churn_column, spend_column), (churn, spend) in answers.items():
        columns[churn_column] = np.clip(np.asarray(churn, dtype=np.float64), 0.0, 1.0)
        columns[spend_column] = np.maximum(np.asarray(spend, dtype=np.float64), 0.0)
    for column, values in (expectations or {}).items():
        columns[column] = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
    return pd.DataFrame(columns)
