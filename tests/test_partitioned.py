"""Featurizing in bounded memory (``churnformer-featurize memory_budget_mb=... | partitions=N``): partition by
partition of the customers, the shards hold exactly the in-memory training set while the featurizer is fitted
on every customer; a log too large for the budget fits it on a hash sample of whole customers, and says so."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data import parts
from churnformer.data.events import CUSTOMER_ID, load_events
from churnformer.data.parts import PartitionedBuild, fit_bucket
from churnformer.data.sources import EventLogFiles, SyntheticWorld
from churnformer.data.store import MANIFEST, load_training_set
from churnformer.data.synthetic import SyntheticWorldConfig
from churnformer.errors import ConfigError
from churnformer.schema import EVENT_TEXT, RUN_TEXT_ENCODER, TEXT_EMBEDDINGS
from churnformer.training import partitioned
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from churnformer.training.partitioned import LogPass
from tests.conftest import TINY_CUTOFF

AGGREGATES = {"enabled": True, "windows_days": [30, 90], "top_values": 4}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SyntheticWorld:
    """600 customers of the synthetic world, as Parquet."""
    world = SyntheticWorld(
        tmp_path_factory.mktemp("world"), asdict(SyntheticWorldConfig.with_defaults(n_customers=600, seed=4))
    )
    world.prepare()
    return world


@pytest.fixture(scope="module")
def world(source: SyntheticWorld) -> Path:
    return source.directory


@pytest.fixture(scope="module")
def in_memory(source: SyntheticWorld, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's training set featurized in memory, as churnformer-train builds it."""
    directory = tmp_path_factory.mktemp("memory")
    datamodule(source, directory).write_dataset(directory / "dataset", 500)
    return directory / "dataset"


def datamodule(source: SyntheticWorld | EventLogFiles, tmp_path: Path, **changes: object) -> ChurnDataModule:
    features = {**DataSettings.defaults().features, "aggregates": AGGREGATES}
    settings = DataSettings.defaults(cutoff="2024-06-30", features=features, **changes)
    return ChurnDataModule(source, settings, tmp_path / "run")


def assert_same_training_set(expected: Path, actual: Path, fit_share: float = 1) -> None:
    """The same examples in the same order: labels, splits, featurizer, every padded input (each event's text by
    its vector: the table's rows are numbered in the order texts were met); the same manifest but for how the
    shards were cut (and how many partitions or buckets cut them), the featurizer fitted on ``fit_share`` of the
    customers."""
    a, b = load_training_set(expected), load_training_set(actual)
    every = np.arange(len(a.sequences))
    pd.testing.assert_frame_equal(b.label_frame(every), a.label_frame(every))
    assert b.featurizer.to_json() == a.featurizer.to_json()
    np.testing.assert_array_equal(b.train_rows, a.train_rows)
    np.testing.assert_array_equal(b.val_rows, a.val_rows)
    np.testing.assert_array_equal(b.cutoffs, a.cutoffs)
    for name in ("treated", "uplift_rows"):  # with campaigns: each example's arm, the contacts judged on
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    padded_a, padded_b = a.sequences.pad(), b.sequences.pad()
    if TEXT_EMBEDDINGS in padded_a:
        vectors_a = padded_a.pop(TEXT_EMBEDDINGS)[padded_a.pop(EVENT_TEXT)]
        np.testing.assert_array_equal(padded_b.pop(TEXT_EMBEDDINGS)[padded_b.pop(EVENT_TEXT)], vectors_a)
    assert padded_b.keys() == padded_a.keys()
    for name in padded_a:
        np.testing.assert_array_equal(padded_b[name], padded_a[name], err_msg=name)
    manifest_a = json.loads((expected / MANIFEST).read_text())
    manifest_b = json.loads((actual / MANIFEST).read_text())
    assert manifest_b["featurizer_fit_share"] == fit_share
    for key in set(manifest_a) - {"shards", "partitions"}:
        assert manifest_b[key] == manifest_a[key], key


def test_partitions_hold_exactly_the_in_memory_training_set(
    source: SyntheticWorld, in_memory: Path, tmp_path: Path
) -> None:
    module = datamodule(source, tmp_path)
    module.write_dataset(tmp_path / "partitioned", 500, build=PartitionedBuild(partitions=3), spill_dir=tmp_path)
    assert_same_training_set(in_memory, tmp_path / "partitioned")
    assert json.loads((tmp_path / "partitioned" / MANIFEST).read_text())["partitions"] == 3
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith("churnformer-spill-")] == []


