"""Post-hoc calibration fitted after training and carried into the exported model.

Churn: Platt scaling of the hazard logits, one temperature (over- or under-confidence) and a bias per
interval of the horizon grid (a base-rate offset), fitted by the survival likelihood; none of them changes
the ranking at a horizon, and S stays non-increasing. Spend: at every horizon the positive-spend log-normal
LN(mu, sigma) is mapped to LN(a_k + b * mu, b * sigma), i.e. spend -> e^a_k * spend^b; the power b is fitted
at the main horizon by Poisson deviance of the expected spend (it corrects a spread of predictions that is
too wide or too narrow: level errors per decile), and each scale a_k makes total expected spend equal total
spend at its horizon. Quantiles come from the same transformed log-normal and the spend mixture uses the
calibrated churn probability, so the heads stay consistent. A decline model's decline logits get their own
Platt scaling (a temperature and a bias per horizon, by binary cross-entropy: the horizons are not nested
intervals): its temperature on the validation customers alone (the decline head fits its training customers
more closely than new ones), its biases on the same customers as the churn levels.

Shapes (temperature, power) and levels (biases, scales) can be fitted on every labelled customer at the
cutoff (training ones too) instead of the validation customers alone: a validation split of a few thousand
customers pins a churn rate only to about +-1 point, and a temperature no better (README, Model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from churnformer.modeling.heads import HeadOutputs, expected_spend, survival
from churnformer.modeling.losses import decline_nll, survival_nll
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import Calibration, calibrated, calibrated_decline
from churnformer.schema import (
    CHURN_BY_HORIZON,
    NO_PURCHASE_BY_HORIZON,
    OBSERVED_BY_HORIZON,
    PERCENTILE_LEVELS,
    SPEND_BY_HORIZON,
)

Batches = Iterable[dict[str, torch.Tensor]]
Data = dict[str, torch.Tensor]

# Fits outside these ranges mean the network or the validation set is not fit to calibrate from (an
# undertrained network after one epoch gives churn temperatures near 0.01); such a part stays the identity.
CHURN_TEMPERATURE_LIMITS = (0.2, 5.0)
SPEND_POWER_LIMITS = (0.5, 2.0)
# A churn bias may move an interval's hazard logit by what the temperature's rescaling of its base rate
# needs (|logit(rate)| * |1 - 1/temperature|) plus this: a factor of e^2 ~ 7 in the odds.
CHURN_BIAS_MARGIN = 2.0
# Calibrated expected spend of the median validation customer within this factor of the network's own.
SPEND_RATIO_LIMIT = 10.0


@torch.no_grad()
def _collect(network: ChurnFormer, batches: Batches) -> Data:
    """Heads and labels over ``batches``, float64: ``decline`` (logits) only for a decline model, whose
    ``churn`` is the decline and ``no_purchase`` what the survival head predicts."""
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        heads = network(batch)
        values = {
            "logit": heads.hazard_logits,
            "log_mean": heads.log_spend_mean,
            "sigma": heads.spend_sigma,
            "decline": heads.decline_logits,
            "churn": batch[CHURN_BY_HORIZON],
            "no_purchase": batch[NO_PURCHASE_BY_HORIZON],
            "spend": batch[SPEND_BY_HORIZON],
            "seen": batch[OBSERVED_BY_HORIZON],
        }
        for key, value in values.items():
            if value is not None:
                parts.setdefault(key, []).append(value.double())
    return {key: torch.cat(values) for key, values in parts.items()}


def _heads(data: Data) -> HeadOutputs:
    return HeadOutputs(data["logit"], data["log_mean"], data["sigma"], data.get("decline"))


def fit_calibration(
    network: ChurnFormer,
    batches: Batches,
    main: int,
    level_batches: Batches | None = None,
    shared_churn_bias: bool = False,
    shapes_from_all: bool = False,
) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders); ``main`` is the index of
    the main horizon in the grid.

    ``level_batches``: more labelled customers at the same cutoff (the training customers). Once the
    shapes are fitted on validation alone, the levels are reset so that over validation and these together
    the survival likelihood is at its optimum in the biases (the churn rate of every interval matches) and
    total expected spend is total spend at every horizon. ``shared_churn_bias``: one bias for every
    interval instead. ``shapes_from_all``: the shapes (not a decline model's decline temperature) too are
    fitted on validation and ``level_batches``
    together.

    A part (churn or spend) whose fit falls outside the sane ranges above is left at the identity, and
    ``fallback`` says why.
    """
    data = _collect(network, batches)
    everyone = data
    if level_batches is not None:
        everyone = {key: torch.cat([data[key], values]) for key, values in _collect(network, level_batches).items()}
    k = data["logit"].shape[1]
    fallback: list[str] = []
    shaping = everyone if shapes_from_all else data
    temperature, bias = _fit_platt(shaping, fallback, shared_churn_bias)
    churn_kept = not fallback
    power = _fit_spend_power(shaping, temperature, bias, main)
    if level_batches is not None and churn_kept:
        bias = _likelihood_biases(everyone, temperature, bias, shared_churn_bias)
        if not _biases_are_sane(bias, temperature, data, fallback):
            temperature, bias = 1.0, torch.zeros(k, dtype=torch.float64)
    log_scale = torch.zeros(k, dtype=torch.float64)
    if power is not None:
        log_scale = _totals_matching_log_scales(everyone, temperature, bias, power)
        median_ratio = math.exp(abs(float(log_scale[main]) + (power - 1) * float(_mu(data)[:, main].median())))
        if not SPEND_POWER_LIMITS[0] <= power <= SPEND_POWER_LIMITS[1]:  # also false for NaN
            fallback.append(f"spend power {power:.3g} outside {list(SPEND_POWER_LIMITS)}")
            log_scale, power = torch.zeros(k, dtype=torch.float64), 1.0
        elif not median_ratio <= SPEND_RATIO_LIMIT:
            fallback.append(f"spend changed {median_ratio:.3g}x for the median customer (limit {SPEND_RATIO_LIMIT:g}x)")
            log_scale, power = torch.zeros(k, dtype=torch.float64), 1.0
    power = 1.0 if power is None else power
    s, _, _, log_mean = calibrated(_heads(data), temperature, bias, log_scale, power)
    churn, decline_temperature, decline_bias = s, 1.0, torch.zeros(0, dtype=torch.float64)
    if "decline" in data:
        # The decline temperature from validation alone, whatever shapes_from_all says: the decline head fits its
        # training customers more closely than new ones (README, Model), so their logits would call for too
        # little softening.
        levels = everyone if level_batches is not None else None
        decline_temperature, decline_bias = _fit_decline(data, levels, fallback)
        churn = calibrated_decline(_heads(data), decline_temperature, decline_bias)
    levels = torch.tensor(PERCENTILE_LEVELS, dtype=torch.float64)
    return Calibration(
        churn_temperature=temperature,
        churn_bias=bias.tolist(),
        spend_log_scale=log_scale.tolist(),
        spend_power=power,
        decline_temperature=decline_temperature,
        decline_bias=decline_bias.tolist(),
        churn_percentiles=torch.quantile(churn[:, main], levels).tolist(),
        spend_percentiles=torch.quantile(expected_spend(s, log_mean)[:, main], levels).tolist(),
        spend_if_retained_percentiles=torch.quantile(log_mean[:, main].exp(), levels).tolist(),
        fallback=fallback,
    )


