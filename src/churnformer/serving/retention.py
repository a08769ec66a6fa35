"""Retention outputs: deciles and segments that a retention team acts on, from the model's scores.

Deciles and the high-value threshold are relative to a fixed reference population (the validation
customers at training time, whose percentiles are stored in the model file), so they do not move with
the set of customers one job happens to score, and job shards agree with a full run.

Value basis. ``expected_spend`` is (1 - churn probability) x spend if retained: it already discounts
the risk of churn, so a customer likely to churn cannot have a high expected spend, and "high value at
risk" on that basis holds almost nobody. ``spend_if_retained`` (E[spend | spend > 0]) is what the
customer is worth if kept: on that basis "high value at risk" finds the customers worth saving. That is
the default (``segments.value=if_retained``); ``segments.value=expected`` ranks by expected spend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.calibration import Calibration
from churnformer.errors import ConfigError
from churnformer.schema import (
    CHURN_PROBABILITY,
    CHURN_RISK_DECILE,
    CLV,
    EXPECTED_DAYS_TO_NEXT_PURCHASE,
    EXPECTED_SPEND,
    META_CALIBRATION,
    NO_PURCHASE_PROBABILITY,
    PERCENTILE_LEVELS,
    SEGMENT,
    SPEND_IF_RETAINED,
    VALUE_AT_RISK,
    VALUE_DECILE,
    per_horizon,
)

# segments.value -> the predictions column it ranks value by.
VALUE_BASES = {"if_retained": SPEND_IF_RETAINED, "expected": EXPECTED_SPEND}
# The columns deciles and value segments rank by.
RANKED_COLUMNS = (CHURN_PROBABILITY, EXPECTED_SPEND, SPEND_IF_RETAINED)


@dataclass(frozen=True)
class SegmentRules:
    """Retention segments (``segments.*`` in ``conf/serving/predict.yaml``): at risk if churn_probability >=
    ``risk_threshold``; high value if the ``value`` basis is in the top ``1 - high_value_quantile`` of the
    reference population, or >= ``high_value_min_spend`` when set."""

    value: str
    risk_threshold: float
    high_value_quantile: float
    high_value_min_spend: float | None

    def __post_init__(self) -> None:
        if self.value not in VALUE_BASES:
            raise ConfigError(f"segments.value={self.value!r}: choose one of {sorted(VALUE_BASES)}")

    @property
    def value_column(self) -> str:
        return VALUE_BASES[self.value]


@dataclass(frozen=True)
class ReferencePercentiles:
    """Percentiles 1..99 (``schema.PERCENTILE_LEVELS``) of each predicted column over a reference population."""

    by_column: dict[str, list[float]]

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ReferencePercentiles | None:
        """The validation customers' percentiles stored at export; None for a model without them."""
        stored = Calibration.from_dict(json.loads(metadata.get(META_CALIBRATION, "{}"))).percentiles
        return cls(dict(stored)) if stored.get(CHURN_PROBABILITY) else None

    @classmethod
    def of(cls, predictions: pd.DataFrame) -> ReferencePercentiles:
        """The scored population itself (models exported without reference percentiles)."""
        levels = np.asarray(PERCENTILE_LEVELS)
        by_column = {}
        for column in RANKED_COLUMNS:
            values = predictions[column].to_numpy(dtype="float64") if column in predictions else np.zeros(0)
            by_column[column] = np.quantile(values, levels).tolist() if len(values) else [0.0] * len(levels)
        return cls(by_column)

    def percentiles(self, column: str) -> list[float]:
        if column not in self.by_column:
            raise ConfigError(f"the model file stores no reference percentiles of {column}; export it again")
        return self.by_column[column]

    def value_at(self, column: str, quantile: float) -> float:
        levels = np.asarray(PERCENTILE_LEVELS)
        return float(np.interp(quantile, levels, self.percentiles(column)))


def check_discount_rate(discount_rate: float) -> float:
    if not (isinstance(discount_rate, int | float) and discount_rate >= 0):  # also false for NaN
        raise ConfigError(f"clv.discount_rate must be a number >= 0 (an annual rate, 0.1 = 10%), got {discount_rate!r}")
    return float(discount_rate)


