"""Boosted trees stacked under the network: out-of-fold predictions for training examples, the trees inside
the one model file computing what LightGBM computed in training, and every guarantee of the heads kept."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.stacked_trees import STACKED_COLUMNS, StackedTrees
from churnformer.calibration import Calibration
from churnformer.data.events import CUSTOMER_ID, load_customers, load_events
from churnformer.data.featurizer import Featurizer, FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.sequences import build_sequences
from churnformer.data.training_set import build_training_set, rolling_windows
from churnformer.data.window import HorizonGrid, Window
from churnformer.errors import ConfigError
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import CUSTOMER_AGG, RUN_CALIBRATION, per_horizon
from churnformer.serving.predictor import Predictor
from churnformer.training.stacking import StackingSettings, stack_trees
from tests.conftest import TINY_CUTOFF

pytest.importorskip("onnxmltools", reason="the stacking extra is not installed (pip install -e '.[dev]' installs it)")


def _training_set(tiny_world: tuple[Path, Path], aggregates: bool = True):
    events = load_events(pd.read_csv(tiny_world[0]))
    window = Window.from_cutoff(TINY_CUTOFF, 60)
    features = FeaturizerConfig.with_defaults(max_len=32, aggregates={"enabled": aggregates, "windows_days": [30, 90]})
    windows = rolling_windows(window, 2, 30)
    return build_training_set(events, None, windows, HorizonGrid.of([30, 60], 60), features, 0.2, LabelSpec())


@pytest.mark.slow  # seconds of fitting: the full suite runs it
def test_training_examples_get_out_of_fold_predictions_and_validation_ones_the_full_trees(
    tiny_world: tuple[Path, Path],
) -> None:
    data = _training_set(tiny_world)
    before = data.sequences.customers[CUSTOMER_AGG].copy()
    trees = stack_trees(data, StackingSettings(enabled=True, folds=3, max_rounds=200), seed=0)
    after = data.sequences.customers[CUSTOMER_AGG]
    assert after.shape == (len(before), before.shape[1] + len(STACKED_COLUMNS)) and trees.n_features == before.shape[1]
    np.testing.assert_array_equal(after[:, : before.shape[1]], before)
    full = trees.predict(before)
    np.testing.assert_allclose(after[data.val_rows, -2:], full[data.val_rows], rtol=1e-6)
    # A training example's prediction comes from trees fitted without its customer: not the full trees'.
    assert not np.allclose(after[data.train_rows, -2:], full[data.train_rows], rtol=1e-3)
    assert ((after[:, -2] >= 0) & (after[:, -2] <= 1)).all()


def test_stacking_needs_the_aggregates(tiny_world: tuple[Path, Path]) -> None:
    data = _training_set(tiny_world, aggregates=False)
    with pytest.raises(ConfigError, match=r"data\.features\.aggregates\.enabled=true"):
        stack_trees(data, StackingSettings(enabled=True), seed=0)


def test_the_model_file_runs_the_trees_as_training_did(stacked_run: Path, tiny_world: tuple[Path, Path]) -> None:
    """The file keeps the inputs of a model without trees; onnxruntime's tree ensembles and the network give
    what LightGBM and the torch network give together, and the heads' guarantees hold for every customer."""
    events, customers = tiny_world
    proto = onnx.load(stacked_run / "model.onnx")
    assert {"TreeEnsembleClassifier", "TreeEnsembleRegressor"} <= {n.op_type for n in proto.graph.node}
    network, hparams = load_checkpoint(next((stacked_run / "checkpoints").glob("epoch*.ckpt")))
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    width = next(i for i in proto.graph.input if i.name == CUSTOMER_AGG).type.tensor_type.shape.dim[1].dim_value
    assert width == len(featurizer.aggregate_names)
    predictions = Predictor(stacked_run).score(events, TINY_CUTOFF, customers).predictions
    sequences = build_sequences(
        load_events(pd.read_csv(events)), Window.from_cutoff(TINY_CUTOFF, 60), featurizer, load_customers(customers)
    )
    trees = StackedTrees.from_state(hparams["stacked_trees"])
    aggregates = sequences.customers[CUSTOMER_AGG]
    sequences.customers[CUSTOMER_AGG] = np.concatenate([aggregates, trees.predict(aggregates)], axis=1)
    metadata = hparams["export_metadata"]
    horizons = metadata["horizons_days"]
    padded = sequences.pad()
    calibration = Calibration.load(stacked_run / RUN_CALIBRATION)
    model = ScoringModel(network, list(padded), horizons.index(metadata["horizon_days"]), calibration).eval()
    with torch.no_grad():
        expected = [t.numpy() for t in model(*(torch.from_numpy(v) for v in padded.values()))]
    assert predictions[CUSTOMER_ID].astype(str).tolist() == [str(c) for c in sequences.customer_ids]
    for column, values in zip(network.heads.output_columns(tuple(horizons)), expected, strict=True):
        np.testing.assert_allclose(predictions[column], values, rtol=1e-3, atol=1e-4, err_msg=column)
    churn = predictions[[per_horizon("churn_probability", d) for d in horizons]].to_numpy()
    spend = predictions[[per_horizon("expected_spend", d) for d in horizons]].to_numpy()
    # No purchase within a longer horizon is less likely; spend over it is more.
    assert (np.diff(churn, axis=1) <= 1e-6).all() and (np.diff(spend, axis=1) >= -1e-4).all() and (spend >= 0).all()


def test_without_the_stacking_extra_the_error_says_how_to_install_it(
    tiny_world: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def without_onnxmltools(name: str, *args: object) -> object:
        if name == "onnxmltools":
            raise ImportError(name=name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnxmltools)
    with pytest.raises(ConfigError, match=r"needs onnxmltools: pip install 'churnformer\[stacking\]'"):
        stack_trees(_training_set(tiny_world), StackingSettings(enabled=True), seed=0)
