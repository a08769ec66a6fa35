"""LightningModule: the network, the joint loss, per-split metrics, AdamW with warm-up + cosine decay."""

from __future__ import annotations

import math
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.utils.tensorboard import SummaryWriter

from churnformer.data.featurizer import Featurizer
from churnformer.errors import ConfigError
from churnformer.losses import LossWeights, joint_loss
from churnformer.metrics import churn_metrics, metric_name, spend_metrics
from churnformer.model import ChurnFormer, ModelConfig, ScoringModel
from churnformer.review import architecture_text, custom_scalar_layout, log_validation_review
from churnformer.schema import MODEL_INPUTS

RESUME_STATE = "churnformer_resume_state"


def rng_states() -> dict[str, Any]:
    """The random streams training draws from: torch's, on CPU and each GPU (dropout). numpy's and Python's
    global streams are not used in training (the batch sampler has its own seeded generator)."""
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def build_network(network: dict[str, Any], featurizer_json: str) -> ChurnFormer:
    """The network from its plain-dict config and the featurizer it was fitted with (checkpoint or config)."""
    return ChurnFormer(ModelConfig(**network).with_features(Featurizer.from_json(featurizer_json)))


class ChurnFormerModule(pl.LightningModule):
    """Hyperparameters are plain dicts and strings, so checkpoints load with ``weights_only=True``."""

    def __init__(
        self,
        featurizer_json: str,
        network: dict[str, Any],
        loss: dict[str, float],
        optimizer: dict[str, Any],
        scheduler: dict[str, float],
        label_stats: dict[str, float] | None = None,
        export_metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Not sent to the logger: it would flood HPARAMS with the featurizer JSON; train.py logs a curated set.
        self.save_hyperparameters(logger=False)
        self.network = build_network(network, featurizer_json)
        if label_stats:
            self.network.init_output_biases(**label_stats)
        self.loss_weights = LossWeights(**loss)
        self.metrics = torch.nn.ModuleDict(
            {
                f"{split}_{head}": make(split)
                for split in ("train", "val")
                for head, make in (("churn", churn_metrics), ("spend", spend_metrics))
            }
        )
        self._validation_outputs: list[tuple[torch.Tensor, ...]] = []
        self._resume_state: dict[str, Any] | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Predictions as exported: churn probability, expected spend, spend p10/p50/p90."""
        return ScoringModel(self.network)(*(batch[name] for name in MODEL_INPUTS))

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        heads = self.network(*(batch[name] for name in MODEL_INPUTS))
        losses = joint_loss(heads, batch["churn"], batch["spend"], self.loss_weights)
        size = len(batch["churn"])
        for head, value in losses.items():
            self.log(
                metric_name(head, "loss", split), value, on_epoch=True, on_step=False, batch_size=size, sync_dist=True
            )
        with torch.no_grad():
            p_churn = torch.sigmoid(heads.churn_logit.float())
            expected = (1 - p_churn) * torch.exp(heads.spend_mu.float() + 0.5 * heads.spend_sigma.float() ** 2)
        self.metrics[f"{split}_churn"].update(p_churn, batch["churn"].long())
        self.metrics[f"{split}_spend"].update(expected, batch["spend"])
        if split == "val":
            self._validation_outputs.append((p_churn, batch["churn"], expected, batch["spend"]))
        return losses["joint"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def _log_epoch_metrics(self, split: str) -> None:
        for head in ("churn", "spend"):
            collection = self.metrics[f"{split}_{head}"]
            self.log_dict(collection.compute(), sync_dist=False)
            collection.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_start(self) -> None:
        self._validation_outputs.clear()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")
        writer = self._tensorboard()
        if writer is not None and self._validation_outputs and not self.trainer.sanity_checking:
            columns = (torch.cat(c).float().cpu() for c in zip(*self._validation_outputs, strict=True))
            log_validation_review(writer, self.global_step, *columns)
        self._validation_outputs.clear()

    def on_fit_start(self) -> None:
        writer = self._tensorboard()
        if writer is not None:
            writer.add_custom_scalars(custom_scalar_layout())
            writer.add_text("model/architecture", architecture_text(self.network))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning saves neither: without the RNG state dropout draws other masks after a resume, and a run
        # killed after early stopping decided to stop (while exporting) would train on when resumed.
        checkpoint[RESUME_STATE] = {"rng": rng_states(), "should_stop": self.trainer.should_stop}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint["hyper_parameters"]
        for key in ("featurizer_json", "network"):
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

    def _tensorboard(self) -> SummaryWriter | None:
        """The TensorBoard writer on the main process, if a TensorBoardLogger is configured."""
        if not self.trainer.is_global_zero:
            return None
        return next((lg.experiment for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(self.parameters())
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
