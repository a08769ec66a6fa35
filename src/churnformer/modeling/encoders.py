"""Inputs to vectors: each event to one D-vector, and the static customer features to the summary token.

Shapes: B customers, T events (padded), Ce/Fe categorical/numeric event features, Cc/Fc customer
features, D = d_model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from churnformer.errors import ConfigError
from churnformer.modeling.config import FeatureSizes, ModelConfig
from churnformer.schema import EVENT_CAT, EVENT_NUM, EVENT_TEXT, TEXT_EMBEDDINGS


class EventInputEncoder(nn.Module, ABC):
    """One kind of event input (:mod:`churnformer.data.inputs`) -> a D-vector per event, added to the others'.
    ``model.network.event_encoders`` lists them by ``name``."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def build(cls, config: ModelConfig, sizes: FeatureSizes) -> EventInputEncoder | None:
        """The encoder for a model of these feature sizes; None when the model has no such input."""

    @abstractmethod
    def forward(self, inputs: Mapping[str, torch.Tensor], batch: int, length: int) -> torch.Tensor:
        """The batch's inputs by name -> (B * T, D)."""


class SummedEmbeddings(nn.Module):
    """One embedding table per categorical column, summed; id 0 (padding) embeds to zero."""

    def __init__(self, cardinalities: list[int], d_model: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, d_model, padding_idx=0) for n in cardinalities)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (..., C) int -> (..., D)
        ids = ids.long()
        out = self.tables[0](ids[..., 0])
        for j, table in enumerate(self.tables[1:], start=1):
            out = out + table(ids[..., j])
        return out


class CategoricalEncoder(SummedEmbeddings, EventInputEncoder):
    """The event's categorical ids (attributes and calendar), each embedded, summed."""

    name = "categorical"

    @classmethod
    def build(cls, config: ModelConfig, sizes: FeatureSizes) -> CategoricalEncoder:
        return cls(sizes.event_cat_cardinalities, config.d_model)

    def forward(self, inputs: Mapping[str, torch.Tensor], batch: int, length: int) -> torch.Tensor:
        return super().forward(inputs[EVENT_CAT]).view(batch * length, -1)


class NumericEncoder(nn.Linear, EventInputEncoder):
    """The event's numeric features, projected (a 2D input: an exported linear becomes Gemm, see
    backbones.Block)."""

    name = "numeric"

    @classmethod
    def build(cls, config: ModelConfig, sizes: FeatureSizes) -> NumericEncoder:
        return cls(sizes.n_event_num, config.d_model)

    def forward(self, inputs: Mapping[str, torch.Tensor], batch: int, length: int) -> torch.Tensor:
        return super().forward(inputs[EVENT_NUM].reshape(batch * length, -1))


class TimeEncoding(EventInputEncoder):
    """Learned sinusoids of the time features (gap, days before cutoff: columns of the numeric input), in the
    spirit of Time2Vec."""

    name = "time"

    def __init__(self, time_index: list[int], frequencies: int, d_model: int) -> None:
        super().__init__()
        n_time = len(time_index)
        self.frequency = nn.Linear(n_time, n_time * frequencies)
        self.project = nn.Linear(2 * n_time * frequencies, d_model)
        self.register_buffer("time_index", torch.tensor(time_index), persistent=False)

    @classmethod
    def build(cls, config: ModelConfig, sizes: FeatureSizes) -> TimeEncoding:
        return cls(sizes.time_feature_index, config.time_frequencies, config.d_model)

    def forward(self, inputs: Mapping[str, torch.Tensor], batch: int, length: int) -> torch.Tensor:
        time = inputs[EVENT_NUM].reshape(batch * length, -1).index_select(-1, self.time_index)  # (N, n_time)
        phase = self.frequency(time)
        return self.project(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))


class TextProjection(EventInputEncoder):
    """Per text column, a learned linear map of the (frozen) sentence embedding into the event vector; no
    bias, so an event without text (row 0, zeros) gets zero. The batch's distinct texts are projected once
    and then gathered per event: a text repeated across events costs one projection."""

    name = "text"

    def __init__(self, n_columns: int, dimension: int, d_model: int) -> None:
        super().__init__()
        self.columns = nn.ModuleList(nn.Linear(dimension, d_model, bias=False) for _ in range(n_columns))

    @classmethod
    def build(cls, config: ModelConfig, sizes: FeatureSizes) -> TextProjection | None:
        return cls(sizes.n_text_columns, sizes.text_dimension, config.d_model) if sizes.n_text_columns else None

    def forward(self, inputs: Mapping[str, torch.Tensor], batch: int, length: int) -> torch.Tensor:
        table = inputs[TEXT_EMBEDDINGS]
        rows = inputs[EVENT_TEXT].long().reshape(-1, len(self.columns))
        out = self.columns[0](table).index_select(0, rows[:, 0])
        for j, column in enumerate(self.columns[1:], start=1):
            out = out + column(table).index_select(0, rows[:, j])
        return out


# model.network.event_encoders names these.
EVENT_ENCODERS = {
    encoder.name: encoder for encoder in (CategoricalEncoder, NumericEncoder, TimeEncoding, TextProjection)
}


class EventEncoder(nn.Module):
    """Each event -> one D-vector: the sum of the encoders of ``config.event_encoders`` (those the model has
    inputs for), layer-normed."""

    def __init__(self, config: ModelConfig, sizes: FeatureSizes) -> None:
        super().__init__()
        unknown = [name for name in config.event_encoders if name not in EVENT_ENCODERS]
        if unknown:
            raise ConfigError(f"model.network.event_encoders: {unknown} unknown; there are {sorted(EVENT_ENCODERS)}")
        self.encoders: list[str] = []
        for name in config.event_encoders:
            encoder = EVENT_ENCODERS[name].build(config, sizes)
            if encoder is not None:  # registered under its name: a checkpoint's keys are events.<name>.*
                self.add_module(name, encoder)
                self.encoders.append(name)
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:  # -> (B, T, D)
        batch, length = inputs[EVENT_NUM].shape[:2]
        summed = getattr(self, self.encoders[0])(inputs, batch, length)
        for name in self.encoders[1:]:
            summed = summed + getattr(self, name)(inputs, batch, length)
        return self.norm(summed).view(batch, length, -1)


class CustomerEncoder(nn.Module):
    """Static customer features and the history summary -> the summary token's initial value (so attention
    can use them)."""

    def __init__(self, config: ModelConfig, sizes: FeatureSizes) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(config.d_model))
        cardinalities = sizes.customer_cat_cardinalities
        self.categorical = SummedEmbeddings(cardinalities, config.d_model) if cardinalities else None
        self.numeric = nn.Linear(sizes.n_customer_num, config.d_model)

    def forward(self, customer_cat: torch.Tensor, customer_num: torch.Tensor) -> torch.Tensor:  # -> (B, D)
        token = self.start + self.numeric(customer_num)
        if self.categorical is not None:
            token = token + self.categorical(customer_cat)
        return token