def _mu(data: Data) -> torch.Tensor:
    return data["log_mean"] - 0.5 * data["sigma"] ** 2


def _fit_platt(data: Data, fallback: list[str], shared: bool) -> tuple[float, torch.Tensor]:
    """Temperature and per-interval (or one ``shared``) biases of the hazard logits on validation, by the
    survival likelihood; the identity when either is out of its sane range (the reason appended to
    ``fallback``)."""
    k = data["logit"].shape[1]
    params = torch.zeros(1 + (1 if shared else k), dtype=torch.float64, requires_grad=True)  # log T, biases

    def loss() -> torch.Tensor:
        logits = data["logit"] / params[0].exp() + params[1:]
        return survival_nll(logits, data["no_purchase"], data["seen"]).mean()

    _minimize(params, loss)
    temperature, bias = float(params[0].detach().exp()), params[1:].detach().expand(k).clone()
    identity = (1.0, torch.zeros(k, dtype=torch.float64))
    low, high = CHURN_TEMPERATURE_LIMITS
    if not low <= temperature <= high:  # also false for NaN
        fallback.append(f"churn temperature {temperature:.3g} outside {[low, high]}")
        return identity
    if not _biases_are_sane(bias, temperature, data, fallback):
        return identity
    return temperature, bias


def _interval_hazard_rates(data: Data) -> torch.Tensor:
    """The observed share of customers at risk in each interval who made their first purchase in it."""
    no_purchase = data["no_purchase"]
    alive = torch.cat([torch.ones_like(no_purchase[:, :1]), no_purchase[:, :-1]], dim=1)
    at_risk = alive * data["seen"]
    events = (at_risk * (1 - no_purchase)).sum(0)
    return (events / at_risk.sum(0).clamp(min=1.0)).clamp(1e-3, 1 - 1e-3)


