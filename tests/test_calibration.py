"""Post-hoc calibration recovers known distortions of the hazard logits and of the spend distribution at
every horizon, matches levels, and falls back to the identity on implausible fits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from churnformer.artifacts.calibration import describe, fit_calibration
from churnformer.calibration import Calibration
from churnformer.defaults import model_heads
from churnformer.modeling.heads.base import Heads
from churnformer.modeling.heads.spend import POWER_LIMITS as SPEND_POWER_LIMITS
from churnformer.modeling.heads.survival import TEMPERATURE_LIMITS as CHURN_TEMPERATURE_LIMITS
from churnformer.modeling.heads.survival import survival_nll
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import (
    CHURN_BY_HORIZON,
    MODEL_INPUTS,
    NO_PURCHASE_BY_HORIZON,
    OBSERVED_BY_HORIZON,
    SPEND_BY_HORIZON,
    per_horizon,
)

MAIN = 1  # the second of two horizons
SIGMA = 0.6


class KnownHeads(nn.Module):
    """Returns the heads' raw outputs stored in each batch: the distorted outputs a miscalibrated network
    would give."""

    names = ("survival", "spend")
    contact = None  # trained without campaigns

    def __init__(self) -> None:
        super().__init__()
        self.heads = Heads.build(model_heads(names=self.names), d_model=1, n_horizons=2)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        logit, log_mean, sigma = (inputs[name] for name in MODEL_INPUTS[:3])
        return {"survival": {"hazard_logits": logit}, "spend": {"log_spend_mean": log_mean, "spend_sigma": sigma}}


def batches(n: int, temperature: float, bias: list[float], log_scale: list[float], power: float, seed: int = 0):
    """Customers whose true hazard logits are z_k and positive spend LN(m_k, 0.6); the heads report them
    distorted so that the exact inverse is ``logit / temperature + bias`` and ``LN(log_scale + power * mu,
    power * sigma)`` at each of two horizons."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    z = 1.2 * normal(n, 2) - torch.tensor([0.5, 1.0], dtype=torch.float64)
    first = torch.bernoulli(torch.sigmoid(z[:, 0]), generator=generator)
    second = torch.bernoulli(torch.sigmoid(z[:, 1]), generator=generator)
    churn = torch.stack([1 - first, (1 - first) * (1 - second)], dim=1)  # no purchase by t_1, by t_2
    mu = (3.0 + normal(n, 1)) + torch.tensor([0.0, 0.5], dtype=torch.float64)
    positive = torch.exp(mu + SIGMA * normal(n, 2))
    spend = torch.where(churn > 0, torch.zeros_like(positive), positive)
    reported_mu = (mu - torch.tensor(log_scale, dtype=torch.float64)) / power
    reported_sigma = torch.full_like(mu, SIGMA / power)
    heads = {
        "logit": (z - torch.tensor(bias, dtype=torch.float64)) * temperature,
        "log_mean": reported_mu + 0.5 * reported_sigma**2,
        "sigma": reported_sigma,
    }
    names = dict(zip(MODEL_INPUTS, ("logit", "log_mean", "sigma", "logit", "logit"), strict=True))
    for rows in torch.arange(n).split(4096):
        batch = {name: heads[key][rows] for name, key in names.items()}
        yield batch | {
            CHURN_BY_HORIZON: churn[rows],
            NO_PURCHASE_BY_HORIZON: churn[rows],
            SPEND_BY_HORIZON: spend[rows],
            OBSERVED_BY_HORIZON: torch.ones_like(churn[rows]),
        }


class KnownDeclineHeads(KnownHeads):
    """A decline model's heads: the stored ones plus decline logits (kept in the batch's fourth input)."""

    names = ("survival", "spend", "decline")

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        return super().forward(inputs) | {"decline": {"decline_logits": inputs[MODEL_INPUTS[3]]}}


