"""What a reviewer sees in TensorBoard, laid out so that it can be trusted and compared.

A run's TensorBoard directory holds three runs: ``train`` and ``val`` (Keras' convention: the same tag
names in sibling runs, so every tab overlays training and validation in two colours with a legend), and
the directory itself, which holds what describes the run as a whole: the HPARAMS session (the knobs, and
the metrics of the best checkpoint as ``best/...``), the best epoch's figures and PR curve under ``best/``,
and the architecture and config as text. Nothing after training writes into the per-epoch curves.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from churnformer.evaluation.figures import review_figures
from churnformer.schema import CHURN, SPEND

SPLITS = ("train", "val")
# Per metric group, every validation customer's prediction and label at the main horizon.
Predictions = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
BEST = "best"
# Image and PR-curve steps TensorBoard keeps per tag: by default 10, so early epochs would vanish.
SAMPLES_PER_PLUGIN = "images=100,pr_curves=100"
PR_CURVE_POINTS = 200

# Knobs in the HPARAMS tab and in churnformer-runs (dotted config keys), with the names shown for them.
HPARAMS = {
    "model.optimizer.lr": "lr",
    "model.network.d_model": "d_model",
    "model.network.n_layers": "n_layers",
    "model.network.dropout": "dropout",
    "model.network.n_heads": "n_heads",
    "model.static_dropout": "static dropout",
    "model.network.backbone._target_": "backbone",
    "model.network.wide": "wide path",
    "model.heads.spend.weight": "spend loss weight",
    "model.heads.survival.weight": "survival loss weight",
    "model.optimizer.weight_decay": "weight decay",
    "data.source._target_": "data source",
    "data.cutoff": "cutoff",
    "data.horizon_days": "horizon (days)",
    "churn_definition": "churn definition",
    "data.batch_size": "batch size",
    "data.batch_tokens": "batch tokens",
    "data.features.max_len": "max events",
    "data.rolling_cutoffs.count": "rolling cutoffs",
    "data.features.aggregates.enabled": "aggregates",
    "model.network.fusion.kind": "fusion",
    "data.stacking.enabled": "stacked trees",
    "pretrain.enabled": "contrastive pretraining",
    "pretrain.freeze": "pretrained encoder frozen",
    "trainer.max_epochs": "max epochs",
    "seed": "seed",
}
# Final metrics in the HPARAMS tab, in column order (TensorBoard shows the first five until more are ticked).
BEST_METRICS = {
    "churn/auroc": "churn AUROC",
    "spend/gini": "spend Gini",
    "churn/pr_auc": "churn PR-AUC",
    "spend/spearman": "spend Spearman",
    "churn/ece": "churn ECE",
    "churn/brier": "churn Brier",
    "spend/mae": "spend MAE",
    "joint/loss": "joint loss",
    "churn/loss": "churn loss",
    "spend/loss": "spend loss",
}


class SplitRunsLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing ``<head>/<metric>/train`` and ``.../val`` into the sibling runs
    ``train`` and ``val`` under the same tag ``<head>/<metric>``; other scalars (learning rate, the step-level
    training loss, the epoch) go to ``train``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers: dict[str, SummaryWriter] = {}
        self._staged: Predictions | None = None

    def stage_review(self, predictions: Predictions) -> None:
        """The validation epoch's predictions; their figures are written with the epoch's metrics, at the step
        Lightning logs those at."""
        self._staged = predictions

    def writer(self, run: str) -> SummaryWriter:
        """The writer of the ``train`` or ``val`` run (created on first use)."""
        if run not in self._writers:
            self._writers[run] = SummaryWriter(str(Path(self.log_dir) / run))
        return self._writers[run]

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            head, _, split = name.rpartition("/")
            run, tag = (split, head) if split in SPLITS else ("train", name)
            self.writer(run).add_scalar(tag, float(value), step)
        if self._staged is not None and any(name.endswith("/val") for name in metrics):
            log_review(self.writer("val"), step, self._staged)
            self._staged = None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._writers.values():
            writer.flush()


def architecture_text(network: torch.nn.Module) -> str:
    """Markdown: parameter count per top-level block, then the module tree."""
    total = sum(p.numel() for p in network.parameters())
    rows = [f"| {name} | {sum(p.numel() for p in child.parameters()):,} |" for name, child in network.named_children()]
    table = "\n".join(["| block | parameters |", "|---|---|", *rows, f"| **total** | **{total:,}** |"])
    return f"{table}\n\n```\n{network}\n```"


def log_review(writer: SummaryWriter, step: int, predictions: Predictions, prefix: str = "") -> None:
    """The churn PR curve and the figures of one population (a validation epoch, or the best checkpoint) from
    its churn and spend predictions and labels."""
    p, c, e, s = (t.double().numpy() for group in (CHURN, SPEND) for t in predictions[group])
    log_pr_curve(writer, f"{prefix}churn/pr_curve", p, c, step)
    for tag, figure in review_figures(p, c, e, s).items():
        writer.add_figure(prefix + tag, figure, step, close=True)


def log_pr_curve(writer: SummaryWriter, tag: str, probability: np.ndarray, label: np.ndarray, step: int) -> None:
    """Churn PR curve (positive = churn) at thresholds on the quantiles of the predictions: where most
    probabilities sit close to 1, evenly spaced thresholds would start the curve far from recall 0."""
    thresholds = np.unique(np.quantile(probability, np.linspace(0, 1, PR_CURVE_POINTS)))
    positive = label == 1
    predicted = probability[None, :] >= thresholds[:, None]  # (thresholds, customers)
    tp = (predicted & positive).sum(1).astype(np.float64)
    fp = (predicted & ~positive).sum(1).astype(np.float64)
    fn, tn = positive.sum() - tp, (~positive).sum() - fp
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(positive.sum(), 1)
    writer.add_pr_curve_raw(tag, tp, fp, tn, fn, precision, recall, step, num_thresholds=len(thresholds))


def log_best(
    writer: SummaryWriter,
    metrics: Mapping[str, float],
    epoch: int,
    predictions: Predictions,
) -> None:
    """The best checkpoint's validation metrics (``best/<head>/<metric>``, at its epoch), figures and PR curve,
    once, in the run's own directory: never in the per-epoch curves."""
    for name, value in metrics.items():
        head, _, split = name.rpartition("/")
        if split == "val":
            writer.add_scalar(f"{BEST}/{head}", value, epoch)
    writer.add_scalar(f"{BEST}/epoch", epoch, epoch)
    log_review(writer, epoch, predictions, prefix=f"{BEST}/")


