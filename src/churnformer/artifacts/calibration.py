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

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from churnformer.modeling.heads import expected_spend, spend_if_retained
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import Calibration
from churnformer.schema import CHURN, PERCENTILE_LEVELS, SPEND

Batches = Iterable[dict[str, torch.Tensor]]

# Fits outside these ranges mean the network or the validation set is not fit to calibrate from (an
# undertrained network after one epoch gives churn temperatures near 0.01); such a part stays the identity.
CHURN_TEMPERATURE_LIMITS = (0.2, 5.0)
SPEND_POWER_LIMITS = (0.5, 2.0)
# The churn bias may move the logit by what the temperature's rescaling of the base rate needs
# (|logit(rate)| * |1 - 1/temperature|) plus this: a factor of e^2 ~ 7 in the odds.
CHURN_BIAS_MARGIN = 2.0
# Calibrated expected spend of the median validation customer within this factor of the network's own.
SPEND_RATIO_LIMIT = 10.0


@torch.no_grad()
def _collect(network: ChurnFormer, batches: Batches) -> dict[str, torch.Tensor]:
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {"logit": [], "mu": [], "sigma": [], "churn": [], "spend": []}
    for batch in batches:
        heads = network(batch)
        for key, value in zip(parts, (*heads, batch[CHURN], batch[SPEND]), strict=True):
            parts[key].append(value.double())
    return {key: torch.cat(values) for key, values in parts.items()}


def fit_calibration(network: ChurnFormer, batches: Batches, level_batches: Batches | None = None) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders).

    ``level_batches``: more labelled customers at the same cutoff (the training customers). Once the
    shapes are fitted on validation alone, the levels are reset so that over validation and these
    together the mean churn probability is the churn rate and total expected spend is total spend.

    A part (churn or spend) whose fit falls outside the sane ranges above is left at the identity, and
    ``fallback`` says why.
    """
    data = _collect(network, batches)
    everyone = data
    if level_batches is not None:
        everyone = {key: torch.cat([data[key], values]) for key, values in _collect(network, level_batches).items()}
    fallback: list[str] = []
    temperature, bias = _fit_platt(data, fallback)
    power = _fit_spend_power(data, temperature, bias)
    if level_batches is not None and (temperature, bias) != (1.0, 0.0):
        bias = _rate_matching_bias(everyone["logit"] / temperature, everyone["churn"], bias)
        if not _churn_bias_is_sane(bias, temperature, data, fallback):
            temperature, bias = 1.0, 0.0
    log_scale = 0.0
    if power is not None:
        log_scale = _totals_matching_log_scale(everyone, temperature, bias, power)
        median_ratio = math.exp(abs(log_scale + (power - 1) * float(data["mu"].median())))
        if not SPEND_POWER_LIMITS[0] <= power <= SPEND_POWER_LIMITS[1]:  # also false for NaN
            fallback.append(f"spend power {power:.3g} outside {list(SPEND_POWER_LIMITS)}")
            log_scale, power = 0.0, 1.0
        elif not median_ratio <= SPEND_RATIO_LIMIT:
            fallback.append(f"spend changed {median_ratio:.3g}x for the median customer (limit {SPEND_RATIO_LIMIT:g}x)")
            log_scale, power = 0.0, 1.0
    power = 1.0 if power is None else power
    p_churn = torch.sigmoid(data["logit"] / temperature + bias)
    if_retained = _spend_if_retained(data, log_scale, power)
    levels = torch.tensor(PERCENTILE_LEVELS, dtype=torch.float64)
    return Calibration(
        churn_temperature=temperature,
        churn_bias=bias,
        spend_log_scale=log_scale,
        spend_power=power,
        churn_percentiles=torch.quantile(p_churn, levels).tolist(),
        spend_percentiles=torch.quantile((1 - p_churn) * if_retained, levels).tolist(),
        spend_if_retained_percentiles=torch.quantile(if_retained, levels).tolist(),
        fallback=fallback,
    )


def _fit_platt(data: dict[str, torch.Tensor], fallback: list[str]) -> tuple[float, float]:
    """Temperature and bias of the churn logit on validation; the identity (1, 0) when either is out of its
    sane range (the reason appended to ``fallback``)."""
    churn = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log temperature, bias

    def churn_loss() -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(data["logit"] / churn[0].exp() + churn[1], data["churn"])

    _minimize(churn, churn_loss)
    temperature, bias = float(churn[0].detach().exp()), float(churn[1].detach())
    low, high = CHURN_TEMPERATURE_LIMITS
    if not low <= temperature <= high:  # also false for NaN
        fallback.append(f"churn temperature {temperature:.3g} outside {[low, high]}")
        return 1.0, 0.0
    if not _churn_bias_is_sane(bias, temperature, data, fallback):
        return 1.0, 0.0
    return temperature, bias


def _churn_bias_is_sane(bias: float, temperature: float, data: dict[str, torch.Tensor], fallback: list[str]) -> bool:
    """Whether ``bias`` is within what rescaling the validation base rate by ``temperature`` needs, plus a margin."""
    rate = min(max(float(data["churn"].mean()), 1e-3), 1 - 1e-3)
    limit = abs(math.log(rate / (1 - rate))) * abs(1 - 1 / temperature) + CHURN_BIAS_MARGIN
    if abs(bias) <= limit:
        return True
    fallback.append(f"churn bias {bias:+.3g} beyond +-{limit:.3g} (validation churn rate {rate:.3f})")
    return False


def _spend_if_retained(heads: dict[str, torch.Tensor], log_scale, power) -> torch.Tensor:
    """Mean of positive spend after the transform: LN(log_scale + power * mu, power * sigma)."""
    return spend_if_retained(log_scale + power * heads["mu"], power * heads["sigma"])


def _expected_spend(heads: dict[str, torch.Tensor], temperature: float, bias: float, log_scale, power) -> torch.Tensor:
    p_churn = torch.sigmoid(heads["logit"] / temperature + bias)
    return expected_spend(p_churn, log_scale + power * heads["mu"], power * heads["sigma"])


def _totals_matching_log_scale(heads: dict[str, torch.Tensor], temperature: float, bias: float, power: float) -> float:
    """The scale (the deviance optimum given the power) at which total expected spend equals total spend."""
    uncalibrated = _expected_spend(heads, temperature, bias, 0.0, power).sum().clamp(min=1e-12)
    return math.log(float(heads["spend"].sum()) / float(uncalibrated))


def _fit_spend_power(data: dict[str, torch.Tensor], temperature: float, bias: float) -> float | None:
    """The power of the spend transform by Poisson deviance on validation; None when nobody bought."""
    if not float(data["spend"].sum()) > 0:
        return None
    start = _totals_matching_log_scale(data, temperature, bias, 1.0)
    spend = torch.tensor([start, 1.0], dtype=torch.float64, requires_grad=True)

    def spend_loss() -> torch.Tensor:  # Poisson deviance up to constants, relative to mean spend
        expected = _expected_spend(data, temperature, bias, spend[0], spend[1]).clamp(min=1e-12)
        return (expected - data["spend"] * expected.log()).mean() / data["spend"].mean()

    _minimize(spend, spend_loss)
    return float(spend[1].detach())


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