def with_declines(data: list[dict], temperature: float, bias: list[float], seed: int = 0) -> list[dict]:
    """``data`` whose churn is a decline (true logits d_k, labels drawn from them) reported distorted so that
    the exact inverse is ``d / temperature + bias``; the no-purchase labels stay what the survival head learns."""
    generator = torch.Generator().manual_seed(seed)
    declined = []
    for batch in data:
        n = len(batch[CHURN_BY_HORIZON])
        true = 1.5 * torch.randn(n, 2, generator=generator, dtype=torch.float64) - torch.tensor([1.0, 0.5])
        labels = torch.bernoulli(torch.sigmoid(true), generator=generator)
        reported = (true - torch.tensor(bias, dtype=torch.float64)) * temperature
        declined.append(batch | {MODEL_INPUTS[3]: reported, CHURN_BY_HORIZON: labels})
    return declined


def outputs(fitted: Calibration, data: list[dict], network: nn.Module | None = None) -> list[dict[str, torch.Tensor]]:
    """The exported arithmetic over the stored heads, with the fitted calibration, by output column (the
    horizons are named 1 and 2 days)."""
    network = network or KnownHeads()
    scoring = ScoringModel(network, list(MODEL_INPUTS), MAIN, fitted)
    columns = network.heads.output_columns((1.0, 2.0))
    return [dict(zip(columns, scoring(*(b[name] for name in MODEL_INPUTS)), strict=True)) for b in data]


def other(column: str) -> str:
    """The same column at the other of the two horizons."""
    return column[:-2] + ("2d" if column.endswith("1d") else "1d")


def survival_of(fitted: Calibration) -> dict:
    return fitted.heads["survival"]


def spend_of(fitted: Calibration) -> dict:
    return fitted.heads["spend"]


@pytest.mark.slow  # seconds of fitting: the full suite runs it
def test_fit_recovers_known_distortions() -> None:
    data = list(batches(80_000, temperature=2.0, bias=[0.5, -0.3], log_scale=[0.8, 1.0], power=1.5))
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert survival_of(fitted)["temperature"] == pytest.approx(2.0, rel=0.05)
    assert survival_of(fitted)["bias"] == pytest.approx([0.5, -0.3], abs=0.06)
    assert spend_of(fitted)["power"] == pytest.approx(1.5, rel=0.05)
    assert spend_of(fitted)["log_scale"][MAIN] == pytest.approx(1.0, abs=0.15)
    assert fitted.fallback == []


def test_identity_stays_identity_and_totals_match_at_every_horizon() -> None:
    data = list(batches(60_000, temperature=1.0, bias=[0.0, 0.0], log_scale=[0.0, 0.0], power=1.0, seed=1))
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert survival_of(fitted)["temperature"] == pytest.approx(1.0, rel=0.05)
    assert survival_of(fitted)["bias"] == pytest.approx([0.0, 0.0], abs=0.05)
    assert spend_of(fitted)["power"] == pytest.approx(1.0, rel=0.05)
    # Through the exported arithmetic: total expected spend equals total spend at each horizon.
    out = outputs(fitted, data)
    for k in range(2):
        expected = sum(float(o[per_horizon("expected_spend", k + 1.0)].sum()) for o in out)
        actual = sum(float(b[SPEND_BY_HORIZON][:, k].sum()) for b in data)
        assert expected == pytest.approx(actual, rel=1e-4)


def test_an_implausible_spend_power_leaves_spend_at_the_identity() -> None:
    data = list(batches(20_000, temperature=1.0, bias=[0.0, 0.0], log_scale=[-2.0, -2.0], power=4.0))
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert (spend_of(fitted)["log_scale"], spend_of(fitted)["power"]) == ([0.0, 0.0], 1.0)
    (reason,) = fitted.fallback
    assert reason.startswith("spend power 3.9") and reason.endswith(f"outside {list(SPEND_POWER_LIMITS)}")
    assert survival_of(fitted)["temperature"] == pytest.approx(1.0, rel=0.05)  # the churn part is kept
    assert f"identity instead: {reason}" in describe(KnownHeads(), fitted)


def test_an_implausible_churn_temperature_leaves_churn_at_the_identity() -> None:
    """An undertrained network (one epoch on a tiny log) gives near-constant logits; Platt scaling then
    wants a temperature near 0.01, which would turn tiny logit noise into confident probabilities."""
    data = list(batches(20_000, temperature=0.01, bias=[0.0, 0.0], log_scale=[0.0, 0.0], power=1.0))
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert (survival_of(fitted)["temperature"], survival_of(fitted)["bias"]) == (1.0, [0.0, 0.0])
    (reason,) = fitted.fallback
    assert reason.startswith("churn temperature 0.0") and reason.endswith(f"outside {list(CHURN_TEMPERATURE_LIMITS)}")
    assert spend_of(fitted)["power"] == pytest.approx(1.0, rel=0.05)  # the spend part is kept


