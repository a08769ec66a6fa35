"""Training-time augmentation: static customer attributes hidden at random.

A model never shown an unknown attribute has an untrained "unknown" embedding, and scoring meets unknowns:
customers absent from the customers table, values unseen in training, and explanations, which remove an
attribute by setting it to unknown. Hiding each attribute of a training example with a small probability
teaches the model what to predict without it (about the average over the attribute's values).
"""

from __future__ import annotations

import torch

from churnformer.data.featurizer import BASE_CUSTOMER_NUMERIC
from churnformer.data.values import UNKNOWN_ID
from churnformer.schema import CUSTOMER_CAT, CUSTOMER_NUM


def hide_static_attributes(
    batch: dict[str, torch.Tensor], rate: float, n_static_numeric: int
) -> dict[str, torch.Tensor]:
    """``batch`` with each static attribute of each example hidden with probability ``rate``, as the
    featurizer encodes a missing one: a categorical becomes the unknown id, a numeric becomes 0 with its
    missing indicator set. ``customer_num`` is the history summary, the scaled static numerics, then their
    indicators (:func:`churnformer.data.sequences.build_sequences`); the summary is never touched."""
    if rate <= 0:
        return batch
    hidden = dict(batch)
    if CUSTOMER_CAT in batch and batch[CUSTOMER_CAT].shape[1]:
        categorical = batch[CUSTOMER_CAT]
        drop = torch.rand(categorical.shape, device=categorical.device) < rate
        hidden[CUSTOMER_CAT] = categorical.masked_fill(drop, UNKNOWN_ID)
    if n_static_numeric:
        numeric = batch[CUSTOMER_NUM].clone()
        start = len(BASE_CUSTOMER_NUMERIC)
        drop = torch.rand(len(numeric), n_static_numeric, device=numeric.device) < rate
        scaled = numeric[:, start : start + n_static_numeric]
        indicator = numeric[:, start + n_static_numeric : start + 2 * n_static_numeric]
        numeric[:, start : start + n_static_numeric] = scaled.masked_fill(drop, 0.0)
        numeric[:, start + n_static_numeric : start + 2 * n_static_numeric] = indicator.masked_fill(drop, 1.0)
        hidden[CUSTOMER_NUM] = numeric
    return hidden
