"""What the network is built from: the architecture knobs (``model.network`` in ``conf/model/*.yaml``, the
only place they have defaults) and the feature sizes of the fitted featurizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from churnformer.data.featurizer import Featurizer


@dataclass(frozen=True)
class ModelConfig:
    """Architecture knobs; ``backbone`` names the sequence encoder (``{_target_: ...}``, see
    :mod:`churnformer.modeling.backbones`)."""

    backbone: dict[str, Any]
    d_model: int
    n_layers: int
    n_heads: int
    ff_multiplier: int
    dropout: float  # residual and feed-forward dropout; attention weights are never dropped (slow on CPU)
    time_frequencies: int  # learned sinusoidal frequencies per time feature
    wide: bool = False  # a linear path from the customer numbers to the churn logits (older checkpoints: none)
    # The encoders of each event's inputs whose vectors are summed (churnformer.modeling.encoders.EVENT_ENCODERS;
    # those the model has no input for, text without text columns, are left out).
    event_encoders: tuple[str, ...] = ("categorical", "numeric", "time", "text")
    # How the engineered aggregates are encoded and fused with the sequence (churnformer.modeling.fusion.FusionConfig;
    # read by models with data.features.aggregates only).
    fusion: dict[str, Any] | None = None
    # Set by the training job when it learns from campaigns (data.campaigns): the offers whose effects it learns
    # (sorted; empty without campaigns), and the heads then also predict each customer as if sent each one
    # (churnformer.modeling.contact). Not a knob: it follows from the data.
    contact_offers: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureSizes:
    """Input sizes the fitted featurizer implies."""

    event_cat_cardinalities: list[int]
    n_event_num: int
    time_feature_index: list[int]  # columns of event_num that hold time
    customer_cat_cardinalities: list[int]
    n_customer_num: int
    n_text_columns: int = 0  # free-text event columns
    text_dimension: int = 0  # size of their sentence embeddings
    n_customer_agg: int = 0  # engineered aggregates (data.features.aggregates)

    @classmethod
    def of(cls, featurizer: Featurizer) -> FeatureSizes:
        return cls(
            event_cat_cardinalities=featurizer.event_categorical_cardinalities,
            n_event_num=len(featurizer.event_numeric_names),
            time_feature_index=featurizer.event_time_indices,
            customer_cat_cardinalities=featurizer.customer_categorical_cardinalities,
            n_customer_num=len(featurizer.customer_numeric_names),
            n_text_columns=len(featurizer.text_columns),
            text_dimension=featurizer.text_dimension,
            n_customer_agg=len(featurizer.aggregate_names),
        )
