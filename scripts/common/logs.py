"""The benchmark event logs shared by the scoring, featurization and training benchmarks (``scripts.benchmarks``).

``int`` (:func:`generate_events`): arbitrary int64 customer ids with a skewed, lognormal events-per-customer
distribution (at max_len 128 about 85% of a padded [customers, 128] array is padding, as in real logs),
timestamps over two years, amounts (mostly 0 or positive, some negative), an ``event_type`` category and a
numeric attribute with NaN, in random row order. ``crm`` (:func:`generate_crm_events`): the same events
shaped like a CRM export: string customer ids (half ``C``-prefixed numbers, half UUIDs), ``event_type`` and
``channel`` as plain strings, and geometric history lengths (mean 20, a tail to 400 events, some customers
past max_len). Deterministic for a seed.
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


CHANNELS = ("web", "app", "store", "phone", "email")
CRM_MEAN_LENGTH = 20
CRM_MAX_LENGTH = 400


def crm_customer_ids(n_customers: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct string ids: ``C`` and a number for the first half, UUID-like hex strings for the rest."""
    numbered = n_customers // 2
    numbers = rng.choice(10**8, size=numbered, replace=False)
    words = rng.integers(0, 2**63, size=(n_customers - numbered, 2), dtype=np.int64)
    uuids = [f"{a:016x}{b:016x}" for a, b in words.tolist()]
    uuids = [f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}" for u in uuids]
    return np.array([f"C{n:08d}" for n in numbers.tolist()] + uuids, dtype=object)


def generate_crm_events(n_events: int, n_customers: int, seed: int = 0) -> pd.DataFrame:
    """A CRM-shaped log of about ``n_events`` events (the lengths are drawn, not fixed), as pandas reads
    such a file by default: ids, event types and channels as object columns of Python strings."""
    rng = np.random.default_rng(seed)
    mean = max(1.0, n_events / n_customers) if n_events else CRM_MEAN_LENGTH
    counts = np.minimum(rng.geometric(1 / mean, size=n_customers), CRM_MAX_LENGTH)
    total = int(counts.sum())
    order = rng.permutation(total)
    customer_id = np.repeat(crm_customer_ids(n_customers, rng), counts)[order]
    seconds = rng.integers(0, SPAN_SECONDS, size=total)
    kind = rng.random(total)
    amount = np.where(kind < 0.35, np.round(rng.lognormal(3.0, 1.0, size=total), 2), 0.0)
    amount[kind > 0.95] = -np.round(rng.lognormal(2.5, 1.0, size=int((kind > 0.95).sum())), 2)
    return pd.DataFrame(
        {
            "customer_id": customer_id,
            "timestamp": (START + seconds.astype("timedelta64[s]")).astype("datetime64[ns]"),
            "amount": amount,
            "event_type": np.array(EVENT_TYPES, dtype=object)[rng.integers(0, len(EVENT_TYPES), size=total)],
            "channel": np.array(CHANNELS, dtype=object)[rng.integers(0, len(CHANNELS), size=total)],
        }
    )
