"""The engineered aggregates (:mod:`churnformer.data.aggregates`) fused with the sequence representation
before every head (``model.network.fusion``).

The aggregates enter through numeric embeddings: a piecewise-linear encoding (Gorishniy et al. 2022, "On
Embeddings for Numerical Features in Tabular Deep Learning") with bin edges at quantiles of the training
customers' values, then a linear map per aggregate. An undefined aggregate (NaN) gets its own learned vector.
A fusion then combines them with the pooled sequence vector into the vector the heads read:

- ``mlp``: concatenation and a two-layer MLP;
- ``cross``: a DCN-v2 cross network (Wang et al. 2021) over the concatenation, explicit feature crosses
  x_{l+1} = x_0 * (W x_l + b) + x_l, then a linear map.

Both add to the sequence vector (a residual), so the sequence path stays as it was.

Shapes: B customers, F aggregates, K bins, E embedding size per aggregate, D = d_model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from churnformer.data.aggregates import QUANTILE_LEVELS
from churnformer.errors import ConfigError

FUSIONS = ("mlp", "cross")


@dataclass(frozen=True)
class FusionConfig:
    """``model.network.fusion``: how the aggregates are encoded and fused (used by models that read them)."""

    kind: str = "cross"
    bins: int = 16
    embedding_dim: int = 8
    layers: int = 2  # cross layers (cross) or hidden layers (mlp)

    def __post_init__(self) -> None:
        if self.kind not in FUSIONS:
            raise ConfigError(f"model.network.fusion.kind={self.kind!r}: choose one of {list(FUSIONS)}")
        if self.bins < 2 or self.embedding_dim < 1 or self.layers < 1:
            raise ConfigError(f"model.network.fusion: bins >= 2, embedding_dim and layers >= 1; got {self}")


class PiecewiseLinearEncoding(nn.Module):
    """Each aggregate -> an E-vector: its piecewise-linear encoding over K bins (how far it is through each
    bin: 1 for bins below it, 0 for bins above; the outer bins go on to -1 and 2 outside the training range),
    mapped linearly; missing values get a learned vector."""

    def __init__(self, n_features: int, bins: int, embedding_dim: int) -> None:
        super().__init__()
        # Set from the training customers (fit); the checkpoint keeps them.
        self.register_buffer("left", torch.zeros(n_features, bins))
        self.register_buffer("width", torch.ones(n_features, bins))
        # The first and last bins extend beyond the training range by up to a bin: values outside it still move
        # the output, but a value far outside (a bin of tied edges is 1e-6 wide) cannot blow it up.
        lower, upper = torch.zeros(bins), torch.ones(bins)
        lower[0], upper[-1] = -1.0, 2.0
        self.register_buffer("lower", lower, persistent=False)
        self.register_buffer("upper", upper, persistent=False)
        self.weight = nn.Parameter(torch.empty(n_features, bins, embedding_dim))
        self.bias = nn.Parameter(torch.zeros(n_features, embedding_dim))
        self.missing = nn.Parameter(torch.zeros(n_features, embedding_dim))
        nn.init.normal_(self.weight, std=bins**-0.5)

    def fit(self, quantiles: Sequence[Sequence[float]]) -> None:
        """Bin edges at the quantiles of each aggregate (``churnformer.data.aggregates.aggregate_quantiles``); a
        bin of tied edges becomes a step at its value."""
        bins = self.left.shape[1]
        edges = np.stack([np.interp(np.linspace(0, 1, bins + 1), QUANTILE_LEVELS, q) for q in quantiles])
        width = np.maximum(np.diff(edges, axis=1), 1e-6)
        with torch.no_grad():
            self.left.copy_(torch.as_tensor(edges[:, :-1], dtype=torch.float32))
            self.width.copy_(torch.as_tensor(width, dtype=torch.float32))

    def forward(self, values: torch.Tensor) -> torch.Tensor:  # (B, F) -> (B, F, E)
        missing = torch.isnan(values)
        values = torch.where(missing, torch.zeros_like(values), values)
        position = (values.unsqueeze(-1) - self.left) / self.width  # (B, F, K)
        encoded = torch.minimum(torch.maximum(position, self.lower), self.upper)
        embedded = torch.einsum("bfk,fke->bfe", encoded, self.weight) + self.bias
        return torch.where(missing.unsqueeze(-1), self.missing.expand_as(embedded), embedded)


class CrossLayer(nn.Module):
    """DCN-v2: x_0 * (W x + b) + x."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class AggregateFusion(nn.Module):
    """(pooled sequence vector, aggregates) -> the vector the heads read, (B, D)."""

    def __init__(self, config: FusionConfig, n_features: int, d_model: int) -> None:
        super().__init__()
        self.kind = config.kind
        self.encoding = PiecewiseLinearEncoding(n_features, config.bins, config.embedding_dim)
        self.project = nn.Sequential(nn.Linear(n_features * config.embedding_dim, d_model), nn.ReLU())
        width = 2 * d_model
        self.norm = nn.LayerNorm(width)
        if config.kind == "cross":
            self.layers = nn.ModuleList(CrossLayer(width) for _ in range(config.layers))
        else:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(config.layers))
        self.out = nn.Linear(width, d_model)

    def forward(self, pooled: torch.Tensor, aggregates: torch.Tensor) -> torch.Tensor:
        embedded = self.encoding(aggregates).flatten(1)  # (B, F * E)
        x0 = self.norm(torch.cat([pooled, self.project(embedded)], dim=-1))  # (B, 2D)
        x = x0
        for layer in self.layers:
            x = layer(x0, x) if self.kind == "cross" else layer(x)
        return pooled + self.out(x)