def discounted_value(predictions: pd.DataFrame, horizons: Sequence[float], discount_rate: float) -> np.ndarray:
    """``clv`` of :func:`add_value_columns` from the ``expected_spend_<h>d`` columns (any model's)."""
    check_discount_rate(discount_rate)
    spend = predictions[[per_horizon(EXPECTED_SPEND, h) for h in horizons]].to_numpy(np.float64)
    increments = np.diff(spend, axis=1, prepend=0.0)
    return increments @ (1.0 + discount_rate) ** (-np.asarray(horizons, dtype=np.float64) / 365.0)


def add_value_columns(predictions: pd.DataFrame, horizons: Sequence[float], discount_rate: float) -> pd.DataFrame:
    """What each customer is worth over time, from the model's outputs on the horizon grid t_1 < ... < t_K:

    - ``clv``: sum_k (E_k - E_{k-1}) / (1 + d) ** (t_k / 365), with E_k the expected spend by t_k (E_0 = 0) and
      d the annual ``discount_rate``: lifetimes' customer_lifetime_value, the model supplying each period's
      expected spend instead of RFM summaries;
    - ``expected_days_to_next_purchase``: the mean time to the next purchase restricted to the longest
      horizon, the area under S(t) from 0 (S = 1) to t_K, S interpolated linearly between the grid points
      (``churn_probability_<h>d``, or a decline model's ``no_purchase_probability_<h>d``);
    - ``value_at_risk``: churn_probability * spend_if_retained, the main horizon's spend lost if the customer
      churns.

    Row by row, so shards and spill partitions agree exactly.
    """
    days = np.asarray(horizons, dtype=np.float64)
    decline = per_horizon(NO_PURCHASE_PROBABILITY, horizons[0]) in predictions.columns
    probability = NO_PURCHASE_PROBABILITY if decline else CHURN_PROBABILITY
    survival = predictions[[per_horizon(probability, h) for h in horizons]].to_numpy(np.float64)
    clv = discounted_value(predictions, horizons, discount_rate)
    curve = np.concatenate([np.ones((len(predictions), 1)), survival], axis=1)
    widths = np.diff(np.concatenate([[0.0], days]))
    days_to_next = ((curve[:, 1:] + curve[:, :-1]) / 2) @ widths
    at_risk = predictions[CHURN_PROBABILITY].to_numpy(np.float64) * predictions[SPEND_IF_RETAINED].to_numpy(np.float64)
    return predictions.assign(
        **{
            CLV: clv.astype(np.float32),
            EXPECTED_DAYS_TO_NEXT_PURCHASE: days_to_next.astype(np.float32),
            VALUE_AT_RISK: at_risk.astype(np.float32),
        }
    )


def descending_decile(values: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """1 for values at or above the reference 90th percentile ... 10 below the 10th."""
    cuts = np.asarray(percentiles)[9::10]  # percentiles 10, 20, ..., 90
    return (10 - np.searchsorted(cuts, values, side="right")).astype(np.int8)


def add_retention_columns(
    predictions: pd.DataFrame, rules: SegmentRules, reference: ReferencePercentiles | None = None
) -> pd.DataFrame:
    """``churn_risk_decile``, ``value_decile`` (1 = highest) and ``segment``, relative to ``reference``
    (default: the scored population itself)."""
    reference = reference or ReferencePercentiles.of(predictions)
    churn = predictions[CHURN_PROBABILITY].to_numpy()
    value = predictions[rules.value_column].to_numpy()
    threshold = (
        rules.high_value_min_spend
        if rules.high_value_min_spend is not None
        else reference.value_at(rules.value_column, rules.high_value_quantile)
    )
    worth = np.where(value >= threshold, "high value", "low value")
    risk = np.where(churn >= rules.risk_threshold, "at risk", "loyal")
    return predictions.assign(
        **{
            CHURN_RISK_DECILE: descending_decile(churn, reference.percentiles(CHURN_PROBABILITY)),
            VALUE_DECILE: descending_decile(value, reference.percentiles(rules.value_column)),
            SEGMENT: np.char.add(np.char.add(worth.astype(str), " "), risk.astype(str)),
        }
    )
