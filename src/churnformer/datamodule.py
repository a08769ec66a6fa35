"""LightningDataModule: event log -> fitted featurizer -> sequences + labels -> length-bucketed batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from churnformer.data.events import (
    CUSTOMER_ID,
    TIMESTAMP,
    ColumnMapping,
    EventLogError,
    load_customers,
    load_events,
    source_of,
)
from churnformer.data.featurizer import Featurizer, FeaturizerConfig, fit_featurizer
from churnformer.data.labels import make_labels
from churnformer.data.sequences import Sequences, build_sequences, concat_sequences
from churnformer.data.window import Window, require_events_before
from churnformer.sampler import LengthBucketBatchSampler


def validation_mask(customer_ids: np.ndarray, fraction: float, salt: str = "churnformer") -> np.ndarray:
    """Stable customer-level split: a hash of the id, so a customer stays on its side across runs and logs."""
    hashed = pd.util.hash_array(np.asarray(customer_ids, dtype=object), hash_key=f"{salt:<16}"[:16])
    return (hashed % np.uint64(10_000)) < np.uint64(round(fraction * 10_000))


@dataclass
class LabelStats:
    """Base rates of the training labels, used to initialise the output biases."""

    churn_rate: float
    log_spend_mean: float
    log_spend_std: float


class SequenceDataset(torch.utils.data.Dataset):
    """Index-only dataset; batches are padded in :meth:`collate` from the ragged sequences."""

    def __init__(self, sequences: Sequences, labels: pd.DataFrame, rows: np.ndarray) -> None:
        self.sequences = sequences
        self.churn = labels["churn"].to_numpy(np.float32)
        self.spend = labels["spend"].to_numpy(np.float32)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return int(self.rows[index])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows_array = np.asarray(rows, dtype=np.int64)
        batch = {name: torch.from_numpy(a) for name, a in self.sequences.pad(rows_array).as_inputs().items()}
        batch["churn"] = torch.from_numpy(self.churn[rows_array])
        batch["spend"] = torch.from_numpy(self.spend[rows_array])
        return batch


class ChurnDataModule(pl.LightningDataModule):
    """Loads the configured event log, fits featurization on the training customers only, and serves batches.

    ``source`` is ``file`` (``events``/``customers`` paths or DataFrames), ``synthetic`` (a world generated into
    ``events``/``customers`` on first use) or ``cdnow`` (the CDNOW master log; ``events`` may point at it).
    """

    def __init__(
        self,
        source: str,
        cutoff: str,
        horizon_days: float,
        events: str | pd.DataFrame | None = None,
        customers: str | pd.DataFrame | None = None,
        columns: dict[str, str] | None = None,
        purchase_types: list[str] | None = None,
        event_type_column: str = "event_type",
        features: dict[str, Any] | None = None,
        synthetic: dict[str, Any] | None = None,
        rolling_cutoffs: dict[str, int] | None = None,
        val_fraction: float = 0.2,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if source not in {"file", "synthetic", "cdnow"}:
            raise EventLogError(f"data.source must be file, synthetic or cdnow, got {source!r}")
        if source == "file" and events is None:
            raise EventLogError("data.events is required: the path of your event log (CSV or Parquet)")
        self.source = source
        self.window = Window.from_cutoff(cutoff, horizon_days)
        self.events_path = events
        self.customers_path = customers
        self.columns = ColumnMapping(**(columns or {}))
        self.purchase_types = list(purchase_types) if purchase_types else None
        self.event_type_column = event_type_column
        self.feature_config = FeaturizerConfig(**(features or {}))
        self.synthetic = dict(synthetic or {})
        self.rolling_cutoffs = dict(rolling_cutoffs or {})
        self.val_fraction = val_fraction
        self.batch_size = batch_size
        self.seed = seed
        self.featurizer: Featurizer | None = None
        self.sequences: Sequences | None = None
        self.labels: pd.DataFrame | None = None
        self.main_count = 0  # rows of the main cutoff (they come first in sequences and labels)
        self._train_sampler: LengthBucketBatchSampler | None = None
        self._train_sampler_state: dict[str, int] | None = None

    def prepare_data(self) -> None:
        """Runs once per machine before ``setup``: writes the synthetic world if it is not there yet."""
        if self.source == "synthetic" and not Path(str(self.events_path)).exists():
            from churnformer.data.synthetic import SyntheticWorldConfig, write_world

            written_events, _ = write_world(SyntheticWorldConfig(**self.synthetic), Path(str(self.events_path)).parent)
            if written_events != Path(str(self.events_path)):
                raise EventLogError(f"synthetic world written to {written_events}, expected {self.events_path}")

    def sources(self) -> tuple[str | Path | pd.DataFrame | None, str | Path | pd.DataFrame | None]:
        """Where events and customers come from (paths or DataFrames), for fingerprints."""
        if self.source == "cdnow" and self.events_path is None:
            from churnformer.data.cdnow import cdnow_master_path

            return cdnow_master_path(), None
        return self.events_path, self.customers_path if self._has_customers() else None

    def _has_customers(self) -> bool:
        return isinstance(self.customers_path, pd.DataFrame) or bool(self.customers_path)

    def load_frames(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        if self.source == "cdnow":
            from churnformer.data.cdnow import load_cdnow

            return load_events(load_cdnow(self.events_path), name="CDNOW master log"), None
        events = load_events(self.events_path, self.columns)
        customers = load_customers(self.customers_path, self.columns.customer_id) if self._has_customers() else None
        return events, customers

    def setup(self, stage: str | None = None) -> None:
        if self.sequences is not None:
            return
        events, customers = self.load_frames()
        require_events_before(events[TIMESTAMP], self.window, source_of(events, "events"))
        before = events[TIMESTAMP] < self.window.feature_end
        population = np.sort(events.loc[before, CUSTOMER_ID].unique())
        train_ids = population[~validation_mask(population, self.val_fraction)]
        train_events = events.loc[before & events[CUSTOMER_ID].isin(train_ids)]
        train_customers = customers[customers[CUSTOMER_ID].isin(train_ids)] if customers is not None else None
        self.featurizer = fit_featurizer(train_events, train_customers, self.feature_config)
        parts, labels = [], []
        for index, window in enumerate(self.training_windows()):
            sequences = build_sequences(events, window, self.featurizer, customers)
            if index > 0:  # earlier cutoffs: extra examples of the training customers only
                sequences = sequences.subset(
                    np.flatnonzero(~validation_mask(sequences.customer_ids, self.val_fraction))
                )
            if len(sequences):
                parts.append(sequences)
                labels.append(
                    make_labels(events, window, sequences.customer_ids, self.purchase_types, self.event_type_column)
                )
        self.sequences, self.labels = concat_sequences(parts), pd.concat(labels, ignore_index=True)
        self.main_count = len(parts[0])
        is_val = np.zeros(len(self.sequences), dtype=bool)
        is_val[: self.main_count] = validation_mask(parts[0].customer_ids, self.val_fraction)
        self.train_rows, self.val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        if len(self.train_rows) == 0 or len(self.val_rows) == 0:
            raise EventLogError(
                f"{len(self.sequences)} customers are too few for a train/validation split "
                f"(val_fraction={self.val_fraction})"
            )

    def training_windows(self) -> list[Window]:
        """The main window, then ``rolling_cutoffs.count`` earlier cutoffs ``step_days`` apart.

        Each earlier cutoff gives every training customer active by then another labelled example
        (its label window lies inside the log, before the main label window ends): the only way to
        get more labels out of one log. Validation uses the main cutoff only.
        """
        count, step = self.rolling_cutoffs.get("count", 0), self.rolling_cutoffs.get("step_days", 30)
        return [self.window] + [
            Window(
                self.window.feature_end - pd.Timedelta(days=k * step),
                self.window.horizon_days,
                given=f"{self.window} - {k * step} days",
            )
            for k in range(1, count + 1)
        ]

    def label_stats(self) -> LabelStats:
        train = self.labels.iloc[self.train_rows]
        positive = np.log(train["spend"][train["spend"] > 0].to_numpy(np.float64))
        return LabelStats(
            churn_rate=float(train["churn"].mean()),
            log_spend_mean=float(positive.mean()) if len(positive) else 0.0,
            log_spend_std=float(positive.std()) if len(positive) > 1 else 1.0,
        )

    def _loader(self, rows: np.ndarray, shuffle: bool, sharded: bool = True) -> DataLoader:
        dataset = SequenceDataset(self.sequences, self.labels, rows)
        trainer = self.trainer if sharded else None
        sampler = LengthBucketBatchSampler(
            self.sequences.lengths[rows],
            self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
        )
        # Its own generator: iterating a loader otherwise draws a seed from the global torch RNG, and a resumed
        # run starts its iteration at another point of that stream than the uninterrupted run (dropout masks).
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=dataset.collate, generator=generator)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_rows, shuffle=True)
        self._train_sampler = loader.batch_sampler
        if self._train_sampler_state is not None:
            self._train_sampler.load_state_dict(self._train_sampler_state)
            self._train_sampler_state = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_rows, shuffle=False)

    def calibration_dataloaders(self) -> tuple[DataLoader, DataLoader]:
        """Validation customers, and the training customers at the main cutoff (no rolling-cutoff examples),
        each whole on this process: unlike Lightning's loaders they are not split across DDP ranks."""
        main_train = self.train_rows[self.train_rows < self.main_count]
        return (
            self._loader(self.val_rows, shuffle=False, sharded=False),
            self._loader(main_train, shuffle=False, sharded=False),
        )

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training epoch stands, so a run resumed from a mid-epoch checkpoint
        continues with the next batch instead of replaying the epoch from its start.

        The datamodule carries it, not the loader: Lightning 2.x drops a loader's own state on resume when
        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning issue 20550)."""
        return {"train_sampler": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored before the training loader exists; train_dataloader() applies it.
        self._train_sampler_state = state_dict.get("train_sampler")
