"""Post-hoc calibration recovers known distortions of the churn logit and of the spend distribution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from churnformer.artifacts.calibration import CHURN_TEMPERATURE_LIMITS, SPEND_POWER_LIMITS, fit_calibration
from churnformer.modeling.heads import HeadOutputs
from churnformer.modeling.scoring_model import Calibration, ScoringModel
from churnformer.schema import MODEL_INPUTS


class KnownHeads(nn.Module):
    """Returns the heads stored in each batch: the distorted outputs a miscalibrated network would give."""

    def forward(self, inputs: dict[str, torch.Tensor]) -> HeadOutputs:
        logit, mu, sigma = (inputs[name] for name in MODEL_INPUTS[:3])
        return HeadOutputs(churn_logit=logit, spend_mu=mu, spend_sigma=sigma)


def batches(n: int, temperature: float, bias: float, log_scale: float, power: float, seed: int = 0):
    """Customers whose true churn logit is z and positive spend LN(m, 0.6); the heads report them distorted
    so that the exact inverse is ``logit / temperature + bias`` and ``LN(log_scale + power * mu, power * sigma)``."""
    generator = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n, generator=generator, dtype=torch.float64)
    churn = torch.bernoulli(torch.sigmoid(z), generator=generator)
    m = 3.0 + torch.randn(n, generator=generator, dtype=torch.float64)
    positive = torch.exp(m + 0.6 * torch.randn(n, generator=generator, dtype=torch.float64))
    spend = torch.where(churn > 0, torch.zeros_like(positive), positive)
    heads = {"logit": (z - bias) * temperature, "mu": (m - log_scale) / power, "sigma": torch.full_like(m, 0.6 / power)}
    names = dict(zip(MODEL_INPUTS, ("logit", "mu", "sigma", "logit", "logit"), strict=True))
    for rows in torch.arange(n).split(4096):
        yield {name: heads[key][rows] for name, key in names.items()} | {"churn": churn[rows], "spend": spend[rows]}


def calibrated(fitted: Calibration) -> ScoringModel:
    """The exported arithmetic over the stored heads, with the fitted calibration."""
    return ScoringModel(KnownHeads(), list(MODEL_INPUTS), fitted)


def test_fit_recovers_known_distortions() -> None:
    fitted = fit_calibration(KnownHeads(), list(batches(60_000, temperature=2.0, bias=0.5, log_scale=1.0, power=1.5)))
    assert fitted.churn_temperature == pytest.approx(2.0, rel=0.05)
    assert fitted.churn_bias == pytest.approx(0.5, abs=0.05)
    assert fitted.spend_power == pytest.approx(1.5, rel=0.05)
    assert fitted.spend_log_scale == pytest.approx(1.0, abs=0.15)


def test_calibrated_totals_match_validation_and_identity_stays_identity() -> None:
    data = list(batches(60_000, temperature=1.0, bias=0.0, log_scale=0.0, power=1.0, seed=1))
    fitted = fit_calibration(KnownHeads(), data)
    assert fitted.churn_temperature == pytest.approx(1.0, rel=0.05)
    assert fitted.churn_bias == pytest.approx(0.0, abs=0.05)
    assert fitted.spend_power == pytest.approx(1.0, rel=0.05)
    # The exported arithmetic with these numbers: total expected spend equals total actual spend.
    scoring = calibrated(fitted)
    expected = sum(float(scoring(*(b[name] for name in MODEL_INPUTS))[1].sum()) for b in data)
    actual = sum(float(b["spend"].sum()) for b in data)
    assert expected == pytest.approx(actual, rel=1e-6)


def test_an_implausible_spend_power_leaves_spend_at_the_identity() -> None:
    data = list(batches(20_000, temperature=1.0, bias=0.0, log_scale=-2.0, power=4.0))
    fitted = fit_calibration(KnownHeads(), data)
    assert (fitted.spend_log_scale, fitted.spend_power) == (0.0, 1.0)
    assert fitted.fallback == [f"spend power 4 outside [{SPEND_POWER_LIMITS[0]}, {SPEND_POWER_LIMITS[1]}]"]
    assert fitted.churn_temperature == pytest.approx(1.0, rel=0.05)  # the churn part is kept
    assert "identity instead: spend power 4" in str(fitted)


def test_an_implausible_churn_temperature_leaves_churn_at_the_identity() -> None:
    """An undertrained network (one epoch on a tiny log) gives near-constant logits; Platt scaling then
    wants a temperature near 0.01, which would turn tiny logit noise into confident probabilities."""
    data = list(batches(20_000, temperature=0.01, bias=0.0, log_scale=0.0, power=1.0))
    fitted = fit_calibration(KnownHeads(), data)
    assert (fitted.churn_temperature, fitted.churn_bias) == (1.0, 0.0)
    (reason,) = fitted.fallback
    assert reason.startswith("churn temperature 0.0") and reason.endswith(f"outside {list(CHURN_TEMPERATURE_LIMITS)}")
    assert fitted.spend_power == pytest.approx(1.0, rel=0.05)  # the spend part is kept


def test_a_churn_bias_beyond_the_base_rate_leaves_churn_at_the_identity() -> None:
    data = list(batches(20_000, temperature=1.0, bias=-9.0, log_scale=0.0, power=1.0))
    fitted = fit_calibration(KnownHeads(), data)
    assert (fitted.churn_temperature, fitted.churn_bias) == (1.0, 0.0)
    assert fitted.fallback[0].startswith("churn bias -9")


def test_spend_is_left_alone_when_nobody_bought_in_validation() -> None:
    data = list(batches(5_000, temperature=1.0, bias=0.0, log_scale=0.0, power=1.0))
    for batch in data:
        batch["spend"] = torch.zeros_like(batch["spend"])
    fitted = fit_calibration(KnownHeads(), data)
    assert (fitted.spend_log_scale, fitted.spend_power) == (0.0, 1.0)


def test_levels_from_more_customers_match_their_rates_and_keep_the_validation_shapes() -> None:
    validation = list(batches(2_000, temperature=2.0, bias=0.5, log_scale=1.0, power=1.5, seed=2))
    training = list(batches(30_000, temperature=2.0, bias=0.5, log_scale=1.0, power=1.5, seed=3))
    alone = fit_calibration(KnownHeads(), validation)
    fitted = fit_calibration(KnownHeads(), validation, training)
    assert fitted.churn_temperature == alone.churn_temperature
    assert fitted.spend_power == alone.spend_power
    assert fitted.churn_bias != alone.churn_bias
    # Through the exported arithmetic: on all labelled customers together the mean churn probability is the
    # churn rate and total expected spend is total spend.
    scoring = calibrated(fitted)
    everyone = validation + training
    outputs = [scoring(*(b[name] for name in MODEL_INPUTS)) for b in everyone]
    churned = sum(float(b["churn"].sum()) for b in everyone)
    assert sum(float(o[0].sum()) for o in outputs) == pytest.approx(churned, rel=1e-4)
    spent = sum(float(b["spend"].sum()) for b in everyone)
    assert sum(float(o[1].sum()) for o in outputs) == pytest.approx(spent, rel=1e-6)
