"""The two heads and the formulas that turn them into predictions, written once.

Consistency: churn means "no purchase in the horizon" and the spend distribution is zero-inflated with
P(spend > 0). The two are (nearly) the same event, so the network has a single logit for it:
P(spend > 0) = 1 - P(churn). The churn head is trained by the churn loss and by the zero part of the
spend loss; the spend head only adds the log-normal (mu, sigma) of positive spend (Wang et al. 2019).
Expected spend is therefore (1 - p_churn) * exp(mu + sigma^2 / 2) and can never contradict churn.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

MIN_SIGMA = 0.05


class HeadOutputs(NamedTuple):
    churn_logit: torch.Tensor  # (B,)
    spend_mu: torch.Tensor  # (B,) mean of log spend given spend > 0
    spend_sigma: torch.Tensor  # (B,) std of log spend given spend > 0


class ChurnSpendHeads(nn.Module):
    """Pooled customer vector (B, D) -> the churn logit and the positive-spend log-normal."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.churn = nn.Linear(d_model, 1)
        self.spend = nn.Linear(d_model, 2)

    def forward(self, pooled: torch.Tensor) -> HeadOutputs:
        spend = self.spend(pooled)  # (B, 2)
        return HeadOutputs(
            churn_logit=self.churn(pooled).squeeze(-1),
            spend_mu=spend[:, 0],
            spend_sigma=F.softplus(spend[:, 1]) + MIN_SIGMA,
        )

    def init_output_biases(self, churn_rate: float, log_spend_mean: float, log_spend_std: float) -> None:
        """Start at the training base rates so early epochs are not spent finding them."""
        rate = min(max(churn_rate, 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.churn.bias.fill_(math.log(rate / (1 - rate)))
            self.spend.bias[0] = log_spend_mean
            self.spend.bias[1] = math.log(math.expm1(max(log_spend_std - MIN_SIGMA, 1e-2)))


def spend_if_retained(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[spend | spend > 0] of the log-normal LN(mu, sigma)."""
    return torch.exp(mu + 0.5 * sigma * sigma)


def expected_spend(p_churn: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[spend] of the zero-inflated log-normal whose zero mass is the churn probability."""
    return (1 - p_churn) * spend_if_retained(mu, sigma)


def spend_quantile(
    q: float | torch.Tensor, p_churn: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The q-quantile of the same mixture (broadcast over ``q``): 0 where P(churn) >= q, else the matching
    log-normal quantile."""
    level = ((q - p_churn) / (1 - p_churn).clamp(min=1e-6)).clamp(1e-6, 1 - 1e-6)
    value = torch.exp(mu + sigma * normal_quantile(level))
    return torch.where(p_churn >= q, torch.zeros_like(value), value)


def normal_quantile(p: torch.Tensor) -> torch.Tensor:
    """Standard normal inverse CDF from basic ops (ONNX has no erfinv), via Giles' erfinv approximation.

    Within 3e-4 of the exact value in float32 for p in [1e-5, 1 - 1e-5], plenty for spend quantiles.
    """
    x = (2 * p - 1).clamp(-1 + 1e-7, 1 - 1e-7)
    w = -torch.log((1 - x) * (1 + x))
    central = w - 2.5
    central_poly = torch.full_like(x, 2.81022636e-08)
    for c in (
        3.43273939e-07,
        -3.5233877e-06,
        -4.39150654e-06,
        0.00021858087,
        -0.00125372503,
        -0.00417768164,
        0.246640727,
        1.50140941,
    ):
        central_poly = c + central_poly * central
    tail = torch.sqrt(w.clamp(min=5.0)) - 3
    tail_poly = torch.full_like(x, -0.000200214257)
    for c in (
        0.000100950558,
        0.00134934322,
        -0.00367342844,
        0.00573950773,
        -0.0076224613,
        0.00943887047,
        1.00167406,
        2.83297682,
    ):
        tail_poly = c + tail_poly * tail
    erfinv = torch.where(w < 5.0, central_poly, tail_poly) * x
    return math.sqrt(2.0) * erfinv
