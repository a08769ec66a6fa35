"""``churnformer-featurize engine=spark``: Spark's buckets write the dataset the local partitioned build writes,
example for example (labels, splits, featurizer, every padded input, the manifest's counts and facts)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from churnformer.data import parts
from churnformer.data.parts import PartitionedBuild
from churnformer.data.sources import EventLogFiles
from churnformer.data.store import MANIFEST, load_training_set
from churnformer.errors import ConfigError
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from tests.conftest import CAMPAIGN_CUTOFF, SPARK_TESTS, TINY_CUTOFF
from tests.test_partitioned import AGGREGATES, assert_same_training_set

pytest.importorskip("pyspark", reason="the spark extra is not installed (pip install -e '.[dev]' installs it)")
pytestmark = SPARK_TESTS
SPARK = {"master": None, "buckets": 3, "conf": {}}


def datamodule(source: EventLogFiles, tmp_path: Path, **changes: object) -> ChurnDataModule:
    features = {**DataSettings.defaults().features, "aggregates": AGGREGATES}
    settings = DataSettings.defaults(cutoff=TINY_CUTOFF, features=features, **changes)
    return ChurnDataModule(source, settings, tmp_path / "run")


def test_a_csv_log_with_its_own_column_names(spark: object, tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, customers = tiny_world
    renamed = pd.read_csv(events).rename(columns={"customer_id": "client", "timestamp": "at"})
    renamed.to_csv(tmp_path / "events.csv", index=False)
    pd.read_csv(customers).rename(columns={"customer_id": "client"}).to_csv(tmp_path / "customers.csv", index=False)
    source = EventLogFiles(
        tmp_path / "events.csv", tmp_path / "customers.csv", {"customer_id": "client", "timestamp": "at"}
    )
    module = datamodule(source, tmp_path)
    module.write_dataset(tmp_path / "local", 100, build=PartitionedBuild(partitions=2))
    module.write_dataset(tmp_path / "spark", 100, spark=SPARK)
    assert_same_training_set(tmp_path / "local", tmp_path / "spark")
    manifest = json.loads((tmp_path / "spark" / MANIFEST).read_text())
    assert manifest["partitions"] == 3 and all(s["name"].startswith("shard-b") for s in manifest["shards"])


def test_a_sample_of_customers_and_a_featurizer_fitted_on_a_sample(
    spark: object, tiny_world: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet, ``data.sample_customers``, and a budget that holds only part of the customers' events for the fit:
    the same share, the same rows in the same order, so the same featurizer."""
    events, customers = tiny_world
    pd.read_csv(events, dtype={"customer_id": str}).to_parquet(tmp_path / "events.parquet")
    monkeypatch.setattr(parts, "FIT_BYTES_PER_EVENT", 2**16)  # 1,000 MB: ~1,600 events for the fit
    source = EventLogFiles(tmp_path / "events.parquet", customers, {})
    module = datamodule(source, tmp_path, sample_customers=0.7)
    budget = PartitionedBuild(memory_budget_mb=1000)
    module.write_dataset(tmp_path / "local", 100, build=budget)
    module.write_dataset(tmp_path / "spark", 100, build=budget, spark=SPARK)
    local = json.loads((tmp_path / "local" / MANIFEST).read_text())
    assert local["featurizer_fit_share"] < 1
    assert_same_training_set(tmp_path / "local", tmp_path / "spark", fit_share=local["featurizer_fit_share"])


def test_campaign_contacts_are_featurized_in_their_customers_buckets(
    spark: object, campaign_world: dict[str, Path], tmp_path: Path
) -> None:
    """data.campaigns: each contact an example of its customer's bucket, with its arm, as the local build
    makes it (which equals the in-memory one, tests/test_campaigns.py)."""
    world = campaign_world
    source = EventLogFiles(world["events"], world["customers"], {}, world["campaigns"])
    settings = DataSettings.defaults(cutoff=CAMPAIGN_CUTOFF, horizon_days=60, horizons_days=[30, 60])
    module = ChurnDataModule(source, settings, tmp_path / "run")
    module.write_dataset(tmp_path / "local", 100, build=PartitionedBuild(partitions=2))
    module.write_dataset(tmp_path / "spark", 100, spark=SPARK)
    assert_same_training_set(tmp_path / "local", tmp_path / "spark")
    stored = load_training_set(tmp_path / "spark")
    assert stored.campaigns["contacts"] > 0 and (stored.treated >= 0).sum() > 0


def test_text_columns_are_refused_with_what_to_do(tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    features = {**DataSettings.defaults().features, "text": ["note"]}
    module = ChurnDataModule(
        EventLogFiles(*tiny_world, {}), DataSettings.defaults(cutoff=TINY_CUTOFF, features=features), tmp_path
    )
    with pytest.raises(ConfigError, match="Spark does not embed texts yet; featurize on this machine"):
        module.write_dataset(tmp_path / "out", spark=SPARK)
