"""What a reviewer sees in TensorBoard, laid out so that it can be trusted and compared.

A run's TensorBoard directory holds three runs: ``train`` and ``val`` (Keras' convention: the same tag
names in sibling runs, so every tab overlays training and validation in two colours with a legend), and
the directory itself, which holds what describes the run as a whole: the HPARAMS session (every training knob,
and the metrics of the best checkpoint as ``validation_best/...``), the best epoch's figures and PR curve under
``validation_best/``, the exported (calibrated) model's numbers under ``validation_best/calibrated/``, and the
architecture and config as text. Nothing after training writes into the per-epoch curves; every scalar is at a
training step (an epoch's at the step it ended).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from churnformer.evaluation.figures import horizon_metrics_figure, review_figures
from churnformer.schema import CHURN, SPEND

SPLITS = ("train", "val")
# Per metric group, every validation customer's prediction and label at the main horizon.
Predictions = Mapping[str, tuple[torch.Tensor, torch.Tensor]]
# The best checkpoint's group: after the training curves' groups (TensorBoard orders groups by name).
BEST = "validation_best"
# Where the exported model's numbers go, under BEST: its outputs are calibrated, the network's are not.
CALIBRATED = f"{BEST}/calibrated"
# Image and PR-curve steps TensorBoard keeps per tag: by default 10, so early epochs would vanish.
SAMPLES_PER_PLUGIN = "images=100,pr_curves=100"
PR_CURVE_POINTS = 200

# The knobs a reviewer compares first, in this order, with the names shown for them: the optimizer and its schedule,
# the architecture, the data window. TensorBoard sorts the HPARAMS columns by name (those a run's command line set
# first), so the names carry this order (``001:model.optimizer.lr``). Every other knob that changes training
# follows, in key order (:func:`training_knobs`); churnformer-runs shows these (dotted config keys) by the same names.
HPARAMS = {
    "model.optimizer.lr": "lr",
    "model.optimizer.weight_decay": "weight decay",
    "model.optimizer._target_": "optimizer",
    "model.scheduler.warmup_fraction": "warm-up share",
    "model.scheduler.min_lr_ratio": "final lr ratio",
    "data.batch_size": "batch size",
    "data.batch_tokens": "batch tokens",
    "trainer.max_epochs": "max epochs",
    "trainer.gradient_clip_val": "gradient clipping",
    "seed": "seed",
    "model.network.backbone._target_": "backbone",
    "model.network.d_model": "d_model",
    "model.network.n_layers": "n_layers",
    "model.network.n_heads": "n_heads",
    "model.network.ff_multiplier": "ff multiplier",
    "model.network.dropout": "dropout",
    "model.static_dropout": "static dropout",
    "model.network.wide": "wide path",
    "model.network.fusion.kind": "fusion",
    "model.heads.spend.weight": "spend loss weight",
    "model.heads.survival.weight": "survival loss weight",
    "data.source._target_": "data source",
    "data.cutoff": "cutoff",
    "data.horizon_days": "horizon (days)",
    "data.horizons_days": "horizons (days)",
    "churn_definition": "churn definition",
    "data.features.max_len": "max events",
    "data.rolling_cutoffs.count": "rolling cutoffs",
    "data.rolling_cutoffs.step_days": "rolling cutoff step (days)",
    "data.features.aggregates.enabled": "aggregates",
    "data.stacking.enabled": "stacked trees",
    "pretrain.enabled": "contrastive pretraining",
    "pretrain.freeze": "pretrained encoder frozen",
}
# Where the knobs that change training are: every leaf of these config nodes but those NOT_A_KNOB matches (paths,
# column names, logging and progress, what a value interpolates from elsewhere), and these top-level keys.
KNOB_NODES = ("model", "data", "pretrain", "trainer", "callbacks.early_stopping")
TOP_LEVEL_KNOBS = (
    "seed",
    "churn_definition",
    "decline_threshold",
    "threads",
    "calibrate",
    "calibration_levels",
    "calibration_shapes",
    "calibration_churn_bias",
    "callbacks.model_checkpoint.monitor",
)
NOT_A_KNOB = re.compile(
    r"model\._target_|model\.optimizer\._partial_|data\.source\.(?!_target_$).+|data\.columns\..+"
    r"|data\.(events|customers|path|dataset_dir|seed|churn_definition|decline_threshold)"
    r"|trainer\.(_target_|default_root_dir|log_every_n_steps|use_distributed_sampler|num_sanity_val_steps"
    r"|enable_model_summary|enable_progress_bar|plugins)(\..*)?"
    r"|callbacks\.early_stopping\.(_target_|check_on_train_epoch_end)"
)
# The best checkpoint's validation metrics in the HPARAMS tab, in column order: computed on the network's own
# outputs (not calibrated), as the per-epoch curves are.
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
BEST_METRIC_LABEL = "val, best epoch, uncalibrated"


def training_knobs(cfg: DictConfig) -> dict[str, Any]:
    """Every knob of the composed config that changes what training does (:data:`KNOB_NODES`,
    :data:`TOP_LEVEL_KNOBS`), by dotted key, resolved; the leading ones (:data:`HPARAMS`) first, in that order,
    then the rest in key order. Keys whose value is null are left out (HPARAMS has no null)."""
    keys = [key for key in TOP_LEVEL_KNOBS if OmegaConf.select(cfg, key, default=None) is not None]
    for node in KNOB_NODES:
        found = OmegaConf.select(cfg, node, default=None)
        if found is not None:
            keys += [key for key in _leaf_keys(OmegaConf.to_container(found, resolve=False), node)]
    keys = [key for key in dict.fromkeys(keys) if not NOT_A_KNOB.fullmatch(key)]
    ordered = [key for key in HPARAMS if key in keys] + sorted(key for key in keys if key not in HPARAMS)
    values = {key: OmegaConf.select(cfg, key, default=None) for key in ordered}
    return {key: value for key, value in values.items() if value is not None}


def _leaf_keys(node: Any, prefix: str) -> list[str]:
    """The dotted keys of a config container's leaves (a list is a leaf: one knob)."""
    if not isinstance(node, dict):
        return [prefix]
    return [key for name, child in node.items() for key in _leaf_keys(child, f"{prefix}.{name}")]


