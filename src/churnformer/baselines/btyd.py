"""BG/NBD + Gamma-Gamma baseline ("buy 'til you die"), fitted with ``lifetimes``.

The classic probabilistic answer to "who will stop buying and how much will the rest spend": BG/NBD
(Fader, Hardie & Lee, 2005) models repeat-purchase counts and silent dropout from recency, frequency and
age alone; Gamma-Gamma (Fader, Hardie & Lee, 2005b) models the average value of a repeat purchase. Both
are unsupervised, so the horizon labels are never read. Time is measured in days, and same-day purchases
are summed into one transaction, as is conventional for these models.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnformer.baselines import history, prediction_frame, scored_ids
from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP
from churnformer.data.window import NS_PER_DAY, Window
from churnformer.schema import CLV, EXPECTED_PURCHASES, per_horizon

if TYPE_CHECKING:
    from lifetimes import BetaGeoFitter, GammaGammaFitter

# lifetimes penalizes the squared parameters. For BG/NBD (time rescaled internally) a small penalty keeps small
# or odd training sets away from degenerate corners; on CDNOW it converges with 0, 0.001 and 0.01 alike. For
# Gamma-Gamma the parameters are in currency units, so any penalty shifts the mean purchase value (on CDNOW
# 0.001 moves p, q, v from 6.3, 3.6, 15.0 to 7.9, 2.4, 7.2): none, with q > 1 enforced instead.
BGNBD_PENALIZER = 0.001
GAMMA_GAMMA_PENALIZER = 0.0
SUMMARY_COLUMNS = ("frequency", "recency", "T", "monetary_value")


def _epoch_days(events: pd.DataFrame) -> np.ndarray:
    """Whole days since 1970-01-01 of each event: integers, so day arithmetic stays exact."""
    return events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64) // NS_PER_DAY


def _day_totals(purchases: pd.DataFrame) -> pd.DataFrame:
    """One row per customer and purchase day (days since the epoch) with the day's total amount."""
    day = _epoch_days(purchases)
    frame = pd.DataFrame({CUSTOMER_ID: purchases[CUSTOMER_ID].to_numpy(), "day": day, AMOUNT: purchases[AMOUNT]})
    return frame.groupby([CUSTOMER_ID, "day"], sort=True, as_index=False)[AMOUNT].sum()


def btyd_summary(events: pd.DataFrame, window: Window, customer_ids: np.ndarray) -> pd.DataFrame:
    """Per-customer (frequency, recency, T, monetary_value) in days, from events before ``feature_end``.

    A purchase is an event with amount > 0 and all purchases of one day count as one transaction (the BTYD
    convention; refunds and non-monetary events are not transactions). ``frequency`` is the number of purchase
    days after the first, ``recency`` the days from the first to the last purchase day, ``T`` the days from
    the first purchase day's midnight to ``feature_end`` (the end of observation) and ``monetary_value`` the
    mean of the repeat-purchase day totals (0 when there is no repeat purchase; Gamma-Gamma ignores it then).

    Customers whose history holds no purchase are taken to have been born at their first event's day with
    no repeat purchase yet (frequency 0, recency 0): BG/NBD then treats them as alive with the population's
    purchase rate, updated for the quiet time since. Customers with no history at all get NaN rows.
    Rows are in the order of ``customer_ids``.
    """
    past = history(events, window)
    totals = _day_totals(past.loc[past[AMOUNT].to_numpy() > 0])
    per_customer = totals.groupby(CUSTOMER_ID, sort=False).agg(
        first_day=("day", "min"),
        last_day=("day", "max"),
        days=("day", "size"),
        total=(AMOUNT, "sum"),
        first_total=(AMOUNT, "first"),
    )
    ids = pd.Index(customer_ids)
    buyers = per_customer.reindex(ids)
    first_event_day = pd.Series(_epoch_days(past)).groupby(past[CUSTOMER_ID].to_numpy()).min()
    first_day = buyers["first_day"].fillna(first_event_day.reindex(ids)).to_numpy(dtype=np.float64)
    frequency = buyers["days"].fillna(1).to_numpy(dtype=np.float64) - 1
    repeat_total = (buyers["total"] - buyers["first_total"]).to_numpy(dtype=np.float64)
    summary = pd.DataFrame(
        {
            CUSTOMER_ID: ids.to_numpy(),
            "frequency": frequency,
            "recency": np.nan_to_num(buyers["last_day"].to_numpy(dtype=np.float64) - first_day),
            "T": window.feature_end_ns / NS_PER_DAY - first_day,
            "monetary_value": np.where(frequency > 0, repeat_total / np.maximum(frequency, 1), 0.0),
        }
    )
    summary.loc[np.isnan(first_day), list(SUMMARY_COLUMNS)] = np.nan
    return summary


def prob_no_purchase(
    model: BetaGeoFitter, tau: float, frequency: np.ndarray, recency: np.ndarray, T: np.ndarray
) -> np.ndarray:
    """P(no purchase in (T, T + tau] | x, t_x, T) under a fitted BG/NBD model.

    ``lifetimes`` has no such method. In BG/NBD a customer drops out only right after a purchase, so a dead
    customer buys nothing and an alive one buys nothing in tau with probability exp(-lambda tau); given alive
    and the history, lambda ~ Gamma(r + x, alpha + T). Hence
    P0 = (1 - P(alive)) + P(alive) * ((alpha + T) / (alpha + T + tau)) ** (r + x).
    """
    r, alpha = float(model.params_["r"]), float(model.params_["alpha"])
    alive = model.conditional_probability_alive(frequency, recency, T)
    return (1.0 - alive) + alive * ((alpha + T) / (alpha + T + tau)) ** (r + frequency)


