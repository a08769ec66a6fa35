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
from collections.abc import Callable

import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from churnformer.evaluation.metrics import normalized_gini
from churnformer.schema import EXPECTATION, PROBABILITY

JOINT = "joint"


def metric_name(group: str, metric: str, split: str) -> str:
    """Tags are ``group/metric/split`` (``churn/auroc/val``): TensorBoard groups them per head's label."""
    return f"{group}/{metric}/{split}"


class NormalizedGini(Metric):
    """Normalized Gini of expected spend (Wang et al., 2019), accumulated over an epoch."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score", default=[], dist_reduce_fx="cat")
        self.add_state("actual", default=[], dist_reduce_fx="cat")

    def update(self, score: torch.Tensor, actual: torch.Tensor) -> None:
        self.score.append(score.detach())
        self.actual.append(actual.detach())

    def compute(self) -> torch.Tensor:
        """The same numbers as ``churnformer-evaluate`` (ties in the score count as their group average)."""
        actual, score = (dim_zero_cat(t).double().cpu().numpy() for t in (self.actual, self.score))
        return torch.tensor(normalized_gini(actual, score), dtype=torch.float32)


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
        "ece": lambda options: BinaryCalibrationError(n_bins=10, norm="l1", **options),
    },
    EXPECTATION: {
        "mae": lambda options: MeanAbsoluteError(**options),
        "spearman": _spearman,
        "gini": lambda options: NormalizedGini(**options),
    },
}
KIND_METRICS = {kind: tuple(metrics) for kind, metrics in _METRICS.items()}


class EpochMetrics(nn.Module):
    """Per metric group of the model (``groups``: group -> kind, e.g. ``{"churn": "probability", "spend":
    "expectation"}``), the mean loss (weighted by batch size) and the metrics of its kind (:data:`KIND_METRICS`:
    AUROC, PR-AUC (positive = 1), Brier and 10-bin ECE of a probability; MAE, Spearman and normalized Gini of an
    expectation), plus the joint loss; with ``keep_predictions`` every prediction and label, for the figures.

    ``sync=False``: compute on this process's data only (an evaluation that runs on rank 0 alone).
    """

    def __init__(self, split: str, groups: dict[str, str], keep_predictions: bool = False, sync: bool = True) -> None:
        super().__init__()
        self.split = split
        self.groups = dict(groups)
        options = {"sync_on_compute": sync}
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

    @torch.no_grad()
    def update(self, losses: dict[str, torch.Tensor], pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep one batch for the epoch's metrics: its losses (``joint`` and one per group) and per group the
        (prediction, label) at the main horizon; detached, where they are (no copy to the host, no sync)."""
        first = next(iter(pairs.values()))[1]
        size = torch.full((1,), len(first), dtype=torch.float32, device=first.device)
        batch_losses = torch.stack([losses[name].detach().float() for name in self.losses])
        values = [tensor.detach() for group in self.groups for tensor in pairs[group]]
        self._pending.append((batch_losses, size, *values))

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
        for index, (group, kind) in enumerate(self.groups.items()):
            predicted, label = values[2 * index], values[2 * index + 1]
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
        for metric in [*self.losses.values(), *self.metrics.values(), *(self.predictions or {}).values()]:
            metric.reset()
