"""The training job (``churnformer-train``, ``churnformer.api.train``), in the order it runs:

compose the data, model and trainer -> fit -> evaluate the best checkpoint on every validation customer ->
record the run -> calibrate -> export -> report -> (quantize) -> score the training log -> one summary line.

Under DDP every rank fits; only rank 0 goes on after the fit, and nothing after it is a collective.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from churnformer.artifacts.calibration import describe as describe_calibration
from churnformer.artifacts.calibration import fit_calibration
from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.export import export_checkpoint
from churnformer.artifacts.quantize import quantize_checked
from churnformer.calibration import Calibration
from churnformer.console import silence_known_noise
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.labels import ChurnDefinition
from churnformer.data.sources import EventLogFiles, TrainingSetDirectory
from churnformer.defaults import serving_defaults
from churnformer.errors import ConfigError
from churnformer.evaluation.figures import drivers_figure
from churnformer.evaluation.report import (
    MIN_CUSTOMERS,
    align,
    compute_metrics,
    horizon_figures,
    horizon_metrics,
    report_figures,
    write_report,
)
from churnformer.evaluation.slices import slice_metrics
from churnformer.model_card import CARD_KNOBS, build_card, card_markdown
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import (
    META_CAMPAIGNS,
    META_COLUMNS,
    META_HORIZON_DAYS,
    META_HORIZONS,
    META_MODEL_CARD,
    META_TRAINED_CUTOFF,
    RUN_CALIBRATION,
    RUN_CONFIG,
    RUN_EVALUATION,
    RUN_INFO,
    RUN_METRICS,
    RUN_MODEL,
    RUN_MODEL_CARD,
    RUN_PREDICTIONS,
)
from churnformer.serving.explain import driver_summary
from churnformer.serving.input_profile import add_profiles, input_profile
from churnformer.serving.model_file import add_metadata
from churnformer.serving.output import describe, write_result
from churnformer.serving.predictor import AS_LOADED, Predictor, ScoringResult
from churnformer.serving.settings import ScoringSettings
from churnformer.training.contacts import evaluate_contacts
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from churnformer.training.module import ChurnFormerModule, evaluate_network
from churnformer.training.pretraining import PretrainSettings, pretrain
from churnformer.training.review import (
    SAMPLES_PER_PLUGIN,
    BestCheckpoint,
    SplitRunsLogger,
    log_best,
    log_drivers,
    log_horizons,
    log_hparams,
    log_text_gains,
)
from churnformer.training.run_info import run_info

# How the job scores with the model it exported: churnformer-predict's defaults, without a progress bar.
SCORING = ScoringSettings.defaults(progress=False)
# Validation customers explained for the training-time view of the driver groups.
EXPLAINED_VALIDATION_CUSTOMERS = 20_000
# Validation examples gathered at a time for the reference input profile (a validation set on disk is never
# gathered whole).
PROFILE_EXAMPLES = 50_000
# Contrastive pretraining's mean loss per pretraining epoch (pretrain.enabled).
PRETRAIN_LOSS = "pretrain/contrastive_loss"
# The validation metrics whose gain from the text branch the report and TensorBoard show.
TEXT_GAIN_METRICS = ("churn_auc", "churn_pr_auc", "spend_gini")


@dataclass(frozen=True)
class Fitted:
    """What the fit left: the best checkpoint (by the monitored metric), its epoch and training step, and the
    epochs run."""

    best_checkpoint: Path
    best_epoch: int
    best_step: int
    epochs: int

    @property
    def best(self) -> BestCheckpoint:
        """Where TensorBoard puts the best checkpoint's numbers and figures."""
        return BestCheckpoint(self.best_epoch, self.best_step, self.epochs - 1)


