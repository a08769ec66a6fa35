"""The churn + spend network: event encoder -> backbone (transformer by default) -> pooling -> (fused with the
engineered aggregates, :mod:`churnformer.modeling.fusion`, for models that read them) -> the heads over the
horizon grid (:mod:`churnformer.modeling.heads`), and a linear path from the customer numbers to the heads
that read it (the churn logits).

Shapes: B customers, T events (padded), D = d_model. Inputs are the model inputs by name
(``churnformer.schema``), as :meth:`churnformer.data.sequences.Sequences.pad` makes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from churnformer.data.featurizer import Featurizer
from churnformer.modeling.backbones import build_backbone
from churnformer.modeling.config import FeatureSizes, ModelConfig
from churnformer.modeling.contact import ContactEffect
from churnformer.modeling.encoders import CustomerEncoder, EventEncoder
from churnformer.modeling.fusion import AggregateFusion, FusionConfig
from churnformer.modeling.heads.base import Heads, Raw
from churnformer.schema import CONTACTED, CUSTOMER_AGG, CUSTOMER_CAT, CUSTOMER_NUM, LENGTHS


class ChurnFormer(nn.Module):
    """Reads a customer's event sequence and returns each head's raw outputs at each of ``n_horizons``
    horizons; ``heads``: ``model.heads`` (name -> ``_target_`` and settings)."""

    def __init__(
        self, config: ModelConfig, sizes: FeatureSizes, n_horizons: int, heads: Mapping[str, Mapping[str, Any]]
    ) -> None:
        super().__init__()
        self.config = config
        self.events = EventEncoder(config, sizes)
        self.customer = CustomerEncoder(config, sizes)
        self.backbone = build_backbone(config.backbone, config)
        self.norm = nn.LayerNorm(config.d_model)
        self.pool = nn.Sequential(nn.Linear(2 * config.d_model, config.d_model), nn.GELU())
        # Wide & Deep (Cheng et al. 2016): the history summary and static numbers also reach the churn logits
        # through one linear map, past the layer norms that keep only their direction in the summary token.
        self.wide = nn.Linear(sizes.n_customer_num, config.d_model) if config.wide else None
        # The engineered aggregates, fused with the pooled sequence before every head (data.features.aggregates).
        self.fusion = (
            AggregateFusion(FusionConfig(**(config.fusion or {})), sizes.n_customer_agg, config.d_model)
            if sizes.n_customer_agg
            else None
        )
        self.heads = Heads.build(heads, config.d_model, n_horizons)
        self.apply(_init_weights)
        # Trained with campaigns: what a contact changes in the representation (CONTACTED in training batches).
        # Made last, so that every other weight starts as it does in a network without it.
        offers = tuple(config.contact_offers)
        self.contact = ContactEffect(config.d_model, offers) if offers else None
        if self.contact is not None:
            self.contact.apply(_init_weights)
            self.contact.start_at_no_effect()

    @classmethod
    def build(
        cls,
        network: Mapping[str, Any],
        featurizer: Featurizer,
        n_horizons: int,
        heads: Mapping[str, Mapping[str, Any]],
        extra_aggregates: int = 0,
    ) -> ChurnFormer:
        """From the ``model.network`` and ``model.heads`` configs (plain dicts, as checkpoints keep them), the
        fitted featurizer and the size of the horizon grid; ``extra_aggregates``: columns the training job
        appends to the featurizer's aggregates (stacked trees' predictions, ``data.stacking``)."""
        sizes = FeatureSizes.of(featurizer)
        sizes = replace(sizes, n_customer_agg=sizes.n_customer_agg + extra_aggregates)
        return cls(ModelConfig(**network), sizes, n_horizons, heads)

    def forward(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, Raw]:
        """Each head's raw outputs; in a batch with ``schema.CONTACTED`` (trained with campaigns), each example in
        its arm: a contact sent an offer or held out, or no contact."""
        representation = self.represent(inputs)
        if self.contact is not None and CONTACTED in inputs:
            representation = self.contact(representation, inputs[CONTACTED])
        return self.heads_of(representation, inputs)

    def heads_in_campaign(
        self, representation: torch.Tensor, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, Raw], list[dict[str, Raw]]]:
        """Each head's raw outputs for every customer as one a campaign reaches now: held out, and sent each
        offer (``contact_offers``' order) (a model trained with campaigns; :mod:`churnformer.modeling.contact`)."""
        if self.contact is None:
            raise ValueError("this network was not trained with campaigns: it has no contact effect")
        held, sent = self.contact.arms(representation)
        return self.heads_of(held, inputs), [self.heads_of(offer, inputs) for offer in sent]

    def heads_of(self, representation: torch.Tensor, inputs: Mapping[str, torch.Tensor]) -> dict[str, Raw]:
        """Each head's raw outputs from the customer representation (:meth:`represent`)."""
        wide = representation if self.wide is None else representation + self.wide(inputs[CUSTOMER_NUM])
        return self.heads(representation, wide)

    def represent(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The customer representation every head reads, (B, D): the pooled sequence, fused with the aggregates
        in a model that reads them. What ``churnformer-predict embeddings=true`` writes out."""
        pooled = self.pooled_sequence(inputs)
        if self.fusion is not None:
            pooled = self.fusion(pooled, inputs[CUSTOMER_AGG])
        return pooled

    def pooled_sequence(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The event sequence and summary token, read by the backbone and pooled, (B, D): the representation
        before the aggregates join it (what contrastive pretraining trains, :mod:`churnformer.training.pretraining`)."""
        lengths = inputs[LENGTHS]  # (B,)
        events = self.events(inputs)  # (B, T, D)
        summary = self.customer(inputs[CUSTOMER_CAT], inputs[CUSTOMER_NUM]).unsqueeze(1)  # (B, 1, D)
        x = self.norm(self.backbone(torch.cat([summary, events], dim=1), lengths))  # (B, 1 + T, D)
        positions = torch.arange(events.shape[1], device=x.device)
        weights = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).to(x.dtype)  # (B, T, 1) real events
        mean_events = (x[:, 1:] * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, D)
        return self.pool(torch.cat([self.backbone.summary(x, lengths), mean_events], dim=-1))  # (B, D)

    def sequence_encoder(self) -> list[nn.Module]:
        """The parts that read the event sequence: what contrastive pretraining trains and ``pretrain.freeze``
        keeps fixed afterwards."""
        return [self.events, self.backbone, self.norm, self.pool]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        with torch.no_grad():
            module.weight[0].zero_()