def _fit(
    summary: pd.DataFrame, penalizer_coef: float, gamma_gamma_penalizer: float
) -> tuple[BetaGeoFitter, GammaGammaFitter]:
    """BG/NBD on every row of ``summary``, Gamma-Gamma on the rows with a repeat purchase."""
    from lifetimes import BetaGeoFitter, GammaGammaFitter  # slow import (scipy, autograd): only when used

    with warnings.catch_warnings():
        # lifetimes 0.11.3 passes `disp` to L-BFGS-B; SciPy >= 1.17 warns about it on every fit.
        warnings.filterwarnings(
            "ignore", message="scipy.optimize: The `disp` and `iprint`", category=DeprecationWarning
        )
        bgnbd = BetaGeoFitter(penalizer_coef=penalizer_coef).fit(summary["frequency"], summary["recency"], summary["T"])
        repeat = summary.loc[summary["frequency"] > 0]
        gamma_gamma = GammaGammaFitter(penalizer_coef=gamma_gamma_penalizer).fit(
            repeat["frequency"], repeat["monetary_value"], q_constraint=True
        )
    return bgnbd, gamma_gamma


def fit_predict_btyd(
    events: pd.DataFrame,
    window: Window,
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    seed: int = 0,
    penalizer_coef: float = BGNBD_PENALIZER,
    gamma_gamma_penalizer: float = GAMMA_GAMMA_PENALIZER,
    horizons: Sequence[float] = (),
    discount_rate: float | None = None,
) -> pd.DataFrame:
    """Fit BG/NBD and Gamma-Gamma on ``train_ids``' history; predict for ``test_ids`` from their history.

    Training uses the training customers with a purchase before ``feature_end`` (BG/NBD describes buyers);
    Gamma-Gamma uses those among them with a repeat purchase. ``churn_probability`` is
    :func:`prob_no_purchase` over ``horizon_days`` (and over each of ``horizons``); ``expected_spend`` is the
    expected number of purchases in the horizon times Gamma-Gamma's expected purchase value (its population
    mean for customers with no repeat purchase). With ``discount_rate`` (annual), ``clv`` is lifetimes'
    ``customer_lifetime_value`` over the longest horizon in whole 30-day months at the equivalent monthly
    rate. ``expected_purchases`` (and ``expected_purchases_<h>d``) is lifetimes'
    ``conditional_expected_number_of_purchases_up_to_time``: purchase days, as the labels count them. The fit
    is deterministic; ``seed`` is accepted only for the common baseline signature. Returns one row per test
    customer with any event before ``feature_end``, sorted by customer id.
    """
    past = history(events, window)
    train = btyd_summary(past, window, scored_ids(past, train_ids))
    buyers = past.loc[past[AMOUNT].to_numpy() > 0, CUSTOMER_ID]
    bgnbd, gamma_gamma = _fit(
        train.loc[train[CUSTOMER_ID].isin(buyers).to_numpy()], penalizer_coef, gamma_gamma_penalizer
    )
    test = btyd_summary(past, window, scored_ids(past, test_ids))
    x, t_x, age = (test[column].to_numpy() for column in ("frequency", "recency", "T"))
    value = gamma_gamma.conditional_expected_average_profit(x, test["monetary_value"].to_numpy())

    def purchases(tau: float) -> np.ndarray:
        return bgnbd.conditional_expected_number_of_purchases_up_to_time(tau, x, t_x, age)

    def answer(tau: float) -> tuple[np.ndarray, np.ndarray]:
        return prob_no_purchase(bgnbd, tau, x, t_x, age), purchases(tau) * value

    by_horizon = {days: answer(float(days)) for days in horizons}
    counts = {EXPECTED_PURCHASES: purchases(window.horizon_days)}
    counts |= {per_horizon(EXPECTED_PURCHASES, days): purchases(float(days)) for days in horizons}
    ids = test[CUSTOMER_ID].to_numpy()
    frame = prediction_frame(ids, *answer(window.horizon_days), by_horizon=by_horizon, expectations=counts)
    if discount_rate is not None:
        months = max(1, round(max([window.horizon_days, *horizons]) / 30))
        frame[CLV] = lifetimes_clv(bgnbd, gamma_gamma, test, months, discount_rate)
    return frame


def lifetimes_clv(
    bgnbd: BetaGeoFitter, gamma_gamma: GammaGammaFitter, summary: pd.DataFrame, months: int, discount_rate: float
) -> np.ndarray:
    """lifetimes' CLV: expected purchases per 30-day step times Gamma-Gamma's value, discounted monthly at
    the rate equivalent to the annual ``discount_rate``."""
    monthly = (1.0 + discount_rate) ** (1.0 / 12.0) - 1.0
    columns = [summary[c].reset_index(drop=True) for c in SUMMARY_COLUMNS]
    clv = gamma_gamma.customer_lifetime_value(bgnbd, *columns, time=months, discount_rate=monthly, freq="D")
    return clv.to_numpy(dtype=np.float64)
