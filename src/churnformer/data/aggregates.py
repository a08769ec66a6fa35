"""Engineered per-customer aggregates: what a practitioner hands boosted trees, computed by the featurizer and
read by the network beside the sequence (``data.features.aggregates``; the network fuses them in
:mod:`churnformer.modeling.fusion`).

On logs of a few thousand labelled customers a sequence network alone ties boosted trees on hand-made
aggregates; combined with them it is ahead (issue 34's record: CoLES embeddings beside aggregates, nuFormer's
joint fusion). The aggregates are computed here, in numpy, from every event before the cutoff (not only the
``max_len`` kept in the sequence), during featurization: training, ONNX scoring, shards, Spark and
explanations compute them with this same code from the same events, so they stay bit-identical everywhere.

Per customer (ages in days before the cutoff; a purchase is an event with amount > 0, purchase days are
distinct days with a purchase):
- per window of ``windows_days``: events, purchase days and purchase spend in it, and the trends against the
  window of the same length before it (log ratios of purchase days and of spend);
- the gaps between purchase days: mean, spread, longest, latest, and the time since the last purchase
  against the mean gap (how overdue the customer is);
- purchase amounts: mean, spread, largest, latest against the mean, recent (last 90 days) mean against the
  earlier one; refunds: their count and amount;
- per categorical event column, for each of its ``top_values`` most frequent training values: its share of
  the customer's events and of their purchase spend, and how many of the column's values the customer used;
- per numeric event column (quantities, a grouped log's basket sizes and bag shares): its sum, its mean per
  event and its spend-weighted mean (a bag share weighted by spend is the department's share of spend).

Undefined values (a mean gap with fewer than two purchase days) are NaN: the network encodes them as missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from churnformer.data.window import NS_PER_DAY

RECENT_AMOUNT_DAYS = 90  # purchase amounts of the last 90 days against the earlier ones
# The training customers' quantiles of each aggregate are kept at these levels: the network's numeric encoding
# reads the bin edges of any number of bins off them (churnformer.modeling.fusion).
QUANTILE_LEVELS = tuple(np.linspace(0.0, 1.0, 65).tolist())


@dataclass(frozen=True)
class AggregateInputs:
    """The events of a batch of customers, sorted by (customer, time), duplicates out, all before the cutoff."""

    n_customers: int
    codes: np.ndarray  # customer index of each event, non-decreasing
    stamps: np.ndarray  # int64 ns
    amounts: np.ndarray  # float64
    feature_end_ns: int
    categories: Mapping[str, np.ndarray] = field(default_factory=dict)  # column -> vocabulary ids (2.. = values)
    numbers: Mapping[str, np.ndarray] = field(default_factory=dict)  # column -> values (NaN: missing)


@dataclass
class Aggregates:
    """Which aggregates a model reads: fitted with the featurizer, stored in its state.

    ``categories``: (categorical event column, how many of its most frequent values get shares: its vocabulary
    is frequency-ordered, so these are ids ``2 .. 1 + count``) pairs, in order; ``numbers``: numeric event
    columns. Lists, not mappings: the state is stored with sorted keys, and the order is the model's input
    layout.
    """

    windows_days: list[int]
    categories: list[tuple[str, int]]
    numbers: list[str]

    @property
    def names(self) -> list[str]:
        """One name per column of :meth:`compute`'s result, in order."""
        names = []
        for days in self.windows_days:
            names += [f"events_{days}d", f"purchase_days_{days}d", f"spend_{days}d"]
            names += [f"purchase_days_trend_{days}d", f"spend_trend_{days}d"]
        names += ["gap_mean_days", "gap_std_days", "gap_max_days", "gap_last_days", "overdue_ratio"]
        names += ["amount_mean", "amount_std", "amount_max", "amount_last_vs_mean", "amount_recent_vs_earlier"]
        names += ["refunds", "refund_amount"]
        for column, count in self.categories:
            names += [f"{column}_distinct"]
            names += [f"{column}_{rank}_share" for rank in range(count)]
            names += [f"{column}_{rank}_spend_share" for rank in range(count)]
        for column in self.numbers:
            names += [f"{column}_sum", f"{column}_mean", f"{column}_spend_weighted"]
        return names

    def compute(self, inputs: AggregateInputs) -> np.ndarray:
        """(customers, len(names)) float32."""
        n, codes = inputs.n_customers, inputs.codes
        amounts = inputs.amounts
        age = (inputs.feature_end_ns - inputs.stamps) / NS_PER_DAY
        purchase = amounts > 0
        spend = np.where(purchase, amounts, 0.0)
        day, first_of_day = _purchase_days(codes, inputs.stamps, purchase)
        columns: list[np.ndarray] = []
        for days in self.windows_days:
            recent, before = age < days, (age >= days) & (age < 2 * days)
            recent_days = _count(codes[first_of_day & recent], n)
            before_days = _count(codes[first_of_day & before], n)
            recent_spend = _sum(codes, spend * recent, n)
            before_spend = _sum(codes, spend * before, n)
            columns += [np.log1p(_count(codes[recent], n)), np.log1p(recent_days), np.log1p(recent_spend)]
            columns += [np.log1p(recent_days) - np.log1p(before_days), np.log1p(recent_spend) - np.log1p(before_spend)]
        columns += _gap_statistics(codes[first_of_day], day[first_of_day], age, codes, purchase, n)
        columns += _amount_statistics(codes, amounts, purchase, age, n)
        for column, count in self.categories:
            columns += _category_shares(codes, inputs.categories[column], spend, count, n)
        for column in self.numbers:
            values = np.nan_to_num(inputs.numbers[column].astype(np.float64))
            events, total_spend = _count(codes, n), _sum(codes, spend, n)
            total = _sum(codes, values, n)
            columns += [
                np.sign(total) * np.log1p(np.abs(total)),
                _ratio(total, events),
                _ratio(_sum(codes, values * spend, n), total_spend),
            ]
        out = np.empty((n, len(columns)), dtype=np.float32)
        for j, column in enumerate(columns):
            out[:, j] = column
        return out

    def of_no_events(self, n_customers: int) -> np.ndarray:
        """The aggregates of ``n_customers`` empty histories (counts 0, what needs an event NaN)."""
        none = np.zeros(0, dtype=np.int64)
        inputs = AggregateInputs(
            n_customers=n_customers,
            codes=none,
            stamps=none,
            amounts=np.zeros(0),
            feature_end_ns=0,
            categories={name: none for name, _ in self.categories},
            numbers={name: np.zeros(0) for name in self.numbers},
        )
        return self.compute(inputs)

    @classmethod
    def from_state(cls, state: dict) -> Aggregates:
        return cls(
            windows_days=[int(d) for d in state["windows_days"]],
            categories=[(str(column), int(count)) for column, count in state["categories"]],
            numbers=list(state["numbers"]),
        )


