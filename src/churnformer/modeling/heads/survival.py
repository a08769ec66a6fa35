"""The survival head: when the first purchase after the cutoff comes, over a grid of horizons t_1 < ... < t_K.

K discrete-time hazard logits, h_k = P(first purchase in (t_{k-1}, t_k] | none before) = sigmoid(phi_k)
(Nnet-survival, pycox's LogisticHazard), so S(t_k) = P(no purchase by t_k) = exp(-sum_{j<=k} softplus(phi_j)):
non-increasing by construction. The loss is the survival likelihood with administrative censoring: a horizon
whose window runs past the end of the log is left out for that example, never counted as churn.

Calibration: Platt scaling of the hazard logits, one temperature (over- or under-confidence) and a bias per
interval of the grid (a base-rate offset), fitted by the same likelihood; none of them changes the ranking at a
horizon, and S stays non-increasing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
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
from churnformer.modeling.ops import minimize, softplus
from churnformer.schema import NO_PURCHASE, OBSERVED, PROBABILITY

# Fits outside these ranges mean the network or the validation set is not fit to calibrate from (an
# undertrained network after one epoch gives temperatures near 0.01); such a part stays the identity.
TEMPERATURE_LIMITS = (0.2, 5.0)
# A bias may move an interval's logit by what the temperature's rescaling of its base rate needs
# (|logit(rate)| * |1 - 1/temperature|) plus this: a factor of e^2 ~ 7 in the odds.
BIAS_MARGIN = 2.0
HAZARD = "hazard_logits"


class SurvivalHead(Head):
    """P(no purchase by each horizon), ``no_purchase_probability`` (churn_probability unless churn is a
    decline); the hurdle every head of an amount or count builds on."""

    label = NO_PURCHASE
    kind = PROBABILITY
    reads_wide_path = True  # Wide & Deep: the customer numbers reach the churn logits (docs/guide/model.md)

    def __init__(self, d_model: int, n_horizons: int, weight: float = 1.0) -> None:
        super().__init__(d_model, n_horizons, weight)
        self.hazard = nn.Linear(d_model, n_horizons)

    def forward(self, pooled: torch.Tensor) -> Raw:
        return {HAZARD: self.hazard(pooled)}

    def init_biases(self, stats: LabelStats) -> None:
        survival = torch.tensor(stats[NO_PURCHASE]["mean"], dtype=torch.float64).clamp(1e-3, 1 - 1e-3).cummin(0).values
        before = torch.cat([torch.ones(1, dtype=torch.float64), survival[:-1]])
        hazard = (1 - survival / before).clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.hazard.bias.copy_(torch.logit(hazard))

    def loss(self, raw: Raw, labels: Labels, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return survival_nll(raw[HAZARD], labels[NO_PURCHASE], labels[OBSERVED]).mean()

    def identity(self) -> dict[str, Any]:
        return {"temperature": 1.0, "bias": [0.0] * self.n_horizons}

    def predict(self, raw: Raw, params: Params | None, predicted: Predicted, main: int, extras: bool) -> Predicted:
        logits = (
            raw[HAZARD]
            if params is None
            else raw[HAZARD] / params["temperature"] + as_tensor(params["bias"], raw[HAZARD])
        )
        return {self.quantity: survival(logits)}

    def fit_calibration(self, fit: CalibrationFit) -> dict[str, Any]:
        """Temperature and biases on the shaping customers; the biases again on every labelled customer (when
        there are more) with the temperature fixed, so each interval's predicted hazard matches its observed
        rate there. The identity when a fit is out of its sane range."""
        shared, validation, reasons = fit.shared_churn_bias, self._arrays(fit.validation), len(fit.fallback)
        temperature, bias = _fit_platt(self._arrays(fit.shaping), fit.fallback, shared)
        if fit.everyone is not None and len(fit.fallback) == reasons:  # kept: the levels on everyone
            bias = _likelihood_biases(self._arrays(fit.everyone), temperature, bias, shared)
            if not _biases_are_sane(bias, temperature, validation, fit.fallback):
                temperature, bias = 1.0, torch.zeros(self.n_horizons, dtype=torch.float64)
        return {"temperature": temperature, "bias": bias.tolist()}

    def describe(self, params: Params) -> str:
        biases = ", ".join(f"{b:+.3f}" for b in params["bias"])
        return f"churn temperature {params['temperature']:.3f}, biases {biases}"

    def _arrays(self, data: FitData) -> dict[str, torch.Tensor]:
        return {
            "logit": data.raw[self.name][HAZARD],
            "no_purchase": data.labels[NO_PURCHASE],
            "seen": data.labels[OBSERVED],
        }


def survival(hazard_logits: torch.Tensor) -> torch.Tensor:
    """S(t_k) = prod_{j<=k} (1 - sigmoid(phi_j)) = exp(-sum_{j<=k} softplus(phi_j)), (B, K)."""
    return torch.exp(-torch.cumsum(softplus(hazard_logits), dim=-1))


def survival_nll(hazard_logits: torch.Tensor, no_purchase: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood of the first purchase over the grid, (B,).

    ``no_purchase`` (B, K): no purchase by t_k. Interval k counts for an example alive at its start (no
    purchase before t_{k-1}) whose window to t_k is observed: log h_k if the first purchase falls in it,
    log(1 - h_k) otherwise. With one horizon this is the binary cross-entropy of churn with logit -phi.
    """
    alive = torch.cat([torch.ones_like(no_purchase[:, :1]), no_purchase[:, :-1]], dim=1)  # none before interval k
    at_risk = alive * observed
    first_purchase = at_risk * (1 - no_purchase)
    log_likelihood = first_purchase * F.logsigmoid(hazard_logits) + (at_risk - first_purchase) * F.logsigmoid(
        -hazard_logits
    )
    return -log_likelihood.sum(dim=1)


