"""Contrastive pretraining of the sequence encoder (CoLES: Babaev et al., "CoLES: Contrastive Learning for
Event Sequences with Self-Supervision", SIGMOD 2022), run before supervised training (``pretrain.*``).

Random contiguous sub-sequences ("views") of one customer's history are positives, views of the other
customers in the batch negatives; the event encoder, backbone and pooling learn a representation under which
a customer's views lie together (InfoNCE over cosine similarities, every other view of the same customer a
positive). The views see the events alone: the summary token gets neutral inputs (no history summary, no
static attributes), as those are the same for every view of a customer and would solve the task without
reading the sequence. Labels are never read, so the training customers at every rolling cutoff are used
whether or not their horizon is observed; the validation customers are left out, so validation metrics stay
those of customers the model has not seen. A small projection head is trained with it and dropped after.

``pretrain.freeze=true`` then keeps the pretrained parts fixed while the heads, the summary token's encoder,
the wide path and the aggregates' fusion train (the published record's "frozen" setting); otherwise the whole
network is fine-tuned from the pretrained weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from churnformer.data.sequences import Sequences
from churnformer.errors import ConfigError
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import CUSTOMER_CAT, CUSTOMER_NUM


@dataclass(frozen=True)
class PretrainSettings:
    """``pretrain.*`` in ``conf/train.yaml`` (the only place they have defaults)."""

    enabled: bool
    epochs: int
    views: int  # sub-sequences drawn per customer and batch
    min_share: float  # the shortest view, as a share of the customer's history
    min_events: int  # customers with shorter histories are left out (their views could only repeat)
    batch_size: int  # customers per batch: views x batch_size sequences
    temperature: float
    lr: float
    weight_decay: float
    freeze: bool

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"pretrain.epochs must be at least 1, got {self.epochs}")
        if self.views < 2:
            raise ConfigError(f"pretrain.views must be at least 2 (a view needs a positive), got {self.views}")
        if not 0 < self.min_share <= 1:
            raise ConfigError(f"pretrain.min_share must be in (0, 1], got {self.min_share}")
        if self.min_events < 1:
            raise ConfigError(f"pretrain.min_events must be at least 1, got {self.min_events}")
        if self.batch_size < 2:
            raise ConfigError(f"pretrain.batch_size must be at least 2 (negatives), got {self.batch_size}")
        if self.temperature <= 0:
            raise ConfigError(f"pretrain.temperature must be positive, got {self.temperature}")


def draw_views(
    lengths: np.ndarray, views: int, min_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``views`` random contiguous sub-sequences of each history of ``lengths``: (owner index, start, length)
    of each view, owners repeated ``views`` times in order. A view's length is uniform between
    ``ceil(min_share * length)`` (at least 1) and the whole history, its start uniform where it fits."""
    owners = np.repeat(np.arange(len(lengths)), views)
    full = lengths[owners].astype(np.int64)
    shortest = np.maximum(np.ceil(min_share * full).astype(np.int64), 1)
    view_lengths = shortest + (rng.random(len(owners)) * (full - shortest + 1)).astype(np.int64)
    starts = (rng.random(len(owners)) * (full - view_lengths + 1)).astype(np.int64)
    return owners, starts, view_lengths


def contrastive_loss(embeddings: torch.Tensor, owners: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with several positives (SupCon, Khosla et al. 2020): for each view, the mean log-probability of
    its customer's other views among all other views of the batch, under cosine similarity / ``temperature``."""
    z = F.normalize(embeddings.float(), dim=-1)
    similarity = z @ z.T / temperature
    itself = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(itself, -math.inf)
    log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positive = (owners.unsqueeze(0) == owners.unsqueeze(1)) & ~itself
    per_view = log_probability.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    return -per_view.mean()


def neutral_customers(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` with the summary token's inputs emptied: padding ids (embedded as zeros) and zero numbers."""
    out = dict(batch)
    out[CUSTOMER_CAT] = np.zeros_like(batch[CUSTOMER_CAT])
    out[CUSTOMER_NUM] = np.zeros_like(batch[CUSTOMER_NUM])
    return out


class ProjectionHead(nn.Module):
    """The pooled representation -> the space the contrastive loss compares in (dropped after pretraining)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.layers(pooled)


@dataclass(frozen=True)
class PretrainResult:
    """What pretraining did: the histories it read and the mean loss of each epoch."""

    customers: int
    epoch_losses: list[float]
    seconds: float

    def describe(self) -> str:
        first, last = self.epoch_losses[0], self.epoch_losses[-1]
        return (
            f"contrastive pretraining: {len(self.epoch_losses)} epochs over {self.customers:,} training histories "
            f"in {self.seconds:.0f} s, loss {first:.3f} -> {last:.3f}"
        )


def pretrain(
    network: ChurnFormer,
    sequences: Sequences,
    rows: np.ndarray,
    settings: PretrainSettings,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> PretrainResult:
    """Train ``network``'s sequence encoder contrastively on the histories ``rows`` of ``sequences`` (AdamW,
    ``settings.epochs`` passes, each customer once per epoch in a seeded random order). Deterministic for a
    seed, whatever the global random streams hold, and leaves them as they were (the fit draws what it would
    without pretraining); leaves the network in training mode. ``on_epoch(epoch, mean loss)`` after each epoch."""
    device = next(network.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _pretrain(network, sequences, rows, settings, seed, on_epoch)


def _pretrain(
    network: ChurnFormer,
    sequences: Sequences,
    rows: np.ndarray,
    settings: PretrainSettings,
    seed: int,
    on_epoch: Callable[[int, float], None] | None,
) -> PretrainResult:
    started = time.perf_counter()
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[sequences.lengths_of(rows) >= settings.min_events]
    if len(rows) < 2:
        raise ConfigError(
            f"pretrain.enabled=true: {len(rows)} training histories have at least pretrain.min_events="
            f"{settings.min_events} events; contrastive pretraining needs two or more"
        )
    device = next(network.parameters()).device
    projection = ProjectionHead(network.config.d_model).to(device)
    encoder = [p for part in network.sequence_encoder() for p in part.parameters()]
    optimizer = torch.optim.AdamW(
        [*encoder, *projection.parameters()], lr=settings.lr, weight_decay=settings.weight_decay
    )
    rng = np.random.default_rng(seed)
    network.train()
    losses = []
    for epoch in range(settings.epochs):
        order = rng.permutation(rows)
        total, batches = 0.0, 0
        for begin in range(0, len(order), settings.batch_size):
            batch_rows = order[begin : begin + settings.batch_size]
            if len(batch_rows) < 2:  # a lone customer has no negatives
                continue
            owners, starts, view_lengths = draw_views(
                sequences.lengths_of(batch_rows), settings.views, settings.min_share, rng
            )
            padded = neutral_customers(sequences.slices(batch_rows[owners], starts, view_lengths).pad())
            inputs = {name: torch.from_numpy(values).to(device) for name, values in padded.items()}
            loss = contrastive_loss(
                projection(network.pooled_sequence(inputs)), torch.from_numpy(owners).to(device), settings.temperature
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([*encoder, *projection.parameters()], 1.0)
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        losses.append(total / max(batches, 1))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    network.zero_grad(set_to_none=True)  # the summary token's encoder got gradients no optimizer here applies
    return PretrainResult(customers=len(rows), epoch_losses=losses, seconds=time.perf_counter() - started)


def freeze_pretrained(network: ChurnFormer) -> None:
    """Keep the pretrained parts fixed (``pretrain.freeze``): they get no gradients and no updates."""
    for part in network.sequence_encoder():
        part.requires_grad_(False)
