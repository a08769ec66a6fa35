"""Offline evaluation: metrics on hand-computable cases and against torchmetrics, joins, reports, config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchmetrics.classification import BinaryAUROC, BinaryAveragePrecision, BinaryCalibrationError
from torchmetrics.regression import SpearmanCorrCoef

from churnformer.errors import InputError
from churnformer.evaluation.job import run_evaluation
from churnformer.evaluation.metrics import (
    aggregate_error,
    average_precision,
    average_ranks,
    concordance_index,
    cumulative_gains,
    decile_mape,
    expected_calibration_error,
    integrated_brier_score,
    log_loss,
    normalized_gini,
    roc_auc,
    spearman,
)
from churnformer.evaluation.report import evaluate
from churnformer.training.metrics import NumpyMetric

METRIC_KEYS = {
    "churn_auc",
    "churn_pr_auc",
    "churn_brier",
    "churn_log_loss",
    "churn_ece",
    "churn_rate",
    "spend_mae",
    "spend_rmse",
    "spend_gini",
    "spend_spearman",
    "spend_decile_mape",
    "spend_aggregate_error",
    "n_customers",
}
FIGURES = ("churn_calibration", "churn_roc", "churn_deciles", "spend_deciles", "cumulative_gains")


def frames(n: int = 20, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and labels of the same ``n`` customers, in different row orders."""
    rng = np.random.default_rng(seed)
    ids = [f"c{i:03d}" for i in range(n)]
    predictions = pd.DataFrame(
        {"customer_id": ids, "churn_probability": rng.uniform(size=n), "expected_spend": rng.gamma(2.0, 10.0, n)}
    )
    labels = pd.DataFrame(
        {"customer_id": ids, "churn": (rng.uniform(size=n) < 0.4).astype(float), "spend": rng.gamma(1.0, 10.0, n)}
    )
    return predictions, labels.iloc[::-1].reset_index(drop=True)


# --- hand-computable cases ------------------------------------------------------------------------------------


def test_average_ranks_share_the_mean_rank_of_ties() -> None:
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


def test_gini_is_one_for_the_perfect_ranking_negative_reversed_and_zero_for_constant_scores() -> None:
    actual = np.array([0.0, 0.0, 1.0, 3.0, 10.0])
    assert normalized_gini(actual, actual * 2 + 1) == pytest.approx(1.0)
    assert normalized_gini(actual, -actual) < 0
    assert normalized_gini(actual, np.ones(5)) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(normalized_gini(np.zeros(5), np.arange(5.0)))


def test_cumulative_gains_average_over_tied_scores() -> None:
    gains = cumulative_gains(np.array([4.0, 0.0, 0.0, 4.0]), np.array([1.0, 1.0, 0.0, 0.0]))
    # first two customers tie: each is expected to hold half of their 4; the last two likewise
    np.testing.assert_allclose(gains, [0.25, 0.5, 0.75, 1.0])


def test_auc_is_one_half_for_constant_scores_and_counts_tied_pairs_as_half() -> None:
    label = np.array([0, 1, 0, 1, 1])
    assert roc_auc(label, np.full(5, 0.3)) == 0.5
    assert roc_auc(label, np.array([0.1, 0.9, 0.2, 0.8, 0.7])) == 1.0
    # positives 0.5, 0.9 vs negatives 0.5, 0.1: pairs won 1 + 1 + 1, tied 1 -> 3.5 / 4
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.5, 0.9, 0.5, 0.1])) == 0.875
    assert math.isnan(roc_auc(np.zeros(4), np.arange(4.0)))


def test_average_precision_groups_tied_scores_into_one_threshold() -> None:
    # thresholds 0.9 (1 of 1 positive), 0.5 (2 of 3, recall 1): 0.5 * 1 + 0.5 * 2/3
    label = np.array([1.0, 0.0, 1.0, 0.0])
    score = np.array([0.9, 0.5, 0.5, 0.1])
    assert average_precision(label, score) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(label[[0, 2, 1, 3]], score[[0, 2, 1, 3]]) == pytest.approx(0.5 + 1 / 3)