def log_text_gains(writer: SummaryWriter, gains: Mapping[str, float], epoch: int) -> None:
    """``best/text_gain/<metric>``: the exported model's validation metric minus the same with texts blanked."""
    for name, value in gains.items():
        writer.add_scalar(f"{BEST}/text_gain/{name.removeprefix('text_gain_')}", value, epoch)


def log_horizons(writer: SummaryWriter, metrics: Mapping[str, float], figures: Mapping[str, Any], epoch: int) -> None:
    """The exported model's validation metrics over the horizon grid, once: ``best/horizons/<metric>`` with the
    horizon in days as the step (so each chart reads as the metric against the horizon), the survival
    summaries (``best/survival/...``) and the figures at the best epoch."""
    for name, value in metrics.items():
        by_horizon = re.fullmatch(r"(.+)_([\d.]+)d", name)
        if by_horizon:
            writer.add_scalar(f"{BEST}/horizons/{by_horizon[1]}", value, round(float(by_horizon[2])))
        else:
            writer.add_scalar(f"{BEST}/survival/{name.removeprefix('survival_')}", value, epoch)
    for tag, figure in figures.items():
        writer.add_figure(f"{BEST}/{tag}", figure, epoch, close=True)
    writer.flush()


def log_drivers(writer: SummaryWriter, summary: Any, figure: Any, epoch: int) -> None:
    """The driver groups of the exported model over the validation customers, once: the figure
    (``best/drivers``) and the table as text."""
    writer.add_figure(f"{BEST}/drivers", figure, epoch, close=True)
    columns = list(summary.columns)
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for values in summary.itertuples(index=False):
        rows.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.4g}" for v in values) + " |")
    writer.add_text(f"{BEST}/drivers", "\n".join(rows), epoch)
    writer.flush()