def train(
    cfg: DictConfig,
    events: pd.DataFrame | None = None,
    customers: pd.DataFrame | None = None,
    campaigns: pd.DataFrame | None = None,
) -> dict[str, float]:
    """Run one training job; return the validation metrics of the best checkpoint (empty on DDP ranks > 0).

    ``events``/``customers``/``campaigns`` DataFrames (the Python API) replace the configured source's files.
    """
    started = time.perf_counter()
    silence_known_noise()
    check_config(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.callbacks or {}).values() if c and "_target_" in c]
    resume_from = resolve_ckpt_path(cfg.ckpt_path, callbacks)  # before any data is read: a wrong path fails fast
    datamodule = build_datamodule(cfg, events, customers, campaigns=campaigns)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, callbacks)
    if not resume_from:  # a resumed run's checkpoint already holds the pretrained weights
        pretrain_encoder(cfg, module, datamodule, trainer)
    fit(trainer, module, datamodule, resume_from)
    if not trainer.is_global_zero:
        return {}
    fitted = fit_result(trainer)
    run_dir = Path(cfg.paths.output_dir)
    network, _ = load_checkpoint(fitted.best_checkpoint)
    grid = datamodule.data.grid
    metrics, predictions = evaluate_network(network, datamodule.validation_loader(), list(grid.days), grid.main_index)
    metrics |= evaluate_contacts(network, datamodule, run_dir / RUN_EVALUATION)  # trained with campaigns only
    record_run(cfg, run_dir, metrics, datamodule)
    review_run(cfg, trainer, metrics, fitted, predictions, run_dir)
    calibration = calibrate(cfg, network, datamodule, run_dir) if cfg.calibrate else None
    scored = None
    if cfg.export:
        model = export_model(fitted.best_checkpoint, run_dir)
        result = score_training_log(model, datamodule)
        drivers = explain_validation(model, datamodule) if cfg.explain_validation else None
        joined, gains = report_validation(model, result, datamodule, run_dir / RUN_EVALUATION, drivers)
        review_horizons(trainer, joined, fitted.best, drivers, gains)
        card = model_card(
            cfg, run_dir, fitted, datamodule, describe_calibration(network, calibration) if calibration else None
        )
        (run_dir / RUN_MODEL_CARD).write_text(card_markdown(card))
        add_metadata(model, {META_MODEL_CARD: json.dumps(card)})
        if cfg.quantize:
            quantize(model, datamodule)
        if cfg.predict_after_training:
            scored = write_predictions(result, run_dir / RUN_PREDICTIONS)
    elapsed = time.perf_counter() - started
    print(summary_line(fitted, metrics, scored, elapsed, run_dir, datamodule.settings.labels.churn))
    print(f"TensorBoard: tensorboard --logdir {tensorboard_root(run_dir)} --samples_per_plugin={SAMPLES_PER_PLUGIN}")
    return metrics


def check_config(cfg: DictConfig) -> None:
    """Settings that cannot run, refused before any data is read."""
    if cfg.calibration_levels not in {"all", "validation"}:
        raise ConfigError(f"calibration_levels must be all or validation, got {cfg.calibration_levels!r}")
    if cfg.calibration_shapes not in {"all", "validation"}:
        raise ConfigError(f"calibration_shapes must be all or validation, got {cfg.calibration_shapes!r}")
    if cfg.calibration_shapes == "all" and cfg.calibration_levels != "all":
        raise ConfigError("calibration_shapes=all needs calibration_levels=all (the training customers' outputs)")
    if cfg.calibration_churn_bias not in {"per_interval", "shared"}:
        raise ConfigError(f"calibration_churn_bias must be per_interval or shared, got {cfg.calibration_churn_bias!r}")
    if cfg.quantize and not cfg.export:
        raise ConfigError("quantize=true needs export=true: the int8 model is made from the exported one")
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="") or "")
    if multirun and strategy.startswith("ddp"):
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run under Hydra multirun (-m): Lightning's DDP launcher would "
            "re-run the whole sweep in each child process (Lightning issue 11300). Sweep on one device, or "
            "launch each DDP run on its own without -m."
        )
    if "TORCHELASTIC_RUN_ID" in os.environ and HydraConfig.initialized():  # started by torchrun
        overrides = HydraConfig.get().overrides
        given = {o.split("=", 1)[0].lstrip("+~") for o in [*overrides.task, *overrides.hydra]}
        if not given & {"hydra.run.dir", "paths.output_dir"}:
            raise ConfigError(
                "launched by torchrun (or another launcher that starts every rank): pass hydra.run.dir=DIR so "
                "that all ranks write the same run directory (each would otherwise name its own by the time)"
            )


def build_datamodule(
    cfg: DictConfig,
    events: pd.DataFrame | None,
    customers: pd.DataFrame | None,
    setup: bool = True,
    campaigns: pd.DataFrame | None = None,
) -> ChurnDataModule:
    """The configured source (or the API's DataFrames, with the configured column mapping), set up. A featurized
    dataset (``data=dataset``) brings its own featurization settings (cutoff, horizons, features)."""
    source_config = None
    if events is not None:
        source = EventLogFiles(events, customers, OmegaConf.to_container(cfg.data.columns), campaigns)
    else:
        source = hydra.utils.instantiate(cfg.data.source)
        source_config = OmegaConf.to_container(cfg.data.source, resolve=True)
    settings = DataSettings.of(cfg.data)
    if isinstance(source, TrainingSetDirectory):
        settings = settings.from_dataset(source.manifest)
    datamodule = ChurnDataModule(source, settings, Path(cfg.paths.output_dir), source_config)
    datamodule.prepare_data()
    if setup:
        datamodule.setup("fit")
    return datamodule


