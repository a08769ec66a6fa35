"""The training job: compose config -> data, model, trainer -> fit -> validate best -> export -> score."""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO

from churnformer.calibration import fit_calibration
from churnformer.console import silence_known_noise
from churnformer.data.events import CUSTOMER_ID
from churnformer.datamodule import ChurnDataModule
from churnformer.errors import ConfigError
from churnformer.evaluation import MIN_CUSTOMERS, align, compute_metrics, report_figures, write_report
from churnformer.export import export_checkpoint
from churnformer.module import ChurnFormerModule
from churnformer.quantize import quantize_checked
from churnformer.review import selected_hparams
from churnformer.run_info import run_info
from churnformer.schema import META_COLUMNS, META_HORIZON_DAYS, META_TRAINED_CUTOFF, RUN_CALIBRATION
from churnformer.scoring import Predictor, describe, write_result


def _instantiate_all(section: DictConfig | None) -> list[Any]:
    return [hydra.utils.instantiate(c) for c in (section or {}).values() if c is not None and "_target_" in c]


def train(
    cfg: DictConfig, events: pd.DataFrame | None = None, customers: pd.DataFrame | None = None
) -> dict[str, float]:
    """Run one training job; return the final validation metrics of the best checkpoint.

    ``events``/``customers`` DataFrames (the Python API) replace the paths in ``cfg.data``.
    """
    silence_known_noise()
    refuse_ddp_under_multirun(cfg)
    levels_from = calibration_levels(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.get("threads") or torch.get_num_threads())
    frames = {k: v for k, v in {"events": events, "customers": customers}.items() if v is not None}
    datamodule: ChurnDataModule = hydra.utils.instantiate(cfg.data, **frames)
    datamodule.prepare_data()
    datamodule.setup("fit")
    export_metadata = {
        META_HORIZON_DAYS: datamodule.window.horizon_days,
        META_TRAINED_CUTOFF: str(datamodule.window),
        META_COLUMNS: asdict(datamodule.columns),
    }
    model: ChurnFormerModule = hydra.utils.instantiate(
        cfg.model,
        _recursive_=False,
        _convert_="all",
        featurizer_json=datamodule.featurizer.to_json(),
        label_stats=asdict(datamodule.label_stats()),
        export_metadata=export_metadata,
    )
    callbacks = _instantiate_all(cfg.get("callbacks"))
    resume_from = resolve_ckpt_path(cfg.get("ckpt_path"), callbacks)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=_instantiate_all(cfg.get("logger"))
    )
    if resume_from:
        print(f"resuming from {resume_from}")
    with warnings.catch_warnings():
        # Lightning warns that a mid-epoch resume replays the epoch; ours does not (ChurnDataModule.state_dict).
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    best = best_checkpoint(trainer)
    validated = trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    metrics = {k: float(v) for k, v in sorted(validated[0].items())}
    if not trainer.is_global_zero:
        return metrics

    output_dir = Path(cfg.paths.output_dir)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    info = run_info(cfg.seed, str(cfg.data.cutoff), datamodule.window.horizon_days, *datamodule.sources())
    (output_dir / "run_info.json").write_text(json.dumps(info, indent=2))
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            # HPARAMS tab: the run's knobs next to its final metrics (own tags, so curves stay clean).
            logger.log_hyperparams(selected_hparams(cfg), {f"hparams/{k}": v for k, v in metrics.items()})
            logger.experiment.add_text("run/info", f"```json\n{json.dumps(info, indent=2)}\n```")
            logger.experiment.add_text("run/config", f"```yaml\n{OmegaConf.to_yaml(cfg, resolve=True)}\n```")
            logger.experiment.flush()
    print("validation metrics (best checkpoint):")
    for name, value in metrics.items():
        print(f"  {name:<22} {value:.4f}")
    if best and cfg.get("calibrate", True):
        validation, training = datamodule.calibration_dataloaders()
        calibration = fit_calibration(model.network, validation, training if levels_from == "all" else None)
        calibration.save(output_dir / RUN_CALIBRATION)
        print(f"calibration (shapes from validation, levels from {levels_from} customers): {calibration}")
        if calibration.fallback:
            print(
                f"warning: calibration left at the identity ({'; '.join(calibration.fallback)}): the network is not "
                "fit to calibrate from; train longer (trainer.max_epochs) or on more customers",
                file=sys.stderr,
            )
    if best and cfg.get("export", True):
        onnx_path = export_checkpoint(best, output_dir / "model.onnx")
        print(f"exported {onnx_path}")
        events, customers = datamodule.load_frames()
        result = Predictor(onnx_path).predict_standard(events, cfg.data.cutoff, customers)
        report = evaluate_validation(result.predictions, datamodule, output_dir / "evaluation")
        print(f"validation report of the exported model (calibrated): {report}")
        if cfg.get("quantize", False):
            val_labels = datamodule.labels.iloc[datamodule.val_rows]
            quantize_checked(onnx_path, events, customers, str(cfg.data.cutoff), val_labels)
        if cfg.get("predict_after_training", False):
            paths = write_result(result, output_dir / "predictions.parquet")
            print(describe(result.summary))
            print(f"predictions: {paths['predictions']}")
    print(f"TensorBoard: tensorboard --logdir {tensorboard_root(output_dir)}")
    return metrics


