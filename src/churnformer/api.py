"""Python API for notebooks: the same training and scoring jobs as the CLI, on pandas DataFrames.

>>> from churnformer.api import train, predict
>>> run = train(events, cutoff="2024-06-30", horizon_days=90, customers=customers, output_dir="runs/a")
>>> scores = predict(run.model_path, events, cutoff="2024-09-30", customers=customers)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose, initialize_config_module

from churnformer.data.events import ColumnMapping
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings


@dataclass
class TrainedRun:
    run_dir: Path
    metrics: dict[str, float]

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.onnx"


def train(
    events: pd.DataFrame,
    cutoff: str,
    horizon_days: float = 90,
    customers: pd.DataFrame | None = None,
    columns: Mapping[str, str] | None = None,
    output_dir: str | Path = "outputs/api",
    overrides: Sequence[str] = (),
    campaigns: pd.DataFrame | None = None,
) -> TrainedRun:
    """Train on DataFrames; ``columns`` maps your column names (``{"customer_id": "user", ...}``, as
    ``data.columns.*``) and the model keeps the mapping for :func:`predict`; ``overrides`` are the CLI's
    ``key=value`` strings (e.g. ``"trainer.max_epochs=3"``). ``campaigns``: past contacts with a random holdout
    (``data.campaigns``' table), from which the model also learns what contacting each customer changes."""
    from churnformer.training.job import train as run_training  # torch is imported only when training

    output_dir = Path(output_dir).resolve()
    with initialize_config_module("churnformer.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "data=csv",
                "data.events=DataFrame",  # the DataFrames below replace the files
                f"data.cutoff={cutoff}",
                f"data.horizon_days={horizon_days}",
                f"paths.output_dir={output_dir}",
                "predict_after_training=false",
                *(f"data.columns.{key}={name}" for key, name in (columns or {}).items()),
                *overrides,
            ],
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics = run_training(cfg, events=events, customers=customers, campaigns=campaigns)
    return TrainedRun(run_dir=output_dir, metrics=metrics)


def predict(
    model: str | Path,
    events: pd.DataFrame,
    cutoff: str,
    customers: pd.DataFrame | None = None,
    columns: ColumnMapping | Mapping[str, str | None] | None = None,
    discount_rate: float | None = None,
    text_cache: str | Path | None = None,
    explain: bool | Mapping[str, Any] = False,
) -> pd.DataFrame:
    """One row per customer with an event up to ``cutoff``: the predictions of
    :meth:`churnformer.serving.predictor.Predictor.score` (which also gives the rejects and the summary).
    ``discount_rate`` (annual) is that of the ``clv`` column (default: ``clv.discount_rate`` of
    ``conf/serving/predict.yaml``). A model that reads text takes texts from ``text_cache`` when that file exists
    and saves this call's texts there (``text_cache`` of ``churnformer-predict``). ``explain``: True (or some of
    ``explain.*``, e.g. ``{"only": "risk_decile<=2"}``) adds each customer's drivers."""
    changes = {"discount_rate": discount_rate, "text_cache": None if text_cache is None else str(text_cache)}
    settings = ScoringSettings.defaults(progress=False, **{k: v for k, v in changes.items() if v is not None})
    predictor = Predictor(model, settings.explaining(explain))
    predictions = predictor.score(events, cutoff, customers, columns).predictions
    if text_cache is not None and predictor.texts is not None:
        predictor.texts.save(text_cache)
    return predictions
