"""A training set on disk (``churnformer-featurize``, ``data.dataset_dir``, ``data=dataset``): written and read
back it is the same training set (the same batches); a run trained from it equals the run trained in memory;
a second run with the same settings and inputs reuses it; a dataset's own settings cannot be contradicted."""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import load_customers, load_events
from churnformer.data.featurizer import FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.sharded import ShardedSequences
from churnformer.data.store import MANIFEST, dataset_key, load_training_set, read_manifest, write_training_set
from churnformer.data.synthetic import SyntheticWorldConfig, generate_world
from churnformer.data.training_set import TrainingSet, build_training_set, rolling_windows
from churnformer.data.window import HorizonGrid, Window
from churnformer.errors import ConfigError, InputError
from churnformer.schema import LABELS_BY_HORIZON
from tests.conftest import TINY_CUTOFF, TRAIN_OVERRIDES, train_in_process


@pytest.fixture(scope="module")
def training_set() -> TrainingSet:
    """1,500 customers, the main cutoff and two earlier ones, the default features with aggregates."""
    events, customers = generate_world(SyntheticWorldConfig.with_defaults(n_customers=1500, seed=4))
    window = Window.from_cutoff("2024-06-30", 90)
    features = FeaturizerConfig.with_defaults(aggregates={"enabled": True, "windows_days": [30, 90], "top_values": 4})
    return build_training_set(
        load_events(events),
        load_customers(customers),
        rolling_windows(window, 2, 30),
        HorizonGrid.of([30, 90, 180], 90),
        features,
        0.2,
        LabelSpec(),
    )


@pytest.fixture(scope="module")
def stored(training_set: TrainingSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TrainingSet]:
    directory = tmp_path_factory.mktemp("dataset")
    write_training_set(training_set, directory, {"cutoff": "2024-06-30"}, [{"sha256": "0"}], shard_examples=700)
    return directory, load_training_set(directory)


def test_a_stored_training_set_reads_back_as_the_same_examples(
    training_set: TrainingSet, stored: tuple[Path, TrainingSet]
) -> None:
    _, back = stored
    assert isinstance(back.sequences, ShardedSequences)
    np.testing.assert_array_equal(back.train_rows, training_set.train_rows)
    np.testing.assert_array_equal(back.val_rows, training_set.val_rows)
    assert back.main_count == training_set.main_count and back.grid == training_set.grid
    assert back.spec == training_set.spec
    assert back.featurizer.to_json() == training_set.featurizer.to_json()
    every = np.arange(len(training_set.sequences))
    pd.testing.assert_frame_equal(back.label_frame(every), training_set.label_frame(every).reset_index(drop=True))
    for label in LABELS_BY_HORIZON:
        np.testing.assert_array_equal(back.by_horizon(label)[every], training_set.by_horizon(label), err_msg=label)
    assert back.label_stats() == training_set.label_stats()
    assert back.aggregate_quantiles() == training_set.aggregate_quantiles()
    # Batches across shard boundaries, in any order, padded wider than their longest history.
    rows = np.random.default_rng(0).permutation(len(training_set.sequences))[:400]
    expected, actual = training_set.sequences.pad(rows, width=140), back.sequences.pad(rows, width=140)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_views_and_subsets_come_from_the_shards_as_from_memory(
    training_set: TrainingSet, stored: tuple[Path, TrainingSet]
) -> None:
    _, back = stored
    long = np.flatnonzero(back.sequences.lengths >= 3)
    first, last, next_shard = long[0], long[long < 700][-1], long[long >= 700][0]
    rows = np.array([first, last, next_shard, first, long[-1]])  # one example twice; across shards
    starts, lengths = np.array([0, 0, 1, 1, 0]), np.full(5, 2)
    for expected, actual in (
        (training_set.sequences.slices(rows, starts, lengths), back.sequences.slices(rows, starts, lengths)),
        (training_set.sequences.subset(rows), back.sequences.subset(rows)),
    ):
        np.testing.assert_array_equal(actual.offsets, expected.offsets)
        for name in expected.events:
            np.testing.assert_array_equal(actual.events[name], expected.events[name])
        for name in expected.customers:
            np.testing.assert_array_equal(actual.customers[name], expected.customers[name])


