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

import torch
from torch import nn
from torchmetrics import CatMetric, MeanMetric, Metric, MetricCollection
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from churnformer.evaluation.metrics import normalized_gini

LOSSES = ("joint", "churn", "spend")
# Reported per head: the curves TensorBoard shows and metrics.json holds, as head/metric/split.
HEAD_METRICS = {
    "churn": ("loss", "auroc", "pr_auc", "brier", "ece"),
    "spend": ("loss", "mae", "spearman", "gini"),
    "joint": ("loss",),
}


def metric_name(head: str, metric: str, split: str) -> str:
    """Tags are ``head/metric/split`` (``churn/auroc/val``): TensorBoard groups them per head."""
    return f"{head}/{metric}/{split}"


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


class EpochMetrics(nn.Module):
    """Mean losses (weighted by batch size), churn AUROC, PR-AUC (positive = churn), Brier and 10-bin ECE,
    spend MAE, Spearman and normalized Gini, and (``keep_predictions``) every prediction for the figures.

    ``sync=False``: compute on this process's data only (an evaluation that runs on rank 0 alone).
    """

    def __init__(self, split: str, keep_predictions: bool = False, sync: bool = True) -> None:
        super().__init__()
        self.split = split
        options = {"sync_on_compute": sync}
        with warnings.catch_warnings():  # ranks need every prediction; the buffer is the point, not a surprise
            warnings.filterwarnings("ignore", message="Metric `SpearmanCorrcoef` will save")
            spearman = SpearmanCorrCoef(**options)
        self.losses = nn.ModuleDict({name: MeanMetric(**options) for name in LOSSES})
        self.churn = MetricCollection(
            {
                "auroc": BinaryAUROC(**options),
                "pr_auc": BinaryAveragePrecision(**options),
                "brier": MeanSquaredError(**options),
                "ece": BinaryCalibrationError(n_bins=10, norm="l1", **options),
            }
        )
        self.spend = MetricCollection(
            {"mae": MeanAbsoluteError(**options), "spearman": spearman, "gini": NormalizedGini(**options)}
        )
        self.predictions = (
            nn.ModuleDict({name: CatMetric(**options) for name in ("p_churn", "churn", "expected", "spend")})
            if keep_predictions
            else None
        )
        self._pending: list[tuple[torch.Tensor, ...]] = []

    @torch.no_grad()
    def update(
        self,
        losses: dict[str, torch.Tensor],
        p_churn: torch.Tensor,
        churn: torch.Tensor,
        expected: torch.Tensor,
        spend: torch.Tensor,
    ) -> None:
        """Keep one batch for the epoch's metrics: detached, where it is (no copy to the host, no sync)."""
        size = torch.full((1,), len(churn), dtype=torch.float32, device=churn.device)
        batch_losses = torch.stack([losses[name].detach().float() for name in LOSSES])
        self._pending.append((batch_losses, size, p_churn.detach(), churn, expected.detach(), spend))

    @torch.no_grad()
    def _absorb_pending(self) -> None:
        """Hand the batches kept since the last call to the torchmetrics, in one update each."""
        if not self._pending:
            return
        parts = (torch.cat(batches) for batches in zip(*self._pending, strict=True))
        losses, sizes, p_churn, churn, expected, spend = parts
        self._pending = []
        losses = losses.view(-1, len(LOSSES))
        for index, metric in enumerate(self.losses.values()):
            metric.update(losses[:, index], weight=sizes)
        self.churn.update(p_churn, churn.long())
        self.spend.update(expected, spend)
        if self.predictions is not None:
            for name, values in zip(self.predictions, (p_churn, churn, expected, spend), strict=True):
                self.predictions[name].update(values.float())

    def compute(self) -> dict[str, float]:
        """Every value by ``head/metric/split``, over all ranks (a collective call, see the module docstring)."""
        self._absorb_pending()
        values = {metric_name(name, "loss", self.split): metric.compute() for name, metric in self.losses.items()}
        values |= {metric_name("churn", k, self.split): v for k, v in self.churn.compute().items()}
        values |= {metric_name("spend", k, self.split): v for k, v in self.spend.compute().items()}
        return {name: float(value) for name, value in sorted(values.items())}

    def all_predictions(self) -> tuple[torch.Tensor, ...]:
        """Churn probability, churn label, expected spend and spend of every customer (all ranks)."""
        self._absorb_pending()
        return tuple(metric.compute().cpu() for metric in self.predictions.values())

    def reset(self) -> None:
        self._pending = []
        for metric in [*self.losses.values(), self.churn, self.spend, *(self.predictions or {}).values()]:
            metric.reset()
