"""LightningDataModule: the configured event-log source -> training set -> length-bucketed batches."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from omegaconf import Container, DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.data import DataLoader

from churnformer.artifacts.stacked_trees import StackedTrees
from churnformer.data.campaigns import one_offer
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.featurizer import FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.parts import FeaturizeRequest, PartitionedBuild
from churnformer.data.sources import EventLogSource, TrainingSetDirectory
from churnformer.data.store import (
    MANIFEST,
    SHARD_EXAMPLES,
    TrainingSetWriter,
    dataset_key,
    load_training_set,
    read_manifest,
    write_training_set,
)
from churnformer.data.training_set import TrainingSet, build_training_set, rolling_windows, sampled_customers
from churnformer.data.window import HorizonGrid, Window
from churnformer.defaults import yaml_defaults
from churnformer.errors import ConfigError
from churnformer.model_card import log_facts
from churnformer.schema import CONTACTED, LABELS_BY_HORIZON, RUN_TEXT_EMBEDDINGS, RUN_TEXT_ENCODER, by_horizon
from churnformer.text.embeddings import TextEmbeddings
from churnformer.text.encoder import TextEncoder, require_text_support
from churnformer.training.partitioned import featurize_partitioned
from churnformer.training.run_info import fingerprint
from churnformer.training.sampler import LengthBucketBatchSampler
from churnformer.training.stacking import StackingSettings, stack_trees


@dataclass(frozen=True)
class DataSettings:
    """The datamodule's settings: ``data.*`` in the config (defaults in ``conf/datamodule/default.yaml``),
    apart from the source and the keys the source is built from."""

    cutoff: str
    horizon_days: float
    horizons_days: list[float]
    purchase_types: list[str] | None
    event_type_column: str
    churn_definition: str
    decline_threshold: float
    features: dict[str, Any]
    val_fraction: float
    batch_size: int
    batch_tokens: int | None
    seed: int
    rolling_cutoffs: dict[str, float]
    stacking: dict[str, Any]
    sample_customers: float | int | None = None
    dataset_dir: str | None = None
    offer: str | None = None

    # What a training set depends on (the keys of a featurized dataset); the rest only shapes batches and fits.
    FEATURIZATION: ClassVar[tuple[str, ...]] = (
        "cutoff",
        "horizon_days",
        "horizons_days",
        "purchase_types",
        "event_type_column",
        "churn_definition",
        "decline_threshold",
        "features",
        "val_fraction",
        "rolling_cutoffs",
        "sample_customers",
    )

    def featurization(self) -> dict[str, Any]:
        """The settings a training set is built from, as a featurized dataset's manifest records them."""
        return {name: getattr(self, name) for name in self.FEATURIZATION}

    def from_dataset(self, manifest: dict[str, Any]) -> DataSettings:
        """These settings with a featurized dataset's featurization settings (``data=dataset``); a cutoff given
        here must be the dataset's."""
        built = {name: manifest["settings"][name] for name in self.FEATURIZATION}
        if self.cutoff is not None and str(self.cutoff) != str(built["cutoff"]):
            raise ConfigError(
                f"data.cutoff={self.cutoff}, but the dataset was featurized at {built['cutoff']}: leave data.cutoff "
                "out (a dataset's cutoff, horizons and features are its own) or featurize again"
            )
        return replace(self, **built)

    @property
    def labels(self) -> LabelSpec:
        """What a purchase and a churn are."""
        return LabelSpec.of(self.purchase_types, self.event_type_column, self.churn_definition, self.decline_threshold)

    @classmethod
    def defaults(cls, **changes: Any) -> DataSettings:
        """``conf/data/settings/default.yaml`` without Hydra (tests, notebooks): its interpolations of top-level
        keys (``seed``, ``churn_definition``) resolved from ``conf/train.yaml`` and its default churn definition,
        then ``changes``."""
        top = {key: value for key, value in yaml_defaults("train").items() if not isinstance(value, dict)}
        top |= yaml_defaults("churn_definition/no_purchase")
        config = OmegaConf.create({**top, "data": yaml_defaults("data/settings/default")})
        values = {**OmegaConf.to_container(config, resolve=True)["data"], **changes}
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    @classmethod
    def of(cls, data: DictConfig) -> DataSettings:
        """From the ``data`` node; only these keys are resolved (not the source's, which may be left unset
        when the Python API passes DataFrames)."""
        values = {f.name: data[f.name] for f in fields(cls)}
        return cls(
            **{k: OmegaConf.to_container(v, resolve=True) if isinstance(v, Container) else v for k, v in values.items()}
        )


