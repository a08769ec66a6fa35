"""A measured lever, not a package feature: masked-event pretraining of the encoder before training.

Usage (the protocol and arguments of ``scripts/experiments/compare.py``; every churnformer or GRU model it
trains is pretrained)::

    python -m scripts.experiments.masked_pretraining --dataset completejourney --models churnformer \
        [--pretrain-epochs 20] [--mask-share 0.15] [--pretrain-test-half]

Before each seed's network trains, its event encoder, summary token and backbone learn to rebuild events
hidden from them (BERT-style: ``--mask-share`` of each history's events are replaced by a learned mask vector;
the loss is the squared error of the hidden events' numeric features, time and basket contents included, plus
the cross-entropy of their categorical features). Only the events before the cutoff are read, so no label
reaches the pretraining. By default only the seed's training half is read (protocol C trains every model on
it); ``--pretrain-test-half`` adds the test half's histories too (no labels, but a transductive reading of
the customers it then scores). Issue 16 names the lever; docs/benchmarks.md, The Complete Journey, has what it measured.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


from churnformer.data.featurizer import Featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import CUSTOMER_CAT, CUSTOMER_NUM, EVENT_CAT, EVENT_NUM, LENGTHS
from scripts.experiments import compare


class MaskedEventModel(nn.Module):
    """The network's encoders and backbone with a mask vector and heads that rebuild hidden events."""

    def __init__(self, network: ChurnFormer, n_event_num: int, cardinalities: list[int]) -> None:
        super().__init__()
        d_model = network.config.d_model
        self.network = network
        self.mask = nn.Parameter(torch.zeros(d_model))
        self.numeric = nn.Linear(d_model, n_event_num)
        self.categorical = nn.ModuleList(nn.Linear(d_model, n) for n in cardinalities)

    def loss(self, batch: dict[str, torch.Tensor], share: float, generator: torch.Generator) -> torch.Tensor:
        lengths = batch[LENGTHS]
        events = self.network.events(batch)  # (B, T, D)
        positions = torch.arange(events.shape[1])
        real = positions.unsqueeze(0) < lengths.unsqueeze(1)
        hidden = real & (torch.rand(real.shape, generator=generator) < share)
        if not hidden.any():
            return events.sum() * 0.0
        events = torch.where(hidden.unsqueeze(-1), self.mask.expand_as(events), events)
        summary = self.network.customer(batch[CUSTOMER_CAT], batch[CUSTOMER_NUM]).unsqueeze(1)
        x = self.network.norm(self.network.backbone(torch.cat([summary, events], dim=1), lengths))[:, 1:]
        out = x[hidden]  # (N, D)
        loss = F.mse_loss(self.numeric(out), batch[EVENT_NUM][hidden].float())
        targets = batch[EVENT_CAT][hidden].long()
        for j, head in enumerate(self.categorical):
            loss = loss + F.cross_entropy(head(out), targets[:, j])
        return loss


def pretrain(network: ChurnFormer, sequences: Sequences, epochs: int, share: float, seed: int) -> None:
    """``epochs`` passes of masked-event training over ``sequences`` (AdamW, batches of 256 customers)."""
    cardinalities = [table.num_embeddings for table in network.events.categorical.tables]
    model = MaskedEventModel(network, network.events.numeric.in_features, cardinalities)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    network.train()
    for epoch in range(epochs):
        total, batches = 0.0, 0
        order = order_rng.permutation(len(sequences))
        for start in range(0, len(order), 256):
            padded = sequences.pad(np.sort(order[start : start + 256]))
            batch = {name: torch.from_numpy(np.ascontiguousarray(values)) for name, values in padded.items()}
            loss = model.loss(batch, share, generator)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            total, batches = total + float(loss.detach()), batches + 1
        print(f"pretraining epoch {epoch + 1}/{epochs}: masked-event loss {total / max(batches, 1):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--mask-share", type=float, default=0.15)
    parser.add_argument("--pretrain-test-half", action="store_true")
    ours, rest = parser.parse_known_args()
    pending: dict = {}
    original_train, original_build = compare.train, ChurnFormer.build.__func__

    def remember_train(events: pd.DataFrame, cutoff: str, **kwargs):
        readers = events
        if ours.pretrain_test_half:
            readers = pending["all_events"]
        pending.update(events=readers, cutoff=cutoff, customers=kwargs.get("customers"))
        try:
            return original_train(events, cutoff=cutoff, **kwargs)
        finally:
            pending.pop("events", None)

    def build_then_pretrain(cls, network, featurizer: Featurizer, n_horizons: int, heads: dict):
        built = original_build(cls, network, featurizer, n_horizons, heads)
        events = pending.pop("events", None)
        if events is not None:  # the training module's network; a checkpoint's rebuild is not pretrained again
            window = Window.from_cutoff(pending["cutoff"], 1)
            sequences = build_sequences(events, window, featurizer, pending["customers"])
            print(f"pretraining on {len(sequences)} customers' histories", flush=True)
            pretrain(built, sequences, ours.pretrain_epochs, ours.mask_share, seed=int(torch.initial_seed() % 2**31))
        return built

    original_load = compare.load_dataset

    def load_and_keep(name: str):
        events, customers = original_load(name)
        pending["all_events"] = events
        return events, customers

    compare.train = remember_train
    compare.load_dataset = load_and_keep
    ChurnFormer.build = classmethod(build_then_pretrain)
    sys.argv = [sys.argv[0], *rest]
    compare.main()


if __name__ == "__main__":
    main()