@pytest.mark.slow  # two more featurizations of the world: the full suite runs it
def test_a_csv_log_read_in_chunks_gives_the_same_training_set(
    world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV read a few thousand rows at a time (each chunk's types inferred on its own), with other column
    names, and a sample of the customers (``data.sample_customers``)."""
    events = pd.read_parquet(world / "events.parquet").rename(columns={"customer_id": "client", "amount": "value"})
    events.to_csv(tmp_path / "events.csv", index=False)
    columns = {"customer_id": "client", "amount": "value"}
    customers = pd.read_parquet(world / "customers.parquet").rename(columns={"customer_id": "client"})
    customers.to_csv(tmp_path / "customers.csv", index=False)
    source = EventLogFiles(tmp_path / "events.csv", tmp_path / "customers.csv", columns)
    monkeypatch.setattr(partitioned, "CHUNK_ROWS", 7_000)
    module = datamodule(source, tmp_path, sample_customers=0.5)
    module.write_dataset(tmp_path / "memory", 500)
    module.write_dataset(tmp_path / "partitioned", 500, build=PartitionedBuild(partitions=2))
    assert_same_training_set(tmp_path / "memory", tmp_path / "partitioned")


def test_the_fit_sample_halves_until_it_fits_and_keeps_whole_customers(world: Path) -> None:
    events = load_events(world / "events.parquet")
    sample = LogPass()
    cap = len(events) // 5
    for start in range(0, len(events), 10_000):
        sample.add(events.iloc[start : start + 10_000], cap)
    kept = pd.concat(sample.fit_events)
    assert sample.fit_buckets in (8, 16) and len(kept) <= cap and sample.events == len(events)
    chosen = fit_bucket(events[CUSTOMER_ID], sample.fit_buckets) == 0
    assert set(kept[CUSTOMER_ID]) == set(events.loc[chosen, CUSTOMER_ID])
    assert len(kept) == int(chosen.sum())  # every event of every sampled customer


@pytest.mark.slow  # featurizes the log twice
def test_a_budget_too_small_for_the_log_fits_on_a_sample_and_names_it(
    source: SyntheticWorld, in_memory: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The featurizer of a sample is another featurizer: the manifest gives its share, and the key differs from
    the in-memory dataset's; the examples and labels are the same (they do not depend on the featurizer)."""
    monkeypatch.setattr(parts, "FIT_BYTES_PER_EVENT", 2**18)  # 1,000 MB, 100 over the base: fit ~400 events...
    monkeypatch.setattr(parts, "BUILD_BYTES_PER_EVENT", 2**14)  # ...and ~6,000 per partition
    datamodule(source, tmp_path).write_dataset(tmp_path / "budget", 500, build=PartitionedBuild(memory_budget_mb=1000))
    manifest = json.loads((tmp_path / "budget" / MANIFEST).read_text())
    memory = json.loads((in_memory / MANIFEST).read_text())
    assert manifest["featurizer_fit_share"] < 1 and manifest["partitions"] > 1
    assert manifest["settings"]["featurizer_fit_share"] == manifest["featurizer_fit_share"]
    assert manifest["key"] != memory["key"]
    sampled, everyone = load_training_set(tmp_path / "budget"), load_training_set(in_memory)
    every = np.arange(len(everyone.sequences))
    pd.testing.assert_frame_equal(sampled.label_frame(every), everyone.label_frame(every))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        ({"partitions": 0}, "partitions=0"),
        ({"memory_budget_mb": 500}, "memory_budget_mb=500 is below"),
    ],
)
def test_impossible_settings_are_named(build: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PartitionedBuild(**build)


@pytest.mark.slow  # embeds the world's texts: the full suite runs it
def test_a_text_log_in_partitions_embeds_each_event_s_text_as_in_memory(
    text_world: tuple[Path, Path], text_run: Path, tmp_path: Path
) -> None:
    """One table of embedded texts for every partition: each event reads the vector it reads in memory."""
    features = {**DataSettings.defaults().features, "text": ["text"], "max_len": 32}
    settings = DataSettings.defaults(cutoff=TINY_CUTOFF, horizon_days=60, features=features)
    module = ChurnDataModule(EventLogFiles(*text_world, {}), settings, tmp_path / "run")
    # The sentence encoder text_run exported (its texts not: every text is embedded here).
    (tmp_path / "run").mkdir()
    shutil.copy(text_run / RUN_TEXT_ENCODER, tmp_path / "run" / RUN_TEXT_ENCODER)
    module.prepare_data()  # finds the encoder in the run directory
    module.write_dataset(tmp_path / "memory", 300)
    module.write_dataset(tmp_path / "partitioned", 300, build=PartitionedBuild(partitions=3))
    assert_same_training_set(tmp_path / "memory", tmp_path / "partitioned")