def calibration_levels(cfg: DictConfig) -> str:
    """Which customers set the calibrated levels: ``all`` labelled ones at the cutoff, or ``validation``."""
    levels = cfg.get("calibration_levels", "all")
    if levels not in {"all", "validation"}:
        raise ConfigError(f"calibration_levels must be all or validation, got {levels!r}")
    return levels


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


def best_checkpoint(trainer: pl.Trainer) -> str:
    """Best checkpoint of the callback that monitors a metric ("" if none): the callback that keeps
    ``last.ckpt`` current during an epoch monitors nothing, and its "best" is merely the latest."""
    monitored = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor]
    return monitored[0].best_model_path if monitored else ""


class MidEpochCheckpoint(ModelCheckpoint):
    """Keeps ``last.ckpt`` current during an epoch (every ``train_time_interval`` or ``every_n_train_steps``).

    Never on an epoch's last batch: Lightning 2.x resumes from a checkpoint taken there as if that epoch's
    validation had run, so the epoch would escape best-checkpoint selection and early stopping. The
    checkpoint written after that validation (``save_last`` of the monitored callback) follows at once.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint next to its final path, then renames it into place, so a process killed while
    saving leaves the previous ``last.ckpt`` intact. Lightning's own save goes through a file in the system
    temp directory and ``shutil.move``, which becomes a plain, interruptible copy when that directory is on
    another filesystem (and a kill leaves the temp file behind)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with partial.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())  # the rename must not reach the disk before the data (power loss)
        os.replace(partial, path)


def evaluate_validation(predictions: pd.DataFrame, datamodule: ChurnDataModule, out_dir: Path) -> Path | None:
    """The offline evaluation report (churnformer-evaluate's metrics and figures) of the exported model
    on the validation customers at the main cutoff; None when they are too few for deciles. Calibration
    was fitted on these customers, so its calibration metrics here are optimistic."""
    val_labels = datamodule.labels.iloc[datamodule.val_rows]
    if len(val_labels) < MIN_CUSTOMERS:
        return None
    val_predictions = predictions[predictions[CUSTOMER_ID].isin(val_labels[CUSTOMER_ID])]
    joined = align(val_predictions, val_labels)
    paths = write_report(compute_metrics(joined), report_figures(joined), out_dir, "Validation customers")
    return paths["report"]


def tensorboard_root(output_dir: Path) -> Path:
    """The directory to open: the whole sweep under ``-m`` (all trials side by side), else the run."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir)
    return output_dir


def refuse_ddp_under_multirun(cfg: DictConfig) -> None:
    """Lightning DDP re-launches the entry point in child ranks; under ``-m`` that re-runs the whole
    sweep in every child (Lightning issue 11300). Refuse it before anything starts."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    strategy = str(OmegaConf.select(cfg, "trainer.strategy", default="") or "")
    if strategy.startswith("ddp"):
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run under Hydra multirun (-m): Lightning's DDP launcher would "
            "re-run the whole sweep in each child process (Lightning issue 11300). Sweep on one device, or "
            "launch each DDP run on its own without -m."
        )


def configured_metric(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value a Hydra sweeper optimizes (``optimized_metric``), if configured."""
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        raise KeyError(f"optimized_metric {name!r} not among {sorted(metrics)}")
    return metrics[name] if name else None
