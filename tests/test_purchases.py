"""The expected-purchases head: a hurdle on the survival head, non-decreasing over the grid, learnt from counts,
calibrated to the total count at every horizon, and through training, export, scoring and evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from churnformer.artifacts.calibration import fit_calibration
from churnformer.calibration import Calibration
from churnformer.defaults import model_heads
from churnformer.modeling.config import FeatureSizes
from churnformer.modeling.heads.base import Heads
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import MODEL_INPUTS, per_horizon
from tests.conftest import TINY_CUTOFF, network_config

HEADS = ("survival", "spend", "purchases")
HORIZONS = (30.0, 90.0, 180.0)


def network(seed: int = 0) -> ChurnFormer:
    torch.manual_seed(seed)
    sizes = FeatureSizes(
        event_cat_cardinalities=[6],
        n_event_num=4,
        time_feature_index=[1, 3],
        customer_cat_cardinalities=[],
        n_customer_num=3,
    )
    built = ChurnFormer(
        network_config(d_model=16, n_layers=1, n_heads=2), sizes, len(HORIZONS), model_heads(names=HEADS)
    )
    with torch.no_grad():
        for parameter in built.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return built


def inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "event_cat": torch.randint(1, 6, (batch, 7, 1), generator=generator).int(),
        "event_num": torch.randn(batch, 7, 4, generator=generator),
        "lengths": torch.randint(1, 8, (batch,), generator=generator),
        "customer_cat": torch.zeros(batch, 0, dtype=torch.int32),
        "customer_num": torch.randn(batch, 3, generator=generator),
    }


@pytest.mark.parametrize("log_scale", [None, [3.0, -4.0, 2.0], [-3.0, 4.0, -2.0]], ids=["raw", "up-down", "down-up"])
def test_expected_purchases_are_a_hurdle_on_survival_and_never_fall_over_the_grid(log_scale) -> None:
    built = network().eval()
    calibration = Calibration({"purchases": {"log_scale": log_scale}}) if log_scale else None
    model = ScoringModel(built, list(MODEL_INPUTS), 1, calibration).eval()
    batch = inputs(256)
    with torch.no_grad():
        out = dict(zip(built.heads.output_columns(HORIZONS), model(*(batch[n] for n in MODEL_INPUTS)), strict=True))
    purchases = torch.stack([out[per_horizon("expected_purchases", d)] for d in HORIZONS], dim=1)
    survival = torch.stack([out[per_horizon("churn_probability", d)] for d in HORIZONS], dim=1)
    assert torch.isfinite(purchases).all()
    assert (purchases.diff(dim=1) >= 0).all()
    assert (purchases >= (1 - survival) - 1e-6).all()  # a customer who buys buys at least once
    assert torch.equal(out["expected_purchases"], purchases[:, 1])
    if log_scale is None:
        with torch.no_grad():
            more = torch.exp(built(batch)["purchases"]["log_more_purchases"])
        torch.testing.assert_close(purchases, (1 - survival) * (1 + more))


@pytest.mark.slow  # hundreds of optimizer steps: the fast tier keeps the heads' exact-value tests
def test_the_loss_learns_how_often_buyers_buy() -> None:
    """Counts that follow a customer number: the head learns their mean given a purchase at every horizon."""
    built = network(seed=1).train()
    batch = inputs(256, seed=3)
    rate = torch.exp(1.0 + batch["customer_num"][:, :1])  # extra purchases over the first horizon
    generator = torch.Generator().manual_seed(0)
    counts = 1 + torch.poisson(rate * torch.tensor([1.0, 3.0, 6.0]), generator=generator)
    labels = {"no_purchase": torch.zeros_like(counts), "observed": torch.ones_like(counts), "purchases": counts}
    head = built.heads["purchases"]
    optimizer = torch.optim.AdamW(built.parameters(), lr=1e-2)
    for _ in range(300):
        loss = head.loss(built(batch)["purchases"], labels, {})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = 1 + torch.exp(built.eval()(batch)["purchases"]["log_more_purchases"])
    for k in range(len(HORIZONS)):  # the mean count per horizon, and who buys more
        assert float(predicted[:, k].mean()) == pytest.approx(float(counts[:, k].mean()), rel=0.1)
        assert np.corrcoef(predicted[:, k].numpy(), counts[:, k].numpy())[0, 1] > 0.6


class KnownCounts(torch.nn.Module):
    """Raw outputs taken from the batch: survival logits and log m of a network that counts ``bias`` times too
    few purchases after the first."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = Heads.build(model_heads(names=("survival", "purchases")), d_model=1, n_horizons=2)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        return {"survival": {"hazard_logits": batch["logit"]}, "purchases": {"log_more_purchases": batch["log_more"]}}


