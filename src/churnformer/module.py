"""LightningModule: the network, the joint loss, per-split metrics, AdamW with warm-up + cosine decay."""

from __future__ import annotations

import math
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

from churnformer.data.featurizer import Featurizer
from churnformer.losses import LossWeights, joint_loss
from churnformer.metrics import churn_metrics, spend_metrics
from churnformer.model import ChurnFormer, ModelConfig, ScoringModel

INPUT_NAMES = ("event_cat", "event_num", "lengths", "customer_cat", "customer_num")


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
        self.save_hyperparameters()
        self.network = build_network(network, featurizer_json)
        if label_stats:
            self.network.init_output_biases(**label_stats)
        self.loss_weights = LossWeights(**loss)
        self.metrics = torch.nn.ModuleDict(
            {
                f"{split}_{head}": make(f"{split}/")
                for split in ("train", "val")
                for head, make in (("churn", churn_metrics), ("spend", spend_metrics))
            }
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Predictions as exported: churn probability, expected spend, spend p10/p50/p90."""
        return ScoringModel(self.network)(*(batch[name] for name in INPUT_NAMES))

    def _step(self, batch: dict[str, torch.Tensor], split: str) -> torch.Tensor:
        heads = self.network(*(batch[name] for name in INPUT_NAMES))
        losses = joint_loss(heads, batch["churn"], batch["spend"], self.loss_weights)
        size = len(batch["churn"])
        for name, value in losses.items():
            self.log(f"{split}/{name}", value, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)
        with torch.no_grad():
            p_churn = torch.sigmoid(heads.churn_logit.float())
            expected = (1 - p_churn) * torch.exp(heads.spend_mu.float() + 0.5 * heads.spend_sigma.float() ** 2)
        self.metrics[f"{split}_churn"].update(p_churn, batch["churn"].long())
        self.metrics[f"{split}_spend"].update(expected, batch["spend"])
        return losses["loss"]

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

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

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
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