# How long ranks other than 0 wait for rank 0's export of the sentence encoder, and for its featurized dataset
# (seconds).
ENCODER_WAIT_S = 600
DATASET_WAIT_S = 6 * 3600


def wait_for(path: Path, seconds: float, what: str) -> None:
    """Wait until ``path`` exists (what another rank writes); a timeout names it and ``what`` did not happen."""
    deadline = time.monotonic() + seconds
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: {what} within {seconds:g} s")
        time.sleep(1)


class SequenceDataset(torch.utils.data.Dataset):
    """Index-only dataset; batches are padded in :meth:`collate` from the ragged sequences."""

    def __init__(self, data: TrainingSet, rows: np.ndarray) -> None:
        self.sequences = data.sequences
        self.labels = {by_horizon(label): data.by_horizon(label) for label in LABELS_BY_HORIZON}
        if data.contacted is not None:  # trained with campaigns: each example's arm (sent, held out, no contact)
            self.labels[CONTACTED] = data.contacted
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> int:
        return int(self.rows[index])

    def collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        rows_array = np.asarray(rows, dtype=np.int64)
        batch = {name: torch.from_numpy(a) for name, a in self.sequences.pad(rows_array).items()}
        batch.update({name: torch.from_numpy(values[rows_array]) for name, values in self.labels.items()})
        return batch


