"""What a training step costs beyond the network: epoch metrics kept as they come and computed once per
epoch, and the optimizer in its fused form on a GPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from churnformer.evaluation.metrics import average_precision, expected_calibration_error, normalized_gini, roc_auc
from churnformer.training.metrics import EpochMetrics
from churnformer.training.module import fused_on_cuda

GROUPS = {"churn": "probability", "spend": "expectation"}


HORIZONS = [30.0, 90.0]  # the main one second


def batches(seed: int, sizes: tuple[int, ...]) -> list[tuple]:
    """(losses, per group (prediction, label) at both horizons, observed): the first horizon observed for about
    two customers in three."""
    rng = np.random.default_rng(seed)
    made = []
    for size in sizes:
        p_churn = torch.tensor(rng.random((size, 2)), dtype=torch.float32)
        churn = torch.tensor(rng.random((size, 2)) < p_churn.numpy(), dtype=torch.float32)
        expected = torch.tensor(rng.lognormal(2, 1, (size, 2)), dtype=torch.float32)
        spend = torch.tensor(rng.lognormal(2, 1, (size, 2)) * (churn.numpy() == 0), dtype=torch.float32)
        observed = torch.tensor(np.stack([rng.random(size) < 0.7, np.ones(size, bool)], axis=1), dtype=torch.float32)
        losses = {name: torch.tensor(float(rng.random()), requires_grad=True) for name in ("joint", *GROUPS)}
        made.append((losses, {"churn": (p_churn, churn), "spend": (expected, spend)}, observed))
    return made


def test_epoch_metrics_are_those_of_the_whole_epoch_with_losses_weighted_by_batch_size() -> None:
    epoch = batches(0, (256, 256, 17, 100))
    metrics = EpochMetrics("train", GROUPS, main=1, keep_predictions=True, sync=False, horizons=HORIZONS)
    for batch in epoch:
        metrics.update(*batch)
    values = metrics.compute()
    assert metrics.compute() == values  # computing again adds nothing

    sizes = np.array([len(b[1]["churn"][1]) for b in epoch])
    p_churn, churn, expected, spend = (
        torch.cat([b[1][group][i] for b in epoch]).numpy() for group in GROUPS for i in (0, 1)
    )
    observed = torch.cat([b[2] for b in epoch]).numpy() > 0
    joint = np.array([b[0]["joint"].item() for b in epoch])
    assert values["joint/loss/train"] == pytest.approx((joint * sizes).sum() / sizes.sum(), rel=1e-6)
    assert values["churn/auroc/train"] == pytest.approx(roc_auc(churn[:, 1], p_churn[:, 1]), abs=1e-6)
    assert values["churn/pr_auc/train"] == pytest.approx(average_precision(churn[:, 1], p_churn[:, 1]), abs=1e-6)
    assert values["churn/brier/train"] == pytest.approx(np.mean((p_churn[:, 1] - churn[:, 1]) ** 2), rel=1e-5)
    assert values["churn/ece/train"] == pytest.approx(expected_calibration_error(p_churn[:, 1], churn[:, 1]), abs=1e-6)
    assert values["spend/gini/train"] == pytest.approx(normalized_gini(spend[:, 1], expected[:, 1]), abs=1e-6)
    assert values["spend/mae/train"] == pytest.approx(np.mean(np.abs(expected[:, 1] - spend[:, 1])), rel=1e-5)
    # Every horizon, over the customers whose horizon is observed; the main one's equal the metrics above.
    seen = observed[:, 0]
    assert values["horizons/churn_auc/30d/train"] == pytest.approx(roc_auc(churn[seen, 0], p_churn[seen, 0]), abs=1e-6)
    assert values["horizons/churn_ece/30d/train"] == pytest.approx(
        expected_calibration_error(p_churn[seen, 0], churn[seen, 0]), abs=1e-6
    )
    assert values["horizons/spend_gini/30d/train"] == pytest.approx(
        normalized_gini(spend[seen, 0], expected[seen, 0]), abs=1e-6
    )
    assert values["horizons/churn_auc/90d/train"] == pytest.approx(values["churn/auroc/train"], abs=1e-6)
    assert values["horizons/spend_gini/90d/train"] == pytest.approx(values["spend/gini/train"], abs=1e-6)
    kept = metrics.all_predictions()
    assert [len(t) for pair in kept.values() for t in pair] == [sizes.sum()] * 4
    assert torch.equal(kept["churn"][0], torch.from_numpy(p_churn[:, 1]))

    metrics.reset()
    later = batches(1, (64,))
    metrics.update(*later[0])
    assert len(metrics.all_predictions()["churn"][0]) == 64  # nothing of the earlier epoch is left
    again = metrics.compute()
    assert again["horizons/churn_auc/90d/train"] == pytest.approx(again["churn/auroc/train"], abs=1e-6)


def test_a_sample_of_the_epoch_is_every_nth_example_across_batches_and_the_losses_all() -> None:
    """A long epoch's predictions are sampled (``sample_every``) so the metrics' memory stays bounded: every third
    example of the epoch, counted across batches of sizes that are not multiples of three."""
    epoch = batches(2, (100, 7, 64, 50))
    metrics = EpochMetrics("train", GROUPS, main=1, sync=False, horizons=HORIZONS)
    metrics.sample_every = 3
    for batch in epoch:
        metrics.update(*batch)
    values = metrics.compute()
    p_churn, churn = (torch.cat([b[1]["churn"][i] for b in epoch]).numpy()[::3, 1] for i in (0, 1))
    assert values["churn/auroc/train"] == pytest.approx(roc_auc(churn, p_churn), abs=1e-6)
    sizes = np.array([len(b[1]["churn"][1]) for b in epoch])
    joint = np.array([b[0]["joint"].item() for b in epoch])
    assert values["joint/loss/train"] == pytest.approx((joint * sizes).sum() / sizes.sum(), rel=1e-6)


def test_adamw_is_fused_on_a_gpu_unless_the_config_says_otherwise() -> None:
    adamw = functools.partial(torch.optim.AdamW, lr=0.001)
    assert fused_on_cuda(adamw, torch.device("cuda", 0)).keywords == {"lr": 0.001, "fused": True}
    assert fused_on_cuda(adamw, torch.device("cpu")) is adamw
    explicit = functools.partial(torch.optim.AdamW, lr=0.001, fused=False)
    assert fused_on_cuda(explicit, torch.device("cuda", 0)) is explicit

    def no_fused_option(params, lr: float) -> None: ...

    plain = functools.partial(no_fused_option, lr=0.1)
    assert fused_on_cuda(plain, torch.device("cuda", 0)) is plain
