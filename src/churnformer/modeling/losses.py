"""Joint loss over the horizon grid: the survival likelihood of the first purchase (discrete-time logistic
hazard with administrative censoring: a horizon whose window runs past the end of the log is left out for
that example, never counted as churn) plus the zero-inflated log-normal (ZILN, Wang et al. 2019) likelihood
of spend at every observed horizon. The zero part of ZILN is the same survival likelihood (P(spend > 0) =
1 - S), see :mod:`churnformer.modeling.heads`. A model of the decline definition adds the binary
cross-entropy of the decline at every observed horizon (weight ``decline``), and that is its churn loss.
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

    churn: float  # the survival likelihood of the first purchase
    spend: float  # the ZILN likelihood of spend (its zero part is the same survival likelihood)
    decline: float  # a decline model's binary cross-entropy of the decline


def lognormal_nll(spend: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-element negative log-density of a log-normal at ``spend`` (> 0)."""
    log_spend = torch.log(spend)
    return log_spend + torch.log(sigma) + _HALF_LOG_TWO_PI + 0.5 * ((log_spend - mu) / sigma) ** 2


def survival_nll(hazard_logits: torch.Tensor, churn: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-example negative log-likelihood of the first purchase over the grid, (B,).

    ``churn`` (B, K): no purchase by t_k. Interval k counts for an example alive at its start (no purchase
    before t_{k-1}) whose window to t_k is observed: log h_k if the first purchase falls in it, log(1 - h_k)
    otherwise. With one horizon this is the binary cross-entropy of churn with logit -phi.
    """
    alive = torch.cat([torch.ones_like(churn[:, :1]), churn[:, :-1]], dim=1)  # no purchase before interval k
    at_risk = alive * observed
    first_purchase = at_risk * (1 - churn)
    log_likelihood = first_purchase * F.logsigmoid(hazard_logits) + (at_risk - first_purchase) * F.logsigmoid(
        -hazard_logits
    )
    return -log_likelihood.sum(dim=1)


def decline_nll(decline_logits: torch.Tensor, decline: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per-example binary cross-entropy of the decline summed over the observed horizons, (B,)."""
    return (F.binary_cross_entropy_with_logits(decline_logits, decline, reduction="none") * observed).sum(dim=1)


def joint_loss(
    heads: HeadOutputs,
    churn: torch.Tensor,
    spend: torch.Tensor,
    observed: torch.Tensor,
    weights: LossWeights,
    no_purchase: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The weighted total (``joint``) and the loss of what churn_probability and expected_spend answer
    (``churn``: the survival likelihood, or a decline model's decline cross-entropy; ``spend``), scalars
    averaged over the batch. ``churn``,
    ``spend``, ``observed`` and ``no_purchase`` are (B, K): the labels at every horizon and whether its window
    is observed. ``no_purchase`` (what the survival head learns) is ``churn`` unless churn is a decline."""
    dtype = heads.hazard_logits.dtype
    churn, spend, observed = churn.to(dtype), spend.to(dtype), observed.to(dtype)
    no_purchase = churn if no_purchase is None else no_purchase.to(dtype)
    survival_loss = survival_nll(heads.hazard_logits, no_purchase, observed).mean()
    positive = (spend > 0) & (observed > 0)
    sigma = heads.spend_sigma
    mu = heads.log_spend_mean - 0.5 * sigma * sigma
    safe_spend = torch.where(positive, spend, torch.ones_like(spend))
    amount = torch.where(positive, lognormal_nll(safe_spend, mu, sigma), 0.0).sum(dim=1).mean()
    spend_loss = survival_loss + amount  # ZILN: the zero part is the survival likelihood
    joint = weights.churn * survival_loss + weights.spend * spend_loss
    churn_loss = survival_loss
    if heads.decline_logits is not None:
        churn_loss = decline_nll(heads.decline_logits, churn, observed).mean()
        joint = joint + weights.decline * churn_loss
    return {
        "joint": joint,
        "churn": churn_loss,
        "spend": spend_loss,
    }