class ChurnDataModule(pl.LightningDataModule):
    """Loads the source's log, builds the training set (featurization fitted on training customers only) and
    serves batches. DDP: training batches are split across ranks by the sampler (equal counts per rank)."""

    def __init__(
        self,
        source: EventLogSource,
        settings: DataSettings,
        run_dir: Path | None = None,
        source_config: dict[str, Any] | None = None,
    ) -> None:
        """``run_dir``: where a model reading text keeps its sentence encoder and embedded texts (the run's
        directory; a temporary one when None). ``source_config``: the ``data.source`` config, which a featurized
        dataset records so that what runs after training can read its log again (None for DataFrames)."""
        super().__init__()
        self.source = source
        self.source_config = source_config
        self.settings = settings
        self.run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="churnformer-"))
        self.window = Window.from_cutoff(settings.cutoff, settings.horizon_days)
        self.grid = HorizonGrid.of(settings.horizons_days, settings.horizon_days)
        self.data: TrainingSet | None = None
        self.stacked_trees: StackedTrees | None = None  # data.stacking: the trees whose predictions join the aggregates
        self._customers: pd.DataFrame | None = None
        self.log_facts: dict[str, Any] = {}
        self._train_sampler: LengthBucketBatchSampler | None = None
        self._train_sampler_state: dict[str, int] | None = None

    @property
    def text_columns(self) -> list[str]:
        return list(self.settings.features.get("text") or [])

    def prepare_data(self) -> None:
        """Runs once per machine before ``setup``: makes what the source needs (the synthetic world) and, for
        text columns, exports the sentence encoder into the run directory."""
        self.source.prepare()
        encoder = self.run_dir / RUN_TEXT_ENCODER
        if not self.text_columns or encoder.is_file():
            return
        require_text_support(f"data.features.text={self.text_columns}")
        if rank_zero_only.rank == 0:
            from churnformer.text.export import export_text_encoder

            self.run_dir.mkdir(parents=True, exist_ok=True)
            export_text_encoder(encoder)
            return
        # Ranks a launcher started together with rank 0 (torchrun) use the file rank 0 writes: one encoder,
        # one SHA-256, whatever the rank that exports the model.
        wait_for(encoder, ENCODER_WAIT_S, "rank 0 did not export the text encoder")

    def text_embeddings(self) -> TextEmbeddings | None:
        """The run's texts embedded by its encoder (earlier embeddings of this run reused), or None."""
        if not self.text_columns:
            return None
        texts = TextEmbeddings(TextEncoder(self.run_dir / RUN_TEXT_ENCODER))
        if (self.run_dir / RUN_TEXT_EMBEDDINGS).is_file():
            texts.load(self.run_dir / RUN_TEXT_EMBEDDINGS)
        return texts

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        if isinstance(self.source, TrainingSetDirectory):
            self.data = load_training_set(self.source.directory)
            self.log_facts = self.source.manifest.get("log_facts", {})
        elif self.settings.dataset_dir is not None:
            self.data = self.featurized_once(Path(self.settings.dataset_dir))
        else:
            self.data = self.featurize()
        self.stacked_trees = stack_trees(self.data, StackingSettings(**self.settings.stacking), self.settings.seed)

    def featurize(self) -> TrainingSet:
        """Read the log and featurize it (featurization fitted on the training customers only)."""
        events, customers = self.load_frames()
        self._customers = customers
        self.log_facts = log_facts(events, customers)  # for the model card
        rolling = self.settings.rolling_cutoffs
        texts = self.text_embeddings()
        data = build_training_set(
            events,
            customers,
            rolling_windows(self.window, int(rolling["count"]), float(rolling["step_days"])),
            self.grid,
            FeaturizerConfig(**self.settings.features),
            self.settings.val_fraction,
            self.settings.labels,
            texts,
            one_offer(self.source.campaign_table(), self.settings.offer),
        )
        self.save_text_embeddings(texts)
        return data

    def save_text_embeddings(self, texts: TextEmbeddings | None) -> None:
        """The run's embedded texts into its directory (rank 0), for the next featurization of this run."""
        if texts is not None and rank_zero_only.rank == 0:
            texts.save(self.run_dir / RUN_TEXT_EMBEDDINGS)

    def dataset_identity(self) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
        """The settings and inputs a featurized dataset of this run is keyed by."""
        settings = self.settings.featurization() | {"columns": asdict(self.source.columns)}
        inputs = [fingerprint(origin) for origin in self.source.origins()]
        if self.source.has_campaigns:  # their contacts are examples too (only then: other keys stay as they were)
            settings["offer"] = self.settings.offer
            inputs.append(fingerprint(self.source.campaign_table()))
        return settings, inputs

    def write_dataset(
        self,
        directory: Path,
        shard_examples: int = SHARD_EXAMPLES,
        identity: tuple[dict[str, Any], list[dict[str, Any] | None]] | None = None,
        build: PartitionedBuild | None = None,
        spill_dir: str | Path | None = None,
        spark: dict[str, Any] | None = None,
    ) -> None:
        """Featurize the log and write the training set to ``directory`` (``churnformer-featurize``'s format),
        with what reads the log again (its ``data.source`` config; None for DataFrames). ``identity``: the
        :meth:`dataset_identity` already computed (the inputs are hashed once). ``build``: featurize partition
        by partition within a memory budget (:mod:`churnformer.training.partitioned`; spill files under
        ``spill_dir``) rather than in memory; ``spark``: the same on Spark, with these settings (``master``,
        ``buckets``, ``conf``; :mod:`churnformer.spark.featurize`)."""
        settings, inputs = identity or self.dataset_identity()
        extra: dict[str, Any] = {"source": self.source_config, "columns": settings["columns"]}
        build = build or PartitionedBuild()
        if spark is None and not build.enabled:
            data = self.featurize()
            extra["log_facts"] = self.log_facts
            write_training_set(data, directory, settings, inputs, extra, shard_examples)
            return
        writer = TrainingSetWriter(directory, shard_examples)
        rolling = self.settings.rolling_cutoffs
        texts = self.text_embeddings() if spark is None else None  # Spark refuses text columns
        request = FeaturizeRequest(
            self.source,
            writer,
            rolling_windows(self.window, int(rolling["count"]), float(rolling["step_days"])),
            self.grid,
            FeaturizerConfig(**self.settings.features),
            self.settings.val_fraction,
            self.settings.labels,
            self.settings.sample_customers,
            build,
            texts,
            one_offer(self.source.campaign_table(), self.settings.offer),
        )
        if spark is not None:
            from churnformer.spark.featurize import featurize_with_spark  # the spark extra

            featurizer, grid, result, report = featurize_with_spark(request, spark)
        else:
            featurizer, grid, result, report = featurize_partitioned(request, spill_dir)
        self.save_text_embeddings(texts)
        self.log_facts = result.log_facts
        if result.fit_share < 1:  # another featurizer than the in-memory one: another dataset
            settings = settings | {"featurizer_fit_share": result.fit_share}
        extra |= {
            "log_facts": result.log_facts,
            "partitions": result.partitions,
            "featurizer_fit_share": result.fit_share,
        }
        if result.campaigns is not None:
            extra["campaigns"] = result.campaigns
        writer.close(featurizer, grid, self.settings.labels, report, settings, inputs, extra)

    def featurized_once(self, root: Path) -> TrainingSet:
        """The training set from ``root/<key>`` (``data.dataset_dir``), written there first if no run with these
        settings and inputs has; every run, the first included, then trains from the files."""
        settings, inputs = self.dataset_identity()
        directory = root / dataset_key(settings, inputs)
        log = logging.getLogger(__name__)
        if (directory / MANIFEST).is_file():
            log.info("data.dataset_dir: training from %s, featurized before", directory)
        elif rank_zero_only.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=root))
            try:
                self.write_dataset(staging, identity=(settings, inputs))
            except BaseException:  # leave nothing half-written
                shutil.rmtree(staging, ignore_errors=True)
                raise
            try:
                staging.rename(directory)  # atomic
            except OSError:  # a concurrent run with the same key wrote it first
                shutil.rmtree(staging, ignore_errors=True)
            log.info("data.dataset_dir: featurized into %s", directory)
        else:
            wait_for(directory / MANIFEST, DATASET_WAIT_S, "rank 0 did not finish featurizing")
        self.log_facts = read_manifest(directory).get("log_facts", {})
        return load_training_set(directory)

    @property
    def customers(self) -> pd.DataFrame | None:
        """The static attributes (slices of the validation report); read from the source when training did not."""
        if self._customers is None:
            self._customers = self.load_frames()[1]
        return self._customers

    def load_frames(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The standard events and customers frames of the source, of the customers the run trains on
        (``data.sample_customers``; everyone by default): what training reads and what is scored after it."""
        events, customers = self.source.load()
        sample = self.settings.sample_customers
        if sample is None:
            return events, customers
        kept = sampled_customers(events[CUSTOMER_ID].to_numpy(), sample)
        if rank_zero_only.rank == 0:
            logging.getLogger(__name__).info(
                "data.sample_customers=%s: %d of %d customers", sample, len(kept), events[CUSTOMER_ID].nunique()
            )
        events = events.loc[events[CUSTOMER_ID].isin(kept).to_numpy()]
        if customers is not None:
            customers = customers.loc[customers[CUSTOMER_ID].isin(kept).to_numpy()]
        return events, customers

    def _loader(self, rows: np.ndarray, shuffle: bool, sharded: bool = True) -> DataLoader:
        dataset = SequenceDataset(self.data, rows)
        trainer = self.trainer if sharded else None
        sampler = LengthBucketBatchSampler(
            self.data.sequences.lengths[rows],
            self.settings.batch_size,
            shuffle=shuffle,
            seed=self.settings.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            batch_tokens=self.settings.batch_tokens,
        )
        # Its own generator: iterating a loader otherwise draws a seed from the global torch RNG, and a resumed
        # run starts its iteration at another point of that stream than the uninterrupted run (dropout masks).
        generator = torch.Generator().manual_seed(self.settings.seed)
        # Page-locked batches on a GPU: Lightning's transfer to the device is then asynchronous (non_blocking).
        pin = trainer is not None and trainer.strategy.root_device.type == "cuda"
        return DataLoader(
            dataset, batch_sampler=sampler, collate_fn=dataset.collate, generator=generator, pin_memory=pin
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.data.train_rows, shuffle=True)
        self._train_sampler = loader.batch_sampler
        if self._train_sampler_state is not None:
            self._train_sampler.load_state_dict(self._train_sampler_state)
            self._train_sampler_state = None
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data.val_rows, shuffle=False)

    def uplift_loader(self) -> DataLoader | None:
        """The validation customers' contacts (trained with campaigns), where the predicted effects are judged;
        None without campaigns."""
        rows = self.data.uplift_rows
        return None if rows is None or not len(rows) else self._loader(rows, shuffle=False, sharded=False)

    def validation_loader(self) -> DataLoader:
        """Every validation customer on this process (not split across DDP ranks): final evaluation and
        calibration."""
        return self._loader(self.data.val_rows, shuffle=False, sharded=False)

    def main_training_loader(self) -> DataLoader:
        """Every training customer at the main cutoff (no rolling-cutoff copies) on this process: the
        calibration levels."""
        return self._loader(self.data.main_train_rows, shuffle=False, sharded=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training epoch stands, so a run resumed from a mid-epoch checkpoint
        continues with the next batch instead of replaying the epoch from its start.

        The datamodule carries it, not the loader: Lightning 2.x drops a loader's own state on resume when
        ``configure_optimizers`` reads ``trainer.estimated_stepping_batches`` (Lightning issue 20550)."""
        return {"train_sampler": self._train_sampler.state_dict()} if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Restored before the training loader exists; train_dataloader() applies it.
        self._train_sampler_state = state_dict.get("train_sampler")
