"""Post-hoc calibration fitted on validation customers and carried into the exported model.

Churn: Platt scaling of the logit, a temperature (over- or under-confidence) and a bias (a base-rate
offset), neither of which changes the ranking. Spend: the positive-spend log-normal LN(mu, sigma) is
mapped to LN(a + b * mu, b * sigma), i.e. spend -> e^a * spend^b, fitted by Poisson deviance of the
expected spend; b corrects a spread of predictions that is too wide or too narrow (level errors per
decile), and at the optimum total predicted spend equals total actual spend on validation. Both keep
the heads consistent: quantiles come from the same transformed log-normal, and the spend mixture uses
the calibrated churn probability.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from churnformer.model import ChurnFormer
from churnformer.module import INPUT_NAMES

SPEND_POWER_LIMITS = (0.5, 2.0)  # a wilder fit means validation is too small or odd to trust


@dataclass(frozen=True)
class Calibration:
    churn_temperature: float = 1.0
    churn_bias: float = 0.0
    spend_log_scale: float = 0.0
    spend_power: float = 1.0
    # Percentiles 1..99 of the calibrated predictions on validation: the reference population that
    # scoring's deciles and value segments are relative to (churnformer.scoring.ReferencePercentiles).
    churn_percentiles: list[float] = field(default_factory=list)
    spend_percentiles: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"churn temperature {self.churn_temperature:.3f}, bias {self.churn_bias:+.3f}; "
            f"spend scale {math.exp(self.spend_log_scale):.3f}, power {self.spend_power:.3f}"
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


@torch.no_grad()
def _collect(network: ChurnFormer, batches) -> dict[str, torch.Tensor]:
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {"logit": [], "mu": [], "sigma": [], "churn": [], "spend": []}
    for batch in batches:
        heads = network(*(batch[name] for name in INPUT_NAMES))
        for key, value in zip(parts, (*heads, batch["churn"], batch["spend"]), strict=True):
            parts[key].append(value.double())
    return {key: torch.cat(values) for key, values in parts.items()}


def fit_calibration(network: ChurnFormer, batches) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders)."""
    data = _collect(network, batches)
    churn = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log temperature, bias

    def churn_loss() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(data["logit"] / churn[0].exp() + churn[1], data["churn"])

    _minimize(churn, churn_loss)
    temperature, bias = float(churn[0].detach().exp()), float(churn[1].detach())
    p_buy = 1 - torch.sigmoid(data["logit"] / temperature + bias)

    def expected_spend(scale_and_power: torch.Tensor) -> torch.Tensor:
        log_scale, power = scale_and_power[0], scale_and_power[1]
        return p_buy * torch.exp(log_scale + power * data["mu"] + 0.5 * (power * data["sigma"]) ** 2)

    def totals_matching_log_scale(power: float) -> float:  # the deviance optimum of the scale given the power
        uncalibrated = expected_spend(torch.tensor([0.0, power], dtype=torch.float64)).sum().clamp(min=1e-12)
        return math.log(float(data["spend"].sum()) / float(uncalibrated))

    if float(data["spend"].sum()) > 0:
        spend = torch.tensor([totals_matching_log_scale(1.0), 1.0], dtype=torch.float64, requires_grad=True)

        def spend_loss() -> torch.Tensor:  # Poisson deviance up to constants, relative to mean spend
            expected = expected_spend(spend).clamp(min=1e-12)
            return (expected - data["spend"] * expected.log()).mean() / data["spend"].mean()

        _minimize(spend, spend_loss)
        fitted = float(spend[1].detach())
        power = min(max(fitted, SPEND_POWER_LIMITS[0]), SPEND_POWER_LIMITS[1]) if math.isfinite(fitted) else 1.0
        log_scale = totals_matching_log_scale(power)
    else:  # nobody bought in the validation horizon: nothing to fit spend on
        log_scale, power = 0.0, 1.0
    expected = expected_spend(torch.tensor([log_scale, power], dtype=torch.float64))
    levels = torch.arange(1, 100, dtype=torch.float64) / 100
    return Calibration(
        churn_temperature=temperature,
        churn_bias=bias,
        spend_log_scale=log_scale,
        spend_power=power,
        churn_percentiles=torch.quantile(1 - p_buy, levels).tolist(),
        spend_percentiles=torch.quantile(expected, levels).tolist(),
    )


def _minimize(parameters: torch.Tensor, loss) -> None:
    optimizer = torch.optim.LBFGS([parameters], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
