"""Fitting the boosted trees stacked under the network (``data.stacking``; the model file's side is
:mod:`churnformer.artifacts.stacked_trees`).

The network must learn from tree predictions like the ones it will get at scoring time, not from trees that
saw each training customer's own label: every training example gets the out-of-fold prediction of boosters
fitted without its customer (folds by customer, so a customer's examples at the rolling cutoffs share a
fold); validation examples, like scored customers, get the boosters fitted on every training example. The
number of rounds is chosen by early-stopped cross-validation over the same folds (LightGBM's ``cv``, whose
fold boosters give the out-of-fold predictions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from churnformer.artifacts.stacked_trees import STACKED_COLUMNS, StackedTrees, stacking_extra
from churnformer.baselines.gbm import BASE_PARAMS, CHURN_PARAMS, SPEND_PARAMS, cross_validated_booster
from churnformer.data.training_set import TrainingSet
from churnformer.errors import ConfigError
from churnformer.schema import CHURN, CUSTOMER_AGG, OBSERVED, SPEND


@dataclass(frozen=True)
class StackingSettings:
    """``data.stacking`` (defaults in ``conf/data/settings/default.yaml``)."""

    enabled: bool = False
    folds: int = 5
    max_rounds: int = 2000
    early_stopping_rounds: int = 50
    params: dict[str, Any] = field(default_factory=dict)  # LightGBM parameters over the baseline's


def stack_trees(data: TrainingSet, settings: StackingSettings, seed: int) -> StackedTrees | None:
    """Fit the boosters on ``data``'s training examples and append their columns (:data:`STACKED_COLUMNS`) to
    every example's aggregates, in place; None (nothing changed) when stacking is off."""
    if not settings.enabled:
        return None
    if data.featurizer.aggregates is None:
        raise ConfigError(
            "data.stacking.enabled=true stacks trees on the aggregates: set data.features.aggregates.enabled=true"
        )
    for module in ("lightgbm", "onnxmltools"):  # both before any tree is fitted: the export converts them
        stacking_extra(module)
    if settings.folds < 2:
        raise ConfigError(f"data.stacking.folds={settings.folds}: at least 2 folds give out-of-fold predictions")
    aggregates = data.sequences.customers[CUSTOMER_AGG]
    main = data.grid.main_index
    # Examples whose main horizon the log observes (a late campaign's contacts may not be: data.campaigns).
    rows = data.train_rows[np.asarray(data.by_horizon(OBSERVED)[data.train_rows, main]) > 0]
    fold = _customer_folds(data.sequences.customer_ids[rows], settings.folds, seed)
    folds = [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(settings.folds)]
    common = {**BASE_PARAMS, "seed": seed, **settings.params}  # params may set num_threads (default: every core)
    stacked = np.zeros((len(aggregates), len(STACKED_COLUMNS)), dtype=np.float32)
    texts = []
    for column, (label, params) in enumerate(((CHURN, CHURN_PARAMS), (SPEND, SPEND_PARAMS))):
        target = data.by_horizon(label)[rows, main].astype(np.float64)
        full, out_of_fold = _fit(aggregates[rows], target, {**common, **params}, folds, settings, raw=label == SPEND)
        texts.append(full.model_to_string())
        everyone = full.predict(aggregates.astype(np.float64), raw_score=label == SPEND)
        stacked[:, column] = everyone
        stacked[rows, column] = out_of_fold
    data.sequences.customers[CUSTOMER_AGG] = np.concatenate([aggregates, stacked], axis=1)
    return StackedTrees(churn=texts[0], spend=texts[1], n_features=aggregates.shape[1])


def _customer_folds(customer_ids: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Each example's fold: its customer's, drawn at random by ``seed`` (a customer's examples share one)."""
    codes, unique = pd.factorize(pd.Series(customer_ids), sort=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of_customer = np.empty(len(unique), dtype=np.int64)
    fold_of_customer[order] = np.arange(len(unique)) % n_folds
    return fold_of_customer[codes]


def _fit(
    features: np.ndarray,
    target: np.ndarray,
    params: dict[str, Any],
    folds: list[tuple[np.ndarray, np.ndarray]],
    settings: StackingSettings,
    raw: bool,
) -> tuple[Any, np.ndarray]:
    """The booster on every row (rounds chosen by cross-validation) and each row's out-of-fold prediction."""
    values = features.astype(np.float64)
    full, folded = cross_validated_booster(
        values, target, params, folds, settings.max_rounds, settings.early_stopping_rounds
    )
    out_of_fold = np.zeros(len(values))
    for booster, (_, held_out) in zip(folded.boosters, folds, strict=True):
        out_of_fold[held_out] = booster.predict(values[held_out], num_iteration=folded.best_iteration, raw_score=raw)
    return full, out_of_fold
