"""Post-hoc calibration fitted after training and carried into the exported model.

Churn: Platt scaling of the logit, a temperature (over- or under-confidence) and a bias (a base-rate
offset), neither of which changes the ranking. Spend: the positive-spend log-normal LN(mu, sigma) is
mapped to LN(a + b * mu, b * sigma), i.e. spend -> e^a * spend^b, fitted by Poisson deviance of the
expected spend; b corrects a spread of predictions that is too wide or too narrow (level errors per
decile), and at the optimum total predicted spend equals total actual spend on validation. Both keep
the heads consistent: quantiles come from the same transformed log-normal, and the spend mixture uses
the calibrated churn probability.

Shapes (temperature, power) are fitted on validation customers only. The levels (churn bias, spend
scale) can come from every labelled customer at the cutoff instead: they are single numbers, and a
validation split of a few thousand customers pins a churn rate only to about +-1 point.
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


def fit_calibration(network: ChurnFormer, batches, level_batches=None) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders).

    ``level_batches``: more labelled customers at the same cutoff (the training customers). Once the
    shapes are fitted on validation alone, the levels are reset so that over validation and these
    together the mean churn probability is the churn rate and total expected spend is total spend.
    """
    data = _collect(network, batches)
    churn = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log temperature, bias

    def churn_loss() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(data["logit"] / churn[0].exp() + churn[1], data["churn"])

    _minimize(churn, churn_loss)
    temperature, bias = float(churn[0].detach().exp()), float(churn[1].detach())

    def expected_spend(scale_and_power: torch.Tensor, heads: dict[str, torch.Tensor] = data) -> torch.Tensor:
        log_scale, power = scale_and_power[0], scale_and_power[1]
        p_buy = 1 - torch.sigmoid(heads["logit"] / temperature + bias)
        return p_buy * torch.exp(log_scale + power * heads["mu"] + 0.5 * (power * heads["sigma"]) ** 2)

    def totals_matching_log_scale(power: float, heads: dict[str, torch.Tensor] = data) -> float:
        # the deviance optimum of the scale given the power
        uncalibrated = expected_spend(torch.tensor([0.0, power], dtype=torch.float64), heads).sum().clamp(min=1e-12)
        return math.log(float(heads["spend"].sum()) / float(uncalibrated))

    log_scale, power = 0.0, 1.0  # left alone when nobody bought in the validation horizon
    anyone_bought = float(data["spend"].sum()) > 0
    if anyone_bought:
        spend = torch.tensor([totals_matching_log_scale(1.0), 1.0], dtype=torch.float64, requires_grad=True)

        def spend_loss() -> torch.Tensor:  # Poisson deviance up to constants, relative to mean spend
            expected = expected_spend(spend).clamp(min=1e-12)
            return (expected - data["spend"] * expected.log()).mean() / data["spend"].mean()

        _minimize(spend, spend_loss)
        fitted = float(spend[1].detach())
        power = min(max(fitted, SPEND_POWER_LIMITS[0]), SPEND_POWER_LIMITS[1]) if math.isfinite(fitted) else 1.0
        log_scale = totals_matching_log_scale(power)
    if level_batches is not None:
        everyone = {key: torch.cat([data[key], values]) for key, values in _collect(network, level_batches).items()}
        bias = _rate_matching_bias(everyone["logit"] / temperature, everyone["churn"], bias)
        if anyone_bought:
            log_scale = totals_matching_log_scale(power, everyone)
    expected = expected_spend(torch.tensor([log_scale, power], dtype=torch.float64))
    p_buy = 1 - torch.sigmoid(data["logit"] / temperature + bias)
    quantile_levels = torch.arange(1, 100, dtype=torch.float64) / 100
    return Calibration(
        churn_temperature=temperature,
        churn_bias=bias,
        spend_log_scale=log_scale,
        spend_power=power,
        churn_percentiles=torch.quantile(1 - p_buy, quantile_levels).tolist(),
        spend_percentiles=torch.quantile(expected, quantile_levels).tolist(),
    )


def _rate_matching_bias(scaled_logit: torch.Tensor, churn: torch.Tensor, start: float) -> float:
    """The log-loss optimal bias for fixed scaled logits: there the mean calibrated churn probability
    equals the observed churn rate (the loss's gradient in the bias is their difference)."""
    bias = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    _minimize(bias, lambda: F.binary_cross_entropy_with_logits(scaled_logit + bias, churn))
    return float(bias.detach())


def _minimize(parameters: torch.Tensor, loss) -> None:
    optimizer = torch.optim.LBFGS([parameters], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