def test_reading_maps_no_shard_and_a_loader_process_reads_the_same(
    training_set: TrainingSet, stored: tuple[Path, TrainingSet]
) -> None:
    """Batches are read with pread, not mapped (a mapped page would count in the process's memory); a copy sent
    to a loader worker (pickled, without the open descriptors) reads the same batches; a few rows (one read each)
    and many (a shard's whole column) read alike."""
    directory, back = stored
    few, many = np.array([3, len(training_set.sequences) - 1, 700]), np.arange(0, len(training_set.sequences), 3)
    for rows in (few, many):
        expected = training_set.sequences.pad(rows)
        for sequences in (back.sequences, pickle.loads(pickle.dumps(back.sequences))):
            actual = sequences.pad(rows)
            for name in expected:
                np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)
    assert str(directory) not in Path("/proc/self/maps").read_text()


def test_a_dropped_training_set_closes_its_shard_files(stored: tuple[Path, TrainingSet]) -> None:
    directory, _ = stored

    def open_shards() -> int:
        return sum(str(directory) in os.path.realpath(fd) for fd in Path("/proc/self/fd").iterdir())

    before = open_shards()  # the module's own copy may hold some
    back = load_training_set(directory)
    back.sequences.pad(np.arange(0, len(back.sequences), 97))
    assert open_shards() > before
    del back
    gc.collect()
    assert open_shards() == before


def test_a_truncated_shard_is_named(
    training_set: TrainingSet, stored: tuple[Path, TrainingSet], tmp_path: Path
) -> None:
    directory, _ = stored
    copy = tmp_path / "dataset"
    shutil.copytree(directory, copy)
    back = load_training_set(copy)
    events = copy / "shard-00000.events.arrow"
    events.write_bytes(events.read_bytes()[:200])
    with pytest.raises(InputError, match=r"shard-00000\.events\.arrow: shorter than"):
        back.sequences.pad(np.arange(0, 600, 50))


