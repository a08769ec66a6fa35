"""The datamodule's split: rolling cutoffs add training examples only; calibration sees whole populations."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from churnformer.data.sources import EventLogFiles
from churnformer.data.training_set import sampled_customers
from churnformer.errors import ConfigError
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from tests.conftest import TINY_CUTOFF


def data_settings(**changes) -> DataSettings:
    """``conf/data/settings/default.yaml`` with ``changes``."""
    return DataSettings.defaults(**{"seed": 0, **changes})


@pytest.fixture(scope="module")
def datamodule(tiny_world: tuple[Path, Path]) -> ChurnDataModule:
    events, customers = tiny_world
    source = EventLogFiles(events, customers, {})
    settings = data_settings(
        cutoff=TINY_CUTOFF, horizon_days=60, rolling_cutoffs={"count": 2, "step_days": 30}, batch_size=64
    )
    module = ChurnDataModule(source, settings)
    module.setup("fit")
    return module


def loaded_rows(loader) -> np.ndarray:
    """The dataset rows a loader serves, in order."""
    return np.concatenate([loader.dataset.rows[list(batch)] for batch in loader.batch_sampler])


def test_earlier_cutoffs_add_examples_of_training_customers_only(datamodule: ChurnDataModule) -> None:
    data = datamodule.data
    ids = data.sequences.customer_ids
    assert (data.val_rows < data.main_count).all()
    assert set(ids[data.val_rows]).isdisjoint(ids[data.train_rows])
    assert len(data.train_rows) > len(data.main_train_rows)  # the earlier cutoffs did add examples


def test_calibration_loaders_hold_each_main_cutoff_customer_once_on_every_rank(datamodule: ChurnDataModule) -> None:
    cpu = SimpleNamespace(root_device=torch.device("cpu"))
    datamodule.trainer = SimpleNamespace(global_rank=0, world_size=2, strategy=cpu)  # as under two-process DDP
    try:
        sharded = loaded_rows(datamodule.val_dataloader())
        validation = loaded_rows(datamodule.validation_loader())
        training = loaded_rows(datamodule.main_training_loader())
    finally:
        datamodule.trainer = None
    data = datamodule.data
    assert len(sharded) < len(data.val_rows)  # Lightning's loader is this rank's share
    assert sorted(validation) == sorted(data.val_rows)
    ids = data.sequences.customer_ids
    assert (training < data.main_count).all()
    assert len(set(ids[training])) == len(training)
    assert set(ids[training]) | set(ids[validation]) == set(ids[: data.main_count])


def test_a_sampled_fraction_agrees_customer_by_customer_whatever_else_is_in_the_log() -> None:
    ids = np.array([f"c{i}" for i in range(5000)])
    half, third = sampled_customers(ids, 0.5), sampled_customers(ids, 0.3)
    assert abs(len(half) - 2500) < 150 and set(third) <= set(half)  # a larger fraction keeps the smaller's
    part = ids[::7][::-1]  # a shard of the log, in another order
    np.testing.assert_array_equal(sampled_customers(part, 0.5), np.intersect1d(half, part))
    np.testing.assert_array_equal(sampled_customers(ids, 1.0), np.sort(ids))
    counted = sampled_customers(ids, 100)
    assert len(counted) == 100 and np.array_equal(counted, sampled_customers(ids[::-1], 100))


@pytest.mark.parametrize("bad", [0, -3, 1.5, "half", True])
def test_a_bad_sample_is_named(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"data\.sample_customers"):
        sampled_customers(np.array(["a", "b"]), bad)


def test_a_run_on_a_sample_trains_and_validates_on_those_customers_only(tiny_world: tuple[Path, Path]) -> None:
    events, customers = tiny_world
    settings = data_settings(cutoff=TINY_CUTOFF, horizon_days=60, batch_size=64, sample_customers=0.5)
    module = ChurnDataModule(EventLogFiles(events, customers, {}), settings)
    module.setup("fit")
    everyone = pd.read_csv(events, dtype={"customer_id": str})["customer_id"].unique()
    sample = set(sampled_customers(everyone, 0.5))
    assert set(module.data.sequences.customer_ids) <= sample and len(set(module.data.sequences.customer_ids)) > 100
    assert set(module.customers["customer_id"]) <= sample
