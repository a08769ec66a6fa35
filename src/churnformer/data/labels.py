"""Labels from the horizon window: churn (no purchase) and net spend per customer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window, log_end_ns
from churnformer.errors import InputError
from churnformer.schema import CHURN, OBSERVED, SPEND, per_horizon


def is_purchase(
    events: pd.DataFrame, purchase_types: Sequence[str] | None = None, event_type_column: str = "event_type"
) -> np.ndarray:
    """A purchase is an event with amount > 0, or, when configured, an event of the given types."""
    if not purchase_types:
        return events[AMOUNT].to_numpy() > 0
    if event_type_column not in events.columns:
        raise InputError(
            f"events: purchase types {list(purchase_types)} need column {event_type_column!r}, "
            f"which is not among {list(events.columns)}"
        )
    return events[event_type_column].astype(str).isin([str(t) for t in purchase_types]).to_numpy()


def make_labels(
    events: pd.DataFrame,
    window: Window,
    customer_ids: np.ndarray,
    purchase_types: Sequence[str] | None = None,
    event_type_column: str = "event_type",
) -> pd.DataFrame:
    """Labels at the window's horizon for ``customer_ids`` (normally :attr:`Sequences.customer_ids`), in
    that order: ``churn`` is 1 when the customer makes no purchase in the horizon window; ``spend`` is the
    net sum of amounts in the window (refunds subtract), floored at 0. Identical duplicate events count
    once, as in the features (:func:`churnformer.data.sequences.build_sequences`).

    A log that ends before the cutoff is an error: nothing after the cutoff was observed, so every label
    would read "churned, spent 0" and a model would learn that from nothing.
    """
    grid = HorizonGrid((window.horizon_days,), window.horizon_days)
    labels = horizon_labels(events, window, grid, customer_ids, purchase_types, event_type_column)
    return labels[[CUSTOMER_ID, CHURN, SPEND]]


def horizon_labels(
    events: pd.DataFrame,
    window: Window,
    grid: HorizonGrid,
    customer_ids: np.ndarray,
    purchase_types: Sequence[str] | None = None,
    event_type_column: str = "event_type",
) -> pd.DataFrame:
    """:func:`make_labels` at every horizon of ``grid`` after ``window.feature_end``: ``churn_<h>d``,
    ``spend_<h>d`` and ``observed_<h>d`` (1 when the horizon's window ends within the log, see
    :func:`log_end_ns`; where it does not, the labels count only what the log holds, and training leaves
    them out), and ``churn``/``spend`` at the main horizon."""
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if len(stamps) and stamps.max() < window.feature_end_ns:
        raise InputError(
            f"{source_of(events, 'events')}: no events after the cutoff {window} (the log ends at "
            f"{pd.Timestamp(stamps.max())}), so churn and spend in the {window.horizon_days:g}-day horizon "
            f"cannot be observed. Choose a cutoff at least {window.horizon_days:g} days before the end of the log."
        )
    log_end = log_end_ns(stamps) if len(stamps) else window.feature_end_ns
    longest = window.feature_end_ns + round(max(grid.days) * NS_PER_DAY)
    after = (stamps >= window.feature_end_ns) & (stamps < longest)
    future = events.loc[after]
    unique = ~future.duplicated().to_numpy()
    future, offsets = future.loc[unique], (stamps[after] - window.feature_end_ns)[unique]
    position = pd.Index(customer_ids).get_indexer(future[CUSTOMER_ID].to_numpy())
    known = position >= 0
    position, offsets = position[known], offsets[known]
    purchase = is_purchase(future, purchase_types, event_type_column)[known]
    amounts = future[AMOUNT].to_numpy()[known]
    n = len(customer_ids)
    columns: dict[str, np.ndarray] = {CUSTOMER_ID: customer_ids}
    for days in grid.days:
        inside = offsets < round(days * NS_PER_DAY)
        purchases = np.bincount(position[inside], weights=purchase[inside], minlength=n)
        spend = np.bincount(position[inside], weights=amounts[inside], minlength=n)
        observed = window.feature_end_ns + round(days * NS_PER_DAY) <= log_end
        columns[per_horizon(CHURN, days)] = (purchases == 0).astype(np.float32)
        columns[per_horizon(SPEND, days)] = np.maximum(spend, 0.0).astype(np.float32)
        columns[per_horizon(OBSERVED, days)] = np.full(n, observed, dtype=np.float32)
    labels = pd.DataFrame(columns)
    labels[CHURN] = labels[per_horizon(CHURN, grid.main)]
    labels[SPEND] = labels[per_horizon(SPEND, grid.main)]
    return labels
