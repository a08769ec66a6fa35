"""The datamodule's split: rolling cutoffs add training examples only; calibration sees whole populations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from churnformer.datamodule import ChurnDataModule
from tests.conftest import TINY_CUTOFF


@pytest.fixture(scope="module")
def datamodule(tiny_world: tuple[Path, Path]) -> ChurnDataModule:
    events, customers = tiny_world
    module = ChurnDataModule(
        source="file",
        cutoff=TINY_CUTOFF,
        horizon_days=60,
        events=str(events),
        customers=str(customers),
        rolling_cutoffs={"count": 2, "step_days": 30},
        batch_size=64,
    )
    module.setup("fit")
    return module


def loaded_rows(loader) -> np.ndarray:
    """The dataset rows a loader serves, in order."""
    return np.concatenate([loader.dataset.rows[list(batch)] for batch in loader.batch_sampler])


def test_earlier_cutoffs_add_examples_of_training_customers_only(datamodule: ChurnDataModule) -> None:
    ids = datamodule.sequences.customer_ids
    assert (datamodule.val_rows < datamodule.main_count).all()
    assert set(ids[datamodule.val_rows]).isdisjoint(ids[datamodule.train_rows])
    main_training = (datamodule.train_rows < datamodule.main_count).sum()
    assert len(datamodule.train_rows) > main_training  # the earlier cutoffs did add examples


def test_calibration_loaders_hold_each_main_cutoff_customer_once_on_every_rank(datamodule: ChurnDataModule) -> None:
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2)  # as under two-process DDP
    try:
        sharded = loaded_rows(datamodule.val_dataloader())
        validation, training = (loaded_rows(loader) for loader in datamodule.calibration_dataloaders())
    finally:
        datamodule.trainer = None
    assert len(sharded) < len(datamodule.val_rows)  # Lightning's loader is this rank's share
    assert sorted(validation) == sorted(datamodule.val_rows)
    ids = datamodule.sequences.customer_ids
    assert (training < datamodule.main_count).all()
    assert len(set(ids[training])) == len(training)
    assert set(ids[training]) | set(ids[validation]) == set(ids[: datamodule.main_count])
