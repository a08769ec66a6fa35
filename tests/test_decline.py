"""``churn_definition=decline`` end to end: a model trained on declines scores P(decline) as its churn
probability, keeps P(no purchase) beside it for what is derived from the survival curve, records the
definition in its model file, and is evaluated against decline labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import load_events
from churnformer.data.labels import DECLINE_DEFINITION, ChurnDefinition, LabelSpec, make_labels
from churnformer.data.window import Window
from churnformer.evaluation.job import run_evaluation
from churnformer.schema import (
    CHURN_PROBABILITY,
    EXPECTED_DAYS_TO_NEXT_PURCHASE,
    NO_PURCHASE_PROBABILITY,
    RUN_MODEL,
    RUN_PREDICTIONS,
    per_horizon,
)
from churnformer.serving.predictor import Predictor
from tests.conftest import TINY_CUTOFF, TRAIN_OVERRIDES, Finished, run_in_process, run_predict

THRESHOLD = 0.4
DECLINE = ChurnDefinition(DECLINE_DEFINITION, THRESHOLD)


@pytest.fixture(scope="module")
def decline_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Finished]:
    """The tiny world trained by churnformer-train's entry point, in this process, with the decline definition
    (scoring after training on); tests/test_cli.py runs the console script itself."""
    events, customers = tiny_world
    run_dir = tmp_path_factory.mktemp("decline-run")
    result = run_in_process(
        "churnformer-train",
        *TRAIN_OVERRIDES,
        "churn_definition=decline",
        f"decline_threshold={THRESHOLD}",
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false",
    )
    assert result.code == 0, result.err[-5000:]
    return run_dir, result


def horizons_of(predictions: pd.DataFrame) -> list[float]:
    prefix = f"{NO_PURCHASE_PROBABILITY}_"
    return [float(c.removeprefix(prefix).removesuffix("d")) for c in predictions.columns if c.startswith(prefix)]


def test_a_decline_model_scores_declines_beside_its_survival_curve(
    decline_run: tuple[Path, Finished], tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir, result = decline_run
    assert f"churn ({DECLINE}) AUROC" in result.stdout
    assert ChurnDefinition.of_metadata(Predictor(run_dir / RUN_MODEL).metadata) == DECLINE
    predictions = pd.read_parquet(run_dir / RUN_PREDICTIONS)
    horizons = horizons_of(predictions)
    assert len(horizons) >= 2 and 60.0 in horizons
    declines = predictions[[per_horizon(CHURN_PROBABILITY, h) for h in horizons]].to_numpy(np.float64)
    survival = predictions[[per_horizon(NO_PURCHASE_PROBABILITY, h) for h in horizons]].to_numpy(np.float64)
    assert ((declines > 0) & (declines < 1)).all()
    assert (np.diff(survival, axis=1) <= 1e-6).all()  # S(t) never rises
    assert not np.allclose(declines, survival, atol=0.01)  # two different questions
    np.testing.assert_array_equal(predictions[CHURN_PROBABILITY], predictions[per_horizon(CHURN_PROBABILITY, 60)])
    # Days to the next purchase come from the survival curve, not from the declines.
    curve = np.concatenate([np.ones((len(predictions), 1)), survival], axis=1)
    widths = np.diff(np.concatenate([[0.0], horizons]))
    area = ((curve[:, 1:] + curve[:, :-1]) / 2) @ widths
    np.testing.assert_allclose(predictions[EXPECTED_DAYS_TO_NEXT_PURCHASE], area, rtol=1e-5)
    # churnformer-predict on the shipped model gives the run's own predictions.
    events, customers = tiny_world
    output = tmp_path / "scores.parquet"
    run_predict(run_dir / RUN_MODEL, events, output, f"customers={customers}")
    pd.testing.assert_frame_equal(pd.read_parquet(output), predictions)


def test_a_decline_score_does_not_depend_on_the_batch_it_is_in(
    decline_run: tuple[Path, Finished], world_events: pd.DataFrame
) -> None:
    """As for no-purchase models (tests/test_scoring.py): thousands of copies of one customer fill batches of
    every size and position, and every copy scores bit for bit the same, the decline outputs included."""
    run_dir, _ = decline_run
    events = world_events.assign(timestamp=pd.to_datetime(world_events["timestamp"]))
    customer = events.loc[events["timestamp"] <= TINY_CUTOFF, "customer_id"].value_counts().index[0]
    mine = events.loc[events["customer_id"] == customer]
    copies = pd.concat([mine.assign(customer_id=f"copy{i:05d}") for i in range(6000)], ignore_index=True)
    numeric = Predictor(run_dir / RUN_MODEL).score(copies, TINY_CUTOFF).predictions.select_dtypes("number")
    assert (numeric.nunique() == 1).all(), numeric.nunique()[numeric.nunique() > 1].to_dict()


def test_churnformer_evaluate_judges_a_decline_model_against_decline_labels(
    decline_run: tuple[Path, Finished],
    tiny_world: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    run_dir, _ = decline_run
    events, _ = tiny_world
    config = {
        "predictions": str(run_dir / RUN_PREDICTIONS),
        "events": str(events),
        "cutoff": TINY_CUTOFF,
        "horizon_days": 60,
        "churn_definition": DECLINE_DEFINITION,
        "decline_threshold": THRESHOLD,
        "output": str(tmp_path / "evaluation"),
    }
    run_evaluation(config)
    metrics = pd.read_json(tmp_path / "evaluation" / "metrics.json", typ="series")
    log = load_events(pd.read_csv(events))
    window = Window.from_cutoff(TINY_CUTOFF, 60)
    population = log.loc[log["timestamp"] < window.feature_end, "customer_id"].unique()
    assert metrics["n_customers"] == len(population)
    declined = make_labels(log, window, population, LabelSpec(churn=DECLINE))["churn"]
    assert metrics["churn_rate"] == pytest.approx(float(declined.mean()))
    no_purchase = make_labels(log, window, population)["churn"]
    assert float(declined.mean()) != pytest.approx(float(no_purchase.mean()))
    assert 0.5 < metrics["survival_c_index"] <= 1.0  # S(t) judged against no-purchase labels
    assert "decline model" not in caplog.text
    # The same predictions against labels of the default definition: allowed, with a warning that says how.
    run_evaluation({**config, "churn_definition": "no_purchase", "output": str(tmp_path / "other")})
    assert "pass churn_definition=decline" in caplog.text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "churn_definition=lapse",
            "Could not find 'churn_definition/lapse'; Available options in 'churn_definition': ",
        ),
        ("decline_threshold=half", "decline_threshold='half'"),
    ],
)
def test_a_wrong_churn_definition_is_one_error_line(
    tiny_world: tuple[Path, Path], tmp_path: Path, override: str, message: str
) -> None:
    events, _ = tiny_world
    run = f"hydra.run.dir={tmp_path / 'run'}"
    finished = run_in_process("churnformer-train", *TRAIN_OVERRIDES, f"data.events={events}", run, override)
    assert message in finished.error_line


def test_training_without_the_setting_predicts_no_purchase(trained_run: Path) -> None:
    predictions = pd.read_parquet(trained_run / RUN_PREDICTIONS)
    assert not horizons_of(predictions)
    assert ChurnDefinition.of_metadata(Predictor(trained_run / RUN_MODEL).metadata) == ChurnDefinition()
