"""Engineered aggregates: their values on a history worked out by hand, leakage and row-order safety, the
featurization state, and the network's numeric encoding and fusion (exported to ONNX as it runs in torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.export import example_inputs, export_onnx
from churnformer.calibration import Calibration
from churnformer.data.aggregates import aggregate_quantiles
from churnformer.data.events import load_events
from churnformer.data.featurizer import (
    AGGREGATES_FORMAT_VERSION,
    FORMAT_VERSION,
    Featurizer,
    FeaturizerConfig,
    fit_featurizer,
)
from churnformer.data.sequences import build_sequences, empty_histories
from churnformer.data.window import Window
from churnformer.errors import ConfigError
from churnformer.modeling.fusion import PiecewiseLinearEncoding
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import CUSTOMER_AGG, RUN_CALIBRATION
from churnformer.serving.predictor import Predictor
from tests.conftest import TINY_CUTOFF

WINDOW = Window.from_cutoff("2024-06-30", horizon_days=30)
FEATURE_END = pd.Timestamp("2024-07-01")
AGGREGATES = {"enabled": True, "windows_days": [30], "top_values": 2}


def _at(days_before: float, hour: int = 12) -> pd.Timestamp:
    return FEATURE_END - pd.Timedelta(days=days_before) + pd.Timedelta(hours=hour)


def _log() -> pd.DataFrame:
    """Customer a: purchase days 100, 40 and 10 days before the cutoff (two purchases on the last), a refund,
    a visit, and a large purchase after the cutoff; customer b: one visit."""
    rows = [
        ("a", _at(100), 10.0, "web", 1.0),
        ("a", _at(40), 20.0, "web", 2.0),
        ("a", _at(10), 30.0, "store", 3.0),
        ("a", _at(10, hour=13), 5.0, "store", np.nan),
        ("a", _at(5), -8.0, "store", 1.0),
        ("a", _at(2), 0.0, "web", 1.0),
        ("a", _at(-5), 1000.0, "store", 9.0),  # after the cutoff: in no aggregate
        ("b", _at(3), 0.0, "web", 4.0),
    ]
    return load_events(pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "channel", "score"]))


def _featurizer(events: pd.DataFrame) -> Featurizer:
    config = FeaturizerConfig.with_defaults(min_category_count=1, aggregates=AGGREGATES)
    return fit_featurizer(events[events["timestamp"] < FEATURE_END], config=config)


def _aggregates(events: pd.DataFrame, featurizer: Featurizer) -> pd.DataFrame:
    sequences = build_sequences(events, WINDOW, featurizer)
    values = sequences.customers[CUSTOMER_AGG]
    return pd.DataFrame(values, index=sequences.customer_ids, columns=featurizer.aggregate_names)


def test_aggregates_of_a_history_worked_out_by_hand() -> None:
    events = _log()
    featurizer = _featurizer(events)
    table = _aggregates(events, featurizer)
    a, b = table.loc["a"], table.loc["b"]
    log1p = np.log1p
    expected_a = {
        "events_30d": log1p(4),
        "purchase_days_30d": log1p(1),  # two purchases, one day
        "spend_30d": log1p(35),
        "purchase_days_trend_30d": log1p(1) - log1p(1),  # the 40-days-ago purchase day in the window before
        "spend_trend_30d": log1p(35) - log1p(20),
        "gap_mean_days": log1p(45),  # gaps 60 and 30
        "gap_std_days": log1p(15),
        "gap_max_days": log1p(60),
        "gap_last_days": log1p(30),
        "overdue_ratio": log1p((10 - 13 / 24) / 45),  # the last purchase at 13:00, 10 days before the cutoff
        "amount_mean": log1p(16.25),
        "amount_std": log1p(np.std([10, 20, 30, 5])),
        "amount_max": log1p(30),
        "amount_last_vs_mean": log1p(5) - log1p(16.25),
        "amount_recent_vs_earlier": log1p(55 / 3) - log1p(10),
        "refunds": log1p(1),
        "refund_amount": log1p(8),
        "channel_distinct": log1p(2),
        "channel_0_share": 3 / 6,  # web: the most frequent training value (4 events against store's 3)
        "channel_1_share": 3 / 6,
        "channel_0_spend_share": 30 / 65,
        "channel_1_spend_share": 35 / 65,
        "score_sum": log1p(8.0),  # a missing score counts 0
        "score_mean": 8.0 / 6,
        "score_spend_weighted": (10 * 1 + 20 * 2 + 30 * 3) / 65,
    }
    assert set(expected_a) == set(featurizer.aggregate_names)
    for name, value in expected_a.items():
        assert a[name] == pytest.approx(value, rel=1e-5), name
    # b never purchased: what needs a purchase is undefined (NaN), the rest is counted.
    for name in ("gap_mean_days", "overdue_ratio", "amount_mean", "channel_0_spend_share"):
        assert np.isnan(b[name]), name
    assert (b["events_30d"], b["spend_30d"], b["channel_0_share"]) == (pytest.approx(log1p(1)), 0.0, 1.0)


def test_aggregates_see_no_future_event_and_no_row_order() -> None:
    events = _log()
    featurizer = _featurizer(events)
    before = _aggregates(events[events["timestamp"] < FEATURE_END], featurizer)
    shuffled = events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    future = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "timestamp": [FEATURE_END, _at(-30)],
            "amount": [50.0, 60.0],
            "channel": ["web", "store"],
            "score": [1.0, 1.0],
        }
    )
    pd.testing.assert_frame_equal(_aggregates(pd.concat([shuffled, load_events(future)]), featurizer), before)


def test_a_customer_without_events_has_the_aggregates_of_an_empty_history() -> None:
    featurizer = _featurizer(_log())
    values = pd.Series(
        empty_histories(np.array(["z"]), featurizer).customers[CUSTOMER_AGG][0], index=featurizer.aggregate_names
    )
    assert values[["events_30d", "spend_30d", "refunds", "channel_distinct", "score_sum"]].eq(0).all()
    assert values[["gap_mean_days", "amount_mean", "channel_0_share", "score_mean"]].isna().all()


def test_the_state_keeps_the_aggregates_in_their_order_and_is_marked_newer() -> None:
    """Read back from the model file, the state computes the same aggregates in the same columns: the
    layout is the model's input (the state is stored with sorted keys; "aisle" sorts before "channel")."""
    events = _log().assign(aisle=lambda frame: np.where(frame["amount"] > 10, "dairy", "bakery"))
    featurizer = _featurizer(events)
    assert featurizer.format_version == AGGREGATES_FORMAT_VERSION
    assert featurizer.aggregates.categories == [("channel", 2), ("aisle", 2)]
    assert featurizer.aggregates.numbers == ["score"]
    again = Featurizer.from_json(featurizer.to_json())
    assert again == featurizer and again.aggregate_names == featurizer.aggregate_names
    pd.testing.assert_frame_equal(_aggregates(events, again), _aggregates(events, featurizer))
    plain = fit_featurizer(_log(), config=FeaturizerConfig.with_defaults())
    assert (plain.format_version, plain.aggregates, plain.aggregate_names) == (FORMAT_VERSION, None, [])
    assert "aggregates" in json.loads(plain.to_json())  # null: read back as none


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"enabled": True, "windows_days": [], "top_values": 2}, "windows_days"),
        ({"enabled": True, "windows_days": [30], "windows": 2}, "unknown key"),
    ],
)
def test_bad_aggregate_settings_are_named(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fit_featurizer(_log(), config=FeaturizerConfig.with_defaults(aggregates=settings))


def test_piecewise_linear_encoding_places_values_in_training_quantile_bins() -> None:
    """Bins at the training quantiles (0, 1, 2 for values uniform on [0, 2]): a value is 1 in every bin below it,
    its fraction of its own bin, 0 above; the outer bins extend beyond the training range by up to a bin; NaN is
    its own vector."""
    encoding = PiecewiseLinearEncoding(n_features=1, bins=2, embedding_dim=2)
    encoding.fit(aggregate_quantiles(np.linspace(0.0, 2.0, 1001)[:, None]))
    with torch.no_grad():
        encoding.weight.copy_(torch.eye(2).unsqueeze(0))  # the embedding is the encoding itself
        encoding.missing.fill_(7.0)
        out = encoding(torch.tensor([[0.5], [1.5], [2.5], [-0.5], [900.0], [-900.0], [float("nan")]]))[:, 0]
    expected = [[0.5, 0.0], [1.0, 0.5], [1.0, 1.5], [-0.5, 0.0], [1.0, 2.0], [-1.0, 0.0], [7.0, 7.0]]
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)


