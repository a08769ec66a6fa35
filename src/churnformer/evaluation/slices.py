"""Metrics per customer slice: where is the model weak, and does it treat groups differently?

A slice is the customers sharing one value of one attribute: each static attribute of the customers table
(region, age band, signup channel; a numeric attribute with many values in quartiles) and each segment the
scoring assigned. Every slice is reported; one with fewer than ``min_customers`` customers is marked
``small`` (its metrics are noisy), never dropped, and a metric a slice cannot define (AUC with one class) is
empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID
from churnformer.evaluation.metrics import expected_calibration_error, normalized_gini, roc_auc
from churnformer.schema import CHURN, CHURN_PROBABILITY, EXPECTED_SPEND, SEGMENT, SPEND

# Slices with fewer customers are marked small.
MIN_SLICE_CUSTOMERS = 50
# A numeric attribute with more distinct values than this is sliced into quartiles.
MAX_NUMERIC_VALUES = 12
MISSING = "(missing)"
SLICE_COLUMNS = (
    "attribute",
    "value",
    "n_customers",
    "small",
    "churn_rate",
    "churn_auc",
    "churn_ece",
    "spend_gini",
    "mean_spend",
)


def slice_values(column: pd.Series) -> pd.Series:
    """A column's slice of each customer: its value as text, quartiles for a numeric column with many values."""
    if pd.api.types.is_numeric_dtype(column) and column.nunique() > MAX_NUMERIC_VALUES:
        quartiles = pd.qcut(column, 4, duplicates="drop")
        return quartiles.astype(str).where(column.notna(), MISSING)
    return column.astype(object).where(column.notna(), MISSING).astype(str)


def slice_metrics(
    joined: pd.DataFrame,
    customers: pd.DataFrame | None = None,
    segments: pd.DataFrame | None = None,
    min_customers: int = MIN_SLICE_CUSTOMERS,
) -> pd.DataFrame:
    """One row per slice (:data:`SLICE_COLUMNS`) of the customers of ``joined`` (predictions with labels, as
    :func:`churnformer.evaluation.report.align` makes it): by each attribute of ``customers`` (customers
    absent from it are a ``(missing)`` slice) and by ``segment`` of ``segments`` (id and segment columns)."""
    ids = joined[[CUSTOMER_ID]]
    attributes = {}
    if customers is not None:
        table = ids.merge(customers, on=CUSTOMER_ID, how="left")
        for column in customers.columns:
            if column != CUSTOMER_ID:
                attributes[column] = slice_values(table[column])
    if segments is not None and SEGMENT in segments.columns:
        segment = ids.merge(segments[[CUSTOMER_ID, SEGMENT]], on=CUSTOMER_ID, how="left")[SEGMENT]
        attributes[SEGMENT] = slice_values(segment)
    rows = []
    for attribute, values in attributes.items():
        for value in sorted(values.unique()):
            inside = (values == value).to_numpy()
            rows.append({"attribute": attribute, "value": value, **_metrics(joined[inside], min_customers)})
    return pd.DataFrame(rows, columns=list(SLICE_COLUMNS))


def _metrics(frame: pd.DataFrame, min_customers: int) -> dict[str, float | int | bool]:
    churn, probability = frame[CHURN].to_numpy(), frame[CHURN_PROBABILITY].to_numpy()
    spend, expected = frame[SPEND].to_numpy(), frame[EXPECTED_SPEND].to_numpy()
    return {
        "n_customers": len(frame),
        "small": len(frame) < min_customers,
        "churn_rate": float(churn.mean()),
        "churn_auc": roc_auc(churn, probability),
        "churn_ece": expected_calibration_error(probability, churn),
        "spend_gini": normalized_gini(spend, expected) if spend.sum() > 0 else np.nan,
        "mean_spend": float(spend.mean()),
    }


def slices_markdown(slices: pd.DataFrame, min_customers: int = MIN_SLICE_CUSTOMERS) -> str:
    """The slice table as markdown, small slices marked with an asterisk."""
    lines = [
        "| attribute | value | customers | churn rate | churn AUC | churn ECE | spend Gini |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in slices.itertuples():
        numbers = [_cell(v) for v in (row.churn_rate, row.churn_auc, row.churn_ece, row.spend_gini)]
        count = f"{row.n_customers:,}{'*' if row.small else ''}"
        lines.append(f"| {row.attribute} | {row.value} | {count} | " + " | ".join(numbers) + " |")
    lines.append(f"\n\\* fewer than {min_customers} customers: noisy, read with care.")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.4f}"
