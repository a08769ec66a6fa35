"""Models trained before a refactor keep their scores: the stored model files score as they did, and their
checkpoints exported and calibrated again by today's code give the same numbers (tests/data/reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.serving.predictor import Predictor

REFERENCE = Path(__file__).parent / "data" / "reference"
CUTOFF = "2023-09-30"
# The decline model's checks are slow-tier; so is every re-export (test_export.py exports in the fast tier).
MODELS = ("default", pytest.param("decline", marks=pytest.mark.slow))
# What the reference runs set on the command line (tests/data/reference/README.md).
DATA_CHANGES = {"cutoff": CUTOFF, "horizon_days": 60, "batch_size": 32}
MAX_LEN = 32


def scores(model: Path) -> pd.DataFrame:
    predictor = Predictor(model)
    customers = pd.read_csv(REFERENCE / "customers.csv")
    return predictor.score(REFERENCE / "events.csv", CUTOFF, customers).predictions


def stored(name: str) -> pd.DataFrame:
    return pd.read_parquet(REFERENCE / name / "predictions.parquet")


# Scores agree to float32's precision, not bit for bit: the packages a fresh install gets move a customer's
# outputs by a bit or two (seen on 2026-12-07: one customer of 300 per model, up to 2 ulps), with no change here.
SAME_SCORES = {"check_exact": False, "rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("name", MODELS)
def test_a_stored_model_file_scores_as_it_did(name: str) -> None:
    pd.testing.assert_frame_equal(scores(REFERENCE / name / "model.onnx"), stored(name), **SAME_SCORES)


@pytest.mark.slow  # one ONNX export per stored model (~5 s each): the full suite
@pytest.mark.parametrize("name", MODELS)
def test_a_stored_checkpoint_exports_to_the_same_scores(name: str, tmp_path: Path) -> None:
    from churnformer.artifacts.export import export_checkpoint

    model = export_checkpoint(
        REFERENCE / name / "model.ckpt",
        tmp_path / "model.onnx",
        calibration=REFERENCE / name / "calibration.json",
        fused_attention=True,
    )
    now, before = scores(model), stored(name)
    if name == "default":  # the default model's file has exactly the columns it had, in their order
        assert list(now.columns) == list(before.columns)
    else:  # a decline model also gives its P(no purchase) at the main horizon now
        assert set(now.columns) - set(before.columns) == {"no_purchase_probability"}
    pd.testing.assert_frame_equal(now[before.columns], before, **SAME_SCORES)


@pytest.mark.parametrize("name", MODELS)
def test_a_stored_checkpoint_calibrated_again_gives_the_same_calibration(name: str, tmp_path: Path) -> None:
    """Calibration fitted again by today's code on the reference run's data: the parameters and reference
    percentiles the run's own calibration has (as read from its file, written before heads were components;
    the scores are a function of them, as the export test above shows)."""
    from omegaconf import OmegaConf

    from churnformer.artifacts.checkpoint import load_checkpoint
    from churnformer.calibration import Calibration
    from churnformer.data.sources import EventLogFiles
    from churnformer.training.datamodule import ChurnDataModule, DataSettings
    from churnformer.training.job import calibrate

    definition = "decline" if name == "decline" else "no_purchase"
    settings = DataSettings.defaults(
        **DATA_CHANGES, churn_definition=definition, features={**DataSettings.defaults().features, "max_len": MAX_LEN}
    )
    columns = {"customer_id": "customer_id", "timestamp": "timestamp", "amount": "amount"}
    source = EventLogFiles(REFERENCE / "events.csv", REFERENCE / "customers.csv", columns)
    datamodule = ChurnDataModule(source, settings, tmp_path)
    datamodule.setup("fit")
    train_config = OmegaConf.load(Path(__file__).parents[1] / "src" / "churnformer" / "conf" / "train.yaml")
    network, _ = load_checkpoint(REFERENCE / name / "model.ckpt")
    refit = calibrate(train_config, network, datamodule, tmp_path)
    before = Calibration.load(REFERENCE / name / "calibration.json")
    assert refit.fallback == before.fallback
    # An iterative fit, stopped at its tolerance: inputs a bit or two apart (SAME_SCORES) move it by up to 5e-4.
    for head, params in before.heads.items():
        for key, value in params.items():
            assert refit.heads[head][key] == pytest.approx(value, rel=2e-3, abs=1e-4), (head, key)
    for column, values in before.percentiles.items():
        assert refit.percentiles[column] == pytest.approx(values, rel=1e-4, abs=1e-6), column
    assert np.isfinite(list(refit.percentiles["churn_probability"])).all()
