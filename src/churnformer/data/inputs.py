"""What a model reads of each event, one component per kind of input: the arrays it writes for the events kept
(from the fitted featurizer's state), what it adds to each padded batch, and what it declares as ONNX inputs.
Torch-free: training and scoring featurize with these same components; the network's side of each is its
encoder in :mod:`churnformer.modeling.encoders` (``model.network.event_encoders`` chooses them by name).

A new kind of input (images, say) is one :class:`EventInput` here, listed in :data:`EVENT_INPUTS`, and one
encoder there; featurization, batching, export and scoring loop over the list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT
from churnformer.data.featurizer import CALENDAR, Featurizer
from churnformer.data.window import NS_PER_DAY
from churnformer.schema import EVENT_CAT, EVENT_NUM, EVENT_TEXT, TEXT_EMBEDDINGS

if TYPE_CHECKING:
    from churnformer.data.sequences import Sequences
    from churnformer.text.embeddings import TextEmbeddings

EVENT_AXES = ("batch", "length")  # the dynamic axes of an array with a row per event of a padded batch
Arrays = dict[str, np.ndarray]  # arrays by name


@dataclass(frozen=True)
class ArraySpec:
    """One array of a batch: its dtype, trailing shape and dynamic axes (the ONNX input it becomes)."""

    dtype: type
    shape: tuple[int, ...]  # after the dynamic axes
    axes: tuple[str, ...] = EVENT_AXES


@dataclass
class KeptEvents:
    """The events a batch holds, in (customer, time) order, and what every input may read of them."""

    events: pd.DataFrame  # the standard frame they come from
    rows: np.ndarray  # input row of each kept event
    stamps: np.ndarray  # their times, int64 ns
    gap_days: np.ndarray  # days since the customer's previous event (0 for a first event)
    first: np.ndarray  # whether it is the customer's first event
    feature_end_ns: int
    unknown_categories: dict[str, int]  # the build report's, counted by the inputs that encode categories
    texts: TextEmbeddings | None = None


class EventInput(ABC):
    """One kind of per-event input of a model."""

    name: ClassVar[str]

    @abstractmethod
    def arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        """The arrays it writes per event for a model of ``featurizer`` (none: the model does not read it)."""

    @abstractmethod
    def write(self, featurizer: Featurizer, kept: KeptEvents) -> Arrays:
        """Its arrays for the kept events, a row per event (the trailing shapes of :meth:`arrays`)."""

    def batch_arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        """The arrays it adds to a padded batch as a whole (not per event)."""
        return {}

    def pad(self, padded: Arrays, sequences: Sequences) -> None:  # noqa: B027 (most inputs need nothing)
        """Complete a padded batch of ``sequences`` with what the batch as a whole needs of this input."""

    @abstractmethod
    def example(self, featurizer: Featurizer, batch: int, length: int, rng: np.random.Generator) -> Arrays:
        """A valid batch of its arrays (per event and per batch) for the export to trace."""


def example_ids(rng: np.random.Generator, shape: tuple[int, ...], cardinalities: list[int]) -> np.ndarray:
    """Ids in ``1 .. cardinality - 1`` of each column (0 is padding)."""
    high = np.asarray(cardinalities or [2])[: len(cardinalities)]
    return ((rng.random((*shape, len(cardinalities))) * (high - 1)).astype(np.int32) + 1).astype(np.int32)


class CategoricalInput(EventInput):
    """Each categorical attribute's id in its vocabulary, and the calendar (day of week, month)."""

    name = "categorical"

    def arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        return {EVENT_CAT: ArraySpec(np.int32, (len(featurizer.event_categorical_names),))}

    def write(self, featurizer: Featurizer, kept: KeptEvents) -> Arrays:
        columns = []
        for encoder in featurizer.event_categorical:
            ids, unseen = encoder.encode(kept.events[encoder.name], kept.rows)
            kept.unknown_categories[f"events.{encoder.name}"] = unseen
            columns.append(ids)
        days = kept.stamps // NS_PER_DAY
        calendar = {
            "day_of_week": (days + 3) % 7,  # 1970-01-01 was a Thursday; Monday = 0
            "month": kept.stamps.astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64) % 12,
        }
        columns += [(calendar[name] + 2).astype(np.int32) for name in CALENDAR]
        return {EVENT_CAT: stack(columns, len(kept.rows), np.int32)}

    def example(self, featurizer: Featurizer, batch: int, length: int, rng: np.random.Generator) -> Arrays:
        return {EVENT_CAT: example_ids(rng, (batch, length), featurizer.event_categorical_cardinalities)}