@pytest.mark.slow  # a training run with export (~14 s): the full suite
def test_the_trained_model_file_runs_its_fusion_as_torch_does(aggregates_run: Path) -> None:
    """The run's exported file (cross fusion, calibrated), with undefined aggregates among the inputs, gives
    the torch network's outputs and its customer representation."""
    network, hparams = load_checkpoint(next((aggregates_run / "checkpoints").glob("epoch*.ckpt")))
    assert network.config.fusion["kind"] == "cross"
    _assert_onnx_matches_torch(
        network, hparams, aggregates_run / "model.onnx", Calibration.load(aggregates_run / RUN_CALIBRATION)
    )


@pytest.mark.slow
def test_an_mlp_fusion_exports_to_onnx_as_it_runs_in_torch(aggregates_run: Path, tmp_path: Path) -> None:
    network, hparams = load_checkpoint(next((aggregates_run / "checkpoints").glob("epoch*.ckpt")))
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    config = {**vars(network.config), "fusion": {**network.config.fusion, "kind": "mlp"}}
    n_horizons = len(hparams["export_metadata"]["horizons_days"])
    network = ChurnFormer.build(config, featurizer, n_horizons, hparams["heads"])
    torch.manual_seed(0)
    with torch.no_grad():  # weights away from their initial values, so every path matters
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    metadata = hparams["export_metadata"]
    path = export_onnx(network, hparams["featurizer_json"], tmp_path / "model.onnx", metadata, fused_attention=True)
    _assert_onnx_matches_torch(network, hparams, path, None)


