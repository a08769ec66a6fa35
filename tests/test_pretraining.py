"""Contrastive pretraining (``pretrain.*``): the views it draws, the loss it minimises, what it trains and what
it leaves alone, and a training run that keeps the pretrained encoder frozen."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.data.events import load_events
from churnformer.data.featurizer import FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.training_set import TrainingSet, build_training_set, rolling_windows
from churnformer.data.window import HorizonGrid, Window
from churnformer.errors import ConfigError
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import EVENT_NUM, LENGTHS
from churnformer.training.job import PRETRAIN_LOSS
from churnformer.training.pretraining import PretrainSettings, contrastive_loss, draw_views, pretrain
from tests.conftest import TINY_CUTOFF, train_tiny_world

SETTINGS = PretrainSettings(
    enabled=True,
    epochs=2,
    views=3,
    min_share=0.3,
    min_events=2,
    batch_size=32,
    temperature=0.1,
    lr=3e-3,
    weight_decay=0.0,
    freeze=False,
)
NETWORK = {
    "backbone": {"_target_": "churnformer.modeling.backbones.Transformer"},
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "ff_multiplier": 2,
    "dropout": 0.0,
    "time_frequencies": 4,
    "wide": True,
}
HEADS = {
    "survival": {"_target_": "churnformer.modeling.heads.survival.SurvivalHead"},
    "spend": {"_target_": "churnformer.modeling.heads.spend.SpendHead"},
}


@pytest.fixture(scope="module")
def training_set(tiny_world: tuple[Path, Path]) -> TrainingSet:
    events = load_events(pd.read_csv(tiny_world[0]))
    windows = rolling_windows(Window.from_cutoff(TINY_CUTOFF, 60), 1, 30)
    features = FeaturizerConfig.with_defaults(max_len=32)
    return build_training_set(events, None, windows, HorizonGrid.of([30, 60], 60), features, 0.2, LabelSpec())


def _network(data: TrainingSet, seed: int = 0) -> ChurnFormer:
    torch.manual_seed(seed)
    return ChurnFormer.build(NETWORK, data.featurizer, 2, HEADS)


def test_views_are_contiguous_runs_of_at_least_the_minimum_share() -> None:
    lengths = np.array([1, 2, 10, 37])
    owners, starts, view_lengths = draw_views(lengths, 5, 0.3, np.random.default_rng(0))
    np.testing.assert_array_equal(owners, np.repeat(np.arange(4), 5))
    full = lengths[owners]
    assert (view_lengths >= np.maximum(np.ceil(0.3 * full), 1)).all() and (view_lengths <= full).all()
    assert (starts >= 0).all() and (starts + view_lengths <= full).all()
    assert len({(s, n) for s, n in zip(starts[15:], view_lengths[15:], strict=True)}) > 1  # views differ
    again = draw_views(lengths, 5, 0.3, np.random.default_rng(0))
    for a, b in zip((owners, starts, view_lengths), again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_slices_hold_exactly_the_chosen_events(training_set: TrainingSet) -> None:
    sequences = training_set.sequences
    rows = np.flatnonzero(sequences.lengths >= 5)[:3]
    starts, lengths = np.array([1, 0, 2]), np.array([3, 5, 2])
    padded = sequences.slices(rows, starts, lengths).pad()
    whole = sequences.pad(rows)
    np.testing.assert_array_equal(padded[LENGTHS], lengths)
    for i, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        np.testing.assert_array_equal(padded[EVENT_NUM][i, :length], whole[EVENT_NUM][i, start : start + length])


def test_the_loss_is_lowest_when_a_customers_views_agree() -> None:
    generator = torch.Generator().manual_seed(0)
    owners = torch.arange(8).repeat_interleave(3)
    centres = torch.randn(8, 16, generator=generator)
    together = centres[owners] + 0.01 * torch.randn(24, 16, generator=generator)
    apart = torch.randn(24, 16, generator=generator)
    # Its floor: each view's two positives share all the probability, log 2 each.
    assert contrastive_loss(together, owners, 0.1) == pytest.approx(np.log(2), abs=0.01)
    assert contrastive_loss(apart, owners, 0.1) > 2.0


def test_pretraining_learns_to_tell_customers_apart_and_touches_only_the_sequence_encoder(
    training_set: TrainingSet,
) -> None:
    network = _network(training_set)
    heads_before = {k: v.clone() for k, v in network.heads.state_dict().items()}
    customer_before = {k: v.clone() for k, v in network.customer.state_dict().items()}
    backbone_before = {k: v.clone() for k, v in network.backbone.state_dict().items()}
    losses = []
    result = pretrain(
        network,
        training_set.sequences,
        training_set.train_rows,
        SETTINGS,
        seed=0,
        on_epoch=lambda e, v: losses.append(v),
    )
    assert result.epoch_losses == losses and len(losses) == SETTINGS.epochs
    assert losses[-1] < losses[0]
    assert result.customers == int((training_set.sequences.lengths_of(training_set.train_rows) >= 2).sum())
    for before, part in ((heads_before, network.heads), (customer_before, network.customer)):
        for key, value in part.state_dict().items():
            torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert any(not torch.equal(v, backbone_before[k]) for k, v in network.backbone.state_dict().items())
    assert all(p.grad is None for p in network.parameters())


@pytest.mark.slow  # seconds of fitting: the full suite runs it
def test_pretraining_is_deterministic_for_a_seed(training_set: TrainingSet) -> None:
    settings = replace(SETTINGS, epochs=1)
    first, second = _network(training_set), _network(training_set)
    pretrain(first, training_set.sequences, training_set.train_rows, settings, seed=4)
    pretrain(second, training_set.sequences, training_set.train_rows, settings, seed=4)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_bad_settings_and_too_few_histories_are_named(training_set: TrainingSet) -> None:
    with pytest.raises(ConfigError, match=r"pretrain\.views"):
        replace(SETTINGS, views=1)
    with pytest.raises(ConfigError, match=r"pretrain\.min_share"):
        replace(SETTINGS, min_share=0.0)
    with pytest.raises(ConfigError, match=r"pretrain\.min_events=10000"):
        pretrain(
            _network(training_set),
            training_set.sequences,
            training_set.train_rows,
            replace(SETTINGS, min_events=10_000),
            seed=0,
        )


@pytest.mark.slow
def test_a_frozen_pretrained_encoder_stays_as_pretrained_while_the_heads_train(
    tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    overrides = (
        "pretrain.enabled=true",
        "pretrain.freeze=true",
        "pretrain.epochs=2",
        "callbacks.model_checkpoint.save_top_k=-1",  # every epoch's checkpoint, to compare two of them
        "export=false",
        "calibrate=false",
    )
    run_dir = train_tiny_world(tiny_world, tmp_path_factory, "pretrained-run", *overrides)
    (first, first_hparams), (second, _) = (
        load_checkpoint(run_dir / "checkpoints" / f"epoch{epoch:03d}.ckpt") for epoch in (0, 1)
    )
    assert first_hparams["freeze_sequence_encoder"] is True
    for part, other in zip(first.sequence_encoder(), second.sequence_encoder(), strict=True):
        for (name, a), b in zip(part.state_dict().items(), other.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(first.heads.state_dict().values(), second.heads.state_dict().values(), strict=True)
    )
    logs = EventAccumulator(str(next(run_dir.rglob("train/events.out.tfevents*")).parent)).Reload()
    assert [e.step for e in logs.Scalars(PRETRAIN_LOSS)] == [0, 1]
