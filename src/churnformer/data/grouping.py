"""Line items grouped into one event per basket (``data.features.group_by``).

A grocery household writes about 600 line items a year: ``max_len`` of them covers two or three weeks. Grouped
by a basket (or order, or session) column, the same history is about 100 events, each with the basket's
time (its earliest item), total amount, item count, summed numeric attributes (quantity, discounts), the
categorical attributes that are the same for the whole basket (store, event type), and for those that vary
within a basket (department, category) the share of its items in each of the column's most frequent values
(a linear projection of those shares is the mean of the values' embeddings: a bag of categories). Rows
without a group value (a coupon redemption, a campaign contact) stay events of their own.

The result is a standard event frame; the rest of featurization does not know it was grouped. Every value is
a function of the group's content: rows are put in order by content before anything is summed or taken
first, so the input's row order never changes a bit of the output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP
from churnformer.data.values import CategoricalEncoder, numeric_values

OTHER = "other"  # the share of a group's items outside a bag column's vocabulary (rare, unseen or missing)


@dataclass
class Grouping:
    """How rows become group events: fitted on the training events, kept in the featurization state."""

    column: str  # the group key: rows of one customer with the same value are one event
    first: list[str]  # categorical columns the same within every training group: the group's value
    summed: list[str]  # numeric columns: the group's sum (missing when every item's value is)
    bags: list[CategoricalEncoder] = field(default_factory=list)  # categorical columns that vary within groups

    @property
    def items_column(self) -> str:
        return f"{self.column}_items"

    @property
    def source_columns(self) -> list[str]:
        """The event log's attribute columns the grouping reads."""
        return [self.column, *self.first, *self.summed, *(bag.name for bag in self.bags)]

    @classmethod
    def from_state(cls, state: dict) -> Grouping:
        return cls(**{**state, "bags": [CategoricalEncoder(**bag) for bag in state["bags"]]})

    @classmethod
    def fit(
        cls,
        events: pd.DataFrame,
        column: str,
        categorical: list[str],
        numeric: list[str],
        bag_size: int,
        min_count: int,
    ) -> Grouping:
        """Columns that vary within some group of ``events`` become bags of their ``bag_size`` most frequent
        values (seen at least ``min_count`` times); the other categorical columns are taken as they are."""
        group = group_ids(events, column)
        varies = [c for c in categorical if _varies_within(events[c], group)]
        return cls(
            column=column,
            first=[c for c in categorical if c not in varies],
            summed=list(numeric),
            bags=[CategoricalEncoder.fit(c, events[c], bag_size, min_count) for c in varies],
        )

    def apply(self, events: pd.DataFrame) -> pd.DataFrame:
        """One row per group, in no particular order. A bag's values outside its vocabulary are its "other"
        share by design, not unknown categories."""
        group = group_ids(events, self.column)
        order = np.lexsort([*reversed(self._content_keys(events)), group])
        group = group[order]
        starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(group) else np.zeros(0, np.int64)
        first = order[starts]
        items = np.diff(np.r_[starts, len(order)])
        grouped = {
            CUSTOMER_ID: events[CUSTOMER_ID].iloc[first].reset_index(drop=True),
            TIMESTAMP: events[TIMESTAMP].iloc[first].reset_index(drop=True),
            AMOUNT: np.add.reduceat(events[AMOUNT].to_numpy("float64")[order], starts),
            self.column: events[self.column].iloc[first].reset_index(drop=True),
        }
        for name in self.first:
            grouped[name] = events[name].iloc[first].reset_index(drop=True)
        for name in self.summed:
            values = numeric_values(events[name])[order]
            known = np.isfinite(values)
            sums = np.add.reduceat(np.where(known, values, 0.0), starts)
            grouped[name] = np.where(np.add.reduceat(known.astype(np.int64), starts) > 0, sums, np.nan)
        grouped[self.items_column] = items.astype(np.float64)
        for bag in self.bags:
            ids, _ = bag.encode(events[bag.name])
            width = bag.cardinality - 1  # id 1 (unknown) is the "other" share; 0 (padding) never occurs
            index = np.repeat(np.arange(len(starts)), items) * width + (ids[order] - 1)
            shares = np.bincount(index, minlength=len(starts) * width).reshape(-1, width) / items[:, None]
            for k, value in enumerate([OTHER, *bag.vocabulary]):
                grouped[f"{bag.name}={value}"] = shares[:, k]
        frame = pd.DataFrame(grouped)
        frame.attrs = events.attrs
        return frame

    def _content_keys(self, events: pd.DataFrame) -> list[np.ndarray]:
        """Sort keys, most significant first, that put a group's rows in an order given by their content."""
        keys = [events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64), events[AMOUNT].to_numpy("float64")]
        keys += [pd.factorize(events[name], sort=True)[0] for name in self.first]
        keys += [np.nan_to_num(numeric_values(events[name]), nan=np.inf) for name in self.summed]
        keys += [pd.factorize(events[bag.name], sort=True)[0] for bag in self.bags]
        return keys


def group_ids(events: pd.DataFrame, column: str) -> np.ndarray:
    """Per row, its group: customer and ``column`` value; a row without a value is a group of its own."""
    customers, _ = pd.factorize(events[CUSTOMER_ID])
    keys, uniques = pd.factorize(events[column])
    combined = customers.astype(np.int64) * (len(uniques) + 1) + keys
    alone = keys < 0
    combined[alone] = (len(pd.unique(customers)) + 1) * (len(uniques) + 1) + np.arange(int(alone.sum()))
    return pd.factorize(combined)[0].astype(np.int64)


def _varies_within(values: pd.Series, group: np.ndarray) -> bool:
    codes, _ = pd.factorize(values)
    return bool((pd.Series(codes).groupby(group).nunique(dropna=False) > 1).any())
