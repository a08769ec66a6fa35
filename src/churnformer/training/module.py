"""LightningModule: the network, the joint loss, per-split epoch metrics, AdamW with warm-up + cosine decay.

Distributed training (DDP) never hangs on a metric: the epoch's metrics are computed explicitly in the
epoch-end hooks, which every rank runs at the same point, and logged as plain, already-reduced numbers
(``sync_dist=False``); nothing is left for Lightning to reduce lazily when rank 0's progress bar or logger
asks for it (see :mod:`churnformer.training.metrics`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterable
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from churnformer.artifacts.stacked_trees import STACKED_COLUMNS
from churnformer.data.featurizer import Featurizer
from churnformer.errors import ConfigError
from churnformer.memory import trim_heap
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import (
    LABELS_BY_HORIZON,
    META_HORIZON_DAYS,
    META_HORIZONS,
    OBSERVED,
    OBSERVED_BY_HORIZON,
    by_horizon,
)
from churnformer.training.augment import hide_static_attributes
from churnformer.training.metrics import EpochMetrics, metric_name
from churnformer.training.pretraining import freeze_pretrained
from churnformer.training.review import SplitRunsLogger, architecture_text

RESUME_STATE = "churnformer_resume_state"
# The training loss every log_every_n_steps (the epoch means are joint/loss/train and so on).
STEP_LOSS = metric_name("joint", "loss_per_step", "train")
# Beside it: the epoch's mean so far (this process's batches), the trend the noisy step loss hides.
RUNNING_LOSS = metric_name("joint", "loss_epoch_mean_so_far", "train")
GRAD_NORM = "optim/grad_norm"
# The most training examples per epoch whose predictions the training curves' metrics other than the losses judge.
TRAIN_METRIC_EXAMPLES = 200_000
# Batches between two hand-backs of the heap's free pages (churnformer.memory: without them the heap of a long
# validation pass grows by hundreds of MB that it no longer uses).
TRIM_HEAP_EVERY_BATCHES = 32


def rng_states() -> dict[str, Any]:
    """The random streams training draws from: torch's, on CPU and each GPU (dropout). numpy's and Python's
    global streams are not used in training (the batch sampler has its own seeded generator)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def step(network: ChurnFormer, batch: dict[str, torch.Tensor], metrics: EpochMetrics, main: int) -> torch.Tensor:
    """Forward, losses, metric update (at every horizon; ``main``: the index of the main one in the grid);
    returns the joint loss (training, validation and final evaluation)."""
    raw = network(batch)
    labels = {label: batch[by_horizon(label)] for label in LABELS_BY_HORIZON if by_horizon(label) in batch}
    losses = network.heads.loss(raw, labels)
    with torch.no_grad():
        raw = {head: {name: value.float() for name, value in outputs.items()} for head, outputs in raw.items()}
        predicted = network.heads.predict(raw, None, main)
    metrics.update(losses, network.heads.horizon_predictions(predicted, labels), labels.get(OBSERVED))
    return losses["joint"]


