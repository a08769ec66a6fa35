"""Whom to contact (models trained with campaigns, ``data.campaigns``): the value of contacting each customer
and how the customer responds, from the model's predictions with and without the contact.

- ``contact_value``: ``spend_uplift`` at the main horizon (the expected spend the contact adds) minus the cost
  of the offer (``contact.cost``; by default the mean cost in the campaigns the model learned from). Target the
  customers with the highest positive value.
- ``response_segment``, at the main horizon: **persuadable** (the contact lowers the churn probability by at
  least ``contact.uplift_threshold``), **do not disturb** (it raises it by at least that), else **lost cause**
  (churn probability >= ``segments.risk_threshold`` either way) or **sure thing** (below it).

These are effects only where past contacts were randomized (a holdout in every campaign) and for offers like
the ones in them; the model card records which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.errors import ConfigError
from churnformer.schema import (
    CHURN_PROBABILITY,
    CHURN_UPLIFT,
    CONTACT_VALUE,
    META_CAMPAIGNS,
    RESPONSE_SEGMENT,
    SPEND_UPLIFT,
    per_horizon,
)


@dataclass(frozen=True)
class ContactRules:
    """``contact.*`` in ``conf/serving/predict.yaml``: the cost of one contact (None: the model's) and the churn
    uplift below which a contact is taken to change nothing."""

    cost: float | None
    uplift_threshold: float

    def __post_init__(self) -> None:
        if self.cost is not None and not (isinstance(self.cost, int | float) and self.cost >= 0):
            raise ConfigError(f"contact.cost must be a number >= 0 (or null: the model's), got {self.cost!r}")
        if not (isinstance(self.uplift_threshold, int | float) and 0 <= self.uplift_threshold < 1):
            raise ConfigError(f"contact.uplift_threshold must be in [0, 1), got {self.uplift_threshold!r}")

    def cost_for(self, metadata: dict[str, str]) -> float:
        """The cost ``contact_value`` subtracts: this one, or the mean of the model's campaigns."""
        return float(self.cost) if self.cost is not None else float(json.loads(metadata[META_CAMPAIGNS])["cost"])


def add_contact_columns(
    predictions: pd.DataFrame, main_horizon: float, cost: float, uplift_threshold: float, risk_threshold: float
) -> pd.DataFrame:
    """``contact_value`` and ``response_segment`` (see the module), row by row (shards and spill partitions
    agree)."""
    churn = predictions[CHURN_PROBABILITY].to_numpy(np.float64)
    uplift = predictions[per_horizon(CHURN_UPLIFT, main_horizon)].to_numpy(np.float64)
    spend_column = per_horizon(SPEND_UPLIFT, main_horizon)
    columns = {}
    if spend_column in predictions:
        columns[CONTACT_VALUE] = (predictions[spend_column].to_numpy(np.float64) - cost).astype(np.float32)
    segment = np.where(churn >= risk_threshold, "lost cause", "sure thing").astype(object)
    segment[uplift >= uplift_threshold] = "persuadable"
    segment[uplift <= -uplift_threshold] = "do not disturb"
    columns[RESPONSE_SEGMENT] = pd.array(segment, dtype="str")
    return predictions.assign(**columns)
