"""Labels from the horizon window: churn (no purchase) and net spend per customer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.window import Window
from churnformer.errors import InputError


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
    """Labels for ``customer_ids`` (normally :attr:`Sequences.customer_ids`), in that order.

    ``churn`` is 1 when the customer makes no purchase in the horizon window; ``spend`` is the net sum
    of amounts in the window (refunds subtract), floored at 0. Identical duplicate events count once, as
    in the features (:func:`churnformer.data.sequences.build_sequences`).

    A log that ends before the cutoff is an error: nothing after the cutoff was observed, so every label
    would read "churned, spent 0" and a model would learn that from nothing.
    """
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if len(stamps) and stamps.max() < window.feature_end_ns:
        raise InputError(
            f"{source_of(events, 'events')}: no events after the cutoff {window} (the log ends at "
            f"{pd.Timestamp(stamps.max())}), so churn and spend in the {window.horizon_days:g}-day horizon "
            f"cannot be observed. Choose a cutoff at least {window.horizon_days:g} days before the end of the log."
        )
    in_horizon = (stamps >= window.feature_end_ns) & (stamps < window.label_end_ns)
    horizon = events.loc[in_horizon]
    horizon = horizon.loc[~horizon.duplicated().to_numpy()]
    position = pd.Index(customer_ids).get_indexer(horizon[CUSTOMER_ID].to_numpy())
    known = position >= 0
    n = len(customer_ids)
    purchases = np.bincount(
        position[known], weights=is_purchase(horizon, purchase_types, event_type_column)[known], minlength=n
    )
    spend = np.bincount(position[known], weights=horizon[AMOUNT].to_numpy()[known], minlength=n)
    return pd.DataFrame(
        {
            CUSTOMER_ID: customer_ids,
            "churn": (purchases == 0).astype(np.float32),
            "spend": np.maximum(spend, 0.0).astype(np.float32),
        }
    )
