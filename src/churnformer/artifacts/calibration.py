"""Post-hoc calibration fitted after training and carried into the exported model: each head fits its own
parameters, in order (what they are and how they are fitted is in the head's module), and the reference
percentiles of the calibrated outputs are taken over the validation customers.

Shapes (temperatures, powers) and levels (biases, scales) can be fitted on every labelled customer at the
cutoff (training ones too) instead of the validation customers alone: a validation split of a few thousand
customers pins a churn rate only to about +-1 point, and a temperature no better (docs/guide/model.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from churnformer.calibration import Calibration
from churnformer.modeling.heads.base import CalibrationFit, FitData
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import LABELS_BY_HORIZON, PERCENTILE_LEVELS, by_horizon

Batches = Iterable[dict[str, torch.Tensor]]


@torch.no_grad()
def collect(network: ChurnFormer, batches: Batches) -> FitData:
    """Every head's raw outputs and the labels at every horizon over ``batches``, float64."""
    network.eval()
    raw: dict[str, dict[str, list[torch.Tensor]]] = {}
    labels: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        for head, outputs in network(batch).items():
            for name, values in outputs.items():
                raw.setdefault(head, {}).setdefault(name, []).append(values.double())
        for label in LABELS_BY_HORIZON:
            if by_horizon(label) in batch:
                labels.setdefault(label, []).append(batch[by_horizon(label)].double())
    return FitData(
        {head: {name: torch.cat(parts) for name, parts in outputs.items()} for head, outputs in raw.items()},
        {label: torch.cat(parts) for label, parts in labels.items()},
    )


def fit_calibration(
    network: ChurnFormer,
    batches: Batches,
    main: int,
    level_batches: Batches | None = None,
    shared_churn_bias: bool = False,
    shapes_from_all: bool = False,
) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders); ``main`` is the index of
    the main horizon in the grid.

    ``level_batches``: more labelled customers at the same cutoff (the training customers): the levels are
    fitted on validation and these together. ``shared_churn_bias``: one churn bias for every interval of the
    grid instead of one each. ``shapes_from_all``: the shapes too are fitted on both (a head may keep a shape
    on validation alone where its training customers mislead, as the decline head's temperature does).

    A head whose fit falls outside its sane ranges is left at the identity, and ``fallback`` says why.
    """
    validation = collect(network, batches)
    everyone = validation.concat(collect(network, level_batches)) if level_batches is not None else None
    fit = CalibrationFit(network.heads, validation, everyone, main, shapes_from_all, shared_churn_bias)
    for name, head in network.heads.items():
        fit.fitted[name] = head.fit_calibration(fit)
    predicted = network.heads.predict(validation.raw, fit.fitted, main, extras=True)
    outputs = network.heads.main_outputs(predicted, main)
    levels = torch.tensor(PERCENTILE_LEVELS, dtype=torch.float64)
    percentiles = {column: torch.quantile(values, levels).tolist() for column, values in outputs.items()}
    return Calibration(heads=fit.fitted, percentiles=percentiles, fallback=fit.fallback)


def describe(network: ChurnFormer, calibration: Calibration) -> str:
    """The calibration in words, head by head, and what was left at the identity and why."""
    kept = "; ".join(head.describe(calibration.heads[name]) for name, head in network.heads.items())
    return kept + (f" (identity instead: {'; '.join(calibration.fallback)})" if calibration.fallback else "")
