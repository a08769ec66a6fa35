"""What one split (train or validation) reports per epoch, as torchmetrics accumulated over the epoch.

Under DDP every rank holds its share of the batches; :meth:`EpochMetrics.compute` gathers the states of all
ranks, so the numbers are those of the whole split. It is a collective call: every rank must make it at the
same point (the LightningModule's epoch-end hooks), never from code only rank 0 runs (a progress bar, a
logger), which is how a DDP run hangs.

A step costs a few list appends: :meth:`EpochMetrics.update` keeps the batch's detached tensors where they
are (on the device, no host sync), and the torchmetrics see the whole epoch at once when it is computed.
Updating ten metric objects per step was per-step Python overhead of the kind that leaves a GPU idle.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from churnformer.evaluation.metrics import expected_calibration_error, normalized_gini, roc_auc
from churnformer.schema import EXPECTATION, PROBABILITY, horizon_name

JOINT = "joint"
HORIZONS = "horizons"


def metric_name(group: str, metric: str, split: str) -> str:
    """Tags are ``group/metric/split`` (``churn/auroc/val``): TensorBoard groups them per head's label."""
    return f"{group}/{metric}/{split}"


def horizon_metric_name(group: str, metric: str, days: float, split: str) -> str:
    """``horizons/churn_auc/30d/val``: one horizon's metric, a curve over the epochs like the others."""
    return f"{HORIZONS}/{group}_{metric}/{horizon_name(days)}/{split}"


class NumpyMetric(Metric):
    """A metric of ``churnformer.evaluation.metrics`` (``fn(predicted, actual)``), accumulated over an epoch and
    computed on every prediction at once: the numbers ``churnformer-evaluate`` and ``metrics.json`` give, by one
    definition."""

    full_state_update = False

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], float], **kwargs) -> None:
        super().__init__(**kwargs)
        self.fn = fn
        self.add_state("predicted", default=[], dist_reduce_fx="cat")
        self.add_state("actual", default=[], dist_reduce_fx="cat")

    def update(self, predicted: torch.Tensor, actual: torch.Tensor) -> None:
        self.predicted.append(predicted.detach())
        self.actual.append(actual.detach())

    def compute(self) -> torch.Tensor:
        predicted, actual = (dim_zero_cat(t).double().cpu().numpy() for t in (self.predicted, self.actual))
        return torch.tensor(self.fn(predicted, actual), dtype=torch.float32)


# Per horizon of the grid, what judges a head's prediction there, by its kind, over the customers whose horizon
# window is observed: fn(predicted, actual), the definitions of churnformer.evaluation.metrics.
HORIZON_METRICS: dict[str, dict[str, Callable[[np.ndarray, np.ndarray], float]]] = {
    PROBABILITY: {
        "auc": lambda p, y: roc_auc(y, p),
        "ece": expected_calibration_error,
    },
    EXPECTATION: {"gini": lambda p, y: normalized_gini(y, p)},
}