def aggregate_quantiles(values: np.ndarray) -> list[list[float]]:
    """Per aggregate, its quantiles at :data:`QUANTILE_LEVELS` over the finite values of ``values`` (rows:
    training customers); 0 everywhere for an aggregate that is never defined."""
    quantiles = []
    for column in np.asarray(values, dtype=np.float64).T:
        finite = column[np.isfinite(column)]
        levels = np.quantile(finite, QUANTILE_LEVELS) if len(finite) else np.zeros(len(QUANTILE_LEVELS))
        quantiles.append([float(v) for v in levels])
    return quantiles


def _count(codes: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(codes, minlength=n).astype(np.float64)


def _sum(codes: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(codes, weights=values, minlength=n)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0 (undefined, not zero)."""
    return np.divide(numerator, denominator, out=np.full(len(numerator), np.nan), where=denominator > 0)


def _purchase_days(codes: np.ndarray, stamps: np.ndarray, purchase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each event's day, and whether it is its customer's first purchase of that day."""
    day = stamps // NS_PER_DAY
    first = purchase.copy()
    rows = np.flatnonzero(purchase)
    same = (codes[rows[1:]] == codes[rows[:-1]]) & (day[rows[1:]] == day[rows[:-1]])
    first[rows[1:][same]] = False
    return day, first


def _distribution(owner: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
    """Per customer, of its ``values`` (in time order): mean, spread (population std), largest and latest; NaN
    for a customer without values."""
    count = _count(owner, n)
    mean = _ratio(_sum(owner, values, n), count)
    spread = np.sqrt(np.maximum(_ratio(_sum(owner, values**2, n), count) - mean**2, 0.0))
    largest = np.full(n, np.nan)
    np.fmax.at(largest, owner, values)
    latest = np.full(n, np.nan)
    latest[owner] = values  # the last write per customer is its latest value (NumPy assigns in order)
    return mean, spread, largest, latest


def _gap_statistics(
    day_codes: np.ndarray, days: np.ndarray, age: np.ndarray, codes: np.ndarray, purchase: np.ndarray, n: int
) -> list[np.ndarray]:
    """Over the gaps (days) between a customer's consecutive purchase days: log mean, log spread, log longest,
    log latest, and log(1 + days since the last purchase / mean gap)."""
    follows = np.flatnonzero(day_codes[1:] == day_codes[:-1]) + 1  # purchase days after the customer's first
    gaps, owner = (days[follows] - days[follows - 1]).astype(np.float64), day_codes[follows]
    mean, spread, longest, latest = _distribution(owner, gaps, n)
    since_purchase = np.full(n, np.nan)
    np.fmin.at(since_purchase, codes[purchase], age[purchase])
    return [np.log1p(mean), np.log1p(spread), np.log1p(longest), np.log1p(latest), np.log1p(since_purchase / mean)]


def _amount_statistics(
    codes: np.ndarray, amounts: np.ndarray, purchase: np.ndarray, age: np.ndarray, n: int
) -> list[np.ndarray]:
    """Log mean, log spread and log largest purchase amount, the latest against the mean and the recent mean
    against the earlier one (log ratios), and the refunds' log count and log amount."""
    owner, value = codes[purchase], amounts[purchase]
    mean, spread, largest, latest = _distribution(owner, value, n)
    recent = age[purchase] < RECENT_AMOUNT_DAYS
    recent_mean = _ratio(_sum(owner[recent], value[recent], n), _count(owner[recent], n))
    earlier_mean = _ratio(_sum(owner[~recent], value[~recent], n), _count(owner[~recent], n))
    refund = amounts < 0
    return [
        np.log1p(mean),
        np.log1p(spread),
        np.log1p(largest),
        np.log1p(latest) - np.log1p(mean),
        np.log1p(recent_mean) - np.log1p(earlier_mean),
        np.log1p(_count(codes[refund], n)),
        np.log1p(-_sum(codes[refund], amounts[refund], n)),
    ]


def _category_shares(codes: np.ndarray, ids: np.ndarray, spend: np.ndarray, count: int, n: int) -> list[np.ndarray]:
    """log(1 + distinct values used), then each top value's share of events, then its share of purchase spend."""
    ids = ids.astype(np.int64)
    pairs = np.unique(codes * (int(ids.max(initial=0)) + 1) + ids)
    distinct = _count(pairs // (int(ids.max(initial=0)) + 1), n)
    events, total_spend = _count(codes, n), _sum(codes, spend, n)
    shares, spend_shares = [], []
    for rank in range(count):
        chosen = ids == rank + 2  # id 0 is padding, 1 unknown; the vocabulary is ordered by frequency
        shares.append(_ratio(_count(codes[chosen], n), events))
        spend_shares.append(_ratio(_sum(codes[chosen], spend[chosen], n), total_spend))
    return [np.log1p(distinct), *shares, *spend_shares]
