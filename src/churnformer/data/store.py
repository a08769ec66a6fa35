"""A training set on disk: shards of ragged arrays (Arrow IPC) and a manifest, written once and trained from many
times (``churnformer-featurize``, ``data.dataset_dir``, ``data=dataset``).

A directory holds ``manifest.json`` and, per shard of at most ``shard_examples`` consecutive examples (the
training set's own order: the customers at the main cutoff sorted by id, then each earlier cutoff's training
customers), ``shard-NNNNN.examples.arrow`` (one row per example: customer id, length, validation flag, customer
inputs, labels) and ``shard-NNNNN.events.arrow`` (the examples' events back to back: one row per event, one
column per event input). Files are uncompressed Arrow IPC, so a reader finds each example's values at a
byte offset and reads just those (:mod:`churnformer.data.sharded`); a text model's embedded texts are
``text_table.npy``.

The manifest records the featurization state (the featurizer, the horizon grid, what a purchase and a churn
are), the counts and a histogram of lengths, the settings the set was built with and the input files' hashes:
its ``key`` names what would build the same set again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from churnformer import __version__
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.featurizer import Featurizer
from churnformer.data.labels import ChurnDefinition, LabelSpec
from churnformer.data.sequences import BuildReport, Sequences
from churnformer.data.sharded import (
    Placement,
    ShardedArray,
    ShardedLabels,
    ShardedSequences,
    ShardFile,
    StoredColumn,
)
from churnformer.data.training_set import TrainingSet
from churnformer.data.window import HorizonGrid
from churnformer.errors import InputError
from churnformer.schema import LABELS_BY_HORIZON, per_horizon

FORMAT = "churnformer-training-set/2"
MANIFEST = "manifest.json"
TEXT_TABLE = "text_table.npy"
# Examples per shard: a few hundred MB of events at most for the longest histories (max_len 128 events each).
SHARD_EXAMPLES = 50_000
_LENGTH_COLUMN, _TOTAL_COLUMN, _VALIDATION_COLUMN = "length", "n_events_total", "is_validation"
_CUTOFF_COLUMN = "cutoff"
# With campaigns only: per example its arm (data.campaigns.contact_arm; -1: no contact); a validation customer's
# contacts are flagged validation (what the predicted effects are judged on), not trained on.
_ARM_COLUMN = "arm"


def dataset_key(settings: dict[str, Any], inputs: list[dict[str, Any] | None]) -> str:
    """What identifies a training set: the settings it is built from and its inputs' contents, not where they
    are (and the format and package version that wrote it). 16 hex digits of a SHA-256."""
    contents = [None if i is None else {k: v for k, v in i.items() if k != "path"} for i in inputs]
    payload = {"format": FORMAT, "version": __version__, "settings": settings, "inputs": contents}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _columns(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """(n, ...) arrays as Arrow columns: a fixed-size list per row (a plain column for (n,)). An array with no
    values per row (no static attributes, say) has no column: Arrow has no empty fixed-size list, and the
    manifest's shape rebuilds it."""
    columns = {}
    for name, values in arrays.items():
        width = int(np.prod(values.shape[1:]))
        if values.ndim == 1:
            columns[f"{prefix}{name}"] = pa.array(values)
        elif width:
            flat = pa.array(np.ascontiguousarray(values).reshape(-1))
            columns[f"{prefix}{name}"] = pa.FixedSizeListArray.from_arrays(flat, width)
    return columns