def knob_name(key: str) -> str:
    """A knob's name as HPARAMS shows it: the leading ones' own, else the key without ``model.``/``data.``."""
    return HPARAMS.get(key) or key.removeprefix("model.").removeprefix("data.")


@dataclass(frozen=True)
class BestCheckpoint:
    """Where the best checkpoint sits in the run: its epoch, the training step it was taken at (where its numbers
    are logged, beside the curves), and the run's last epoch."""

    epoch: int
    step: int
    last_epoch: int


class SplitRunsLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing ``<head>/<metric>/train`` and ``.../val`` into the sibling runs
    ``train`` and ``val`` under the same tag ``<head>/<metric>``; other scalars (learning rate, the step-level
    training loss, the epoch) go to ``train``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers: dict[str, SummaryWriter] = {}
        self._staged: tuple[Predictions, int] | None = None

    def stage_review(self, predictions: Predictions, epoch: int) -> None:
        """The validation epoch's predictions; their figures are written with the epoch's metrics, at the epoch's
        number (an image's slider reads epochs)."""
        self._staged = (predictions, epoch)

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
            predictions, epoch = self._staged
            log_review(self.writer("val"), epoch, predictions)
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
    best: BestCheckpoint,
    predictions: Predictions,
) -> None:
    """The best checkpoint's validation metrics (``validation_best/<head>/<metric>``, at the training step it was
    taken at), once, in the run's own directory: never in the per-epoch curves; its figures and PR curve at its
    epoch, unless it is the last epoch, whose figures the ``val`` run already holds (the Text tab says so)."""
    for name, value in metrics.items():
        head, _, split = name.rpartition("/")
        if split == "val":
            writer.add_scalar(f"{BEST}/{head}", value, best.step)
    writer.add_scalar(f"{BEST}/epoch", best.epoch, best.step)
    if best.epoch == best.last_epoch:
        writer.add_text(
            f"{BEST}/figures",
            f"The best checkpoint is the last epoch's ({best.epoch}): its figures and PR curve are the `val` run's "
            f"at epoch {best.epoch}.",
            best.step,
        )
    else:
        log_review(writer, best.epoch, predictions, prefix=f"{BEST}/")


def log_text_gains(writer: SummaryWriter, gains: Mapping[str, float], best: BestCheckpoint) -> None:
    """``validation_best/calibrated/text_gain/<metric>``: the exported model's validation metric minus the same
    with texts blanked."""
    for name, value in gains.items():
        writer.add_scalar(f"{CALIBRATED}/text_gain/{name.removeprefix('text_gain_')}", value, best.step)


def log_horizons(
    writer: SummaryWriter, metrics: Mapping[str, float], figures: Mapping[str, Any], best: BestCheckpoint
) -> None:
    """The exported (calibrated) model's validation metrics over the horizon grid, once: a table (Text) and a
    figure of each metric against the horizon (``validation_best/calibrated/horizons``), the survival summaries
    (``validation_best/calibrated/survival/...``, at the best checkpoint's step) and the figures over the grid."""
    by_horizon: dict[str, dict[float, float]] = {}
    for name, value in metrics.items():
        match = re.fullmatch(r"(.+)_([\d.]+)d", name)
        if match:
            by_horizon.setdefault(match[1], {})[float(match[2])] = value
        else:
            writer.add_scalar(f"{CALIBRATED}/survival/{name.removeprefix('survival_')}", value, best.step)
    if by_horizon:
        writer.add_text(f"{CALIBRATED}/horizons", horizons_table(by_horizon), best.step)
        writer.add_figure(f"{CALIBRATED}/horizons", horizon_metrics_figure(by_horizon), best.epoch, close=True)
    for tag, figure in figures.items():
        writer.add_figure(f"{CALIBRATED}/{tag}", figure, best.epoch, close=True)
    writer.flush()


