"""The two-model uplift baseline (T-learner): LightGBM on RFM features at each contact's day, one booster per
arm (sent, held out) for churn and one for spend at a horizon; the predicted effect of contacting is the
difference between the arms' predictions. What a practitioner with an uplift library's meta-learner and the
RFM recipe of :mod:`churnformer.baselines.gbm` would build first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.baselines import history
from churnformer.baselines.gbm import (
    BASE_PARAMS,
    CHURN_PARAMS,
    EARLY_STOPPING_ROUNDS,
    MAX_ROUNDS,
    N_FOLDS,
    SPEND_PARAMS,
    cross_validated_booster,
    rfm_features,
    stratified_folds,
    top_event_types,
)
from churnformer.data.campaigns import campaign_window
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.window import HorizonGrid
from churnformer.schema import CHURN, SPEND, per_horizon


@dataclass(frozen=True)
class ContactRows:
    """Contacts as rows of a tabular learner: RFM features at each contact's day, the arm (1 sent, 0 held
    out), churn and spend over the horizon, and each contact's customer and day."""

    features: np.ndarray
    treated: np.ndarray
    churn: np.ndarray
    spend: np.ndarray
    keys: pd.DataFrame

    @classmethod
    def of(
        cls,
        events: pd.DataFrame,
        contacts: pd.DataFrame,
        days: float,
        event_types: list[str],
        spec: LabelSpec,
        extra: pd.DataFrame | None = None,
    ) -> ContactRows:
        """``contacts`` (``customer_id``, ``contacted_at``, ``treated``): each at its day, as the network
        reads them (features before the day, outcomes from it on). ``extra``: more features per contact
        (``customer_id``, ``day`` and numeric columns), after the RFM ones."""
        parts = []
        grid = HorizonGrid.of([days], days)
        for day, group in contacts.groupby(contacts["contacted_at"].dt.normalize(), sort=True):
            window = campaign_window(day, days)
            ids = np.sort(group[CUSTOMER_ID].to_numpy())
            features = rfm_features(history(events, window), window, ids, event_types).drop(columns=CUSTOMER_ID)
            if extra is not None:
                mine = extra.loc[extra["day"] == day].set_index(CUSTOMER_ID).drop(columns="day")
                features = pd.concat([features, mine.loc[ids].reset_index(drop=True)], axis=1)
            labels = horizon_labels(events, window, grid, ids, spec)
            arms = group.set_index(CUSTOMER_ID)["treated"].loc[ids].to_numpy()
            parts.append(
                (
                    features.to_numpy(np.float64),
                    arms,
                    labels[per_horizon(CHURN, days)].to_numpy(np.float64),
                    labels[per_horizon(SPEND, days)].to_numpy(np.float64),
                    pd.DataFrame({CUSTOMER_ID: ids, "day": day}),
                )
            )
        x, t, churn, spend, keys = zip(*parts, strict=True)
        return cls(np.concatenate(x), np.concatenate(t), np.concatenate(churn), np.concatenate(spend), pd.concat(keys))


def t_learner(
    events: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    days: float,
    seed: int = 0,
    num_threads: int = 2,
    spec: LabelSpec = LabelSpec(),
    extra: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per test contact (``customer_id``, ``day``): ``churn_uplift`` (held-out minus sent predicted churn: the
    drop from contacting) and ``spend_uplift`` (sent minus held-out predicted spend) at ``days``, from boosters
    fitted per arm on the ``train`` contacts (rounds chosen by cross-validation within each arm); ``extra``: more
    features (:meth:`ContactRows.of`)."""
    event_types = top_event_types(events.loc[events[CUSTOMER_ID].isin(train[CUSTOMER_ID]).to_numpy()])
    fitted, scored = (ContactRows.of(events, frame, days, event_types, spec, extra) for frame in (train, test))
    common = {**BASE_PARAMS, "seed": seed, "num_threads": num_threads}
    predicted: dict[tuple[str, int], np.ndarray] = {}
    for arm in (0, 1):
        rows = fitted.treated == arm
        folds = stratified_folds(fitted.churn[rows], N_FOLDS, seed)
        for name, target, params in (("churn", fitted.churn, CHURN_PARAMS), ("spend", fitted.spend, SPEND_PARAMS)):
            booster, _ = cross_validated_booster(
                fitted.features[rows], target[rows], {**common, **params}, folds, MAX_ROUNDS, EARLY_STOPPING_ROUNDS
            )
            predicted[name, arm] = booster.predict(scored.features)
    return scored.keys.assign(
        churn_uplift=predicted["churn", 0] - predicted["churn", 1],
        spend_uplift=predicted["spend", 1] - predicted["spend", 0],
        churn_probability=predicted["churn", 0],
    ).reset_index(drop=True)