def test_ece_is_zero_when_every_bin_is_calibrated_and_weighs_bins_by_count() -> None:
    probability = np.array([0.25] * 4 + [0.5] * 6)
    calibrated = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=float)
    assert expected_calibration_error(probability, calibrated) == pytest.approx(0.0, abs=1e-12)
    never = np.array([0, 0, 0, 0, 1, 1, 1, 0, 0, 0], dtype=float)  # 4 of 10 in a bin observed 0, predicted 0.25
    assert expected_calibration_error(probability, never) == pytest.approx(0.4 * 0.25)


def test_log_loss_clips_certain_mistakes() -> None:
    assert log_loss(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == pytest.approx(-math.log(1e-7) / 2)


def test_aggregate_error_is_exact() -> None:
    assert aggregate_error(np.array([3.0, 3.0, 3.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)
    assert math.isnan(aggregate_error(np.ones(3), np.zeros(3)))


def test_decile_mape_on_a_constructed_case_skips_deciles_without_spend() -> None:
    predicted = np.arange(20.0, 0.0, -1.0)  # deciles (highest first): (20, 19), (18, 17), ..., (2, 1)
    actual = predicted.copy()
    actual[[0, 1]] = [10.0, 29.0]  # mean 19.5 = mean predicted: error 0
    actual[[2, 3]] = [35.0, 35.0]  # mean predicted 17.5 vs 35: error 0.5
    actual[[18, 19]] = 0.0  # no spend: skipped rather than infinite
    assert decile_mape(predicted, actual) == pytest.approx(0.5 / 9)


# --- agreement with torchmetrics ------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Metric `SpearmanCorrcoef` will save")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_agree_with_torchmetrics_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    score = rng.integers(0, 12, n) / 11.0  # 12 distinct values: many ties
    label = (rng.uniform(size=n) < 0.2 + 0.5 * score).astype(float)
    spend = np.round(rng.gamma(1.0, 3.0, n) * (1 - label))  # many zeros and repeated integers
    s, y, a = (torch.tensor(v, dtype=torch.float64) for v in (score, label, spend))
    assert roc_auc(label, score) == pytest.approx(BinaryAUROC()(s, y.long()).item(), abs=1e-6)
    assert average_precision(label, score) == pytest.approx(BinaryAveragePrecision()(s, y.long()).item(), abs=1e-6)
    assert spearman(score, spend) == pytest.approx(SpearmanCorrCoef()(s, a).item(), abs=1e-5)


def test_ece_and_gini_agree_with_the_training_metrics_on_continuous_data() -> None:
    rng = np.random.default_rng(7)
    probability = rng.uniform(size=1000)
    label = (rng.uniform(size=1000) < probability**2).astype(float)
    expected = rng.gamma(2.0, 5.0, 1000)
    spend = expected * rng.lognormal(0.0, 1.0, 1000)
    p, y = torch.tensor(probability), torch.tensor(label)
    reference_ece = BinaryCalibrationError(n_bins=10, norm="l1")(p, y.long()).item()
    assert expected_calibration_error(probability, label) == pytest.approx(reference_ece, abs=1e-5)
    # The training metrics accumulate batches and must give the offline numbers.
    training_gini = NumpyMetric(lambda predicted, actual: normalized_gini(actual, predicted))
    training_ece = NumpyMetric(expected_calibration_error)
    for part in (slice(0, 400), slice(400, None)):
        training_gini.update(torch.tensor(expected[part]), torch.tensor(spend[part]))
        training_ece.update(p[part], y[part])
    assert training_gini.compute().item() == pytest.approx(normalized_gini(spend, expected), abs=1e-6)
    assert training_ece.compute().item() == pytest.approx(expected_calibration_error(probability, label), abs=1e-6)


# --- joining predictions and labels ---------------------------------------------------------------------------


def test_evaluate_joins_on_customer_id_whatever_the_row_order() -> None:
    predictions, labels = frames()
    metrics = evaluate(predictions, labels)
    assert set(metrics) == METRIC_KEYS
    assert metrics["n_customers"] == 20
    aligned = labels.set_index("customer_id").loc[predictions["customer_id"]]
    assert metrics["churn_rate"] == pytest.approx(aligned["churn"].mean())
    expected_mae = np.mean(np.abs(predictions["expected_spend"].to_numpy() - aligned["spend"].to_numpy()))
    assert metrics["spend_mae"] == pytest.approx(expected_mae)


def test_customers_missing_on_either_side_are_named() -> None:
    predictions, labels = frames()
    extra = pd.DataFrame({"customer_id": ["zz1"], "churn": [1.0], "spend": [0.0]})
    with pytest.raises(InputError, match=r"1 labelled customer\(s\) have no prediction \(e.g. 'zz1'\)"):
        evaluate(predictions, pd.concat([labels, extra]))
    with pytest.raises(InputError, match=r"2 predicted customer\(s\) have no label \(e.g. 'c01"):
        evaluate(predictions, labels.iloc[2:])


@pytest.mark.parametrize("side", ["predictions", "labels"])
def test_duplicate_customers_are_refused(side: str) -> None:
    predictions, labels = frames()
    if side == "predictions":
        predictions = pd.concat([predictions, predictions.iloc[[3]]])
    else:
        labels = pd.concat([labels, labels.iloc[[3]]])
    with pytest.raises(InputError, match=rf"{side}: 1 duplicate customer id\(s\)"):
        evaluate(predictions, labels)


def test_probabilities_outside_unit_interval_are_refused() -> None:
    predictions, labels = frames()
    predictions.loc[0, "churn_probability"] = 1.5
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        evaluate(predictions, labels)


# --- report from files ----------------------------------------------------------------------------------------


def check_report(output: Path, paths: dict[str, Path]) -> dict[str, float]:
    assert {"metrics", "report", *FIGURES} <= set(paths)
    for name in FIGURES:
        assert (output / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    report = (output / "report.md").read_text()
    assert "| churn_auc |" in report and "(cumulative_gains.png)" in report
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == METRIC_KEYS
    return metrics


def test_run_evaluation_from_a_labels_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    predictions, labels = frames(n=30)
    predictions.to_parquet(tmp_path / "predictions.parquet", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    output = tmp_path / "report"
    paths = run_evaluation(
        {
            "predictions": str(tmp_path / "predictions.parquet"),
            "labels": str(tmp_path / "labels.csv"),
            "output": str(output),
        }
    )
    metrics = check_report(output, paths)
    assert metrics == pytest.approx(evaluate(predictions, labels))
    printed = capsys.readouterr().out
    assert "churn_auc" in printed and str(output / "report.md") in printed


def write_event_log(path: Path) -> None:
    """12 customers with events before 2024-01-31 (a0..a5 buy in the horizon, b0..b5 do not), one who
    only appears after the cutoff, and a refund that nets a0's horizon spend to 30."""
    rows = []
    for i in range(6):
        rows += [(f"a{i}", "2024-01-10", 20.0), (f"a{i}", "2024-02-15", 10.0 * (i + 1))]
        rows += [(f"b{i}", "2024-01-20", 5.0), (f"b{i}", "2024-06-01", 99.0)]  # after the 60-day horizon
    rows += [("late", "2024-02-10", 50.0), ("a0", "2024-02-20", -5.0), ("a0", "2024-03-01", 25.0)]
    pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"]).to_csv(path, index=False)


def test_run_evaluation_from_events_cutoff_and_horizon(tmp_path: Path) -> None:
    write_event_log(tmp_path / "events.csv")
    ids = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    predictions = pd.DataFrame(
        {"customer_id": ids, "churn_probability": [0.2] * 6 + [0.7] * 6, "expected_spend": [20.0] * 6 + [1.0] * 6}
    )
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    config = {
        "predictions": str(tmp_path / "predictions.csv"),
        "labels": None,
        "events": str(tmp_path / "events.csv"),
        "cutoff": "2024-01-31",
        "horizon_days": 60,
        "columns": None,
        "purchase_types": None,
        "output": str(tmp_path / "evaluation"),
        "debug": False,
    }
    metrics = check_report(tmp_path / "evaluation", run_evaluation(config))
    assert metrics["n_customers"] == 12  # 'late' has no event up to the cutoff
    assert metrics["churn_rate"] == pytest.approx(0.5)
    assert metrics["churn_auc"] == 1.0
    actual_total = 30.0 + sum(10.0 * (i + 1) for i in range(1, 6))
    assert metrics["spend_aggregate_error"] == pytest.approx((6 * 20.0 + 6 * 1.0) / actual_total - 1)


def test_run_evaluation_rejects_a_prediction_outside_the_population(tmp_path: Path) -> None:
    write_event_log(tmp_path / "events.csv")
    ids = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)] + ["late"]
    pd.DataFrame({"customer_id": ids, "churn_probability": 0.5, "expected_spend": 1.0}).to_csv(
        tmp_path / "predictions.csv", index=False
    )
    config = {"predictions": str(tmp_path / "predictions.csv"), "events": str(tmp_path / "events.csv")}
    with pytest.raises(InputError, match=r"have no label \(e.g. 'late'\)"):
        run_evaluation({**config, "cutoff": "2024-01-31", "horizon_days": 60, "output": str(tmp_path / "out")})


def test_run_evaluation_without_labels_says_what_to_pass(tmp_path: Path) -> None:
    predictions, _ = frames()
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(InputError, match=r"pass labels=PATH .* or events=PATH with cutoff=YYYY-MM-DD and horizon_days"):
        run_evaluation({"predictions": str(tmp_path / "predictions.csv"), "events": str(tmp_path / "e.csv")})


# --- over a horizon grid --------------------------------------------------------------------------------------


def brute_force_concordance(survival: np.ndarray, churn: np.ndarray) -> float:
    """Antolini's C over every ordered pair, the definition written out: i's first purchase falls in interval
    k (bought by t_k, not by t_{k-1}), j has none by t_k; concordant when S_i(t_k) < S_j(t_k)."""
    n, horizons = churn.shape
    concordant = comparable = 0.0
    for i in range(n):
        first = next((k for k in range(horizons) if churn[i, k] == 0), None)
        if first is None:
            continue
        for j in range(n):
            if j != i and churn[j, first] == 1:
                comparable += 1
                a, b = survival[i, first], survival[j, first]
                concordant += 1.0 if a < b else 0.5 if a == b else 0.0
    return concordant / comparable


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concordance_index_is_antolinis_over_every_pair(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    first_purchase = rng.integers(0, 4, n)  # interval of the first purchase; 3 = none by the last horizon
    churn = (np.arange(3)[None, :] < first_purchase[:, None]).astype(float)
    survival = np.sort(rng.choice([0.2, 0.5, 0.8, 0.9], size=(n, 3)), axis=1)[:, ::-1]  # ties on purpose
    observed = np.ones_like(churn)
    assert concordance_index(survival, churn, observed) == pytest.approx(brute_force_concordance(survival, churn))
    assert concordance_index(churn * 0.5 + 0.25, churn, observed) == 1.0  # a perfect ordering


def test_concordance_index_leaves_out_unobserved_horizons() -> None:
    churn = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    survival = np.array([[0.1, 0.1], [0.9, 0.9], [0.9, 0.2]])
    # Observed to t_1 only: the pair (customer 2 buys in interval 2, customer 1 never) is not comparable.
    assert concordance_index(survival, churn, np.array([[1.0, 0.0]] * 3)) == 1.0
    survival[2, 1] = 0.95  # now customer 2 looks less likely to buy than customer 1 at t_2
    assert concordance_index(survival, churn, np.ones_like(churn)) == pytest.approx(2 / 3)


def test_integrated_brier_score_weighs_each_horizon_by_the_time_it_stands_for() -> None:
    churn = np.array([[1.0, 0.0], [1.0, 1.0]])
    survival = np.array([[0.5, 0.5], [1.0, 1.0]])
    first, second = np.mean([0.25, 0.0]), np.mean([0.25, 0.0])
    assert integrated_brier_score(survival, churn, np.ones_like(churn), np.array([30.0, 90.0])) == pytest.approx(
        (30 * first + 60 * second) / 90
    )
    assert integrated_brier_score(survival, churn, np.array([[1.0, 0.0]] * 2), np.array([30.0, 90.0])) == first
    assert math.isnan(integrated_brier_score(survival, churn, np.zeros_like(churn), np.array([30.0, 90.0])))


def horizon_predictions(ids: list[str], horizons: list[int]) -> pd.DataFrame:
    """Predictions by horizon for write_event_log's customers: a* (who buy) low S(t), b* high."""
    buyers = np.array([i.startswith("a") for i in ids])
    frame = pd.DataFrame({"customer_id": ids})
    for k, days in enumerate(horizons):
        frame[f"churn_probability_{days}d"] = np.where(buyers, 0.4 - 0.1 * k, 0.9 - 0.1 * k)
        frame[f"expected_spend_{days}d"] = np.where(buyers, 10.0 * (k + 1), 1.0 + k)
    main = horizons[1]
    frame["churn_probability"] = frame[f"churn_probability_{main}d"]
    frame["expected_spend"] = frame[f"expected_spend_{main}d"]
    return frame


def test_run_evaluation_reports_every_observed_horizon_and_the_survival_curve(tmp_path: Path) -> None:
    write_event_log(tmp_path / "events.csv")  # ends 2024-06-01: 200 days after the cutoff is beyond it
    ids = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    horizon_predictions(ids, [30, 60, 200]).to_csv(tmp_path / "predictions.csv", index=False)
    config = {
        "predictions": str(tmp_path / "predictions.csv"),
        "events": str(tmp_path / "events.csv"),
        "cutoff": "2024-01-31",
        "horizon_days": 60,
        "output": str(tmp_path / "evaluation"),
    }
    paths = run_evaluation(config)
    metrics = json.loads(paths["metrics"].read_text())
    assert METRIC_KEYS < set(metrics)
    assert {"churn_auc_30d", "churn_auc_60d", "spend_gini_60d", "survival_c_index"} <= set(metrics)
    assert not any(name.endswith("_200d") for name in metrics)  # the log does not cover it: no labels
    assert metrics["churn_auc_60d"] == metrics["churn_auc"] == 1.0
    # a0..a5 buy on 2024-02-15 (15 days in), so by day 30 every a has bought and no b has: perfect order.
    assert metrics["churn_auc_30d"] == 1.0 and metrics["survival_c_index"] == 1.0
    assert metrics["churn_brier_30d"] == pytest.approx(np.mean([0.4**2] * 6 + [0.1**2] * 6))
    for name in ("horizons_survival_and_spend", "horizons_churn_calibration"):
        assert paths[name].read_bytes().startswith(b"\x89PNG")


def test_a_labels_file_by_horizon_counts_as_observed(tmp_path: Path) -> None:
    predictions, labels = frames(n=30)
    predictions["churn_probability_30d"] = predictions["churn_probability"]
    predictions["expected_spend_30d"] = predictions["expected_spend"]
    labels["churn_30d"], labels["spend_30d"] = labels["churn"], labels["spend"]
    predictions.to_csv(tmp_path / "predictions.csv", index=False)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    files = {name: str(tmp_path / f"{name}.csv") for name in ("predictions", "labels")}
    paths = run_evaluation({**files, "output": str(tmp_path / "r")})
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["churn_auc_30d"] == pytest.approx(metrics["churn_auc"])


def test_run_evaluation_refuses_a_main_horizon_the_log_does_not_cover(tmp_path: Path) -> None:
    write_event_log(tmp_path / "events.csv")
    ids = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)]
    pd.DataFrame({"customer_id": ids, "churn_probability": 0.5, "expected_spend": 1.0}).to_csv(
        tmp_path / "predictions.csv", index=False
    )
    config = {"predictions": str(tmp_path / "predictions.csv"), "events": str(tmp_path / "events.csv")}
    with pytest.raises(InputError, match="the log ends before the 200-day horizon after 2024-01-31"):
        run_evaluation({**config, "cutoff": "2024-01-31", "horizon_days": 200, "output": str(tmp_path / "out")})