def _fit_platt(data: dict[str, torch.Tensor], fallback: list[str], shared: bool) -> tuple[float, torch.Tensor]:
    """Temperature and per-interval (or one ``shared``) biases of the hazard logits by the survival likelihood;
    the identity when either is out of its sane range (the reason appended to ``fallback``)."""
    k = data["logit"].shape[1]
    params = torch.zeros(1 + (1 if shared else k), dtype=torch.float64, requires_grad=True)  # log T, biases

    def loss() -> torch.Tensor:
        logits = data["logit"] / params[0].exp() + params[1:]
        return survival_nll(logits, data["no_purchase"], data["seen"]).mean()

    minimize(params, loss)
    temperature, bias = float(params[0].detach().exp()), params[1:].detach().expand(k).clone()
    identity = (1.0, torch.zeros(k, dtype=torch.float64))
    low, high = TEMPERATURE_LIMITS
    if not low <= temperature <= high:  # also false for NaN
        fallback.append(f"churn temperature {temperature:.3g} outside {[low, high]}")
        return identity
    if not _biases_are_sane(bias, temperature, data, fallback):
        return identity
    return temperature, bias


def _interval_hazard_rates(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """The observed share of customers at risk in each interval who made their first purchase in it."""
    no_purchase = data["no_purchase"]
    alive = torch.cat([torch.ones_like(no_purchase[:, :1]), no_purchase[:, :-1]], dim=1)
    at_risk = alive * data["seen"]
    events = (at_risk * (1 - no_purchase)).sum(0)
    return (events / at_risk.sum(0).clamp(min=1.0)).clamp(1e-3, 1 - 1e-3)


def _biases_are_sane(
    bias: torch.Tensor, temperature: float, data: dict[str, torch.Tensor], fallback: list[str]
) -> bool:
    """Whether every bias is within what rescaling its interval's base rate by ``temperature`` needs, plus a
    margin."""
    return biases_are_sane(bias, temperature, _interval_hazard_rates(data), "churn bias", "interval", fallback)


def biases_are_sane(
    bias: torch.Tensor, temperature: float, rate: torch.Tensor, what: str, per: str, fallback: list[str]
) -> bool:
    """Whether each bias of Platt scaling stays within what rescaling its base ``rate`` by ``temperature``
    needs (|logit(rate)| * |1 - 1/temperature|) plus :data:`BIAS_MARGIN`; else the first one out, as ``what``
    of ``per`` k, is appended to ``fallback``."""
    limit = torch.logit(rate).abs() * abs(1 - 1 / temperature) + BIAS_MARGIN
    bad = (bias.abs() > limit) | ~torch.isfinite(bias)
    if not bad.any():
        return True
    k = int(torch.nonzero(bad)[0])
    fallback.append(f"{what} {float(bias[k]):+.3g} of {per} {k + 1} beyond +-{float(limit[k]):.3g}")
    return False


def _likelihood_biases(
    data: dict[str, torch.Tensor], temperature: float, start: torch.Tensor, shared: bool
) -> torch.Tensor:
    """The survival-likelihood optimal biases for fixed scaled logits: there each interval's predicted hazard
    matches its observed rate on average (the gradient in a bias is their difference); one ``shared`` bias
    matches only their total."""
    bias = (start[:1] if shared else start).clone().requires_grad_(True)
    minimize(bias, lambda: survival_nll(data["logit"] / temperature + bias, data["no_purchase"], data["seen"]).mean())
    return bias.detach().expand(len(start)).clone()