def _biases_are_sane(bias: torch.Tensor, temperature: float, data: Data, fallback: list[str]) -> bool:
    """Whether every bias is within what rescaling its interval's base rate by ``temperature`` needs, plus a
    margin."""
    rate = _interval_hazard_rates(data)
    limit = torch.logit(rate).abs() * abs(1 - 1 / temperature) + CHURN_BIAS_MARGIN
    bad = (bias.abs() > limit) | ~torch.isfinite(bias)
    if not bad.any():
        return True
    k = int(torch.nonzero(bad)[0])
    fallback.append(f"churn bias {float(bias[k]):+.3g} of interval {k + 1} beyond +-{float(limit[k]):.3g}")
    return False


def _likelihood_biases(data: Data, temperature: float, start: torch.Tensor, shared: bool) -> torch.Tensor:
    """The survival-likelihood optimal biases for fixed scaled logits: there each interval's predicted hazard
    matches its observed rate on average (the gradient in a bias is their difference); one ``shared`` bias
    matches only their total."""
    bias = (start[:1] if shared else start).clone().requires_grad_(True)
    _minimize(bias, lambda: survival_nll(data["logit"] / temperature + bias, data["no_purchase"], data["seen"]).mean())
    return bias.detach().expand(len(start)).clone()


def _fit_decline(shaping: Data, levels: Data | None, fallback: list[str]) -> tuple[float, torch.Tensor]:
    """Temperature and per-horizon biases of the decline logits by binary cross-entropy on ``shaping``; the
    biases fitted again on ``levels`` (when given) with the temperature fixed, so each horizon's predicted
    decline rate matches the observed one there. The identity when the fit is out of the sane ranges."""
    k = shaping["decline"].shape[1]
    params = torch.zeros(1 + k, dtype=torch.float64, requires_grad=True)  # log T, biases
    _minimize(
        params,
        lambda: decline_nll(
            shaping["decline"] / params[0].exp() + params[1:], shaping["churn"], shaping["seen"]
        ).mean(),
    )
    temperature, bias = float(params[0].detach().exp()), params[1:].detach().clone()
    identity = (1.0, torch.zeros(k, dtype=torch.float64))
    low, high = CHURN_TEMPERATURE_LIMITS
    if not low <= temperature <= high:  # also false for NaN
        fallback.append(f"decline temperature {temperature:.3g} outside {[low, high]}")
        return identity
    data = shaping
    if levels is not None:
        data = levels
        bias.requires_grad_(True)
        _minimize(
            bias, lambda: decline_nll(levels["decline"] / temperature + bias, levels["churn"], levels["seen"]).mean()
        )
        bias = bias.detach()
    rate = ((data["churn"] * data["seen"]).sum(0) / data["seen"].sum(0).clamp(min=1.0)).clamp(1e-3, 1 - 1e-3)
    limit = torch.logit(rate).abs() * abs(1 - 1 / temperature) + CHURN_BIAS_MARGIN
    bad = (bias.abs() > limit) | ~torch.isfinite(bias)
    if bad.any():
        h = int(torch.nonzero(bad)[0])
        fallback.append(f"decline bias {float(bias[h]):+.3g} of horizon {h + 1} beyond +-{float(limit[h]):.3g}")
        return identity
    return temperature, bias


def _expected(data: Data, temperature: float, bias: torch.Tensor, log_scale, power) -> torch.Tensor:
    """(N, K) expected spend after the transform, before the running maximum of the export (which only
    matters where the raw scales would make the mean fall over the grid)."""
    p_churn = survival(data["logit"] / temperature + bias)
    sigma = power * data["sigma"]
    return expected_spend(p_churn, log_scale + power * _mu(data) + 0.5 * sigma * sigma)


def _totals_matching_log_scales(data: Data, temperature: float, bias: torch.Tensor, power: float) -> torch.Tensor:
    """Per horizon, the scale (the deviance optimum given the power) at which total expected spend equals total
    spend over the examples whose window is observed."""
    uncalibrated = _expected(data, temperature, bias, 0.0, power) * data["seen"]
    actual = (data["spend"] * data["seen"]).sum(0)
    return torch.log(actual.clamp(min=1e-12) / uncalibrated.sum(0).clamp(min=1e-12)) * (actual > 0)


def _fit_spend_power(data: Data, temperature: float, bias: torch.Tensor, main: int) -> float | None:
    """The power of the spend transform by Poisson deviance at the main horizon on validation; None when
    nobody bought there."""
    spend = data["spend"][:, main]
    if not float(spend.sum()) > 0:
        return None
    start = float(_totals_matching_log_scales(data, temperature, bias, 1.0)[main])
    params = torch.tensor([start, 1.0], dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:  # Poisson deviance up to constants, relative to mean spend
        expected = _expected(data, temperature, bias, params[0], params[1])[:, main].clamp(min=1e-12)
        return (expected - spend * expected.log()).mean() / spend.mean()

    _minimize(params, loss)
    return float(params[1].detach())


def _minimize(parameters: torch.Tensor, loss) -> None:
    optimizer = torch.optim.LBFGS([parameters], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
