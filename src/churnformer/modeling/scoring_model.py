"""What is exported to ONNX: the network, its post-hoc calibration and the arithmetic from heads to the
predictions of ``churnformer.schema.MODEL_OUTPUTS``, so scoring needs nothing but the model file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from churnformer.modeling.heads import expected_spend, spend_if_retained, spend_quantile
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import SPEND_QUANTILES


@dataclass(frozen=True)
class Calibration:
    """Post-hoc calibration (fitted by :mod:`churnformer.artifacts.calibration`; the default is the identity):
    churn logit -> logit / temperature + bias; positive spend LN(mu, sigma) -> LN(log_scale + power * mu,
    power * sigma)."""

    churn_temperature: float = 1.0
    churn_bias: float = 0.0
    spend_log_scale: float = 0.0
    spend_power: float = 1.0
    # Percentiles 1..99 (schema.PERCENTILE_LEVELS) of the calibrated predictions on validation: the reference
    # population that scoring's deciles and value segments are relative to (serving.retention).
    churn_percentiles: list[float] = field(default_factory=list)
    spend_percentiles: list[float] = field(default_factory=list)
    spend_if_retained_percentiles: list[float] = field(default_factory=list)
    # Why a fitted part was replaced by the identity (empty: everything fitted was kept).
    fallback: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        kept = (
            f"churn temperature {self.churn_temperature:.3f}, bias {self.churn_bias:+.3f}; "
            f"spend scale {math.exp(self.spend_log_scale):.3f}, power {self.spend_power:.3f}"
        )
        return kept + (f" (identity instead: {'; '.join(self.fallback)})" if self.fallback else "")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


class ScoringModel(nn.Module):
    """Positional inputs in the order of ``input_names`` (ONNX inputs are positional); outputs, each (B,), in
    the order of ``schema.MODEL_OUTPUTS``: churn_probability, expected_spend, spend quantiles p10/p50/p90 of
    the zero-inflated log-normal (a quantile below P(spend = 0) is 0), and spend_if_retained."""

    def __init__(self, network: ChurnFormer, input_names: list[str], calibration: Calibration | None = None) -> None:
        super().__init__()
        self.network = network
        self.input_names = list(input_names)
        calibration = calibration or Calibration()
        self.register_buffer("churn_temperature", torch.tensor(float(calibration.churn_temperature)))
        self.register_buffer("churn_bias", torch.tensor(float(calibration.churn_bias)))
        self.register_buffer("spend_log_scale", torch.tensor(float(calibration.spend_log_scale)))
        self.register_buffer("spend_power", torch.tensor(float(calibration.spend_power)))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        heads = self.network(dict(zip(self.input_names, inputs, strict=True)))
        p_churn = torch.sigmoid(heads.churn_logit / self.churn_temperature + self.churn_bias)
        mu = self.spend_log_scale + self.spend_power * heads.spend_mu
        sigma = self.spend_power * heads.spend_sigma
        # All quantiles in one (B, Q) computation: a third of the graph the three would make one by one.
        levels = torch.tensor(SPEND_QUANTILES, dtype=p_churn.dtype, device=p_churn.device)
        quantiles = spend_quantile(levels, p_churn[:, None], mu[:, None], sigma[:, None]).unbind(-1)
        return (p_churn, expected_spend(p_churn, mu, sigma), *quantiles, spend_if_retained(mu, sigma))