def test_a_churn_bias_beyond_the_base_rate_leaves_churn_at_the_identity() -> None:
    data = list(batches(20_000, temperature=1.0, bias=[0.0, -9.0], log_scale=[0.0, 0.0], power=1.0))
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert (survival_of(fitted)["temperature"], survival_of(fitted)["bias"]) == (1.0, [0.0, 0.0])
    assert fitted.fallback[0].startswith("churn bias -9") and "interval 2" in fitted.fallback[0]


def test_spend_is_left_alone_when_nobody_bought_in_validation() -> None:
    data = list(batches(5_000, temperature=1.0, bias=[0.0, 0.0], log_scale=[0.0, 0.0], power=1.0))
    for batch in data:
        batch[SPEND_BY_HORIZON] = torch.zeros_like(batch[SPEND_BY_HORIZON])
    fitted = fit_calibration(KnownHeads(), data, MAIN)
    assert (spend_of(fitted)["log_scale"], spend_of(fitted)["power"]) == ([0.0, 0.0], 1.0)


def test_levels_from_more_customers_match_their_rates_and_keep_the_validation_shapes() -> None:
    distortion = {"temperature": 2.0, "bias": [0.5, -0.3], "log_scale": [0.8, 1.0], "power": 1.5}
    validation = list(batches(3_000, **distortion, seed=2))
    training = list(batches(40_000, **distortion, seed=3))
    alone = fit_calibration(KnownHeads(), validation, MAIN)
    fitted = fit_calibration(KnownHeads(), validation, MAIN, training)
    assert survival_of(fitted)["temperature"] == survival_of(alone)["temperature"]
    # The power is the validation customers' too, fitted under the churn levels the model ships with.
    assert spend_of(fitted)["power"] == pytest.approx(spend_of(alone)["power"], rel=1e-3)
    assert survival_of(fitted)["bias"] != survival_of(alone)["bias"]
    # Through the exported arithmetic, on all labelled customers together: the mean churn probability is the
    # churn rate and total expected spend is total spend, at each horizon (outputs 6..9: S and spend by horizon).
    everyone = validation + training
    out = outputs(fitted, everyone)
    for k in range(2):
        churned = sum(float(b[CHURN_BY_HORIZON][:, k].sum()) for b in everyone)
        churn, spend = (per_horizon(column, k + 1.0) for column in ("churn_probability", "expected_spend"))
        assert sum(float(o[churn].sum()) for o in out) == pytest.approx(churned, rel=2e-3)
        spent = sum(float(b[SPEND_BY_HORIZON][:, k].sum()) for b in everyone)
        assert sum(float(o[spend].sum()) for o in out) == pytest.approx(spent, rel=1e-4)


def test_shapes_from_all_customers_are_those_of_validation_and_training_together() -> None:
    distortion = {"temperature": 2.0, "bias": [0.5, -0.3], "log_scale": [0.8, 1.0], "power": 1.5}
    validation = list(batches(3_000, **distortion, seed=2))
    training = list(batches(20_000, **{**distortion, "temperature": 1.2}, seed=3))  # another shape
    from_validation = fit_calibration(KnownHeads(), validation, MAIN, training)
    from_all = fit_calibration(KnownHeads(), validation, MAIN, training, shapes_from_all=True)
    pooled = fit_calibration(KnownHeads(), validation + training, MAIN)
    assert survival_of(from_all)["temperature"] == pytest.approx(survival_of(pooled)["temperature"], rel=1e-6)
    assert spend_of(from_all)["power"] == pytest.approx(spend_of(pooled)["power"], rel=1e-6)
    assert survival_of(from_all)["bias"] == pytest.approx(survival_of(pooled)["bias"], abs=1e-6)
    assert abs(survival_of(from_all)["temperature"] - survival_of(from_validation)["temperature"]) > 0.1