def test_a_log_without_a_customer_table_stores_its_empty_attribute_arrays(tmp_path: Path) -> None:
    """No static attributes: customer arrays with no values per row (Arrow has no empty fixed-size list)."""
    events, _ = generate_world(SyntheticWorldConfig.with_defaults(n_customers=300, seed=5))
    window = Window.from_cutoff("2024-06-30", 90)
    grid, features = HorizonGrid.of([90], 90), FeaturizerConfig.with_defaults()
    data = build_training_set(load_events(events), None, [window], grid, features, 0.2, LabelSpec())
    assert any(values.shape[1] == 0 for values in data.sequences.customers.values())
    write_training_set(data, tmp_path, {}, [])
    back = load_training_set(tmp_path)
    rows = np.arange(len(data.sequences))
    expected, actual = data.sequences.pad(rows), back.sequences.pad(rows)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_the_manifest_counts_what_the_shards_hold(training_set: TrainingSet, stored: tuple[Path, TrainingSet]) -> None:
    directory, _ = stored
    manifest = read_manifest(directory)
    examples = len(training_set.sequences)
    assert manifest["examples"] == examples == sum(shard["examples"] for shard in manifest["shards"])
    assert len(manifest["shards"]) == -(-examples // 700)
    assert manifest["events"] == int(training_set.sequences.lengths.sum())
    assert sum(manifest["lengths_histogram"].values()) == examples
    assert manifest["training_examples"] + manifest["validation_examples"] == examples
    assert manifest["key"] == dataset_key({"cutoff": "2024-06-30"}, [{"sha256": "0"}])


def test_the_key_follows_settings_and_contents_not_paths() -> None:
    settings, inputs = {"cutoff": "2024-06-30"}, [{"path": "/a/events.csv", "sha256": "1", "bytes": 9}]
    moved = [{"path": "/b/events.csv", "sha256": "1", "bytes": 9}]
    assert dataset_key(settings, inputs) == dataset_key(settings, moved)
    assert dataset_key(settings, inputs) != dataset_key({"cutoff": "2024-05-31"}, inputs)
    assert dataset_key(settings, inputs) != dataset_key(
        settings, [{"path": "/a/events.csv", "sha256": "2", "bytes": 9}]
    )


def test_a_directory_without_a_manifest_or_of_another_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a training-set directory"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(InputError, match="something-else/9"):
        read_manifest(tmp_path)


@pytest.mark.slow
def test_a_run_from_its_dataset_equals_the_run_in_memory_and_a_second_run_reuses_it(
    tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    """Same config and seed: the same batches, so the same metrics to the last bit; the second run with the same
    settings and inputs reads the dataset the first wrote (no second featurization). The metrics are the best
    checkpoint's, computed before calibration and export: the runs leave both out (trained_run keeps them on)."""
    events, customers = tiny_world
    overrides = (
        *TRAIN_OVERRIDES,
        f"data.events={events}",
        f"data.customers={customers}",
        "calibrate=false",
        "export=false",
    )
    in_memory = train_in_process(tmp_path / "memory", *overrides)
    datasets = tmp_path / "datasets"
    first = train_in_process(tmp_path / "first", *overrides, f"data.dataset_dir={datasets}")
    (directory,) = [path for path in datasets.iterdir() if not path.name.startswith(".")]
    written = (directory / MANIFEST).stat().st_mtime_ns
    second = train_in_process(tmp_path / "second", *overrides, f"data.dataset_dir={datasets}")
    assert first == in_memory and second == in_memory
    assert (directory / MANIFEST).stat().st_mtime_ns == written
    manifest = read_manifest(directory)
    assert manifest["settings"]["cutoff"] == TINY_CUTOFF and manifest["source"]["events"] == str(events)
    # Another cutoff is another training set (one epoch: only the dataset it writes is looked at).
    third = (f"data.dataset_dir={datasets}", "data.cutoff=2023-08-31", "trainer.max_epochs=1")
    train_in_process(tmp_path / "third", *overrides, *third)
    assert len([path for path in datasets.iterdir() if not path.name.startswith(".")]) == 2


@pytest.mark.slow
def test_churnformer_featurize_then_train_from_the_dataset(
    tiny_world: tuple[Path, Path], trained_run: Path, tmp_path: Path
) -> None:
    """The console script writes the dataset, partition by partition of the CSV log read in chunks;
    ``data=dataset`` trains from it with the dataset's own cutoff and horizons to the in-memory run's metrics
    (``trained_run``: the same settings on the same log), and reads the log it was built from for what follows
    training."""
    from hydra import compose, initialize_config_module

    from churnformer.training.featurize import featurize

    events, customers = tiny_world
    log = [*TRAIN_OVERRIDES, f"data.events={events}", f"data.customers={customers}"]
    with initialize_config_module("churnformer.conf", version_base="1.3"):
        featurize(
            compose(
                "featurize", overrides=[*log, f"output={tmp_path / 'dataset'}", "shard_examples=150", "partitions=2"]
            )
        )
    manifest = read_manifest(tmp_path / "dataset")
    assert len(manifest["shards"]) > 2 and manifest["partitions"] == 2 and manifest["featurizer_fit_share"] == 1
    # The same command line without the log: the dataset's own cutoff, horizons and features.
    rest = [o for o in TRAIN_OVERRIDES if not o.startswith(("data=", "data.cutoff"))]
    from_dataset = train_in_process(tmp_path / "run", "data=dataset", f"data.path={tmp_path / 'dataset'}", *rest)
    assert from_dataset == json.loads((trained_run / "metrics.json").read_text())
    assert (tmp_path / "run" / "predictions.parquet").is_file()  # scored the log the dataset came from
    with pytest.raises(ConfigError, match="featurized at"):
        train_in_process(
            tmp_path / "bad", "data=dataset", f"data.path={tmp_path / 'dataset'}", "data.cutoff=2023-01-31"
        )
