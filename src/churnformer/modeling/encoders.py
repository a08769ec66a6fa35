"""Inputs to vectors: each event to one D-vector, and the static customer features to the summary token.

Shapes: B customers, T events (padded), Ce/Fe categorical/numeric event features, Cc/Fc customer
features, D = d_model.
"""

from __future__ import annotations

import torch
from torch import nn

from churnformer.modeling.config import FeatureSizes, ModelConfig


class TimeEncoding(nn.Module):
    """Learned sinusoids of the time features (gap, days before cutoff), in the spirit of Time2Vec."""

    def __init__(self, n_time: int, frequencies: int, d_model: int) -> None:
        super().__init__()
        self.frequency = nn.Linear(n_time, n_time * frequencies)
        self.project = nn.Linear(2 * n_time * frequencies, d_model)

    def forward(self, time: torch.Tensor) -> torch.Tensor:  # (N, n_time) -> (N, D)
        phase = self.frequency(time)
        return self.project(torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1))


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


class TextProjection(nn.Module):
    """Per text column, a learned linear map of the (frozen) sentence embedding into the event vector; no
    bias, so an event without text (row 0, zeros) gets zero. The batch's distinct texts are projected once
    and then gathered per event: a text repeated across events costs one projection."""

    def __init__(self, n_columns: int, dimension: int, d_model: int) -> None:
        super().__init__()
        self.columns = nn.ModuleList(nn.Linear(dimension, d_model, bias=False) for _ in range(n_columns))

    def forward(self, event_text: torch.Tensor, table: torch.Tensor) -> torch.Tensor:  # -> (B * T, D)
        rows = event_text.long().reshape(-1, len(self.columns))
        out = self.columns[0](table).index_select(0, rows[:, 0])
        for j, column in enumerate(self.columns[1:], start=1):
            out = out + column(table).index_select(0, rows[:, j])
        return out


class EventEncoder(nn.Module):
    """Each event -> one D-vector: categorical embeddings + numeric projection + time encoding (+ projected
    texts, for models with text columns)."""

    def __init__(self, config: ModelConfig, sizes: FeatureSizes) -> None:
        super().__init__()
        self.categorical = SummedEmbeddings(sizes.event_cat_cardinalities, config.d_model)
        self.numeric = nn.Linear(sizes.n_event_num, config.d_model)
        self.time = TimeEncoding(len(sizes.time_feature_index), config.time_frequencies, config.d_model)
        self.register_buffer("time_index", torch.tensor(sizes.time_feature_index), persistent=False)
        self.text = (
            TextProjection(sizes.n_text_columns, sizes.text_dimension, config.d_model) if sizes.n_text_columns else None
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        event_cat: torch.Tensor,
        event_num: torch.Tensor,
        event_text: torch.Tensor | None = None,
        text_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:  # -> (B, T, D)
        batch, length, _ = event_num.shape
        numeric = event_num.reshape(batch * length, -1)  # 2D: exported linears become Gemm (see backbones.Block)
        time = numeric.index_select(-1, self.time_index)
        categorical = self.categorical(event_cat).view(batch * length, -1)
        summed = categorical + self.numeric(numeric) + self.time(time)
        if self.text is not None:
            summed = summed + self.text(event_text, text_embeddings)
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
