"""The purchases head: how many purchases each customer makes within each horizon, ``expected_purchases_<h>d``
(what BG/NBD's ``conditional_expected_number_of_purchases_up_to_time`` gives lifetimes users). A purchase
counts once per customer and day, as BG/NBD counts transactions (``schema.PURCHASES``).

A hurdle model on the survival head: N_k = 0 with probability S(t_k) (no purchase by t_k), and given a purchase
E[N_k | N_k > 0] = 1 + m_k, with log m_k non-decreasing in k by construction (log m_1 + cumulative softplus
steps). E[N_k] = (1 - S(t_k)) * (1 + m_k) is then non-decreasing over the grid. The loss is the Poisson
deviance of N_k - 1 where the customer bought (its zero part is the survival head's likelihood, which this
head does not count again): it is right about the mean whatever the counts' dispersion.

Calibration: a scale per horizon on m_k, so that the total of expected purchases equals the total of
purchases over every labelled customer at that horizon (a closed form; the scaled means are made
non-decreasing again).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from churnformer.modeling.heads.base import (
    CalibrationFit,
    Head,
    Labels,
    LabelStats,
    Params,
    Predicted,
    Raw,
    as_tensor,
)
from churnformer.modeling.ops import cumulative_max, softplus
from churnformer.schema import EXPECTATION, NO_PURCHASE, NO_PURCHASE_PROBABILITY, OBSERVED, PURCHASES

LOG_MORE = "log_more_purchases"  # log m_k: log E[N_k - 1 | N_k > 0]
# A scale outside this range means the network's counts are not fit to calibrate from: left at the identity.
SCALE_LIMITS = (0.1, 10.0)
MIN_MORE = 1e-2  # the smallest m_k the biases start at (customers who buy once and stop)


class PurchasesHead(Head):
    """Expected purchases at every horizon (``expected_purchases``)."""

    label = PURCHASES
    kind = EXPECTATION
    needs = (NO_PURCHASE,)

    def __init__(self, d_model: int, n_horizons: int, weight: float = 1.0) -> None:
        super().__init__(d_model, n_horizons, weight)
        self.count = nn.Linear(d_model, n_horizons)  # log m_1, then K - 1 steps

    def forward(self, pooled: torch.Tensor) -> Raw:
        out = self.count(pooled)  # (B, K)
        level = out[:, :1]
        return {LOG_MORE: torch.cat([level, level + torch.cumsum(softplus(out[:, 1:]), dim=1)], dim=1)}

    def init_biases(self, stats: LabelStats) -> None:
        more = torch.tensor(stats[PURCHASES]["positive_mean"], dtype=torch.float64) - 1
        log_more = torch.log(more.clamp(min=MIN_MORE)).cummax(0).values
        steps = (log_more[1:] - log_more[:-1]).clamp(min=1e-3)
        with torch.no_grad():
            self.count.bias[0] = log_more[0]
            self.count.bias[1:] = torch.log(torch.expm1(steps))

    def loss(self, raw: Raw, labels: Labels, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        count, observed = labels[PURCHASES], labels[OBSERVED]
        bought = (count > 0) & (observed > 0)
        log_rate = raw[LOG_MORE]
        deviance = torch.exp(log_rate) - (count - 1).clamp(min=0) * log_rate  # Poisson, up to constants
        return torch.where(bought, deviance, 0.0).sum(dim=1).mean()

    def identity(self) -> dict[str, Any]:
        return {"log_scale": [0.0] * self.n_horizons}

    def predict(self, raw: Raw, params: Params | None, predicted: Predicted, main: int, extras: bool) -> Predicted:
        log_more = raw[LOG_MORE]
        if params is not None:
            log_more = cumulative_max(log_more + as_tensor(params["log_scale"], log_more))
        return {self.quantity: expected_purchases(predicted[NO_PURCHASE_PROBABILITY], log_more)}

    def fit_calibration(self, fit: CalibrationFit) -> dict[str, Any]:
        """Per horizon the scale c_k of m_k that makes the expected purchases of every labelled customer sum to
        their purchases: sum (1 - S)(1 + c m) = sum N."""
        data = fit.levels
        seen = data.labels[OBSERVED]
        buying = (1 - fit.predicted(data)[NO_PURCHASE_PROBABILITY]) * seen
        more = (buying * torch.exp(data.raw[self.name][LOG_MORE])).sum(0)
        scale = ((data.labels[PURCHASES] * seen).sum(0) - buying.sum(0)) / more.clamp(min=1e-12)
        low, high = SCALE_LIMITS
        bad = ~((scale >= low) & (scale <= high))  # also true for NaN
        if bad.any():
            k = int(torch.nonzero(bad)[0])
            fit.fallback.append(f"purchases scale {float(scale[k]):.3g} of horizon {k + 1} outside {[low, high]}")
            return self.identity()
        return {"log_scale": torch.log(scale).tolist()}

    def describe(self, params: Params) -> str:
        return "purchases scales " + ", ".join(f"{math.exp(a):.3f}" for a in params["log_scale"])


def expected_purchases(p_none: torch.Tensor, log_more: torch.Tensor) -> torch.Tensor:
    """E[N] of the hurdle: 0 with probability ``p_none`` (S(t_k)), else 1 + exp(log_more) on average."""
    return (1 - p_none) * (1 + torch.exp(log_more))
