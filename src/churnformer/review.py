"""What a reviewer sees in TensorBoard beyond scalars: per-head chart layout, validation figures,
the churn PR curve, the architecture, and the hyperparameters next to the final metrics."""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.functional.classification import binary_roc

from churnformer.evaluation import decile_means
from churnformer.metrics import metric_name

matplotlib.use("Agg")  # figures are rendered to images, never shown

HEAD_METRICS = {
    "churn": ("loss", "auroc", "pr_auc", "brier", "ece"),
    "spend": ("loss", "mae", "spearman", "gini"),
    "joint": ("loss",),
}
# Knobs shown in the HPARAMS tab and by churnformer-runs (dotted config keys).
HPARAM_KEYS = (
    "seed",
    "data.source",
    "data.cutoff",
    "data.horizon_days",
    "data.batch_size",
    "data.features.max_len",
    "model.network.d_model",
    "model.network.n_layers",
    "model.network.n_heads",
    "model.network.dropout",
    "model.loss.churn",
    "model.loss.spend",
    "model.optimizer.lr",
    "model.optimizer.weight_decay",
    "trainer.max_epochs",
)


def custom_scalar_layout() -> dict[str, dict[str, list[Any]]]:
    """One chart per head and metric with its train and validation curves together."""
    return {
        head: {
            metric: ["Multiline", [metric_name(head, metric, split) for split in ("train", "val")]]
            for metric in metrics
        }
        for head, metrics in HEAD_METRICS.items()
    }


def selected_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The configured values of :data:`HPARAM_KEYS` (missing keys are skipped)."""
    values = {}
    for key in HPARAM_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            values[key] = value if isinstance(value, int | float | bool) else str(value)
    return values


def architecture_text(network: torch.nn.Module) -> str:
    """Markdown: parameter count per top-level block, then the module tree."""
    total = sum(p.numel() for p in network.parameters())
    rows = [f"| {name} | {sum(p.numel() for p in child.parameters()):,} |" for name, child in network.named_children()]
    table = "\n".join(["| block | parameters |", "|---|---|", *rows, f"| **total** | **{total:,}** |"])
    return f"{table}\n\n```\n{network}\n```"


def _calibration_figure(p_churn: np.ndarray, churn: np.ndarray) -> Figure:
    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    bins = np.minimum((p_churn * 10).astype(int), 9)
    counts = np.bincount(bins, minlength=10)
    filled = counts > 0
    predicted = np.bincount(bins, weights=p_churn, minlength=10)[filled] / counts[filled]
    observed = np.bincount(bins, weights=churn, minlength=10)[filled] / counts[filled]
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    axes.plot(predicted, observed, marker="o", label="model")
    axes.set(xlabel="predicted churn probability", ylabel="observed churn rate", title="Calibration (10 bins)")
    axes.legend(loc="upper left")
    return figure


def _roc_figure(p_churn: torch.Tensor, churn: torch.Tensor) -> Figure:
    fpr, tpr, _ = binary_roc(p_churn, churn.long())
    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axes.plot(fpr.numpy(), tpr.numpy())
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title="Churn ROC")
    return figure


def _decile_figure(p_churn: np.ndarray, churn: np.ndarray, expected: np.ndarray, spend: np.ndarray) -> Figure:
    figure = Figure(figsize=(9, 4))
    for axes, (title, predicted, actual) in zip(
        figure.subplots(1, 2),
        (("churn rate by decile", p_churn, churn), ("spend by decile", expected, spend)),
        strict=True,
    ):
        mean_predicted, mean_actual = decile_means(predicted, actual)
        x = np.arange(1, 11)
        axes.bar(x - 0.2, mean_predicted, width=0.4, label="predicted")
        axes.bar(x + 0.2, mean_actual, width=0.4, label="actual")
        axes.set(xlabel="decile of prediction (1 = highest)", title=title, xticks=x)
        axes.legend()
    return figure


def _spend_scatter_figure(expected: np.ndarray, spend: np.ndarray) -> Figure:
    figure = Figure(figsize=(4.5, 4))
    axes = figure.subplots()
    axes.scatter(np.log1p(expected), np.log1p(spend), s=4, alpha=0.3)
    top = float(max(np.log1p(expected).max(initial=0), np.log1p(spend).max(initial=0)))
    axes.plot([0, top], [0, top], linestyle="--", color="grey")
    axes.set(xlabel="log1p(expected spend)", ylabel="log1p(actual spend)", title="Predicted vs actual spend")
    return figure


def log_validation_review(
    writer: SummaryWriter,
    step: int,
    p_churn: torch.Tensor,
    churn: torch.Tensor,
    expected: torch.Tensor,
    spend: torch.Tensor,
) -> None:
    """PR curve and figures of one validation epoch."""
    writer.add_pr_curve("churn/pr_curve", churn.long(), p_churn, step)
    p, c, e, s = (t.double().numpy() for t in (p_churn, churn, expected, spend))
    figures = {
        "churn/calibration": _calibration_figure(p, c),
        "churn/roc": _roc_figure(p_churn, churn),
        "deciles/lift": _decile_figure(p, c, e, s),
        "spend/predicted_vs_actual": _spend_scatter_figure(e, s),
    }
    for tag, figure in figures.items():
        writer.add_figure(tag, figure, step, close=False)
