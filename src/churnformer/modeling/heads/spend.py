"""The spend head: net spend over each horizon, a zero-inflated log-normal (ZILN, Wang et al. 2019).

Its zero mass is the survival head's S(t_k): "no purchase in the window" and "zero spend" are (nearly) the
same event, so the two heads share the hazard logits and never contradict each other (P(spend_k > 0) =
1 - S(t_k)), and its loss is the survival likelihood plus the log-normal likelihood of positive spend. The
head adds the mean of positive spend m_k = E[spend_k | spend_k > 0], non-decreasing in k by construction
(log m_k = log m_1 + cumulative softplus steps), and its log-scale spread sigma_k. Expected spend E_k =
(1 - S(t_k)) * m_k is then non-decreasing in k too, as spend over a longer window must be.

Calibration: at every horizon LN(mu, sigma) -> LN(a_k + b * mu, b * sigma), i.e. spend -> e^a_k * spend^b. The
power b is fitted at the main horizon by Poisson deviance of the expected spend (it corrects a spread of
predictions that is too wide or too narrow: level errors per decile), and each scale a_k makes total expected
spend equal total spend at its horizon. Quantiles come from the same transformed log-normal and the mixture
uses the calibrated S, so the heads stay consistent; the calibrated mean is made non-decreasing over the grid
(a running maximum), so expected spend stays non-decreasing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from churnformer.modeling.heads.base import (
    CalibrationFit,
    FitData,
    Head,
    Labels,
    LabelStats,
    Params,
    Predicted,
    Raw,
    as_tensor,
)
from churnformer.modeling.ops import cumulative_max, minimize, normal_quantile, softplus
from churnformer.schema import (
    EXPECTATION,
    NO_PURCHASE,
    NO_PURCHASE_PROBABILITY,
    OBSERVED,
    SPEND,
    SPEND_IF_RETAINED,
    SPEND_QUANTILE_COLUMNS,
    SPEND_QUANTILES,
)

MIN_SIGMA = 0.05
# Capped where float32 would overflow (e^40 ~ 2e17, far above any spend the event contract admits).
MAX_LOG_SPEND = 40.0
POWER_LIMITS = (0.5, 2.0)
# Calibrated expected spend of the median validation customer within this factor of the network's own.
RATIO_LIMIT = 10.0
_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
LOG_MEAN, SIGMA = "log_spend_mean", "spend_sigma"


class SpendHead(Head):
    """Expected spend at every horizon (``expected_spend``), and at the main horizon its p10/p50/p90 and the
    spend if retained."""

    label = SPEND
    kind = EXPECTATION
    needs = (NO_PURCHASE,)
    main_extras = (*SPEND_QUANTILE_COLUMNS, SPEND_IF_RETAINED)

    def __init__(self, d_model: int, n_horizons: int, weight: float = 1.0) -> None:
        super().__init__(d_model, n_horizons, weight)
        self.amount = nn.Linear(d_model, 2 * n_horizons)  # log m_1, K - 1 steps, K spreads

    def forward(self, pooled: torch.Tensor) -> Raw:
        k = self.n_horizons
        spend = self.amount(pooled)  # (B, 2K)
        level, steps = spend[:, :1], softplus(spend[:, 1:k])
        log_mean = torch.cat([level, level + torch.cumsum(steps, dim=1)], dim=1)  # (B, K), non-decreasing
        return {LOG_MEAN: log_mean, SIGMA: softplus(spend[:, k:]) + MIN_SIGMA}

    def init_biases(self, stats: LabelStats) -> None:
        sigma = torch.tensor(stats[SPEND]["log_positive_std"], dtype=torch.float64).clamp(min=MIN_SIGMA + 1e-2)
        log_mean = torch.tensor(stats[SPEND]["log_positive_mean"], dtype=torch.float64) + sigma**2 / 2  # lognormal
        log_mean = log_mean.cummax(0).values
        steps = (log_mean[1:] - log_mean[:-1]).clamp(min=1e-3)
        with torch.no_grad():
            self.amount.bias[0] = log_mean[0]
            self.amount.bias[1 : self.n_horizons] = torch.log(torch.expm1(steps))
            self.amount.bias[self.n_horizons :] = torch.log(torch.expm1(sigma - MIN_SIGMA))

    def loss(self, raw: Raw, labels: Labels, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """ZILN: the survival likelihood (its zero part) plus the log-normal likelihood of positive spend."""
        spend, observed = labels[SPEND], labels[OBSERVED]
        positive = (spend > 0) & (observed > 0)
        sigma = raw[SIGMA]
        mu = raw[LOG_MEAN] - 0.5 * sigma * sigma
        safe_spend = torch.where(positive, spend, torch.ones_like(spend))
        amount = torch.where(positive, lognormal_nll(safe_spend, mu, sigma), 0.0).sum(dim=1).mean()
        return losses[NO_PURCHASE] + amount

    def identity(self) -> dict[str, Any]:
        return {"power": 1.0, "log_scale": [0.0] * self.n_horizons}

    def predict(self, raw: Raw, params: Params | None, predicted: Predicted, main: int, extras: bool) -> Predicted:
        s = predicted[NO_PURCHASE_PROBABILITY]
        if params is None:
            sigma, log_mean = raw[SIGMA], raw[LOG_MEAN]
        else:
            sigma, log_mean = calibrated(raw, as_tensor(params["log_scale"], raw[SIGMA]), params["power"])
        out = {self.quantity: expected_spend(s, log_mean)}
        if extras:
            mu = log_mean[:, main] - 0.5 * sigma[:, main] * sigma[:, main]
            # All quantiles in one (B, Q) computation: a third of the graph the three would make one by one.
            levels = torch.tensor(SPEND_QUANTILES, dtype=s.dtype, device=s.device)
            quantiles = spend_quantile(levels, s[:, main, None], mu[:, None], sigma[:, main, None]).unbind(-1)
            out |= dict(zip(SPEND_QUANTILE_COLUMNS, quantiles, strict=True))
            out[SPEND_IF_RETAINED] = torch.exp(log_mean[:, main])
        return out

    def fit_calibration(self, fit: CalibrationFit) -> dict[str, Any]:
        """The power on the shaping customers, the scales on every labelled customer; the identity when the power
        is out of its range or moves the median validation customer's spend too far."""
        k, main = self.n_horizons, fit.main
        identity = {"power": 1.0, "log_scale": [0.0] * k}
        power = self._fit_power(fit.shaping, fit.predicted(fit.shaping)[NO_PURCHASE_PROBABILITY], main)
        if power is None:  # nobody bought at the main horizon
            return identity
        log_scale = self._totals_matching_log_scales(
            fit.levels, fit.predicted(fit.levels)[NO_PURCHASE_PROBABILITY], power
        )
        median_mu = float(_mu(fit.validation.raw[self.name])[:, main].median())
        median_ratio = math.exp(abs(float(log_scale[main]) + (power - 1) * median_mu))
        if not POWER_LIMITS[0] <= power <= POWER_LIMITS[1]:  # also false for NaN
            fit.fallback.append(f"spend power {power:.3g} outside {list(POWER_LIMITS)}")
            return identity
        if not median_ratio <= RATIO_LIMIT:
            fit.fallback.append(f"spend changed {median_ratio:.3g}x for the median customer (limit {RATIO_LIMIT:g}x)")
            return identity
        return {"power": power, "log_scale": log_scale.tolist()}

    def describe(self, params: Params) -> str:
        scales = ", ".join(f"{math.exp(a):.3f}" for a in params["log_scale"])
        return f"spend scales {scales}, power {params['power']:.3f}"

    def _expected(self, data: FitData, s: torch.Tensor, log_scale: Any, power: Any) -> torch.Tensor:
        """(N, K) expected spend after the transform, before the running maximum of the export (which only
        matters where the raw scales would make the mean fall over the grid)."""
        raw = data.raw[self.name]
        sigma = power * raw[SIGMA]
        return expected_spend(s, log_scale + power * _mu(raw) + 0.5 * sigma * sigma)

    def _totals_matching_log_scales(self, data: FitData, s: torch.Tensor, power: float) -> torch.Tensor:
        """Per horizon, the scale (the deviance optimum given the power) at which total expected spend equals
        total spend over the examples whose window is observed."""
        seen = data.labels[OBSERVED]
        uncalibrated = self._expected(data, s, 0.0, power) * seen
        actual = (data.labels[SPEND] * seen).sum(0)
        return torch.log(actual.clamp(min=1e-12) / uncalibrated.sum(0).clamp(min=1e-12)) * (actual > 0)

    def _fit_power(self, data: FitData, s: torch.Tensor, main: int) -> float | None:
        """The power by Poisson deviance at the main horizon; None when nobody bought there."""
        spend = data.labels[SPEND][:, main]
        if not float(spend.sum()) > 0:
            return None
        start = float(self._totals_matching_log_scales(data, s, 1.0)[main])
        params = torch.tensor([start, 1.0], dtype=torch.float64, requires_grad=True)

        def loss() -> torch.Tensor:  # Poisson deviance up to constants, relative to mean spend
            expected = self._expected(data, s, params[0], params[1])[:, main].clamp(min=1e-12)
            return (expected - spend * expected.log()).mean() / spend.mean()

        minimize(params, loss)
        return float(params[1].detach())


