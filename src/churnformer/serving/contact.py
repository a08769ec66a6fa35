"""Whom to contact (models trained with campaigns, ``data.campaigns``): the value of contacting each customer
and how the customer responds, from the model's predictions with and without the contact.

- ``contact_value``: ``spend_uplift`` at the main horizon (the expected spend the contact adds) minus the cost
  of the offer (``contact.cost``; by default the offer's mean cost in the campaigns the model learned from).
  Target the customers with the highest positive value.
- ``response_segment``, at the main horizon: **persuadable** (the contact lowers the churn probability by at
  least ``contact.uplift_threshold``), **do not disturb** (it raises it by at least that), else **lost cause**
  (churn probability >= ``segments.risk_threshold`` either way) or **sure thing** (below it).

A model trained on several offers predicts each one (its columns ``schema.per_offer``, with its own
``contact_value``); ``best_offer`` is the offer of the highest ``contact_value`` (without a spend head, of the
largest churn uplift at the main horizon), and the columns without an offer's name are that offer's.

These are effects only where past contacts were randomized (a holdout in every campaign) and for offers like
the ones in them; the model card records which.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.errors import ConfigError
from churnformer.schema import (
    BEST_OFFER,
    CHURN_PROBABILITY,
    CHURN_PROBABILITY_IF_CONTACTED,
    CHURN_UPLIFT,
    CONTACT_VALUE,
    META_CAMPAIGNS,
    RESPONSE_SEGMENT,
    SPEND_UPLIFT,
    per_horizon,
    per_offer,
)


@dataclass(frozen=True)
class ContactRules:
    """``contact.*`` in ``conf/serving/predict.yaml``: the cost of one contact (a number for every offer, a
    mapping of offer to cost, or None: the model's) and the churn uplift below which a contact is taken to
    change nothing."""

    cost: float | Mapping[str, float] | None
    uplift_threshold: float

    def __post_init__(self) -> None:
        costs = self.cost.values() if isinstance(self.cost, Mapping) else [] if self.cost is None else [self.cost]
        if not all(isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0 for cost in costs):
            raise ConfigError(
                "contact.cost must be a number >= 0, a mapping of offer to such a number (contact.cost="
                f"'{{coupon: 5, call: 12}}'), or null (the model's), got {self.cost!r}"
            )
        if not (isinstance(self.uplift_threshold, int | float) and 0 <= self.uplift_threshold < 1):
            raise ConfigError(f"contact.uplift_threshold must be in [0, 1), got {self.uplift_threshold!r}")

    def costs_for(self, metadata: dict[str, str]) -> dict[str, float]:
        """The cost ``contact_value`` subtracts, per offer of the model: this one, or each offer's mean in the
        model's campaigns."""
        learned = json.loads(metadata[META_CAMPAIGNS])
        offers = learned["offers"]
        if isinstance(self.cost, Mapping):
            missing = [offer for offer in offers if offer not in self.cost]
            if missing:
                raise ConfigError(f"contact.cost names no cost for offer(s) {missing}; the model's offers: {offers}")
            return {offer: float(self.cost[offer]) for offer in offers}
        if self.cost is not None:
            return dict.fromkeys(offers, float(self.cost))
        return {offer: float(learned.get("costs", {}).get(offer, learned["cost"])) for offer in offers}


def add_contact_columns(
    predictions: pd.DataFrame,
    horizons: tuple[float, ...],
    main_horizon: float,
    costs: Mapping[str, float],
    uplift_threshold: float,
    risk_threshold: float,
) -> pd.DataFrame:
    """``contact_value`` and ``response_segment`` (see the module), and with several offers (``costs``' keys)
    each offer's ``contact_value``, ``best_offer`` and its columns; row by row (shards and spill partitions
    agree)."""
    spend_column = per_horizon(SPEND_UPLIFT, main_horizon)
    columns = {}
    if len(costs) > 1:
        predictions = predictions.assign(**_best_offer(predictions, horizons, main_horizon, costs))
    elif spend_column in predictions:
        columns[CONTACT_VALUE] = _value(predictions[spend_column], next(iter(costs.values())))
    churn = predictions[CHURN_PROBABILITY].to_numpy(np.float64)
    uplift = predictions[per_horizon(CHURN_UPLIFT, main_horizon)].to_numpy(np.float64)
    segment = np.where(churn >= risk_threshold, "lost cause", "sure thing").astype(object)
    segment[uplift >= uplift_threshold] = "persuadable"
    segment[uplift <= -uplift_threshold] = "do not disturb"
    columns[RESPONSE_SEGMENT] = pd.array(segment, dtype="str")
    return predictions.assign(**columns)


def _value(spend_uplift: pd.Series, cost: float) -> np.ndarray:
    return (spend_uplift.to_numpy(np.float64) - cost).astype(np.float32)


def _best_offer(
    predictions: pd.DataFrame, horizons: tuple[float, ...], main_horizon: float, costs: Mapping[str, float]
) -> dict[str, object]:
    """Each offer's ``contact_value``, ``best_offer`` (the first of the highest, in the model's order of offers),
    and the best offer's columns under the names without an offer."""
    offers = list(costs)
    spend = per_horizon(SPEND_UPLIFT, main_horizon)
    columns: dict[str, object] = {}
    with_spend = per_offer(spend, offers[0]) in predictions
    if with_spend:
        for offer in offers:
            columns[per_offer(CONTACT_VALUE, offer)] = _value(predictions[per_offer(spend, offer)], costs[offer])
        ranked_by = np.stack([columns[per_offer(CONTACT_VALUE, offer)] for offer in offers], axis=1)
    else:
        churn = per_horizon(CHURN_UPLIFT, main_horizon)
        ranked_by = predictions[[per_offer(churn, offer) for offer in offers]].to_numpy(np.float64)
    best = ranked_by.argmax(axis=1)
    columns[BEST_OFFER] = pd.array(np.asarray(offers, dtype=object)[best], dtype="str")
    names = [CHURN_PROBABILITY_IF_CONTACTED] + [
        per_horizon(name, days) for days in horizons for name in (CHURN_UPLIFT, SPEND_UPLIFT)
    ]
    if with_spend:
        names.append(CONTACT_VALUE)
    rows = np.arange(len(predictions))
    for name in names:
        values = [columns.get(per_offer(name, o), predictions.get(per_offer(name, o))) for o in offers]
        if values[0] is not None:
            columns[name] = np.stack([np.asarray(v) for v in values], axis=1)[rows, best].astype(np.float32)
    return columns
