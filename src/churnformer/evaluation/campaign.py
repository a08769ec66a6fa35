"""``churnformer-evaluate ... campaigns=PATH``: a model's predicted effects of contacting (``churn_uplift_{h}d``,
``spend_uplift_{h}d``) judged on a campaign that went out after its scores were made, against what the random
holdout shows (:mod:`churnformer.evaluation.uplift`): Qini AUUC, the observed effect beside the predicted one, and
the observed effect by decile of predicted uplift."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.campaigns import CONTACTED_AT, TREATED, campaign_window, check_campaigns, load_campaigns
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, ColumnMapping, load_events
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.window import HorizonGrid, Window, log_end_ns
from churnformer.errors import InputError
from churnformer.evaluation.uplift import judge_effects
from churnformer.schema import CHURN, CHURN_UPLIFT, OBSERVED, SPEND, SPEND_UPLIFT, per_horizon


def campaign_outcomes(
    events: pd.DataFrame, campaigns: pd.DataFrame, horizon_days: float, spec: LabelSpec
) -> pd.DataFrame:
    """Per contact: ``customer_id``, ``treated``, and churn, spend and whether the log observes them over
    ``horizon_days`` from its campaign's day."""
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
) -> tuple[dict[str, float], pd.DataFrame]:
    """The ``uplift_*`` metrics and the deciles (churn as retention, and spend) of the predictions' effects at
    ``horizon_days`` on the contacts of ``campaigns`` made after the predictions' ``cutoff`` whose customers they
    score; the other contacts are left out with a warning, and a contact whose horizon the log does not cover yet
    is not judged."""
    columns_needed = [per_horizon(CHURN_UPLIFT, horizon_days), per_horizon(SPEND_UPLIFT, horizon_days)]
    missing = [column for column in columns_needed if column not in predicted.columns]
    if missing:
        raise InputError(
            f"campaigns=...: the predictions have no {missing}: score with a model trained with campaigns "
            "(churnformer-train data.campaigns=...)"
        )
    log = load_events(events, columns)
    table = load_campaigns(campaigns, columns)
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
    joined = outcomes.merge(predicted[[CUSTOMER_ID, *columns_needed]], on=CUSTOMER_ID, how="left")
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
