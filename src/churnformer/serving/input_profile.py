"""What a scoring job records of its input, for drift monitoring (``churnformer-monitor``): per scored customer
the events up to the cutoff, the days since the last one and the purchase spend of the history; per event
categorical column the share of each value among the kept events (the latest ``max_len`` of each customer).

Counts in bins fixed here, not fitted to any data, so that the profiles of a job's parts (spill partitions,
Spark buckets) add up to the profile of the whole job, and any two jobs of any model compare bin by bin.
"""

from __future__ import annotations

import numpy as np

from churnformer.data.featurizer import BASE_CUSTOMER_NUMERIC, Featurizer
from churnformer.data.sequences import Sequences
from churnformer.data.values import UNKNOWN_ID
from churnformer.schema import CUSTOMER_NUM, EVENT_CAT

EVENTS_PER_CUSTOMER = "events_per_customer"
DAYS_SINCE_LAST_EVENT = "days_since_last_event"
SPEND_PER_CUSTOMER = "spend_per_customer"
# Left edges of the bins (the last bin is open): counts and days on a roughly logarithmic grid, spend on the
# 1-2-5 grid of every currency's banknotes, from 0 (no purchase) up.
NUMERIC_BINS: dict[str, tuple[float, ...]] = {
    EVENTS_PER_CUSTOMER: (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024),
    DAYS_SINCE_LAST_EVENT: (0, 1, 3, 7, 14, 30, 60, 90, 120, 180, 270, 365, 548, 730),
    SPEND_PER_CUSTOMER: (0, 1e-9, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5),
}
# An event categorical column's values are named "<column>=<value>"; unknown (unseen or rare) values as here.
UNKNOWN_VALUE = "(unknown)"


def bin_label(edges: tuple[float, ...], index: int) -> str:
    """``[7, 14)``, or ``>= 730`` for the open last bin, or ``0`` for a bin holding one value."""
    low = edges[index]
    if index == len(edges) - 1:
        return f">= {low:g}"
    high = edges[index + 1]
    if high < 1e-6:  # the bin of exactly 0 (no purchase); the next one is open at 0
        return f"{low:g}"
    return f"(0, {high:g})" if 0 < low < 1e-6 else f"[{low:g}, {high:g})"


def numeric_counts(values: np.ndarray, edges: tuple[float, ...]) -> dict[str, int]:
    """How many ``values`` fall in each bin (values below the first edge count in the first bin)."""
    index = np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(edges) - 1)
    counts = np.bincount(index, minlength=len(edges))
    return {bin_label(edges, i): int(count) for i, count in enumerate(counts)}


def input_profile(sequences: Sequences, featurizer: Featurizer) -> dict[str, dict[str, int]]:
    """The profile of the scored customers of ``sequences`` (name -> bin or value -> count)."""
    summary = sequences.customers[CUSTOMER_NUM].astype(np.float64)
    log_column = {name: summary[:, i] for i, name in enumerate(BASE_CUSTOMER_NUMERIC)}
    values = {
        EVENTS_PER_CUSTOMER: sequences.n_events_total,
        # From the model's history summary (log1p in float32): rounded, so 7 days stays 7, not 6.9999995.
        DAYS_SINCE_LAST_EVENT: np.round(np.expm1(log_column["log_days_since_last_event"]), 3),
        SPEND_PER_CUSTOMER: np.round(np.expm1(log_column["log_total_purchase_amount"]), 2),
    }
    profile = {name: numeric_counts(values[name], edges) for name, edges in NUMERIC_BINS.items()}
    ids = sequences.events[EVENT_CAT]
    for j, encoder in enumerate(featurizer.event_categorical):
        counts = np.bincount(ids[:, j], minlength=encoder.cardinality)
        named = {f"{encoder.name}={value}": int(counts[i + 2]) for i, value in enumerate(encoder.vocabulary)}
        named[f"{encoder.name}={UNKNOWN_VALUE}"] = int(counts[UNKNOWN_ID])
        profile[encoder.name] = named
    return profile


def add_profiles(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    """Add ``part``'s counts to ``total`` in place (the profile of a job from its parts')."""
    for name, counts in part.items():
        into = total.setdefault(name, {})
        for key, count in counts.items():
            into[key] = into.get(key, 0) + count