class NumericInput(EventInput):
    """The event's own numbers (signed log amount, log gap, first-event flag, log days before the cutoff: the
    time encoder reads the time ones, ``EVENT_TIME_FEATURES``) and each numeric attribute, scaled, with its
    missing indicator."""

    name = "numeric"

    def arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        return {EVENT_NUM: ArraySpec(np.float32, (len(featurizer.event_numeric_names),))}

    def write(self, featurizer: Featurizer, kept: KeptEvents) -> Arrays:
        amounts = kept.events[AMOUNT].to_numpy(dtype="float64")[kept.rows]
        columns = [
            signed_log1p(amounts),
            np.log1p(kept.gap_days),
            kept.first.astype(np.float64),
            np.log1p((kept.feature_end_ns - kept.stamps) / NS_PER_DAY),
        ]
        scaled = [scaler.encode(kept.events[scaler.name], kept.rows) for scaler in featurizer.event_numeric]
        columns += [values for values, _ in scaled] + [missing for _, missing in scaled]
        return {EVENT_NUM: stack(columns, len(kept.rows), np.float32)}

    def example(self, featurizer: Featurizer, batch: int, length: int, rng: np.random.Generator) -> Arrays:
        width = len(featurizer.event_numeric_names)
        return {EVENT_NUM: rng.standard_normal((batch, length, width)).astype(np.float32)}


class TextInput(EventInput):
    """Per text column, the row of the event's text in the job's table of embedded texts (0: no text); each
    batch carries the rows of that table it uses (``text_embeddings``, row 0 zeros) and indexes them."""

    name = "text"

    def arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        return {EVENT_TEXT: ArraySpec(np.int32, (len(featurizer.text_columns),))} if featurizer.text_columns else {}

    def batch_arrays(self, featurizer: Featurizer) -> dict[str, ArraySpec]:
        if not featurizer.text_columns:
            return {}
        return {TEXT_EMBEDDINGS: ArraySpec(np.float32, (featurizer.text_dimension,), axes=("texts",))}

    def write(self, featurizer: Featurizer, kept: KeptEvents) -> Arrays:
        if kept.texts is None:
            raise ValueError("this featurizer reads text columns: build_sequences needs texts=TextEmbeddings(...)")
        text_rows = [kept.texts.rows_of(kept.events[column], kept.rows, column) for column in featurizer.text_columns]
        return {EVENT_TEXT: stack(text_rows, len(kept.rows), np.int32)}

    def pad(self, padded: Arrays, sequences: Sequences) -> None:
        table = sequences.text_table
        if EVENT_TEXT not in padded or table is None:
            return
        used, local = np.unique(padded[EVENT_TEXT], return_inverse=True)
        if used[0] != 0:  # every slot holds text: row 0 (no text) still comes first
            used, local = np.concatenate([[0], used]), local + 1
        padded[EVENT_TEXT] = local.reshape(padded[EVENT_TEXT].shape).astype(np.int32)
        padded[TEXT_EMBEDDINGS] = table[used]

    def example(self, featurizer: Featurizer, batch: int, length: int, rng: np.random.Generator) -> Arrays:
        if not featurizer.text_columns:
            return {}
        texts = 4  # 4 rows, so the exporter keeps their count symbolic apart from batch
        rows = rng.integers(0, texts, (batch, length, len(featurizer.text_columns))).astype(np.int32)
        table = rng.standard_normal((texts, featurizer.text_dimension)).astype(np.float32)
        return {EVENT_TEXT: rows, TEXT_EMBEDDINGS: table}


# Every kind of per-event input, in the order its arrays come in a batch and in a model file's inputs.
EVENT_INPUTS: tuple[EventInput, ...] = (CategoricalInput(), NumericInput(), TextInput())


def event_arrays(featurizer: Featurizer) -> dict[str, ArraySpec]:
    """Every per-event array a model of ``featurizer`` reads, by name."""
    return {name: spec for event_input in EVENT_INPUTS for name, spec in event_input.arrays(featurizer).items()}


def dynamic_axes(featurizer: Featurizer) -> Mapping[str, tuple[str, ...]]:
    """The dynamic axes of every array the event inputs of ``featurizer`` add to a batch."""
    axes = {}
    for event_input in EVENT_INPUTS:
        for name, spec in {**event_input.arrays(featurizer), **event_input.batch_arrays(featurizer)}.items():
            axes[name] = spec.axes
    return axes


def signed_log1p(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def stack(columns: list[np.ndarray], rows: int, dtype: type) -> np.ndarray:
    out = np.empty((rows, len(columns)), dtype=dtype)
    for j, column in enumerate(columns):
        out[:, j] = column
    return out
