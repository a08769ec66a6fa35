"""What is exported to ONNX: the network, its post-hoc calibration and the arithmetic from heads to the
predictions of ``churnformer.schema.model_outputs``, so scoring needs nothing but the model file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from churnformer.modeling.heads import HeadOutputs, expected_spend, softplus, spend_quantile, survival
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import SPEND_QUANTILES


@dataclass(frozen=True)
class Calibration:
    """Post-hoc calibration (fitted by :mod:`churnformer.artifacts.calibration`; the default is the identity):
    hazard logits phi_k -> phi_k / temperature + bias_k; positive spend at horizon k LN(mu_k, sigma_k) ->
    LN(log_scale_k + power * mu_k, power * sigma_k); a decline model's decline logits
    d_k -> d_k / decline_temperature + decline_bias_k. Empty bias and scale lists mean zeros."""

    churn_temperature: float = 1.0
    churn_bias: list[float] = field(default_factory=list)
    spend_log_scale: list[float] = field(default_factory=list)
    spend_power: float = 1.0
    decline_temperature: float = 1.0
    decline_bias: list[float] = field(default_factory=list)
    # Percentiles 1..99 (schema.PERCENTILE_LEVELS) of the calibrated predictions on validation: the reference
    # population that scoring's deciles and value segments are relative to (serving.retention).
    churn_percentiles: list[float] = field(default_factory=list)
    spend_percentiles: list[float] = field(default_factory=list)
    spend_if_retained_percentiles: list[float] = field(default_factory=list)
    # Why a fitted part was replaced by the identity (empty: everything fitted was kept).
    fallback: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        biases = ", ".join(f"{b:+.3f}" for b in self.churn_bias) or "+0"
        scales = ", ".join(f"{math.exp(a):.3f}" for a in self.spend_log_scale) or "1"
        kept = (
            f"churn temperature {self.churn_temperature:.3f}, biases {biases}; "
            f"spend scales {scales}, power {self.spend_power:.3f}"
        )
        if self.decline_bias:
            declines = ", ".join(f"{b:+.3f}" for b in self.decline_bias)
            kept += f"; decline temperature {self.decline_temperature:.3f}, biases {declines}"
        return kept + (f" (identity instead: {'; '.join(self.fallback)})" if self.fallback else "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


MAX_LOG_SPEND = 40.0


def cumulative_max(values: torch.Tensor) -> torch.Tensor:
    """Running maximum along the last axis (a Max per step: exports to standard ONNX ops)."""
    columns = [values[..., 0]]
    for k in range(1, values.shape[-1]):
        columns.append(torch.maximum(columns[-1], values[..., k]))
    return torch.stack(columns, dim=-1)


def calibrated(
    heads: HeadOutputs,
    temperature: torch.Tensor | float,
    bias: torch.Tensor,
    log_scale: torch.Tensor,
    power: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The calibrated heads, each (B, K): S(t_k), and the log-normal (mu_k, sigma_k) of positive spend with its
    log mean, made non-decreasing over the grid. One formula for the export and for fitting the calibration."""
    s = survival(heads.hazard_logits / temperature + bias)
    sigma = power * heads.spend_sigma
    mu = log_scale + power * (heads.log_spend_mean - 0.5 * heads.spend_sigma**2)
    # Capped where float32 would overflow (e^40 ~ 2e17, far above any spend the event contract admits).
    log_mean = cumulative_max((mu + 0.5 * sigma * sigma).clamp(max=MAX_LOG_SPEND))
    return s, log_mean - 0.5 * sigma * sigma, sigma, log_mean


def calibrated_decline(heads: HeadOutputs, temperature: torch.Tensor | float, bias: torch.Tensor) -> torch.Tensor:
    """P(decline) at every horizon after Platt scaling, (B, K), for a decline model: the sigmoid written as
    exp(-softplus(-x)), from the ops whose result for a row does not depend on its batch (see
    :func:`churnformer.modeling.heads.softplus`)."""
    return torch.exp(-softplus(-(heads.decline_logits / temperature + bias)))


class ScoringModel(nn.Module):
    """Positional inputs in the order of ``input_names`` (ONNX inputs are positional); outputs, each (B,), in
    the order of ``schema.model_outputs(horizons)``: at the main horizon churn_probability, expected_spend,
    spend quantiles p10/p50/p90 of the zero-inflated log-normal (a quantile below P(spend = 0) is 0) and
    spend_if_retained; then the churn probability and the expected spend at every horizon of the grid; a decline
    model's churn probability is P(decline) and it adds S(t_k) at every horizon (``no_purchase_probability``).

    Calibration keeps the guarantees of the heads: S stays non-increasing (any hazard logits give that), and
    the calibrated mean of positive spend is made non-decreasing (a running maximum over the grid), so the
    expected spend is non-decreasing too.
    """

    def __init__(
        self, network: ChurnFormer, input_names: list[str], main_index: int, calibration: Calibration | None = None
    ) -> None:
        super().__init__()
        self.network = network
        self.input_names = list(input_names)
        self.main = main_index
        calibration = calibration or Calibration()
        k = network.heads.n_horizons
        bias = calibration.churn_bias or [0.0] * k
        scale = calibration.spend_log_scale or [0.0] * k
        self.register_buffer("churn_temperature", torch.tensor(float(calibration.churn_temperature)))
        self.register_buffer("churn_bias", torch.tensor(bias, dtype=torch.float32))
        self.register_buffer("spend_log_scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("spend_power", torch.tensor(float(calibration.spend_power)))
        self.decline = network.heads.decline is not None
        if self.decline:
            decline_bias = calibration.decline_bias or [0.0] * k
            self.register_buffer("decline_temperature", torch.tensor(float(calibration.decline_temperature)))
            self.register_buffer("decline_bias", torch.tensor(decline_bias, dtype=torch.float32))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        heads = self.network(dict(zip(self.input_names, inputs, strict=True)))
        s, mu, sigma, log_mean = calibrated(
            heads, self.churn_temperature, self.churn_bias, self.spend_log_scale, self.spend_power
        )
        by_horizon = expected_spend(s, log_mean)  # (B, K)
        main = self.main
        churn = calibrated_decline(heads, self.decline_temperature, self.decline_bias) if self.decline else s
        p_zero, main_mu, main_sigma = s[:, main], mu[:, main], sigma[:, main]
        # All quantiles in one (B, Q) computation: a third of the graph the three would make one by one.
        levels = torch.tensor(SPEND_QUANTILES, dtype=p_zero.dtype, device=p_zero.device)
        quantiles = spend_quantile(levels, p_zero[:, None], main_mu[:, None], main_sigma[:, None]).unbind(-1)
        grid = [column for k in range(s.shape[1]) for column in (churn[:, k], by_horizon[:, k])]
        no_purchase = s.unbind(-1) if self.decline else ()
        return (churn[:, main], by_horizon[:, main], *quantiles, torch.exp(log_mean[:, main]), *grid, *no_purchase)