def build_module(cfg: DictConfig, datamodule: ChurnDataModule) -> ChurnFormerModule:
    """The LightningModule, with the fitted featurizer, the label base rates and what the export stores."""
    export_metadata = {
        META_HORIZON_DAYS: datamodule.window.horizon_days,
        META_HORIZONS: list(datamodule.data.grid.days),
        META_TRAINED_CUTOFF: str(datamodule.window),
        META_COLUMNS: asdict(datamodule.source.columns),
        **datamodule.settings.labels.churn.to_metadata(),
    }
    network = OmegaConf.to_container(cfg.model.network, resolve=True)
    if datamodule.data.campaigns is not None:  # learned from campaigns: the heads also predict each customer contacted
        export_metadata[META_CAMPAIGNS] = datamodule.data.campaigns
        network["contact_offers"] = list(datamodule.data.campaigns["offers"])
    return hydra.utils.instantiate(
        cfg.model,
        _recursive_=False,
        _convert_="all",
        network=network,
        featurizer_json=datamodule.data.featurizer.to_json(),
        label_stats=datamodule.data.label_stats(),
        export_metadata=export_metadata,
        aggregate_quantiles=datamodule.data.aggregate_quantiles(),
        stacked_trees=datamodule.stacked_trees.to_state() if datamodule.stacked_trees else None,
        freeze_sequence_encoder=bool(cfg.pretrain.enabled and cfg.pretrain.freeze),
    )


def pretrain_encoder(
    cfg: DictConfig, module: ChurnFormerModule, datamodule: ChurnDataModule, trainer: pl.Trainer
) -> None:
    """``pretrain.enabled``: contrastive pretraining of the network's sequence encoder on the training histories
    (every rolling cutoff), its loss per epoch in TensorBoard (``pretrain/contrastive_loss``, step = epoch).
    Every DDP rank runs it alike (same seed, same data), so the ranks start the fit from the same weights."""
    settings = PretrainSettings(**cfg.pretrain)
    if not settings.enabled:
        return

    def log_epoch(epoch: int, loss: float) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({PRETRAIN_LOSS: loss}, step=epoch)

    data = datamodule.data
    module.network.to(trainer.strategy.root_device)  # on the run's device (a rank's GPU), as the fit will be
    result = pretrain(module.network, data.sequences, data.train_rows, settings, cfg.seed, log_epoch)
    if trainer.is_global_zero:
        print(result.describe())


def build_trainer(cfg: DictConfig, callbacks: list[Any]) -> pl.Trainer:
    """Trainer with the configured loggers and ``callbacks``; ``trainer.precision=auto`` is bf16-mixed on a GPU
    and 32-true on CPU."""
    loggers = [hydra.utils.instantiate(c) for c in (cfg.logger or {}).values() if c and "_target_" in c]
    precision = cfg.trainer.precision
    if precision == "auto":
        on_gpu = cfg.trainer.accelerator in {"gpu", "cuda"} or (
            cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
        )
        precision = "bf16-mixed" if on_gpu else "32-true"
    return hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, precision=precision)