def log_hparams(
    writer: SummaryWriter,
    cfg: DictConfig,
    trial: str,
    command_line_keys: Iterable[str],
    sweep_space: Mapping[str, str],
) -> None:
    """The HPARAMS session of this run: an experiment config (display names, types, domains of swept knobs,
    the final metrics in column order) and the run's values, named ``trial``.

    TensorBoard takes the experiment config of one run for all runs it shows, so ``differs`` (which knobs
    come first, shown by default) cannot be computed across runs here: it marks the knobs set on the command
    line, which is what tells apart runs that are compared, or in a sweep the knobs it varies. ``sweep_space``:
    an Optuna sweep's ``hydra.sweeper.params`` (their domains are shown), empty outside a sweep.
    """
    values = {key: display_value(OmegaConf.select(cfg, key, default=None)) for key in HPARAMS}
    values = {key: value for key, value in values.items() if value is not None}
    swept = swept_domains(sweep_space)
    # In a sweep every trial shares the command line: only the swept knobs tell the trials apart.
    given = set() if swept else set(command_line_keys)
    infos = []
    for key, value in values.items():
        info = api_pb2.HParamInfo(name=key, display_name=HPARAMS[key], differs=key in given or key in swept)
        info.type = api_pb2.DATA_TYPE_STRING if isinstance(value, str) else api_pb2.DATA_TYPE_FLOAT64
        if key in swept:
            domain = swept[key]
            if isinstance(domain, tuple):
                info.domain_interval.min_value, info.domain_interval.max_value = domain
            else:
                info.domain_discrete.extend(
                    display_value(choice) if isinstance(value, str) else choice for choice in domain
                )
        infos.append(info)
    infos.sort(key=lambda info: not info.differs)  # stable: the order of HPARAMS within each group
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"{BEST}/{tag}"), display_name=f"{name} (best)")
        for tag, name in BEST_METRICS.items()
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    start = plugin_data_pb2.SessionStartInfo(group_name=trial, start_time_secs=time.time())
    for key, value in values.items():
        if isinstance(value, str):
            start.hparams[key].string_value = value
        else:
            start.hparams[key].number_value = value
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    for tag, data in (
        (hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        (hparams_metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
        (hparams_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end)),
    ):
        summary = summary_pb2.Summary()
        data.version = hparams_metadata.PLUGIN_DATA_VERSION
        summary.value.add(
            tag=tag, metadata=hparams_metadata.create_summary_metadata(data), tensor=hparams_metadata.NULL_TENSOR
        )
        writer.file_writer.add_summary(summary)


def display_value(value: Any) -> str | float | None:
    """A knob's value as HPARAMS shows it: real numbers as numbers; integers as text, since TensorBoard's one
    numeric type would show 256 as "256.00" (they are choices such as widths and depths anyway); a class
    path by its class name."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return value
    text = str(value)
    return text.rsplit(".", 1)[-1] if re.fullmatch(r"[\w.]+\.[A-Z]\w*", text) else text


def swept_domains(sweep_space: Mapping[str, str]) -> dict[str, tuple[float, float] | list[int | float]]:
    """An Optuna search space (``hydra.sweeper.params``): ``interval(a, b)`` as (a, b), ``choice(...)`` as
    its values."""
    domains: dict[str, tuple[float, float] | list[int | float]] = {}
    for key, spec in sweep_space.items():
        tokens = re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", str(spec))
        numbers = [int(t) if re.fullmatch(r"-?\d+", t) else float(t) for t in tokens]
        if "interval" in str(spec) and len(numbers) == 2:
            domains[key] = (float(numbers[0]), float(numbers[1]))
        elif "choice" in str(spec) and numbers:
            domains[key] = numbers
    return domains