def horizons_table(by_horizon: Mapping[str, Mapping[float, float]]) -> str:
    """Markdown: a row per horizon, a column per metric (the exported model's, calibrated)."""
    names = list(by_horizon)
    days = sorted({d for values in by_horizon.values() for d in values})
    rows = [
        "The exported model (calibrated) on the validation customers, by horizon (days after the cutoff):",
        "",
        "| horizon | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for d in days:
        cells = [f"{by_horizon[name][d]:.4f}" if d in by_horizon[name] else "" for name in names]
        rows.append(f"| {d:g} days | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def log_drivers(writer: SummaryWriter, summary: Any, figure: Any, best: BestCheckpoint) -> None:
    """The driver groups of the exported model over the validation customers, once: the figure
    (``validation_best/calibrated/drivers``) and the table as text."""
    writer.add_figure(f"{CALIBRATED}/drivers", figure, best.epoch, close=True)
    columns = list(summary.columns)
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for values in summary.itertuples(index=False):
        rows.append("| " + " | ".join(v if isinstance(v, str) else f"{v:.4g}" for v in values) + " |")
    writer.add_text(f"{CALIBRATED}/drivers", "\n".join(rows), best.step)
    writer.flush()


def log_hparams(
    writer: SummaryWriter,
    cfg: DictConfig,
    trial: str,
    command_line_keys: Iterable[str],
    sweep_space: Mapping[str, str],
) -> None:
    """The HPARAMS session of this run: an experiment config (every training knob with its display name and type,
    the domains of swept knobs, the final metrics in column order) and the run's values, named ``trial``.

    TensorBoard takes the experiment config of one run for all runs it shows, so ``differs`` (which knobs
    come first, shown by default) cannot be computed across runs here: it marks the knobs set on the command
    line, which is what tells apart runs that are compared, or in a sweep the knobs it varies. ``sweep_space``:
    an Optuna sweep's ``hydra.sweeper.params`` (their domains are shown), empty outside a sweep.
    """
    values = {key: hparam_value(value) for key, value in training_knobs(cfg).items()}
    names = {key: f"{position:03d}:{key}" for position, key in enumerate(values, start=1)}
    swept = swept_domains(sweep_space)
    # In a sweep every trial shares the command line: only the swept knobs tell the trials apart.
    given = set() if swept else set(command_line_keys)
    infos = []
    for key, value in values.items():
        differs = key in given or key in swept
        info = api_pb2.HParamInfo(name=names[key], display_name=knob_name(key), differs=differs)
        info.type = {str: api_pb2.DATA_TYPE_STRING, bool: api_pb2.DATA_TYPE_BOOL}.get(
            type(value), api_pb2.DATA_TYPE_FLOAT64
        )
        if key in swept and isinstance(value, float):  # numeric domains only (swept_domains reads numbers)
            domain = swept[key]
            if isinstance(domain, tuple):
                info.domain_interval.min_value, info.domain_interval.max_value = domain
            else:
                info.domain_discrete.extend(domain)
        infos.append(info)
    infos.sort(key=lambda info: (not info.differs, info.name))  # as TensorBoard orders them
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=f"{BEST}/{tag}"), display_name=f"{name} ({BEST_METRIC_LABEL})")
        for tag, name in BEST_METRICS.items()
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    start = plugin_data_pb2.SessionStartInfo(group_name=trial, start_time_secs=time.time())
    for key, value in values.items():
        if isinstance(value, str):
            start.hparams[names[key]].string_value = value
        elif isinstance(value, bool):
            start.hparams[names[key]].bool_value = value
        else:
            start.hparams[names[key]].number_value = value
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


def hparam_value(value: Any) -> str | float | bool:
    """A knob's value as HPARAMS holds it: numbers (integers too: a range filter and a numeric sort across runs)
    as numbers, booleans as booleans, a class path by its class name, a list as its text."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, ListConfig | list | tuple):
        return str(list(value))
    return class_name(str(value))


def class_name(text: str) -> str:
    """A class path (``churnformer.modeling.backbones.Transformer``) by its class name; other text as it is."""
    return text.rsplit(".", 1)[-1] if re.fullmatch(r"[\w.]+\.[A-Z]\w*", text) else text


def display_value(value: Any) -> str | float | None:
    """A knob's value as churnformer-runs' table shows it: real numbers as numbers; integers as text (256, not
    256.0); a class path by its class name."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return value
    return class_name(str(value))


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
