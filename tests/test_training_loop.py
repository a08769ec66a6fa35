"""What a training step costs beyond the network: epoch metrics kept as they come and computed once per
epoch, and the optimizer in its fused form on a GPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from churnformer.evaluation.metrics import average_precision, normalized_gini, roc_auc
from churnformer.training.metrics import EpochMetrics
from churnformer.training.module import fused_on_cuda

GROUPS = {"churn": "probability", "spend": "expectation"}


def batches(seed: int, sizes: tuple[int, ...]) -> list[tuple]:
    rng = np.random.default_rng(seed)
    made = []
    for size in sizes:
        p_churn = torch.tensor(rng.random(size), dtype=torch.float32)
        churn = torch.tensor(rng.random(size) < p_churn.numpy(), dtype=torch.float32)
        expected = torch.tensor(rng.lognormal(2, 1, size), dtype=torch.float32)
        spend = torch.tensor(rng.lognormal(2, 1, size) * (churn.numpy() == 0), dtype=torch.float32)
        losses = {name: torch.tensor(float(rng.random()), requires_grad=True) for name in ("joint", *GROUPS)}
        made.append((losses, {"churn": (p_churn, churn), "spend": (expected, spend)}))
    return made


def test_epoch_metrics_are_those_of_the_whole_epoch_with_losses_weighted_by_batch_size() -> None:
    epoch = batches(0, (256, 256, 17, 100))
    metrics = EpochMetrics("train", GROUPS, keep_predictions=True, sync=False)
    for batch in epoch:
        metrics.update(*batch)
    values = metrics.compute()
    assert metrics.compute() == values  # computing again adds nothing

    sizes = np.array([len(b[1]["churn"][1]) for b in epoch])
    p_churn, churn, expected, spend = (
        torch.cat([b[1][group][i] for b in epoch]).numpy() for group in GROUPS for i in (0, 1)
    )
    joint = np.array([b[0]["joint"].item() for b in epoch])
    assert values["joint/loss/train"] == pytest.approx((joint * sizes).sum() / sizes.sum(), rel=1e-6)
    assert values["churn/auroc/train"] == pytest.approx(roc_auc(churn, p_churn), abs=1e-6)
    assert values["churn/pr_auc/train"] == pytest.approx(average_precision(churn, p_churn), abs=1e-6)
    assert values["churn/brier/train"] == pytest.approx(np.mean((p_churn - churn) ** 2), rel=1e-5)
    assert values["spend/gini/train"] == pytest.approx(normalized_gini(spend, expected), abs=1e-6)
    assert values["spend/mae/train"] == pytest.approx(np.mean(np.abs(expected - spend)), rel=1e-5)
    kept = metrics.all_predictions()
    assert [len(t) for pair in kept.values() for t in pair] == [sizes.sum()] * 4
    assert torch.equal(kept["churn"][0], torch.from_numpy(p_churn))

    metrics.reset()
    later = batches(1, (64,))
    metrics.update(*later[0])
    assert len(metrics.all_predictions()["churn"][0]) == 64  # nothing of the earlier epoch is left


def test_adamw_is_fused_on_a_gpu_unless_the_config_says_otherwise() -> None:
    adamw = functools.partial(torch.optim.AdamW, lr=0.001)
    assert fused_on_cuda(adamw, torch.device("cuda", 0)).keywords == {"lr": 0.001, "fused": True}
    assert fused_on_cuda(adamw, torch.device("cpu")) is adamw
    explicit = functools.partial(torch.optim.AdamW, lr=0.001, fused=False)
    assert fused_on_cuda(explicit, torch.device("cuda", 0)) is explicit

    def no_fused_option(params, lr: float) -> None: ...

    plain = functools.partial(no_fused_option, lr=0.1)
    assert fused_on_cuda(plain, torch.device("cuda", 0)) is plain
