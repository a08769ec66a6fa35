"""The notebook path: train and predict on DataFrames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from churnformer.api import predict, train
from tests.conftest import TINY_CUTOFF


def test_train_and_predict_on_dataframes(tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events = pd.read_csv(tiny_world[0], dtype={"customer_id": str})
    customers = pd.read_csv(tiny_world[1], dtype={"customer_id": str})
    run = train(
        events,
        cutoff=TINY_CUTOFF,
        horizon_days=60,
        customers=customers,
        output_dir=tmp_path / "run",
        overrides=[
            "trainer.max_epochs=1",
            "model.network.d_model=16",
            "model.network.n_layers=1",
            "model.network.n_heads=2",
            "trainer.enable_progress_bar=false",
        ],
    )
    assert run.model_path.is_file()
    assert 0 <= run.metrics["churn/auroc/val"] <= 1
    scores = predict(run.model_path, events, cutoff=TINY_CUTOFF, customers=customers)
    before = events[pd.to_datetime(events["timestamp"]) < pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1)]
    assert set(scores["customer_id"]) == set(before["customer_id"])
    assert scores["churn_probability"].between(0, 1).all()
