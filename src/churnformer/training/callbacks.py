"""Lightning plugins and callbacks the configs point at (``conf/callbacks``, ``conf/trainer``): checkpoints
that survive a kill at any moment, and ``last.ckpt`` kept current during long epochs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO


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
