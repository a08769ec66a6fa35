"""The heads and the formulas that turn them into predictions, written once.

Survival over a grid of horizons t_1 < ... < t_K (days after the cutoff): K discrete-time hazard logits,
h_k = P(first purchase in (t_{k-1}, t_k] | none before) = sigmoid(phi_k) (Nnet-survival, pycox's
LogisticHazard), so S(t_k) = P(no purchase by t_k) = exp(-sum_{j<=k} softplus(phi_j)): non-increasing by
construction. churn_probability at horizon k is S(t_k).

Spend at each horizon is zero-inflated log-normal (Wang et al. 2019) whose zero mass is S(t_k): "no
purchase in the window" and "zero spend" are (nearly) the same event, so the two heads share the hazard
logits and can never contradict each other: P(spend_k > 0) = 1 - S(t_k). The spend head adds the mean of
positive spend m_k = E[spend_k | spend_k > 0], non-decreasing in k by construction (log m_k = log m_1 +
cumulative softplus steps), and its log-scale spread sigma_k. Expected spend E_k = (1 - S(t_k)) * m_k is then
non-decreasing in k too, as spend over a longer window must be.

A model of the decline churn definition (``churn_definition=decline``: spend in the horizon below a share of
the same-length window before the cutoff) adds K decline logits, one binary event per horizon: unlike "no
purchase yet", a decline at 30 days neither implies nor excludes one at 90, so it has no survival structure.
churn_probability is then sigmoid(decline logit); survival and spend stay as above.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

MIN_SIGMA = 0.05


class HeadOutputs(NamedTuple):
    hazard_logits: torch.Tensor  # (B, K) logit of the hazard of the first purchase in each interval
    log_spend_mean: torch.Tensor  # (B, K) log E[spend_k | spend_k > 0], non-decreasing in k
    spend_sigma: torch.Tensor  # (B, K) std of log spend_k given spend_k > 0
    decline_logits: torch.Tensor | None = None  # (B, K) logit of a decline by each horizon (decline models)


class SurvivalSpendHeads(nn.Module):
    """Pooled customer vector (B, D) -> hazard logits and the positive-spend log-normal at every horizon, and
    with ``decline`` the decline logits."""

    def __init__(self, d_model: int, n_horizons: int, decline: bool = False) -> None:
        super().__init__()
        self.n_horizons = n_horizons
        self.hazard = nn.Linear(d_model, n_horizons)
        self.spend = nn.Linear(d_model, 2 * n_horizons)  # log m_1, K - 1 steps, K spreads
        self.decline = nn.Linear(d_model, n_horizons) if decline else None

    def forward(self, pooled: torch.Tensor, churn_pooled: torch.Tensor | None = None) -> HeadOutputs:
        """``churn_pooled``: what the hazard and decline logits read instead of ``pooled`` (the network's wide
        path adds the customer numbers there; through the spend head it spread predicted spend too far on
        CDNOW, README Model)."""
        churn_pooled = pooled if churn_pooled is None else churn_pooled
        k = self.n_horizons
        spend = self.spend(pooled)  # (B, 2K)
        level, steps = spend[:, :1], softplus(spend[:, 1:k])
        log_mean = torch.cat([level, level + torch.cumsum(steps, dim=1)], dim=1)  # (B, K), non-decreasing
        return HeadOutputs(
            hazard_logits=self.hazard(churn_pooled),
            log_spend_mean=log_mean,
            spend_sigma=softplus(spend[:, k:]) + MIN_SIGMA,
            decline_logits=self.decline(churn_pooled) if self.decline is not None else None,
        )

    def init_output_biases(
        self,
        churn_rate: list[float],
        log_spend_mean: list[float],
        log_spend_std: list[float],
        decline_rate: list[float] | None = None,
    ) -> None:
        """Start at the training base rates of every horizon, so early epochs are not spent finding them."""
        survival = torch.tensor(churn_rate, dtype=torch.float64).clamp(1e-3, 1 - 1e-3).cummin(0).values
        before = torch.cat([torch.ones(1, dtype=torch.float64), survival[:-1]])
        hazard = (1 - survival / before).clamp(1e-3, 1 - 1e-3)
        sigma = torch.tensor(log_spend_std, dtype=torch.float64).clamp(min=MIN_SIGMA + 1e-2)
        log_mean = torch.tensor(log_spend_mean, dtype=torch.float64) + sigma**2 / 2  # lognormal mean
        log_mean = log_mean.cummax(0).values
        steps = (log_mean[1:] - log_mean[:-1]).clamp(min=1e-3)
        with torch.no_grad():
            self.hazard.bias.copy_(torch.logit(hazard))
            self.spend.bias[0] = log_mean[0]
            self.spend.bias[1 : self.n_horizons] = torch.log(torch.expm1(steps))
            self.spend.bias[self.n_horizons :] = torch.log(torch.expm1(sigma - MIN_SIGMA))
            if self.decline is not None and decline_rate is not None:
                self.decline.bias.copy_(
                    torch.logit(torch.tensor(decline_rate, dtype=torch.float64).clamp(1e-3, 1 - 1e-3))
                )


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x), written as a log-softmax over (0, x). The same function as ``F.softplus``, but it
    exports as onnxruntime's row-wise LogSoftmax, whose result for a row does not depend on the rows around
    it; the elementwise Softplus (and Log) kernels split a large batch between threads and round an element
    in a block's scalar tail differently, so a customer's score would change by one ulp with the batch it
    lands in, and shards, spill partitions and one big job would disagree."""
    return -torch.log_softmax(torch.stack([torch.zeros_like(x), x], dim=-1), dim=-1)[..., 0]


def survival(hazard_logits: torch.Tensor) -> torch.Tensor:
    """S(t_k) = prod_{j<=k} (1 - sigmoid(phi_j)) = exp(-sum_{j<=k} softplus(phi_j)), (B, K)."""
    return torch.exp(-torch.cumsum(softplus(hazard_logits), dim=-1))


def churn_probability(heads: HeadOutputs) -> torch.Tensor:
    """P(churn) at every horizon, (B, K): the decline probability of a decline model, else S(t_k)."""
    if heads.decline_logits is not None:
        return torch.sigmoid(heads.decline_logits)
    return survival(heads.hazard_logits)


def expected_spend(p_zero: torch.Tensor, log_mean: torch.Tensor) -> torch.Tensor:
    """E[spend] of the zero-inflated log-normal whose zero mass is ``p_zero`` (S(t_k), the probability of no
    purchase) and whose positive part has mean exp(log_mean) (its location is log_mean - sigma^2 / 2)."""
    return (1 - p_zero) * torch.exp(log_mean)


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