def test_calibration_matches_the_total_count_at_every_horizon() -> None:
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    logit = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    s = torch.exp(-torch.cumsum(torch.nn.functional.softplus(logit), dim=1))
    first = torch.bernoulli(s[:, :1], generator=generator)
    no_purchase = torch.cat([first, first * torch.bernoulli(s[:, 1:] / s[:, :1], generator=generator)], dim=1)
    true_more = torch.exp(torch.randn(n, 1, generator=generator, dtype=torch.float64)) * torch.tensor([1.0, 2.5])
    counts = torch.where(no_purchase > 0, 0.0, 1 + torch.poisson(true_more, generator=generator))
    batch = {
        "logit": logit,
        "log_more": torch.log(true_more) - torch.log(torch.tensor([2.0, 3.0], dtype=torch.float64)),  # too few
        "no_purchase_by_horizon": no_purchase,
        "churn_by_horizon": no_purchase,
        "purchases_by_horizon": counts,
        "observed_by_horizon": torch.ones_like(counts),
    }
    fitted = fit_calibration(KnownCounts(), [batch], main=1)
    assert np.exp(fitted.heads["purchases"]["log_scale"]) == pytest.approx([2.0, 3.0], rel=0.05)
    assert fitted.fallback == []
    scale = torch.tensor(fitted.heads["purchases"]["log_scale"], dtype=torch.float64)
    params = {"survival": fitted.heads["survival"], "purchases": {"log_scale": scale}}
    predicted = KnownCounts().heads.predict(KnownCounts()(batch), params, main=1)["expected_purchases"]
    torch.testing.assert_close(predicted.sum(0), counts.sum(0), rtol=1e-6, atol=1e-6)


def test_counts_a_network_cannot_match_leave_the_head_uncalibrated() -> None:
    batch = {
        "logit": torch.zeros(100, 2, dtype=torch.float64),
        "log_more": torch.full((100, 2), 3.0, dtype=torch.float64),  # e^3 more purchases than anyone makes
        "no_purchase_by_horizon": torch.zeros(100, 2),
        "churn_by_horizon": torch.zeros(100, 2),
        "purchases_by_horizon": torch.ones(100, 2),
        "observed_by_horizon": torch.ones(100, 2),
    }
    fitted = fit_calibration(KnownCounts(), [batch], main=1)
    assert fitted.heads["purchases"] == {"log_scale": [0.0, 0.0]}
    assert any(reason.startswith("purchases scale") for reason in fitted.fallback)


@pytest.mark.slow
def test_a_model_with_the_head_scores_and_is_judged_against_purchase_days(tiny_world, tmp_path: Path) -> None:
    """Trained with ``model/heads=[survival,spend,purchases]``: the run's metrics, the scored columns at every
    horizon, and churnformer-evaluate's purchases metrics against the log's purchase days."""
    from churnformer.api import train
    from churnformer.evaluation.report import evaluate_files

    events, customers = tiny_world
    run = train(
        pd.read_csv(events),
        cutoff=TINY_CUTOFF,
        horizon_days=60,
        customers=pd.read_csv(customers),
        output_dir=tmp_path / "run",
        overrides=[
            "model/heads=[survival,spend,purchases]",
            "data.horizons_days=[30,60]",
            "data.features.max_len=32",
            "model.network.d_model=16",
            "model.network.n_layers=1",
            "model.network.n_heads=2",
            "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false",
            "predict_after_training=true",
            "explain_validation=false",
        ],
    )
    assert {"purchases/loss/val", "purchases/mae/val", "purchases/spearman/val"} <= set(run.metrics)
    predictions = pd.read_parquet(run.run_dir / "predictions.parquet")
    assert {"expected_purchases", "expected_purchases_30d", "expected_purchases_60d"} <= set(predictions.columns)
    assert (predictions["expected_purchases_60d"] >= predictions["expected_purchases_30d"]).all()
    evaluate_files(
        run.run_dir / "predictions.parquet", events=events, cutoff=TINY_CUTOFF, horizon_days=60, output_dir=tmp_path
    )
    metrics = pd.read_json(tmp_path / "metrics.json", typ="series")
    for name in ("purchases_mae_30d", "purchases_spearman_60d", "purchases_aggregate_error_60d", "purchases_mae"):
        assert np.isfinite(metrics[name]), name
    assert metrics["purchases_spearman_60d"] > 0.3  # the tiny world's frequent buyers are found