class HorizonMetric(Metric):
    """A head's :data:`HORIZON_METRICS` at every horizon, accumulated over an epoch: (metrics, horizons), NaN
    where a horizon has no observed customer (or one class only)."""

    full_state_update = False

    def __init__(self, kind: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.functions = list(HORIZON_METRICS[kind].values())
        for name in ("predicted", "actual", "observed"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, predicted: torch.Tensor, actual: torch.Tensor, observed: torch.Tensor) -> None:
        self.predicted.append(predicted.detach())
        self.actual.append(actual.detach())
        self.observed.append(observed.detach())

    def compute(self) -> torch.Tensor:
        predicted, actual, observed = (
            dim_zero_cat(t).double().cpu().numpy() for t in (self.predicted, self.actual, self.observed)
        )
        values = np.full((len(self.functions), predicted.shape[1]), np.nan)
        for k in range(predicted.shape[1]):
            seen = observed[:, k] > 0
            if seen.any():
                values[:, k] = [fn(predicted[seen, k], actual[seen, k]) for fn in self.functions]
        return torch.tensor(values, dtype=torch.float32)


def _spearman(options: dict[str, bool]) -> SpearmanCorrCoef:
    with warnings.catch_warnings():  # ranks need every prediction; the buffer is the point, not a surprise
        warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save")
        return SpearmanCorrCoef(**options)


# What judges a head's prediction at the main horizon, by its kind (churnformer.schema): the curves TensorBoard
# shows and metrics.json holds, as <group>/<metric>/<split>, beside <group>/loss/<split> and joint/loss/<split>.
_METRICS: dict[str, dict[str, Callable[[dict[str, bool]], Metric]]] = {
    PROBABILITY: {
        "auroc": lambda options: BinaryAUROC(**options),
        "pr_auc": lambda options: BinaryAveragePrecision(**options),
        "brier": lambda options: MeanSquaredError(**options),
        "ece": lambda options: NumpyMetric(expected_calibration_error, **options),
    },
    EXPECTATION: {
        "mae": lambda options: MeanAbsoluteError(**options),
        "spearman": _spearman,
        "gini": lambda options: NumpyMetric(lambda p, y: normalized_gini(y, p), **options),
    },
}
KIND_METRICS = {kind: tuple(metrics) for kind, metrics in _METRICS.items()}


class EpochMetrics(nn.Module):
    """Per metric group of the model (``groups``: group -> kind, e.g. ``{"churn": "probability", "spend":
    "expectation"}``), the mean loss (weighted by batch size) and the metrics of its kind (:data:`KIND_METRICS`:
    AUROC, PR-AUC (positive = 1), Brier and 10-bin ECE of a probability; MAE, Spearman and normalized Gini of an
    expectation), plus the joint loss; with ``keep_predictions`` every prediction and label, for the figures.

    ``main``: the index of the main horizon, where the per-group metrics are taken. ``horizons``: the grid's
    horizons (days): then also each group's :data:`HORIZON_METRICS` at every horizon, as
    ``horizons/<group>_<metric>/<h>d/<split>``. ``sync=False``: compute on this process's data only (an evaluation
    that runs on rank 0 alone).
    """

    def __init__(
        self,
        split: str,
        groups: dict[str, str],
        main: int = 0,
        keep_predictions: bool = False,
        sync: bool = True,
        horizons: Sequence[float] = (),
    ) -> None:
        super().__init__()
        self.split = split
        self.main = main
        self.groups = dict(groups)
        self.horizons = list(horizons)
        options = {"sync_on_compute": sync}
        self.by_horizon = nn.ModuleDict(
            {group: HorizonMetric(kind, **options) for group, kind in self.groups.items()} if self.horizons else {}
        )
        self.losses = nn.ModuleDict({name: MeanMetric(**options) for name in [JOINT, *self.groups]})
        self.metrics = nn.ModuleDict(
            {
                group: MetricCollection({name: make(options) for name, make in _METRICS[kind].items()})
                for group, kind in self.groups.items()
            }
        )
        self.predictions = (
            nn.ModuleDict(
                {f"{group}_{part}": CatMetric(**options) for group in self.groups for part in ("predicted", "label")}
            )
            if keep_predictions
            else None
        )
        self._pending: list[tuple[torch.Tensor, ...]] = []
        # The predictions kept for the metrics other than the losses: every sample_every-th example of the epoch
        # (set per epoch by the LightningModule from the epoch's size), so their memory does not grow with it.
        self.sample_every = 1
        self._seen = 0
        self._running: torch.Tensor | None = None  # the epoch's (joint loss x size, size) sums so far

    @torch.no_grad()
    def update(
        self,
        losses: dict[str, torch.Tensor],
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
        observed: torch.Tensor | None = None,
    ) -> None:
        """Keep one batch for the epoch's metrics: its losses (``joint`` and one per group) and per group the
        (prediction, label) at every horizon, (B, K), with ``observed`` (B, K) where the horizons are kept;
        detached, where they are (no copy to the host, no sync)."""
        first = next(iter(pairs.values()))[1]
        size = torch.full((1,), len(first), dtype=torch.float32, device=first.device)
        batch_losses = torch.stack([losses[name].detach().float() for name in self.losses])
        kept = self._sampled_rows(len(first), first.device)
        values = [tensor.detach()[kept] for group in self.groups for tensor in pairs[group]]
        horizons = [observed.detach()[kept]] if self.horizons and observed is not None else []
        self._pending.append((batch_losses, size, *values, *horizons))
        running = torch.stack([batch_losses[0] * size[0], size[0]])
        self._running = running if self._running is None else self._running + running

    def _sampled_rows(self, batch: int, device: torch.device) -> torch.Tensor | slice:
        """The rows of the next batch that the metrics keep: every ``sample_every``-th example of the epoch,
        counted across batches (all of them by default)."""
        first = -self._seen % self.sample_every
        self._seen += batch
        if self.sample_every == 1:
            return slice(None)
        return torch.arange(first, batch, self.sample_every, device=device)

    @torch.no_grad()
    def running_loss(self) -> torch.Tensor:
        """The joint loss's mean over this process's batches of the epoch so far, weighted by batch size (the
        epoch's mean as it builds up), from running sums: no pass over the epoch's batches."""
        return self._running[0] / self._running[1]

    @torch.no_grad()
    def _absorb_pending(self) -> None:
        """Hand the batches kept since the last call to the torchmetrics, in one update each."""
        if not self._pending:
            return
        losses, sizes, *values = (torch.cat(batches) for batches in zip(*self._pending, strict=True))
        self._pending = []
        losses = losses.view(-1, len(self.losses))
        for index, metric in enumerate(self.losses.values()):
            metric.update(losses[:, index], weight=sizes)
        observed = values[2 * len(self.groups)] if len(values) > 2 * len(self.groups) else None
        for index, (group, kind) in enumerate(self.groups.items()):
            every_horizon, every_label = values[2 * index], values[2 * index + 1]
            if observed is not None:
                self.by_horizon[group].update(every_horizon, every_label, observed)
            predicted, label = every_horizon[:, self.main], every_label[:, self.main]
            self.metrics[group].update(predicted, label.long() if kind == PROBABILITY else label)
            if self.predictions is not None:
                self.predictions[f"{group}_predicted"].update(predicted.float())
                self.predictions[f"{group}_label"].update(label.float())

    def compute(self) -> dict[str, float]:
        """Every value by ``group/metric/split``, over all ranks (a collective call, see the module docstring)."""
        self._absorb_pending()
        values = {metric_name(name, "loss", self.split): metric.compute() for name, metric in self.losses.items()}
        for group, collection in self.metrics.items():
            values |= {metric_name(group, k, self.split): v for k, v in collection.compute().items()}
        for group, metric in self.by_horizon.items():
            names = HORIZON_METRICS[self.groups[group]]
            for row, name in zip(metric.compute(), names, strict=True):
                for days, value in zip(self.horizons, row, strict=True):
                    if not torch.isnan(value):  # a horizon no customer of this split observes has no number
                        values[horizon_metric_name(group, name, days, self.split)] = value
        return {name: float(value) for name, value in sorted(values.items())}

    def all_predictions(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per group, every customer's prediction and label (all ranks)."""
        self._absorb_pending()
        return {
            group: tuple(self.predictions[f"{group}_{part}"].compute().cpu() for part in ("predicted", "label"))
            for group in self.groups
        }

    def reset(self) -> None:
        self._pending = []
        self._seen = 0
        self._running = None
        kept = [
            *self.losses.values(),
            *self.metrics.values(),
            *self.by_horizon.values(),
            *(self.predictions or {}).values(),
        ]
        for metric in kept:
            metric.reset()
