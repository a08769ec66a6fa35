"""``churnformer-evaluate ... campaigns=PATH``: a model's predicted effects of contacting (``churn_uplift_{h}d``,
``spend_uplift_{h}d``) judged on a campaign that went out after its scores were made, against what the random
holdout shows (:mod:`churnformer.evaluation.uplift`): Qini AUUC, the observed effect beside the predicted one, and
the observed effect by decile of predicted uplift. Predictions of a model trained on several offers judge each
contact by its own offer's columns (``schema.per_offer``); ``offer=NAME`` judges one offer's contacts alone."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.campaigns import (
    CONTACTED_AT,
    OFFER,
    TREATED,
    campaign_window,
    check_campaigns,
    load_campaigns,
    one_offer,
)
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, ColumnMapping, load_events
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.window import HorizonGrid, Window, log_end_ns
from churnformer.errors import InputError
from churnformer.evaluation.uplift import judge_effects
from churnformer.schema import CHURN, CHURN_UPLIFT, OBSERVED, SPEND, SPEND_UPLIFT, per_horizon, per_offer


def campaign_outcomes(
    events: pd.DataFrame, campaigns: pd.DataFrame, horizon_days: float, spec: LabelSpec
) -> pd.DataFrame:
    """Per contact: ``customer_id``, ``treated``, ``offer``, and churn, spend and whether the log observes them
    over ``horizon_days`` from its campaign's day."""
    checked = check_campaigns(campaigns, events, log_end_ns(events[TIMESTAMP].to_numpy(dtype="datetime64[ns]")))
    grid = HorizonGrid.of([horizon_days], horizon_days)
    parts = []
    for day in checked.days:
        contacts = checked.on(day)
        ids = contacts[CUSTOMER_ID].to_numpy()
        labels = horizon_labels(events, campaign_window(day, horizon_days), grid, ids, spec, checked.log_end_ns)
        parts.append(
            pd.DataFrame(
                {
                    CUSTOMER_ID: ids,
                    TREATED: contacts[TREATED].to_numpy(),
                    OFFER: contacts[OFFER].to_numpy(),
                    CHURN: labels[per_horizon(CHURN, horizon_days)].to_numpy(),
                    SPEND: labels[per_horizon(SPEND, horizon_days)].to_numpy(),
                    OBSERVED: labels[per_horizon(OBSERVED, horizon_days)].to_numpy(),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def evaluate_campaign(
    predicted: pd.DataFrame,
    campaigns: str | Path,
    events: str | Path,
    cutoff: str,
    horizon_days: float,
    columns: ColumnMapping,
    spec: LabelSpec,
    offer: str | None = None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """The ``uplift_*`` metrics and the deciles (churn as retention, and spend) of the predictions' effects at
    ``horizon_days`` on the contacts of ``campaigns`` made after the predictions' ``cutoff`` whose customers they
    score; the other contacts are left out with a warning, and a contact whose horizon the log does not cover yet
    is not judged. ``offer``: judge that offer's contacts only."""
    columns_needed = [per_horizon(CHURN_UPLIFT, horizon_days), per_horizon(SPEND_UPLIFT, horizon_days)]
    table = one_offer(load_campaigns(campaigns, columns), offer)
    predicted = own_offer_effects(predicted, columns_needed, sorted(pd.unique(table[OFFER]).tolist()))
    log = load_events(events, columns)
    earlier = (table[CONTACTED_AT] < Window.from_cutoff(cutoff).feature_end).to_numpy()
    if earlier.any():  # the predictions' features may already hold what followed them
        logging.getLogger(__name__).warning(
            "%s: %d contact(s) made before the predictions' cutoff %s left out", campaigns, int(earlier.sum()), cutoff
        )
        if earlier.all():
            raise InputError(f"{campaigns}: every contact was made before the predictions' cutoff {cutoff}")
        table = table.loc[~earlier].reset_index(drop=True)
    first_contact = table[CONTACTED_AT].min()
    outcomes = campaign_outcomes(log, table, horizon_days, spec)
    joined = outcomes.merge(predicted, on=[CUSTOMER_ID, OFFER], how="left")
    unscored = joined[columns_needed[0]].isna().to_numpy()
    if unscored.any():
        logging.getLogger(__name__).warning(
            "%s: %d contact(s) of customers the predictions do not score left out", campaigns, int(unscored.sum())
        )
    joined = joined.loc[~unscored & (joined[OBSERVED] > 0).to_numpy()]
    if joined.empty:
        raise InputError(
            f"{campaigns}: no contact of a scored customer whose {horizon_days:g}-day horizon from its campaign "
            f"(from {first_contact.date()}) the log covers"
        )
    effects = {
        "churn": (1.0 - joined[CHURN].to_numpy(np.float64), joined[columns_needed[0]].to_numpy(np.float64)),
        "spend": (joined[SPEND].to_numpy(np.float64), joined[columns_needed[1]].to_numpy(np.float64)),
    }
    judged, deciles = judge_effects(effects, joined[TREATED].to_numpy())
    return {"uplift_contacts": float(len(joined)), **{f"uplift_{k}": v for k, v in judged.items()}}, deciles


def own_offer_effects(predicted: pd.DataFrame, columns: list[str], offers: list[str]) -> pd.DataFrame:
    """Per customer and offer of the campaign: the predicted effects ``columns`` of that offer (``customer_id``,
    ``offer``, ``columns``): a model of several offers' per-offer columns, else the same columns for every
    offer."""
    per_offer_model = any(per_offer(columns[0], offer) in predicted.columns for offer in offers)
    parts = []
    for offer in offers:
        names = [per_offer(column, offer) for column in columns] if per_offer_model else columns
        missing = [name for name in names if name not in predicted.columns]
        if missing:
            raise InputError(
                f"campaigns=...: the predictions have no {missing}: score with a model trained with campaigns of "
                f"offer {offer!r} (churnformer-train data.campaigns=...), or judge another offer (offer=NAME)"
            )
        part = predicted[[CUSTOMER_ID, *names]].set_axis([CUSTOMER_ID, *columns], axis=1)
        parts.append(part.assign(**{OFFER: offer}))
    return pd.concat(parts, ignore_index=True)