def test_a_shared_churn_bias_is_one_number_and_fits_worse_than_one_per_interval() -> None:
    """Distortions that differ by interval: per-interval biases recover each; a shared one cannot, and its
    survival likelihood on the same customers is lower."""
    data = list(batches(80_000, temperature=1.0, bias=[0.8, -0.4], log_scale=[0.0, 0.0], power=1.0, seed=2))
    per_interval = fit_calibration(KnownHeads(), data, MAIN)
    shared = fit_calibration(KnownHeads(), data, MAIN, shared_churn_bias=True)
    assert survival_of(per_interval)["bias"] == pytest.approx([0.8, -0.4], abs=0.06)
    assert survival_of(shared)["bias"][0] == survival_of(shared)["bias"][1]

    def nll(fitted: Calibration) -> float:
        logits = torch.cat([b[MODEL_INPUTS[0]] for b in data]) / survival_of(fitted)["temperature"]
        logits = logits + torch.tensor(survival_of(fitted)["bias"])
        churn, seen = (torch.cat([b[key] for b in data]) for key in (CHURN_BY_HORIZON, OBSERVED_BY_HORIZON))
        return float(survival_nll(logits, churn, seen).mean())

    assert nll(per_interval) < nll(shared) - 0.005


@pytest.mark.slow  # seconds of fitting: the full suite runs it
def test_a_decline_model_gets_its_own_platt_scaling_and_keeps_survival_for_spend() -> None:
    """Decline logits distorted by a temperature and per-horizon biases are recovered by their own fit; the
    hazard calibration is the one a no-purchase model of the same heads gets; the decline temperature comes from
    the validation customers alone, its biases from all; the exported churn probability
    is the calibrated decline (its mean the decline rate at each horizon, levels from all customers) and S(t)
    follows as no_purchase_probability."""
    distortion = {"temperature": 2.0, "bias": [0.5, -0.3], "log_scale": [0.8, 1.0], "power": 1.5}
    plain = list(batches(60_000, **distortion, seed=4))
    data = with_declines(plain, temperature=0.5, bias=[0.4, -0.2])
    fitted = fit_calibration(KnownDeclineHeads(), data[:3], MAIN, data[3:], shapes_from_all=True)
    assert fitted.heads["decline"]["temperature"] == pytest.approx(0.5, rel=0.05)
    assert fitted.heads["decline"]["bias"] == pytest.approx([0.4, -0.2], abs=0.06)
    survival_only = fit_calibration(KnownHeads(), plain[:3], MAIN, plain[3:], shapes_from_all=True)
    assert survival_of(fitted)["temperature"] == pytest.approx(survival_of(survival_only)["temperature"], rel=1e-9)
    assert spend_of(fitted)["power"] == pytest.approx(spend_of(survival_only)["power"], rel=1e-9)
    decline = fitted.heads["decline"]
    words = f"decline temperature {decline['temperature']:.3f}, biases {decline['bias'][0]:+.3f}"
    assert words in describe(KnownDeclineHeads(), fitted)
    # The decline temperature is the validation customers' alone, even with the shapes from all.
    alone = fit_calibration(KnownDeclineHeads(), data[:3], MAIN)
    assert fitted.heads["decline"]["temperature"] == alone.heads["decline"]["temperature"]
    declined_out, plain_out = outputs(fitted, data, KnownDeclineHeads()), outputs(survival_only, plain)
    for k in range(2):
        declines = sum(float(b[CHURN_BY_HORIZON][:, k].sum()) for b in data)
        churn, spend, no_purchase = (
            per_horizon(column, k + 1.0)
            for column in ("churn_probability", "expected_spend", "no_purchase_probability")
        )
        assert sum(float(o[churn].sum()) for o in declined_out) == pytest.approx(declines, rel=2e-3)
        for with_decline, without in zip(declined_out, plain_out, strict=True):
            assert set(with_decline) - set(without) == {"no_purchase_probability", no_purchase, other(no_purchase)}
            torch.testing.assert_close(with_decline[no_purchase], without[churn])  # S(t) of the same survival head
            torch.testing.assert_close(with_decline[spend], without[spend])  # the same expected spend