def _assert_onnx_matches_torch(
    network: ChurnFormer, hparams: dict, path: Path, calibration: Calibration | None
) -> None:
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    metadata = hparams["export_metadata"]
    inputs = example_inputs(featurizer, batch=6, length=9)
    inputs[CUSTOMER_AGG][::2, ::3] = float("nan")
    main = metadata["horizons_days"].index(metadata["horizon_days"])
    model = ScoringModel(network, list(inputs), main, calibration, with_embedding=True).eval()
    with torch.no_grad():
        expected = [t.numpy() for t in model(*inputs.values())]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert all(np.isfinite(a).all() for a in got)


@pytest.mark.slow  # a training run with export (~14 s): the full suite
def test_a_model_with_aggregates_scores_the_same_in_shards(aggregates_run: Path, tiny_world: tuple[Path, Path]) -> None:
    """The aggregates are computed per customer: a job cut into shards scores every customer as the whole."""
    events, customers = tiny_world
    predictor = Predictor(aggregates_run)
    whole = predictor.score(events, TINY_CUTOFF, customers=customers).predictions
    frame = pd.read_csv(events, dtype={"customer_id": str})
    ids = np.sort(frame["customer_id"].unique())
    parts = [
        predictor.score(frame[frame["customer_id"].isin(part)], TINY_CUTOFF, customers=customers).predictions
        for part in np.array_split(ids, 3)
    ]
    pd.testing.assert_frame_equal(
        pd.concat(parts).sort_values("customer_id", ignore_index=True),
        whole.sort_values("customer_id", ignore_index=True),
        check_exact=True,
    )
