"""Slice metrics and the model card: per-slice numbers as computed on the slice alone, small slices marked and
kept, and a training run's card whose numbers are its evaluation's, inside the model file too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnformer.data.events import CUSTOMER_ID
from churnformer.errors import InputError
from churnformer.evaluation.job import run_evaluation
from churnformer.evaluation.metrics import expected_calibration_error, normalized_gini, roc_auc
from churnformer.evaluation.outcomes import TRACKED
from churnformer.evaluation.report import evaluate_files
from churnformer.evaluation.slices import MISSING, slice_metrics
from churnformer.model_card import CARD_METRICS, summary_line
from churnformer.schema import CHURN, CHURN_PROBABILITY, EXPECTED_SPEND, RUN_EVALUATION, RUN_MODEL_CARD, SEGMENT, SPEND
from churnformer.serving.output import write_result
from churnformer.serving.predictor import Predictor
from tests.conftest import TINY_CUTOFF


def _joined(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    probability = rng.random(n)
    return pd.DataFrame(
        {
            CUSTOMER_ID: np.arange(n),
            CHURN_PROBABILITY: probability,
            CHURN: (rng.random(n) < probability).astype(float),
            EXPECTED_SPEND: rng.gamma(2.0, 50.0, n),
            SPEND: rng.gamma(2.0, 50.0, n) * (rng.random(n) < 0.7),
        }
    )


def test_a_slice_has_the_metrics_of_its_customers_alone_and_small_ones_are_marked() -> None:
    joined = _joined()
    region = np.where(joined[CUSTOMER_ID] < 200, "north", "south")
    region[:10] = "east"
    customers = pd.DataFrame({CUSTOMER_ID: joined[CUSTOMER_ID][5:], "region": region[5:]})  # 5 not in the table
    segments = joined[[CUSTOMER_ID]].assign(**{SEGMENT: "low value loyal"})
    slices = slice_metrics(joined, customers, segments, min_customers=50)
    regions = slices[slices["attribute"] == "region"].set_index("value")
    assert list(regions.index) == [MISSING, "east", "north", "south"]
    assert regions.loc[MISSING, "n_customers"] == 5 and regions.loc["east", "n_customers"] == 5
    assert regions.loc["east", "small"] and not regions.loc["north", "small"]
    north = joined[region == "north"].iloc[:]
    north = north[north[CUSTOMER_ID] >= 5]
    assert regions.loc["north", "churn_auc"] == pytest.approx(
        roc_auc(north[CHURN].to_numpy(), north[CHURN_PROBABILITY].to_numpy())
    )
    assert regions.loc["north", "churn_ece"] == pytest.approx(
        expected_calibration_error(north[CHURN_PROBABILITY].to_numpy(), north[CHURN].to_numpy())
    )
    assert regions.loc["north", "spend_gini"] == pytest.approx(
        normalized_gini(north[SPEND].to_numpy(), north[EXPECTED_SPEND].to_numpy())
    )
    assert slices[slices["attribute"] == SEGMENT]["n_customers"].tolist() == [len(joined)]


def test_a_numeric_attribute_with_many_values_is_sliced_into_quartiles() -> None:
    joined = _joined()
    customers = pd.DataFrame({CUSTOMER_ID: joined[CUSTOMER_ID], "age": np.arange(len(joined)) % 80 + 18})
    slices = slice_metrics(joined, customers)
    assert len(slices) == 4 and slices["n_customers"].sum() == len(joined)


def test_the_training_run_writes_a_model_card_whose_numbers_are_its_evaluation(trained_run: Path) -> None:
    metrics = json.loads((trained_run / RUN_EVALUATION / "metrics.json").read_text())
    card = Predictor(trained_run).card
    assert card is not None
    for name in CARD_METRICS:
        if metrics.get(name) is None:
            assert name not in card["validation"]
        else:
            assert card["validation"][name] == metrics[name]
    slices = pd.read_csv(trained_run / RUN_EVALUATION / "slices.csv", dtype={"value": str})
    assert [(s["attribute"], s["value"], s["n_customers"]) for s in card["slices"]] == list(
        slices[["attribute", "value", "n_customers"]].itertuples(index=False, name=None)
    )
    assert {"region", "age_band", "signup_channel", SEGMENT} <= set(slices["attribute"])
    assert card["data"]["validation_customers"] == int(slices[slices["attribute"] == "region"]["n_customers"].sum())
    assert card["task"]["cutoff"] == TINY_CUTOFF and card["task"]["horizons_dropped"] == [365.0]
    markdown = (trained_run / RUN_MODEL_CARD).read_text()
    assert summary_line(card) in markdown and f"{metrics['churn_auc']:.4f}" in markdown
    assert f"churn AUC {metrics['churn_auc']:.3f}" in summary_line(card)
    assert any("365" in limit for limit in card["limits"])
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in card["validation"].values())


def test_evaluate_reports_slices_by_the_customers_table(
    trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    events, customers = tiny_world
    scored = Predictor(trained_run).score(events, "2023-06-30", customers).predictions
    scored.to_parquet(tmp_path / "scores.parquet")
    paths = evaluate_files(
        tmp_path / "scores.parquet",
        events=events,
        cutoff="2023-06-30",
        horizon_days=60,
        output_dir=tmp_path / "evaluation",
        customers=customers,
    )
    slices = pd.read_csv(paths["slices"])
    assert set(slices["attribute"]) == {"region", "age_band", "signup_channel", SEGMENT}
    assert slices.groupby("attribute")["n_customers"].sum().eq(len(scored)).all()
    assert "## Slices" in paths["report"].read_text()


@pytest.mark.slow  # five evaluations with their figures
def test_past_runs_make_one_table_whose_rows_are_each_runs_own_evaluation(
    trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    events, customers = tiny_world
    runs = tmp_path / "runs"
    predictor = Predictor(trained_run)
    for cutoff in ("2023-06-30", "2023-08-31", "2023-11-30"):  # the last: its horizon not yet over
        write_result(predictor.score(events, cutoff, customers), runs / f"scores-{cutoff}.parquet")
    paths = run_evaluation({"predictions": str(runs), "events": str(events), "output": str(tmp_path / "outcomes")})
    table = pd.read_csv(paths["outcomes"])
    assert table["cutoff"].tolist() == ["2023-06-30", "2023-08-31", "2023-11-30"]
    assert table["status"].tolist() == ["evaluated"] * 2 + ["pending"] and table["horizon_days"].eq(60).all()
    for row in table[table["status"] == "evaluated"].itertuples():
        alone = evaluate_files(
            runs / f"scores-{row.cutoff}.parquet",
            events=events,
            cutoff=row.cutoff,
            horizon_days=60,
            output_dir=tmp_path / f"alone-{row.cutoff}",
        )
        metrics = json.loads(alone["metrics"].read_text())
        for name in TRACKED:
            expected = metrics.get(name)
            value = getattr(row, name)
            assert math.isnan(value) if expected is None else value == pytest.approx(expected, rel=1e-12), name
    assert (tmp_path / "outcomes" / "outcomes.png").stat().st_size > 0


def test_outcome_tracking_names_what_it_lacks(trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, customers = tiny_world
    scored = Predictor(trained_run).score(events, "2023-06-30", customers)
    scored.predictions.to_parquet(tmp_path / "bare.parquet")  # no summary beside it
    with pytest.raises(InputError, match=r"no bare\.parquet\.summary\.json beside it"):
        run_evaluation({"predictions": [str(tmp_path / "bare.parquet")], "events": str(events)})
    with pytest.raises(InputError, match="drop labels= and cutoff="):
        run_evaluation({"predictions": [str(tmp_path / "bare.parquet")], "events": str(events), "cutoff": "2023-06-30"})