@torch.no_grad()
def evaluate_network(
    network: ChurnFormer, batches: Iterable[dict[str, torch.Tensor]], horizons: list[float], main: int
) -> tuple[dict[str, float], dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The validation metrics (the names and definitions of the per-epoch ones, at the main horizon, index ``main``
    of ``horizons``, and at every horizon) and the main horizon's predictions of a network over ``batches`` in this
    process alone: no collective, so rank 0 can run it after a DDP fit."""
    metrics = EpochMetrics("val", network.heads.kinds(), main, keep_predictions=True, sync=False, horizons=horizons)
    network.eval()
    for batch in batches:
        step(network, batch, metrics, main)
    return metrics.compute(), metrics.all_predictions()


def fused_on_cuda(optimizer: functools.partial, device: torch.device) -> functools.partial:
    """The configured optimizer with ``fused=True`` on a CUDA device when it takes that option (Adam, AdamW,
    SGD) and the config leaves it unset: one kernel for the whole update instead of several per parameter
    group, and deterministic. An explicit ``model.optimizer.fused`` always wins."""
    takes_fused = "fused" in inspect.signature(optimizer.func).parameters
    if device.type != "cuda" or not takes_fused or optimizer.keywords.get("fused") is not None:
        return optimizer
    return functools.partial(optimizer, fused=True)


class ChurnFormerModule(pl.LightningModule):
    """Hyperparameters are plain dicts and strings, so checkpoints load with ``weights_only=True``."""

    def __init__(
        self,
        featurizer_json: str,
        network: dict[str, Any],
        heads: dict[str, dict[str, Any]],
        optimizer: dict[str, Any],
        scheduler: dict[str, float],
        label_stats: dict[str, dict[str, list[float]]],
        export_metadata: dict[str, Any],
        static_dropout: float = 0.0,
        aggregate_quantiles: list[list[float]] | None = None,
        stacked_trees: dict[str, Any] | None = None,
        freeze_sequence_encoder: bool = False,
    ) -> None:
        super().__init__()
        # Not sent to the logger: it would flood HPARAMS with the featurizer JSON; the job logs a curated set.
        self.save_hyperparameters(logger=False)
        horizons = export_metadata[META_HORIZONS]
        self.main = horizons.index(export_metadata[META_HORIZON_DAYS])
        featurizer = Featurizer.from_json(featurizer_json)
        stacked = len(STACKED_COLUMNS) if stacked_trees else 0  # data.stacking: the trees' columns join the aggregates
        self.network = ChurnFormer.build(network, featurizer, len(horizons), heads, extra_aggregates=stacked)
        if freeze_sequence_encoder:  # pretrain.freeze: the contrastively pretrained parts stay as they are
            freeze_pretrained(self.network)
        self.static_dropout = static_dropout
        self.n_static_numeric = len(featurizer.customer_numeric)
        self.network.heads.init_biases(label_stats)
        if self.network.fusion is not None and aggregate_quantiles:
            self.network.fusion.encoding.fit(aggregate_quantiles)  # bins at the training customers' quantiles
        groups = self.network.heads.kinds()
        # Keyed by split, with a prefix: nn.Module already has a ``train`` attribute.
        self.epoch_metrics = torch.nn.ModuleDict(
            {
                "split_train": EpochMetrics("train", groups, self.main, horizons=horizons),
                "split_val": EpochMetrics("val", groups, self.main, keep_predictions=True, horizons=horizons),
            }
        )
        self._resume_state: dict[str, Any] | None = None

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        return step(self.network, batch, self.epoch_metrics[f"split_{split}"], self.main)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(hide_static_attributes(batch, self.static_dropout, self.n_static_numeric), "train")
        if self._step_is_logged():
            size = len(batch[OBSERVED_BY_HORIZON])
            self.log(STEP_LOSS, loss.detach(), on_step=True, on_epoch=False, batch_size=size)
            running = self.epoch_metrics["split_train"].running_loss()
            self.log(RUNNING_LOSS, running, on_step=True, on_epoch=False, batch_size=size)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients' global L2 norm before clipping (``trainer.gradient_clip_val`` cuts it there), on the
        steps whose loss is logged: whether clipping acts, and how often."""
        if self._step_is_logged():
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            if grads:
                self.log(GRAD_NORM, torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def _step_is_logged(self) -> bool:
        """Whether Lightning writes this step's logs (every ``trainer.log_every_n_steps`` optimizer steps): the
        step loss is handed to ``self.log`` only then, as that call costs about a millisecond a step."""
        every = self.trainer.log_every_n_steps
        return every > 0 and (self.global_step + 1) % every == 0

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % TRIM_HEAP_EVERY_BATCHES == 0:
            trim_heap()

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if (batch_idx + 1) % TRIM_HEAP_EVERY_BATCHES == 0:
            trim_heap()

    def _log_epoch(self, split: str) -> EpochMetrics:
        metrics = self.epoch_metrics[f"split_{split}"]
        # Already over all ranks: logging them reduced again would add a collective that rank 0 could reach
        # alone (from its progress bar), the hang this design avoids.
        self.log_dict(metrics.compute(), sync_dist=False)
        return metrics

    def on_train_epoch_start(self) -> None:
        # The training curves' AUC, ECE, Gini... judge a systematic sample of at most TRAIN_METRIC_EXAMPLES of the
        # epoch's examples (the losses every one): the predictions kept for them would otherwise grow with the log.
        examples = len(self.trainer.train_dataloader.dataset)
        self.epoch_metrics["split_train"].sample_every = max(1, math.ceil(examples / TRAIN_METRIC_EXAMPLES))

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train").reset()

    def on_validation_epoch_end(self) -> None:
        metrics = self._log_epoch("val")
        predictions = metrics.all_predictions()  # collective too: every rank gathers, rank 0 draws
        logger = self.review_logger()
        if logger is not None and not self.trainer.sanity_checking:
            logger.stage_review(predictions, self.current_epoch)
        metrics.reset()

    def on_fit_start(self) -> None:
        logger = self.review_logger()
        if logger is not None:
            logger.experiment.add_text("model/architecture", architecture_text(self.network))

    def review_logger(self) -> SplitRunsLogger | None:
        """The TensorBoard logger on the main process, if one is configured."""
        if not self.trainer.is_global_zero:
            return None
        return next((lg for lg in self.loggers if isinstance(lg, SplitRunsLogger)), None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning saves neither: without the RNG state dropout draws other masks after a resume, and a run
        # killed after early stopping decided to stop (while exporting) would train on when resumed.
        checkpoint[RESUME_STATE] = {"rng": rng_states(), "should_stop": self.trainer.should_stop}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["hyper_parameters"]
        for key in ("featurizer_json", "network", "heads"):
            if saved.get(key) != self.hparams[key]:
                raise ConfigError(
                    f"the checkpoint was trained with another {key.removesuffix('_json')} than this run builds "
                    "(other data, features or model config); resume with the interrupted run's exact overrides"
                )
        self._resume_state = checkpoint.get(RESUME_STATE)

    def on_train_start(self) -> None:
        # Applied here rather than at load, so only resumed training (not validate/test) moves the global
        # random streams, and nothing Lightning draws while setting up can shift them.
        if self._resume_state is not None:
            set_rng_states(self._resume_state["rng"])
            self.trainer.should_stop = self._resume_state["should_stop"]
            self._resume_state = None

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = fused_on_cuda(hydra.utils.instantiate(self.hparams.optimizer), self.device)(
            [p for p in self.parameters() if p.requires_grad]
        )
        total = max(int(self.trainer.estimated_stepping_batches), 2)
        warmup = max(1, math.ceil(self.hparams.scheduler["warmup_fraction"] * total))
        base_lr = optimizer.param_groups[0]["lr"]
        schedule = SequentialLR(
            optimizer,
            [
                LinearLR(optimizer, start_factor=1e-2, total_iters=warmup),
                CosineAnnealingLR(
                    optimizer, T_max=max(total - warmup, 1), eta_min=base_lr * self.hparams.scheduler["min_lr_ratio"]
                ),
            ],
            milestones=[warmup],
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "optim/lr"},
        }
