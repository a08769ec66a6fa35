"""Joint loss: churn cross-entropy plus the zero-inflated log-normal (ZILN) negative log-likelihood of spend.

ZILN follows Wang et al. (2019), "A Deep Probabilistic Model for Customer Lifetime Value Prediction".
Its zero part uses the churn logit (P(spend > 0) = 1 - P(churn)), see :mod:`churnformer.modeling.heads`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from churnformer.modeling.heads import HeadOutputs

_HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


@dataclass
class LossWeights:
    """``model.loss`` in ``conf/model/*.yaml``: the weight of each head's loss in the joint loss."""

    churn: float
    spend: float


def lognormal_nll(spend: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-density of a log-normal at ``spend`` (> 0)."""
    log_spend = torch.log(spend)
    return log_spend + torch.log(sigma) + _HALF_LOG_TWO_PI + 0.5 * ((log_spend - mu) / sigma) ** 2


def joint_loss(
    heads: HeadOutputs, churn: torch.Tensor, spend: torch.Tensor, weights: LossWeights
) -> dict[str, torch.Tensor]:
    """Return the weighted total (``joint``) and each head's part, scalars averaged over the batch."""
    churn_loss = F.binary_cross_entropy_with_logits(heads.churn_logit, churn)
    positive = spend > 0
    buys = F.binary_cross_entropy_with_logits(-heads.churn_logit, positive.to(heads.churn_logit.dtype))
    safe_spend = torch.where(positive, spend, torch.ones_like(spend))
    amount = torch.where(positive, lognormal_nll(safe_spend, heads.spend_mu, heads.spend_sigma), 0.0).mean()
    spend_loss = buys + amount
    return {
        "joint": weights.churn * churn_loss + weights.spend * spend_loss,
        "churn": churn_loss,
        "spend": spend_loss,
    }
