"""Customer embeddings out: the representation the heads read, as ``churnformer-predict embeddings=true``
columns and ``Predictor.embed``; refused, with the remedy, for a model file exported before them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.data.events import CUSTOMER_ID, load_customers, load_events
from churnformer.data.featurizer import Featurizer
from churnformer.data.sequences import build_sequences
from churnformer.data.window import Window
from churnformer.errors import ModelFileError
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from tests.conftest import TINY_CUTOFF, run_predict

REFERENCE = Path(__file__).parent / "data" / "reference"


# The default model in the fast tier; with the aggregates fused in (another training run) in the full suite.
RUNS = ["trained_run", pytest.param("aggregates_run", marks=pytest.mark.slow)]


@pytest.mark.parametrize("run", RUNS)
def test_embeddings_are_the_representation_the_heads_read(
    run: str, tiny_world: tuple[Path, Path], request: pytest.FixtureRequest
) -> None:
    events, customers = tiny_world
    run_dir: Path = request.getfixturevalue(run)
    embedded = Predictor(run_dir).embed(events, TINY_CUTOFF, customers)
    network, hparams = load_checkpoint(next((run_dir / "checkpoints").glob("epoch*.ckpt")))
    width = network.config.d_model
    assert list(embedded.columns) == [CUSTOMER_ID, *(f"embedding_{i}" for i in range(width))]
    featurizer = Featurizer.from_json(hparams["featurizer_json"])
    sequences = build_sequences(
        load_events(pd.read_csv(events)), Window.from_cutoff(TINY_CUTOFF, 60), featurizer, load_customers(customers)
    )
    assert embedded[CUSTOMER_ID].astype(str).tolist() == [str(c) for c in sequences.customer_ids]
    with torch.no_grad():
        expected = network.eval().represent({k: torch.from_numpy(v) for k, v in sequences.pad().items()}).numpy()
    np.testing.assert_allclose(embedded.drop(columns=CUSTOMER_ID).to_numpy(), expected, rtol=1e-4, atol=1e-5)


def test_embedding_columns_leave_the_predictions_as_they_were(
    trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    """``embeddings=true`` adds the columns after the retention columns and changes no other bit."""
    events, customers = tiny_world
    run_predict(trained_run, events, tmp_path / "plain.parquet", f"customers={customers}")
    run_predict(trained_run, events, tmp_path / "embedded.parquet", f"customers={customers}", "embeddings=true")
    before, after = (pd.read_parquet(tmp_path / name) for name in ("plain.parquet", "embedded.parquet"))
    added = [c for c in after.columns if c not in before.columns]
    assert added == [f"embedding_{i}" for i in range(len(added))] and added
    assert list(after.columns) == [*before.columns, *added]
    pd.testing.assert_frame_equal(after[before.columns], before, check_exact=True)
    assert np.isfinite(after[added].to_numpy()).all()


def test_a_model_exported_before_embeddings_is_refused_with_the_remedy() -> None:
    with pytest.raises(ModelFileError, match=r"customer_embedding.*churnformer-export"):
        Predictor(REFERENCE / "default" / "model.onnx", ScoringSettings.defaults(embeddings=True))


def test_explained_predictions_keep_their_drivers_last_and_the_same_with_embeddings(
    trained_run: Path, tiny_world: tuple[Path, Path]
) -> None:
    events, customers = tiny_world
    explain = {"only": "risk_decile<=1"}
    plain = Predictor(trained_run).explaining(explain).score(events, TINY_CUTOFF, customers).predictions
    embedded = (
        Predictor(trained_run, ScoringSettings.defaults(embeddings=True))
        .explaining(explain)
        .score(events, TINY_CUTOFF, customers)
        .predictions
    )
    added = [c for c in embedded.columns if c not in plain.columns]
    assert added and all(c.startswith("embedding_") for c in added)
    drivers = list(plain.columns[list(plain.columns).index("explained") :])
    assert list(embedded.columns[-len(drivers) :]) == drivers
    pd.testing.assert_frame_equal(embedded[plain.columns], plain, check_exact=True)
