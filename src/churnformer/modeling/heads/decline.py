"""The decline head, for ``churn_definition=decline``: churn is spend in the horizon below a share of the
same-length window before the cutoff. K logits, one binary event per horizon: unlike "no purchase yet", a
decline at 30 days neither implies nor excludes one at 90, so it has no survival structure. Its probability
is the model's churn_probability; the survival and spend heads stay as they are (the model then also reports
no_purchase_probability).

Calibration: Platt scaling, a temperature and a bias per horizon by binary cross-entropy (the horizons are not
nested intervals): the temperature on the validation customers alone (the head fits its training customers
more closely than new ones, so their logits would call for too little softening), the biases on the same
customers as the survival head's levels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from churnformer.modeling.heads.base import CalibrationFit, Head, Labels, LabelStats, Params, Predicted, Raw, as_tensor
from churnformer.modeling.heads.survival import TEMPERATURE_LIMITS, biases_are_sane
from churnformer.modeling.ops import minimize, sigmoid
from churnformer.schema import CHURN, NO_PURCHASE, OBSERVED, PROBABILITY

DECLINE = "decline_logits"


class DeclineHead(Head):
    """P(decline by each horizon): ``churn_probability`` of a decline model."""

    label = CHURN
    kind = PROBABILITY
    needs = (NO_PURCHASE,)
    reads_wide_path = True

    def __init__(self, d_model: int, n_horizons: int, weight: float = 1.0) -> None:
        super().__init__(d_model, n_horizons, weight)
        self.logit = nn.Linear(d_model, n_horizons)

    def forward(self, pooled: torch.Tensor) -> Raw:
        return {DECLINE: self.logit(pooled)}

    def init_biases(self, stats: LabelStats) -> None:
        rate = torch.tensor(stats[CHURN]["mean"], dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
        with torch.no_grad():
            self.logit.bias.copy_(torch.logit(rate))

    def loss(self, raw: Raw, labels: Labels, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return decline_nll(raw[DECLINE], labels[CHURN], labels[OBSERVED]).mean()

    def identity(self) -> dict[str, Any]:
        return {"temperature": 1.0, "bias": [0.0] * self.n_horizons}

    def predict(self, raw: Raw, params: Params | None, predicted: Predicted, main: int, extras: bool) -> Predicted:
        if params is None:
            return {self.quantity: torch.sigmoid(raw[DECLINE])}
        return {self.quantity: sigmoid(raw[DECLINE] / params["temperature"] + as_tensor(params["bias"], raw[DECLINE]))}

    def fit_calibration(self, fit: CalibrationFit) -> dict[str, Any]:
        """Temperature and biases by binary cross-entropy on the validation customers, the biases fitted again on
        every labelled customer (when there are more) with the temperature fixed, so each horizon's predicted
        decline rate matches the observed one there. The identity when the fit is out of the sane ranges."""
        validation = self._arrays(fit.validation)
        k = self.n_horizons
        params = torch.zeros(1 + k, dtype=torch.float64, requires_grad=True)  # log T, biases
        minimize(
            params,
            lambda: decline_nll(
                validation["logit"] / params[0].exp() + params[1:], validation["churn"], validation["seen"]
            ).mean(),
        )
        temperature, bias = float(params[0].detach().exp()), params[1:].detach().clone()
        identity = self.identity()
        low, high = TEMPERATURE_LIMITS
        if not low <= temperature <= high:  # also false for NaN
            fit.fallback.append(f"decline temperature {temperature:.3g} outside {[low, high]}")
            return identity
        data = validation
        if fit.everyone is not None:
            data = self._arrays(fit.everyone)
            bias.requires_grad_(True)
            minimize(bias, lambda: decline_nll(data["logit"] / temperature + bias, data["churn"], data["seen"]).mean())
            bias = bias.detach()
        rate = ((data["churn"] * data["seen"]).sum(0) / data["seen"].sum(0).clamp(min=1.0)).clamp(1e-3, 1 - 1e-3)
        if not biases_are_sane(bias, temperature, rate, "decline bias", "horizon", fit.fallback):
            return identity
        return {"temperature": temperature, "bias": bias.tolist()}

    def describe(self, params: Params) -> str:
        biases = ", ".join(f"{b:+.3f}" for b in params["bias"])
        return f"decline temperature {params['temperature']:.3f}, biases {biases}"

    def _arrays(self, data) -> dict[str, torch.Tensor]:
        return {"logit": data.raw[self.name][DECLINE], "churn": data.labels[CHURN], "seen": data.labels[OBSERVED]}


def decline_nll(decline_logits: torch.Tensor, decline: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-example binary cross-entropy of the decline summed over the observed horizons, (B,)."""
    return (F.binary_cross_entropy_with_logits(decline_logits, decline, reduction="none") * observed).sum(dim=1)