def fit(trainer: pl.Trainer, module: ChurnFormerModule, datamodule: ChurnDataModule, resume_from: str | None) -> None:
    """Lightning's fit, resumed from the checkpoint ``resume_from`` when given."""
    if resume_from:
        print(f"resuming from {resume_from}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)


def fit_result(trainer: pl.Trainer) -> Fitted:
    """The best checkpoint of the callback that monitors a metric (the one keeping ``last.ckpt`` current
    during an epoch monitors nothing) and the epoch it was taken at."""
    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    if not monitored or not monitored[0].best_model_path:
        raise ConfigError("no best checkpoint was written: keep callbacks.model_checkpoint (it monitors a metric)")
    best = Path(monitored[0].best_model_path)
    saved = torch.load(best, map_location="cpu", weights_only=True)
    # Lightning logs an epoch's metrics at the index of its last step: one below the steps taken by then.
    return Fitted(best, int(saved["epoch"]), int(saved["global_step"]) - 1, trainer.current_epoch)


def resolve_ckpt_path(ckpt_path: str | None, callbacks: list[Any]) -> str | None:
    """The checkpoint to resume from: ``last`` means ``last.ckpt`` in the run's checkpoint directory.

    Resolved here rather than by Lightning, whose ``"last"`` warns and silently starts from scratch when
    there is nothing to resume (a wrong ``hydra.run.dir`` would then retrain without anyone noticing).
    """
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        if "://" not in ckpt_path and not Path(ckpt_path).is_file():  # remote URLs are Lightning's to check
            raise ConfigError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(ckpt_path)
    directories = sorted({Path(c.dirpath) for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath})
    found = [d / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt" for d in directories]
    found = [path for path in found if path.is_file()]
    if not found:
        where = ", ".join(str(d) for d in directories) or "no checkpoint directory is configured"
        raise ConfigError(
            f"ckpt_path=last: nothing to resume, no last.ckpt in {where}. Pass the interrupted run's directory "
            "as hydra.run.dir (or paths.output_dir), or drop ckpt_path to start a new run."
        )
    return str(found[0])


def record_run(cfg: DictConfig, run_dir: Path, metrics: dict[str, float], datamodule: ChurnDataModule) -> None:
    """config.yaml (resolved), metrics.json (the best checkpoint's validation metrics) and run_info.json."""
    (run_dir / RUN_CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / RUN_METRICS).write_text(json.dumps(metrics, indent=2))
    info = run_info(
        cfg.seed, str(datamodule.settings.cutoff), datamodule.window.horizon_days, *datamodule.source.origins()
    )
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2))