def _mu(raw: Raw) -> torch.Tensor:
    return raw[LOG_MEAN] - 0.5 * raw[SIGMA] ** 2


def calibrated(raw: Raw, log_scale: torch.Tensor, power: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """The calibrated log-normal of positive spend at every horizon, (B, K) each: sigma and the log mean, made
    non-decreasing over the grid. One formula for the export and for fitting the calibration."""
    sigma = power * raw[SIGMA]
    mu = log_scale + power * _mu(raw)
    log_mean = cumulative_max((mu + 0.5 * sigma * sigma).clamp(max=MAX_LOG_SPEND))
    return sigma, log_mean


def lognormal_nll(spend: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-element negative log-density of a log-normal at ``spend`` (> 0)."""
    log_spend = torch.log(spend)
    return log_spend + torch.log(sigma) + _HALF_LOG_TWO_PI + 0.5 * ((log_spend - mu) / sigma) ** 2


def expected_spend(p_zero: torch.Tensor, log_mean: torch.Tensor) -> torch.Tensor:
    """E[spend] of the zero-inflated log-normal whose zero mass is ``p_zero`` (S(t_k), the probability of no
    purchase) and whose positive part has mean exp(log_mean) (its location is log_mean - sigma^2 / 2)."""
    return (1 - p_zero) * torch.exp(log_mean)


def spend_quantile(
    q: float | torch.Tensor, p_churn: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The q-quantile of the same mixture (broadcast over ``q``): 0 where P(no purchase) >= q, else the
    matching log-normal quantile."""
    level = ((q - p_churn) / (1 - p_churn).clamp(min=1e-6)).clamp(1e-6, 1 - 1e-6)
    value = torch.exp(mu + sigma * normal_quantile(level))
    return torch.where(p_churn >= q, torch.zeros_like(value), value)
