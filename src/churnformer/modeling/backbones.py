"""Sequence encoders: the summary token followed by the event tokens in, the same tokens in context out.

A backbone is a component of the config (``model.network.backbone._target_``): ``Transformer`` (the
default) or ``GRU`` (the recurrent reference over the same inputs and heads, ``model=gru``). Another one
is a subclass of :class:`Backbone` named there; nothing else changes.

Shapes: B customers, L = 1 + T tokens (the summary token first), D = d_model, H attention heads.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from churnformer.errors import ConfigError
from churnformer.modeling.config import ModelConfig


class Backbone(nn.Module, ABC):
    """Contextualizes the tokens; padding comes after each row's ``lengths[b]`` events."""

    @abstractmethod
    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        ...

    @abstractmethod
    def summary(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, D)
        """The one vector per customer that has seen the whole history."""


def build_backbone(spec: Mapping[str, Any], config: ModelConfig) -> Backbone:
    """The backbone ``spec`` names (``{_target_: <class>, ...other constructor arguments}``).

    Only :class:`Backbone` subclasses are accepted: the spec also comes back from checkpoints, and a
    checkpoint must never be able to name arbitrary code to run.
    """
    target = str(spec.get("_target_"))
    module, _, name = target.rpartition(".")
    try:
        backbone = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"model.network.backbone._target_={target!r}: no such class ({error})") from error
    if not (isinstance(backbone, type) and issubclass(backbone, Backbone)):
        raise ConfigError(
            f"model.network.backbone._target_={target!r} is not a churnformer backbone; use "
            f"{Transformer.__module__}.Transformer or .GRU, or a subclass of {Backbone.__module__}.Backbone"
        )
    return backbone(config, **{k: v for k, v in spec.items() if not k.startswith("_")})


class KeyPadding(NamedTuple):
    """Which keys are real, in the two forms attention needs: an additive ``bias`` (B, 1, 1, L), 0 for real
    keys and -inf for padding (eager torch), and ``counts`` (B,) int32, the real tokens of each row (the
    exported kernel; padding is always at the end)."""

    bias: torch.Tensor
    counts: torch.Tensor


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        # Export as onnxruntime's fused kernel (fast) or as standard ONNX ops (any runtime): export_onnx sets it.
        self.fused_export = True

    def forward(self, tokens: torch.Tensor, keys: KeyPadding) -> torch.Tensor:  # (B * L, D) -> (B * L, D)
        batch, length = keys.bias.shape[0], keys.bias.shape[-1]
        x = tokens.view(batch, length, -1)
        if self.fused_export and torch.onnx.is_in_onnx_export():
            return self.out(self.fused_attention(x, keys.counts).view(batch * length, -1))
        # (B, L, 3D) -> (3, B, H, L, D/H) in one transpose.
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # The summary token is always real, so no row is fully masked (no NaN). Additive rather than boolean:
        # exported (portable form), one Add instead of the Where and IsNaN guards a boolean mask brings.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys.bias)
        return self.out(y.transpose(1, 2).reshape(batch * length, -1))

    def fused_attention(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The same projection + masked softmax attention as onnxruntime's fused ``com.microsoft.Attention``
        (CPU and CUDA kernels): it writes Q, K, V straight into the per-head layout and masks by row length,
        where the decomposed graph spends much of its time on transposes and mask additions (measured by
        ``scripts/benchmarks/score.py --sweep-session``). Only meaningful inside ``torch.onnx.export``."""
        return torch.onnx.ops.symbolic(
            "com.microsoft::Attention",
            (x, self.qkv.weight.t(), self.qkv.bias, counts),
            {"num_heads": self.n_heads},
            dtype=x.dtype,
            shape=x.shape,
            version=1,
        )


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attention = SelfAttention(d, config.n_heads)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.ff_multiplier * d), nn.GELU(), nn.Linear(config.ff_multiplier * d, d)
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keys: KeyPadding) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        # Token-wise layers see one (B * L, D) matrix: exported, each linear is then a Gemm with its bias
        # fused, not a batched MatMul followed by an Add (measured faster by scripts/benchmarks/score.py).
        tokens = x.reshape(-1, x.shape[-1])
        tokens = tokens + self.dropout(self.attention(self.norm1(tokens), keys))
        tokens = tokens + self.dropout(self.mlp(self.norm2(tokens)))
        return tokens.view(x.shape)


class Transformer(Backbone):
    """Pre-LayerNorm transformer blocks with a key-padding mask; the summary token reads every event."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        real = positions.unsqueeze(0) <= lengths.unsqueeze(1)  # (B, L); position 0 is the summary token
        bias = torch.zeros(real.shape, dtype=tokens.dtype, device=tokens.device).masked_fill(~real, float("-inf"))
        keys = KeyPadding(bias=bias[:, None, None, :], counts=(lengths + 1).to(torch.int32))
        for block in self.blocks:
            tokens = block(tokens, keys)
        return tokens

    def summary(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


class GRU(Backbone):
    """A GRU over the summary token and the events: the recurrent reference."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.recurrent = nn.GRU(config.d_model, config.d_model, num_layers=config.n_layers, batch_first=True)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Causal, so padding after a row's last event never reaches that event's state.
        return self.recurrent(tokens)[0]

    def summary(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), lengths]  # state after the last event
