"""The benchmark event log shared by ``bench_featurize.py`` and ``bench_score.py``.

Arbitrary int64 customer ids with a skewed, lognormal events-per-customer distribution (at max_len 128
about 85% of a padded [customers, 128] array is padding, as in real logs), timestamps over two years,
amounts (mostly 0 or positive, some negative), an ``event_type`` category and a numeric attribute with
NaN, in random row order. Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

START = np.datetime64("2023-01-01T00:00:00", "s")
SPAN_SECONDS = 2 * 365 * 86_400
EVENT_TYPES = ("purchase", "visit", "support_ticket", "complaint", "refund")


def generate_events(n_events: int, n_customers: int, seed: int = 0) -> pd.DataFrame:
    """A standard event frame, generated directly (no load_events), deterministic for a seed."""
    if n_customers < 1 or n_events < n_customers:
        raise SystemExit("need --events >= --customers >= 1 (every customer gets at least one event)")
    rng = np.random.default_rng(seed)
    # Skewed activity: lognormal weights, every customer at least one event.
    weights = rng.lognormal(mean=0.0, sigma=1.3, size=n_customers)
    counts = 1 + rng.multinomial(n_events - n_customers, weights / weights.sum())
    # Arbitrary (sparse) int64 ids: distinct values spread over [10**9, 10**15).
    ids = np.unique(rng.integers(10**9, 10**15, size=int(n_customers * 1.05)))
    ids = rng.permutation(ids)[:n_customers]
    while len(ids) < n_customers:  # practically never: collisions of 15-digit draws
        extra = np.setdiff1d(rng.integers(10**9, 10**15, size=n_customers), ids)
        ids = np.concatenate([ids, extra])[:n_customers]
    customer_id = np.repeat(ids.astype(np.int64), counts)
    order = rng.permutation(n_events)
    customer_id = customer_id[order]

    seconds = rng.integers(0, SPAN_SECONDS, size=n_events)
    timestamp = (START + seconds.astype("timedelta64[s]")).astype("datetime64[ns]")

    kind = rng.random(n_events)
    amount = np.zeros(n_events)
    positive = kind < 0.35
    negative = kind > 0.95
    amount[positive] = np.round(rng.lognormal(3.0, 1.0, size=int(positive.sum())), 2)
    amount[negative] = -np.round(rng.lognormal(2.5, 1.0, size=int(negative.sum())), 2)

    event_type = pd.Categorical.from_codes(rng.integers(0, len(EVENT_TYPES), size=n_events), EVENT_TYPES)
    basket = rng.poisson(3.0, size=n_events).astype(np.float64)
    basket[rng.random(n_events) < 0.1] = np.nan

    return pd.DataFrame(
        {
            "customer_id": customer_id,
            "timestamp": timestamp,
            "amount": amount,
            "event_type": event_type,
            "basket_size": basket,
        }
    )