def review_run(
    cfg: DictConfig,
    trainer: pl.Trainer,
    metrics: dict[str, float],
    fitted: Fitted,
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]],
    run_dir: Path,
) -> None:
    """TensorBoard: the best checkpoint's metrics and figures (``validation_best/``), the HPARAMS session, the
    run's config and record as text; none of it in the per-epoch curves."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, SplitRunsLogger)), None)
    if logger is None:
        return
    writer = logger.experiment
    log_best(writer, metrics, fitted.best, predictions)
    hydra_config = HydraConfig.get() if HydraConfig.initialized() else None
    given = [o.split("=", 1)[0].lstrip("+~") for o in hydra_config.overrides.task] if hydra_config else []
    sweep = dict(hydra_config.sweeper.get("params") or {}) if hydra_config else {}
    trial = run_dir.name if not hydra_config or hydra_config.mode != RunMode.MULTIRUN else f"trial {run_dir.name}"
    log_hparams(writer, cfg, trial, given, sweep)
    writer.add_text("run/config", f"```yaml\n{OmegaConf.to_yaml(cfg, resolve=True)}\n```")
    writer.add_text("run/info", f"```json\n{(run_dir / RUN_INFO).read_text()}\n```")
    writer.flush()


def calibrate(cfg: DictConfig, network: ChurnFormer, datamodule: ChurnDataModule, run_dir: Path) -> Calibration:
    """Platt churn scaling and the spend power law (calibration.json), carried into the export."""
    levels = datamodule.main_training_loader() if cfg.calibration_levels == "all" else None
    calibration = fit_calibration(
        network,
        datamodule.validation_loader(),
        datamodule.data.grid.main_index,
        levels,
        shared_churn_bias=cfg.calibration_churn_bias == "shared",
        shapes_from_all=cfg.calibration_shapes == "all",
    )
    data = datamodule.data  # the reference population's input too, for churnformer-monitor reference=<model>
    calibration.reference_inputs = {}
    for start in range(0, len(data.val_rows), PROFILE_EXAMPLES):  # counts add up: a part at a time in memory
        part = data.sequences.subset(data.val_rows[start : start + PROFILE_EXAMPLES])
        add_profiles(calibration.reference_inputs, input_profile(part, data.featurizer))
    calibration.save(run_dir / RUN_CALIBRATION)
    print(
        f"calibration (shapes from {cfg.calibration_shapes}, levels from {cfg.calibration_levels} customers): "
        f"{describe_calibration(network, calibration)}"
    )
    if calibration.fallback:
        print(
            f"warning: calibration left at the identity ({'; '.join(calibration.fallback)}): the network is not "
            "fit to calibrate from; train longer (trainer.max_epochs) or on more customers",
            file=sys.stderr,
        )
    return calibration


def export_model(best_checkpoint: Path, run_dir: Path) -> Path:
    """model.onnx from the best checkpoint with the run's calibration, in churnformer-export's default form."""
    fused = serving_defaults("export")["fused_attention"]
    return export_checkpoint(best_checkpoint, run_dir / RUN_MODEL, calibration=None, fused_attention=fused)


def score_training_log(model: Path, datamodule: ChurnDataModule) -> ScoringResult:
    """Every customer of the training log scored at the cutoff by the exported model: the end-to-end check."""
    events, customers = datamodule.load_frames()
    return Predictor(model, SCORING).score(events, datamodule.settings.cutoff, customers, AS_LOADED)


def explain_validation(model: Path, datamodule: ChurnDataModule) -> pd.DataFrame | None:
    """The exported model's driver groups over the validation customers (``churnformer-predict``'s default
    explanation settings), at most :data:`EXPLAINED_VALIDATION_CUSTOMERS` of them (a seeded sample: the mean
    effects need no more, and a large log's validation set would cost a dozen scorings of itself):
    :func:`churnformer.serving.explain.driver_summary`; None when there are too few."""
    labels = datamodule.data.label_frame(datamodule.data.val_rows)
    if len(labels) < MIN_CUSTOMERS:
        return None
    if len(labels) > EXPLAINED_VALIDATION_CUSTOMERS:
        labels = labels.sample(EXPLAINED_VALIDATION_CUSTOMERS, random_state=datamodule.settings.seed)
    events, customers = datamodule.load_frames()
    events = events.loc[events[CUSTOMER_ID].isin(labels[CUSTOMER_ID]).to_numpy()]
    predictor = Predictor(model, SCORING.explaining(True))
    result = predictor.score(events, datamodule.settings.cutoff, customers, AS_LOADED)
    return driver_summary(result.effects, result.predictions)


def report_validation(
    model: Path,
    result: ScoringResult,
    datamodule: ChurnDataModule,
    out_dir: Path,
    drivers: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame | None, dict[str, float]]:
    """churnformer-evaluate's report of the exported model on the validation customers, at the main horizon
    and over the grid, with the driver groups' figure and table (``drivers.csv``) when given, and for a model
    that reads text, the text branch's gains (:func:`text_gains`); returns the predictions joined with the
    labels (None when there are too few customers) and the gains. Calibration was fitted on these
    customers, so its calibration metrics here are optimistic."""
    labels = datamodule.data.label_frame(datamodule.data.val_rows)
    if len(labels) < MIN_CUSTOMERS:
        return None, {}
    predictions = result.predictions[result.predictions[CUSTOMER_ID].isin(labels[CUSTOMER_ID])]
    joined = align(predictions, labels)
    metrics = compute_metrics(joined)
    slices = slice_metrics(joined, datamodule.customers, predictions)
    gains = text_gains(model, datamodule, labels, metrics)
    figures = report_figures(joined)
    if drivers is not None:
        figures["drivers"] = drivers_figure(drivers)
        out_dir.mkdir(parents=True, exist_ok=True)
        drivers.to_csv(out_dir / "drivers.csv", index=False)
    write_report(metrics | gains, figures, out_dir, "Validation customers", slices)
    return joined, gains


def model_card(
    cfg: DictConfig, run_dir: Path, fitted: Fitted, datamodule: ChurnDataModule, calibration: str | None
) -> dict[str, Any]:
    """The run's model card (:mod:`churnformer.model_card`) from what the run wrote: the exported model's
    validation report (``evaluation/metrics.json``, ``slices.csv``) and ``run_info.json``."""
    evaluation = run_dir / RUN_EVALUATION
    metrics_file, slices_file = evaluation / "metrics.json", evaluation / "slices.csv"
    validation = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    slices = pd.read_csv(slices_file, dtype={"value": str}) if slices_file.is_file() else None
    info = json.loads((run_dir / RUN_INFO).read_text())
    data = datamodule.data
    kept = list(data.grid.days)
    configured = [float(h) for h in datamodule.settings.horizons_days]
    events_file = (info["data"].get("events") or {}).get("path")
    return build_card(
        version=info["churnformer"],
        run={
            "seed": cfg.seed,
            "git_commit": info["git_commit"],
            "epochs": fitted.epochs,
            "best_epoch": fitted.best_epoch,
        },
        task={
            "churn_definition": str(datamodule.settings.labels.churn),
            "cutoff": str(datamodule.settings.cutoff),
            "horizon_days": datamodule.window.horizon_days,
            "horizons_days": kept,
            "horizons_dropped": [h for h in configured if h not in kept],
        },
        data={
            "log": datamodule.log_facts,
            "events_file": events_file,
            "training_customers": int(pd.unique(data.sequences.customer_ids[data.main_train_rows]).size),
            "training_examples": len(data.train_rows),
            "validation_customers": len(data.val_rows),
            "rolling_cutoffs": int(datamodule.settings.rolling_cutoffs["count"]),
            "campaigns": data.campaigns,
        },
        knobs={key: display_knob(OmegaConf.select(cfg, key, default=None)) for key in CARD_KNOBS},
        validation={name: value for name, value in validation.items() if value is not None},
        calibration=calibration,
        slices=slices,
    )


def display_knob(value: Any) -> Any:
    """A config value as plain JSON: a list as a list, a mapping (``model.heads``) by its keys."""
    if isinstance(value, DictConfig):
        return list(value.keys())
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def text_gains(
    model: Path, datamodule: ChurnDataModule, labels: pd.DataFrame, metrics: dict[str, float]
) -> dict[str, float]:
    """What the text branch adds: the validation metrics of :data:`TEXT_GAIN_METRICS` minus the same model's on
    the same customers with every text blanked (``text_gain_churn_auc``, ...). Empty for a model without text."""
    columns = datamodule.data.featurizer.text_columns
    if not columns:
        return {}
    events, customers = datamodule.load_frames()
    events = events.loc[events[CUSTOMER_ID].isin(labels[CUSTOMER_ID]).to_numpy()].assign(**dict.fromkeys(columns))
    blank = Predictor(model, SCORING).score(events, datamodule.settings.cutoff, customers, AS_LOADED)
    without = compute_metrics(align(blank.predictions, labels))
    return {f"text_gain_{name}": metrics[name] - without[name] for name in TEXT_GAIN_METRICS}


def review_horizons(
    trainer: pl.Trainer,
    joined: pd.DataFrame | None,
    best: BestCheckpoint,
    drivers: pd.DataFrame | None = None,
    text_gains: dict[str, float] | None = None,
) -> None:
    """TensorBoard: the exported (calibrated) model's validation metrics by horizon, the figures over the grid,
    the driver groups (figure and table) and the text branch's gains (``validation_best/calibrated/...``)."""
    logger = next((lg for lg in trainer.loggers if isinstance(lg, SplitRunsLogger)), None)
    if logger is None or joined is None:
        return
    log_text_gains(logger.experiment, text_gains or {}, best)
    log_horizons(logger.experiment, horizon_metrics(joined), horizon_figures(joined), best)
    if drivers is not None:
        log_drivers(logger.experiment, drivers, drivers_figure(drivers), best)


def quantize(model: Path, datamodule: ChurnDataModule) -> None:
    """model.int8.onnx, kept only if the validation churn AUC holds (see churnformer.artifacts.quantize)."""
    events, customers = datamodule.load_frames()
    labels = datamodule.data.label_frame(datamodule.data.val_rows)
    quantize_checked(model, events, customers, datamodule.settings.cutoff, labels)


def write_predictions(result: ScoringResult, output: Path) -> ScoringResult:
    write_result(result, output)
    print(describe(result.summary))
    return result


def summary_line(
    fitted: Fitted,
    metrics: dict[str, float],
    scored: ScoringResult | None,
    seconds: float,
    run_dir: Path,
    definition: ChurnDefinition,
) -> str:
    """One line, as predict's: what was trained, how good the best checkpoint is, where the run is."""
    churn = f"churn ({definition})" if definition.is_decline else "churn"
    quality = (
        f"{churn} AUROC {metrics['churn/auroc/val']:.4f}, PR-AUC {metrics['churn/pr_auc/val']:.4f}; "
        f"spend Gini {metrics['spend/gini/val']:.4f}"
    )
    scoring = f"; {scored.summary.customers_scored:,} customers scored" if scored is not None else ""
    return (
        f"trained {fitted.epochs} epochs in {seconds:.0f} s; best checkpoint (epoch {fitted.best_epoch}) on the "
        f"validation customers: {quality}{scoring}; run: {run_dir}"
    )


def tensorboard_root(output_dir: Path) -> Path:
    """The directory to open: the whole sweep under ``-m`` (all trials side by side), else the run."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return output_dir


def configured_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a Hydra sweeper optimizes (``optimized_metric``), if configured."""
    name = cfg.optimized_metric
    if name and metrics and name not in metrics:
        raise ConfigError(f"optimized_metric={name!r} is not a metric; choose one of {sorted(metrics)}")
    return metrics.get(name) if name else None