def _write_table(path: Path, columns: dict[str, pa.Array]) -> None:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def _shapes(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    return {name: {"dtype": str(values.dtype), "shape": list(values.shape[1:])} for name, values in arrays.items()}


def _histogram(counts: np.ndarray) -> dict[str, int]:
    """Counts per power-of-two bin (``counts[b]``: lengths in ``[2**b, 2**(b+1))``) by the bins' labels."""
    return {(f"{2**b}" if b == 0 else f"{2**b}-{2 ** (b + 1) - 1}"): int(n) for b, n in enumerate(counts) if n}


def write_training_set(
    data: TrainingSet,
    directory: str | Path,
    settings: dict[str, Any],
    inputs: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    shard_examples: int = SHARD_EXAMPLES,
) -> Path:
    """Write ``data`` to ``directory`` (created; files already there are replaced), with the ``settings`` and
    ``inputs`` it was built from in the manifest, and ``extra`` entries (the source, the log's facts). The
    manifest is written last: a directory with one is complete."""
    writer = TrainingSetWriter(directory, shard_examples)
    is_validation = np.zeros(len(data.sequences), dtype=bool)
    is_validation[data.val_rows] = True
    if data.uplift_rows is not None:
        is_validation[data.uplift_rows] = True
        extra = {**(extra or {}), "campaigns": data.campaigns}
    writer.add(data.sequences, data.labels, data.grid.days, is_validation, data.cutoffs, data.treated)
    return writer.close(data.featurizer, data.grid, data.spec, data.sequences.report, settings, inputs, extra)


class TrainingSetWriter:
    """Writes a training set to ``directory`` in parts (:meth:`add`, as many as its builder makes: one, or one
    per partition of the log's customers), then its manifest (:meth:`close`). Shards hold at most
    ``shard_examples`` examples of one part each; :func:`load_training_set` reads the examples back in the
    training set's own order (by cutoff, then customer) whatever the order of the parts."""

    def __init__(self, directory: str | Path, shard_examples: int = SHARD_EXAMPLES, prefix: str = "shard") -> None:
        """``prefix``: the shards' names (``<prefix>-00000``...): writers of one dataset side by side (Spark's
        buckets) each take their own."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / MANIFEST).unlink(missing_ok=True)
        self.shard_examples = shard_examples
        self.prefix = prefix
        self.shards: list[dict[str, Any]] = []
        self.counts = {"examples": 0, "main_count": 0, "training_examples": 0, "validation_examples": 0}
        self.length_bins = np.zeros(0, dtype=np.int64)
        self.shapes: dict[str, dict[str, Any]] = {}
        self.label_columns: list[str] = []
        self.text_table: np.ndarray | None = None

    def add(
        self,
        sequences: Sequences,
        labels: pd.DataFrame,
        days: tuple[float, ...],
        is_validation: np.ndarray,
        cutoffs: np.ndarray,
        arms: np.ndarray | None = None,
    ) -> None:
        """Examples with their labels (rows alike: :func:`~churnformer.data.labels.horizon_labels` at horizons
        ``days``), validation flags and cutoff indexes (0: the main cutoff); with campaigns, each example's arm
        (``TrainingSet.treated``)."""
        self.label_columns = [c for c in labels.columns if c != CUSTOMER_ID]
        by_horizon = {
            label: labels[[per_horizon(label, d) for d in days]].to_numpy(np.float32) for label in LABELS_BY_HORIZON
        }
        for start in range(0, len(sequences), self.shard_examples):
            rows = np.arange(start, min(start + self.shard_examples, len(sequences)))
            part = sequences.subset(rows)
            name = f"{self.prefix}-{len(self.shards):05d}"
            examples = {
                CUSTOMER_ID: pa.array(part.customer_ids),
                _CUTOFF_COLUMN: pa.array(np.asarray(cutoffs[rows], dtype=np.int16)),
                _LENGTH_COLUMN: pa.array(part.lengths.astype(np.int64)),
                _TOTAL_COLUMN: pa.array(part.n_events_total.astype(np.int64)),
                _VALIDATION_COLUMN: pa.array(is_validation[rows]),
                **({_ARM_COLUMN: pa.array(arms[rows])} if arms is not None else {}),
                **_columns("customer:", part.customers),
                **_columns("label:", {label: values[rows] for label, values in by_horizon.items()}),
            }
            _write_table(self.directory / f"{name}.examples.arrow", examples)
            _write_table(self.directory / f"{name}.events.arrow", _columns("", part.events))
            self.shards.append({"name": name, "examples": len(rows), "events": int(part.offsets[-1])})
        self._add_lengths(np.bincount(np.floor(np.log2(np.maximum(sequences.lengths, 1))).astype(int)))
        self.counts["examples"] += len(sequences)
        self.counts["main_count"] += int((cutoffs == 0).sum())
        self.counts["validation_examples"] += int(is_validation.sum())
        self.counts["training_examples"] += int((~is_validation).sum())
        self.shapes = {"events_arrays": _shapes(sequences.events), "customer_arrays": _shapes(sequences.customers)}
        if sequences.text_table is not None:
            self.text_table = sequences.text_table

    def state(self) -> dict[str, Any]:
        """What this writer wrote, as JSON can carry it (from a Spark worker to the driver's :meth:`absorb`)."""
        return {
            "shards": self.shards,
            "counts": self.counts,
            "length_bins": self.length_bins.tolist(),
            "shapes": self.shapes,
            "label_columns": self.label_columns,
        }

    def absorb(self, state: dict[str, Any]) -> None:
        """Count in the shards another writer of this directory wrote (its :meth:`state`)."""
        self.shards += state["shards"]
        self.counts = {name: count + state["counts"][name] for name, count in self.counts.items()}
        self._add_lengths(np.asarray(state["length_bins"], dtype=np.int64))
        self.shapes = state["shapes"] or self.shapes
        self.label_columns = state["label_columns"] or self.label_columns

    def _add_lengths(self, bins: np.ndarray) -> None:
        """Add counts of examples per power-of-two length bin."""
        self.length_bins = np.pad(self.length_bins, (0, max(0, len(bins) - len(self.length_bins))))
        self.length_bins[: len(bins)] += bins

    def close(
        self,
        featurizer: Featurizer,
        grid: HorizonGrid,
        spec: LabelSpec,
        report: BuildReport,
        settings: dict[str, Any],
        inputs: list[dict[str, Any]],
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the manifest (the featurization state, ``report`` of the main cutoff, the counts), last."""
        if self.text_table is not None:
            np.save(self.directory / TEXT_TABLE, self.text_table)
        manifest = {
            "format": FORMAT,
            "version": __version__,
            "key": dataset_key(settings, inputs),
            "settings": settings,
            "inputs": inputs,
            "featurizer": json.loads(featurizer.to_json()),
            "grid": {"days": list(grid.days), "main": grid.main},
            "labels": {
                "purchase_types": list(spec.purchase_types) if spec.purchase_types else None,
                "event_type_column": spec.event_type_column,
                "churn_definition": spec.churn.name,
                "decline_threshold": spec.churn.decline_threshold,
                "columns": self.label_columns,
            },
            **self.counts,
            "events": int(sum(shard["events"] for shard in self.shards)),
            "lengths_histogram": _histogram(self.length_bins),
            **self.shapes,
            "report": asdict(report),
            "shards": self.shards,
            **(extra or {}),
        }
        (self.directory / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        return self.directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """A dataset's manifest; an error naming the directory when there is none or it is another format."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise InputError(f"{directory}: not a training-set directory (no {MANIFEST}; churnformer-featurize writes one)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path}: format {manifest.get('format')!r}, this release reads {FORMAT!r}")
    return manifest


def load_training_set(directory: str | Path) -> TrainingSet:
    """The training set of ``directory``: ids, lengths and where each example is stored in memory; events,
    customer inputs and labels read from the shards by rows (:mod:`churnformer.data.sharded`)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    event_shapes, customer_shapes = manifest["events_arrays"], manifest["customer_arrays"]
    horizons = {"dtype": "float32", "shape": [len(manifest["grid"]["days"])]}
    stored_shapes = {
        **{f"customer:{name}": spec for name, spec in customer_shapes.items()},
        **{f"label:{label}": horizons for label in LABELS_BY_HORIZON},
        _TOTAL_COLUMN: {"dtype": "int64", "shape": []},
    }
    present = {name: spec for name, spec in stored_shapes.items() if int(np.prod(spec["shape"]))}
    event_files, example_files, event_offsets = [], [], []
    ids, lengths, cutoffs, is_validation, arms = [], [], [], [], []
    campaigns = manifest.get("campaigns")
    for entry in manifest["shards"]:
        events_file = ShardFile.locate(directory / f"{entry['name']}.events.arrow", list(event_shapes))[0]
        examples_file, examples = ShardFile.locate(
            directory / f"{entry['name']}.examples.arrow", [CUSTOMER_ID, *present]
        )
        shard_lengths = examples[_LENGTH_COLUMN].to_numpy()
        starts = np.cumsum(shard_lengths) - shard_lengths
        event_offsets.append(starts.astype(np.int32 if entry["events"] < 2**31 else np.int64))
        ids.append(examples[CUSTOMER_ID].to_numpy(zero_copy_only=False))
        lengths.append(shard_lengths)
        cutoffs.append(examples[_CUTOFF_COLUMN].to_numpy().astype(np.int16))
        is_validation.append(examples[_VALIDATION_COLUMN].to_numpy(zero_copy_only=False))
        if campaigns is not None:
            arms.append(examples[_ARM_COLUMN].to_numpy().astype(np.int8))
        event_files.append(events_file)
        example_files.append(examples_file)
        del examples  # the file is unmapped with the last column read from it, by the end of this load
    cutoff = np.concatenate(cutoffs)
    order = training_order(cutoff, np.concatenate(ids))
    del ids
    bounds = np.cumsum([0, *(file.rows for file in example_files)])
    index = np.int32 if bounds[-1] < 2**31 else np.int64  # per example: what a training process holds
    placement = Placement(np.arange(bounds[-1], dtype=index)[order], bounds)
    all_lengths = np.concatenate(lengths)[order]
    all_lengths = all_lengths.astype(np.uint16 if all_lengths.max(initial=0) < 2**16 else np.int32)

    def stored(name: str) -> ShardedArray:
        spec = stored_shapes[name]
        return ShardedArray(example_files, name, placement, np.dtype(spec["dtype"]), tuple(spec["shape"]))

    id_column = example_files[0].columns[CUSTOMER_ID]
    id_dtype = id_column.dtype if isinstance(id_column, StoredColumn) else np.dtype(object)
    customer_ids = ShardedArray(example_files, CUSTOMER_ID, placement, id_dtype, ())
    grid = HorizonGrid(tuple(manifest["grid"]["days"]), manifest["grid"]["main"])
    labels = ShardedLabels(
        customer_ids,
        {label: stored(f"label:{label}") for label in LABELS_BY_HORIZON},
        grid.days,
        grid.main,
        manifest["labels"]["columns"],
    )
    sequences = ShardedSequences(
        customer_ids=customer_ids,
        lengths=all_lengths,
        customers={name: stored(f"customer:{name}") for name in customer_shapes},
        n_events_total=stored(_TOTAL_COLUMN),
        report=BuildReport(**manifest["report"]),
        placement=placement,
        event_files=event_files,
        event_offsets=event_offsets,
        text_table=np.load(directory / TEXT_TABLE) if (directory / TEXT_TABLE).is_file() else None,
    )
    validation = np.concatenate(is_validation)[order]
    treated = np.concatenate(arms)[order] if campaigns is not None else None
    contact = treated >= 0 if treated is not None else np.zeros(len(validation), dtype=bool)
    spec = manifest["labels"]
    return TrainingSet(
        featurizer=Featurizer.from_json(json.dumps(manifest["featurizer"])),
        sequences=sequences,
        labels=labels,
        train_rows=np.flatnonzero(~validation).astype(index),
        val_rows=np.flatnonzero(validation & ~contact).astype(index),
        main_count=int(manifest["main_count"]),
        grid=grid,
        cutoffs=cutoff[order],
        spec=LabelSpec(
            tuple(spec["purchase_types"]) if spec["purchase_types"] else None,
            spec["event_type_column"],
            ChurnDefinition(spec["churn_definition"], spec["decline_threshold"]),
        ),
        treated=treated,
        uplift_rows=np.flatnonzero(validation & contact).astype(index) if treated is not None else None,
        campaigns=campaigns,
    )


def training_order(cutoffs: np.ndarray, customer_ids: np.ndarray) -> np.ndarray | slice:
    """The order of a training set's examples: by cutoff (the main one first), then by customer id, as
    :func:`~churnformer.data.training_set.build_training_set` builds them (a slice when already in it)."""
    ranks = customer_ids if customer_ids.dtype.kind in "iu" else pd.factorize(customer_ids, sort=True)[0]
    order = np.lexsort((ranks, cutoffs))
    return slice(None) if np.array_equal(order, np.arange(len(order))) else order
