"""Explanations: what an effect is (the score without the group, exactly), Shapley values that add up,
rankings, identical results across shards and spill partitions, scores untouched, the CLI switch."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from churnformer.cli import explain_arguments
from churnformer.data.events import load_customers, load_events
from churnformer.data.sequences import empty_histories
from churnformer.errors import ConfigError
from churnformer.serving.explain import (
    CHURN_EFFECT,
    EXPLAINED,
    GROUP,
    SPEND_EFFECT,
    ExplainSettings,
    Selection,
    _shapley_weights,
    driver_groups,
    top_drivers,
)
from churnformer.serving.job import score_log
from churnformer.serving.partition import Shard
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from tests.conftest import TINY_CUTOFF, run_in_process, tightest_budget_mb, with_settings


@pytest.fixture(scope="module")
def model(trained_run: Path) -> Predictor:
    return Predictor(trained_run / "model.onnx", ScoringSettings.defaults(progress=False))


@pytest.fixture(scope="module")
def frames(tiny_world: tuple[Path, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    events, customers = tiny_world
    return load_events(events), load_customers(customers)


@pytest.fixture(scope="module")
def explained(model: Predictor, frames):
    events, customers = frames
    return model.explaining(True).score(events, TINY_CUTOFF, customers)


# --- what an effect is ----------------------------------------------------------------------------------------


def test_groups_are_the_event_types_the_windows_and_the_attributes(model: Predictor) -> None:
    names = [group.name for group in driver_groups(model.featurizer, ExplainSettings())]
    assert {"purchase", "visit", "complaint", "refund", "support_ticket", "other event_type"} <= set(names)
    assert {"last 30 days", "older than 180 days", "region", "age_band", "signup_channel"} <= set(names)
    extra = ExplainSettings(groups=[{"column": "channel"}, {"name": "last week", "days": [0, 7]}])
    assert {"channel=web", "channel=app", "channel=other", "last week"} <= {
        group.name for group in driver_groups(model.featurizer, extra)
    }


def test_an_occlusion_effect_is_the_score_minus_the_score_without_the_group(model, frames, explained) -> None:
    """Removing the events of a group (or hiding an attribute) by hand and scoring again gives exactly the
    effect the explanation reports."""
    events, customers = frames
    effects = explained.effects
    full = explained.predictions.set_index("customer_id")
    for group in ("complaint", "last 30 days", "age_band"):
        rows = effects.loc[effects[GROUP] == group].head(5)
        assert len(rows), group
        ids = rows["customer_id"].to_numpy()
        mine = events.loc[events["customer_id"].isin(ids)]
        static = customers.loc[customers["customer_id"].isin(ids)].copy()
        if group == "complaint":
            mine = mine.loc[mine["event_type"] != "complaint"]
        elif group == "last 30 days":
            days_before = (pd.Timestamp(TINY_CUTOFF) + pd.Timedelta(days=1) - mine["timestamp"]).dt.total_seconds()
            mine = mine.loc[~(days_before / 86_400 < 30)]
        else:
            static["age_band"] = None
        without = model.score(mine, TINY_CUTOFF, static).predictions.set_index("customer_id").loc[ids]
        expected_churn = full.loc[ids, "churn_probability"].to_numpy(np.float64) - without["churn_probability"]
        expected_spend = full.loc[ids, "expected_spend"].to_numpy(np.float64) - without["expected_spend"]
        np.testing.assert_array_equal(rows[CHURN_EFFECT].to_numpy(), expected_churn.to_numpy(np.float64))
        np.testing.assert_array_equal(rows[SPEND_EFFECT].to_numpy(), expected_spend.to_numpy(np.float64))


def test_only_groups_a_customer_has_are_explained(frames, explained) -> None:
    events, _ = frames
    complained = set(events.loc[events["event_type"] == "complaint", "customer_id"])
    effects = explained.effects
    assert set(effects.loc[effects[GROUP] == "complaint", "customer_id"]) <= complained
    assert effects.groupby("customer_id")[GROUP].apply(lambda g: g.is_unique).all()


def test_scores_are_untouched_and_drivers_come_last(model, frames, explained) -> None:
    events, customers = frames
    plain = model.score(events, TINY_CUTOFF, customers).predictions
    pd.testing.assert_frame_equal(explained.predictions[list(plain.columns)], plain, check_exact=True)
    extra = list(explained.predictions.columns[len(plain.columns) :])
    assert extra[0] == EXPLAINED and extra[1:3] == ["risk_driver_1", "risk_driver_1_effect"]
    assert explained.predictions[EXPLAINED].all()
    assert explained.summary.customers_explained == len(plain)


# --- rankings -------------------------------------------------------------------------------------------------


def test_drivers_are_the_groups_that_raise_the_score_most() -> None:
    effects = pd.DataFrame(
        {
            "customer_id": ["a", "a", "a", "a", "b"],
            GROUP: ["visit", "complaint", "refund", "purchase", "visit"],
            CHURN_EFFECT: [0.01, 0.30, 0.30, -0.5, -0.2],
            SPEND_EFFECT: [5.0, -1.0, 0.0, 40.0, 2.0],
        }
    )
    drivers = top_drivers(effects, np.array(["a", "b", "c"]), np.array(["a", "b"]), top_k=3).set_index("customer_id")
    assert list(drivers.loc["a", ["risk_driver_1", "risk_driver_2", "risk_driver_3"]]) == [
        "complaint",
        "refund",
        "visit",
    ]
    assert drivers.loc["a", "risk_driver_1_effect"] == 0.30
    assert list(drivers.loc["a", ["value_driver_1", "value_driver_2", "value_driver_3"]]) == ["purchase", "visit", ""]
    assert math.isnan(drivers.loc["a", "value_driver_3_effect"])
    assert drivers.loc["b", "risk_driver_1"] == "" and drivers.loc["b", "value_driver_1"] == "visit"
    assert list(drivers[EXPLAINED]) == [True, True, False]


@pytest.mark.parametrize(
    ("text", "column", "value"),
    [("segment:high value at risk", "segment", "high value at risk"), ("risk_decile<=2", "churn_risk_decile", 2)],
)
def test_only_parses_a_segment_or_a_decile(text: str, column: str, value: object) -> None:
    assert Selection.parse(text) == Selection(column, value)


@pytest.mark.parametrize("text", ["segment:vip", "risk_decile<=0", "risk_decile<11", "churn>0.5"])
def test_only_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match=r"explain\.only="):
        Selection.parse(text)


def test_explaining_only_the_riskiest_customers(model, frames) -> None:
    events, customers = frames
    result = model.explaining({"only": "risk_decile<=2"}).score(events, TINY_CUTOFF, customers)
    predictions = result.predictions
    assert (predictions[EXPLAINED] == (predictions["churn_risk_decile"] <= 2)).all()
    assert set(result.effects["customer_id"]) == set(predictions.loc[predictions[EXPLAINED], "customer_id"])
    assert (predictions.loc[~predictions[EXPLAINED], "risk_driver_1"] == "").all()


# --- Shapley values ---------------------------------------------------------------------------------------------


def brute_force_shapley(value, n: int) -> np.ndarray:
    """The definition: phi_i = sum over coalitions S without i of |S|!(n-|S|-1)!/n! (v(S + i) - v(S))."""
    phi = np.zeros(n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for size in range(n):
            for subset in combinations(others, size):
                weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[i] += weight * (value({*subset, i}) - value(set(subset)))
    return phi


@pytest.mark.parametrize("n", [1, 3, 6])
def test_exact_shapley_weights_match_the_definition(n: int) -> None:
    groups = [2 * g + 1 for g in range(n)]  # any bits
    present = sum(1 << g for g in groups)
    rng = np.random.default_rng(n)
    table = {}

    def value(kept: set[int]) -> float:
        key = frozenset(kept)
        return table.setdefault(key, float(rng.normal()) + 0.3 * len(kept) ** 2)

    masks, weights = _shapley_weights(groups, present, "c1", ExplainSettings(method="shapley"))
    # A mask lists the groups removed; the value function takes the positions kept.
    values = np.array([value({j for j, g in enumerate(groups) if not (mask >> g) & 1}) for mask in masks])
    np.testing.assert_allclose(weights.T @ values, brute_force_shapley(value, n), atol=1e-12)
    assert len(masks) == 2**n


def test_sampled_shapley_values_add_up_and_depend_only_on_the_customer() -> None:
    groups = list(range(9))
    present = (1 << 9) - 1
    settings = ExplainSettings(method="shapley", permutations=8)
    masks, weights = _shapley_weights(groups, present, "c1", settings)
    values = np.random.default_rng(0).normal(size=len(masks))
    values[masks.index(0)], values[masks.index(present)] = 5.0, 2.0  # f(x) and f(empty)
    assert (weights.T @ values).sum() == pytest.approx(5.0 - 2.0, abs=1e-12)
    again, _ = _shapley_weights(groups, present, "c1", settings)
    other, _ = _shapley_weights(groups, present, "c2", settings)
    assert again == masks and other != masks


def test_shapley_values_add_up_to_the_score_minus_an_empty_history(model, frames) -> None:
    events, customers = frames
    ids = np.sort(events["customer_id"].unique())[:25]
    mine = events.loc[events["customer_id"].isin(ids)]
    result = model.explaining({"method": "shapley", "permutations": 4}).score(mine, TINY_CUTOFF, customers)
    totals = result.effects.groupby("customer_id")[[CHURN_EFFECT, SPEND_EFFECT]].sum()
    scored = result.predictions.set_index("customer_id").loc[totals.index]
    blank = customers.loc[customers["customer_id"].isin(totals.index)].copy()
    blank.loc[:, [c for c in blank.columns if c != "customer_id"]] = None  # every attribute removed
    baseline = model.score_sequences(empty_histories(totals.index.to_numpy(), model.featurizer, blank))
    baseline = baseline.set_index("customer_id").loc[totals.index]
    for effect, column in ((CHURN_EFFECT, "churn_probability"), (SPEND_EFFECT, "expected_spend")):
        expected = scored[column].to_numpy(np.float64) - baseline[column].to_numpy(np.float64)
        np.testing.assert_allclose(totals[effect].to_numpy(), expected, atol=1e-5 * max(1.0, np.abs(expected).max()))


def test_a_training_run_reports_the_validation_drivers(trained_run: Path) -> None:
    """explain_validation (on by default, and in the fixture): the table in the report, the figure in
    TensorBoard."""
    drivers = pd.read_csv(trained_run / "evaluation" / "drivers.csv")
    assert {"complaint", "last 30 days", "age_band"} <= set(drivers[GROUP])
    assert (drivers["mean_abs_churn_effect"] >= 0).all() and drivers["customers_with_group"].gt(0).all()
    board = EventMultiplexer(size_guidance={"images": 0})
    board.AddRunsFromDirectory(str(trained_run / "tensorboard"))
    board.Reload()
    assert "validation_best/calibrated/drivers" in board.Runs()["."]["images"]


# --- batch jobs -------------------------------------------------------------------------------------------------


def test_explanations_are_identical_across_shards_and_spill_partitions(model, tiny_world) -> None:
    events, customers = tiny_world
    explaining = model.explaining(ExplainSettings())
    full = score_log(explaining, events, TINY_CUTOFF, customers)
    shards = [score_log(explaining, events, TINY_CUTOFF, customers, shard=Shard(i, 2)) for i in range(2)]
    tight = with_settings(explaining, memory_budget_mb=tightest_budget_mb(model.streams))
    spilled = score_log(tight, events, TINY_CUTOFF, customers, chunk_rows=1000)
    assert spilled.summary.partitions > 1
    joined = pd.concat([s.predictions for s in shards]).sort_values("customer_id", ignore_index=True)
    joined_effects = pd.concat([s.effects for s in shards]).sort_values("customer_id", kind="stable", ignore_index=True)
    for other, other_effects in ((joined, joined_effects), (spilled.predictions, spilled.effects)):
        pd.testing.assert_frame_equal(other, full.predictions, check_exact=True)
        pd.testing.assert_frame_equal(other_effects, full.effects, check_exact=True)


def test_predict_cli_explain_switch_writes_drivers(trained_run: Path, tiny_world, tmp_path: Path) -> None:
    events, customers = tiny_world
    output = tmp_path / "scores.parquet"
    finished = run_in_process(
        "churnformer-predict",
        f"model={trained_run}",
        f"events={events}",
        f"customers={customers}",
        f"cutoff={TINY_CUTOFF}",
        f"output={output}",
        "progress=false",
        "explain=true",
        "explain.only=risk_decile<=3",
        "explain.top_k=2",
    )
    assert finished.code == 0, finished.err
    scores = pd.read_parquet(output)
    assert list(scores.columns[-9:]) == [
        EXPLAINED,
        "risk_driver_1",
        "risk_driver_1_effect",
        "risk_driver_2",
        "risk_driver_2_effect",
        "value_driver_1",
        "value_driver_1_effect",
        "value_driver_2",
        "value_driver_2_effect",
    ]
    drivers = pd.read_parquet(output.with_name("scores.parquet.drivers.parquet"))
    assert set(drivers["customer_id"]) == set(scores.loc[scores[EXPLAINED], "customer_id"])
    assert "explained in" in finished.out


def test_explain_arguments_reach_hydra_as_the_user_wrote_them() -> None:
    """``explain=true`` is the switch, and a selection with ``<`` or spaces is one string to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    written = ["explain=true", "explain.only=segment:high value at risk", "explain.only=risk_decile<=2"]
    parsed = OverridesParser.create().parse_overrides(explain_arguments(written))
    assert [(o.key_or_group, o.value()) for o in parsed] == [
        ("explain.enabled", True),
        ("explain.only", "segment:high value at risk"),
        ("explain.only", "risk_decile<=2"),
    ]


def test_predict_cli_refuses_a_bad_selection_in_one_line(trained_run: Path, tiny_world, tmp_path: Path) -> None:
    finished = run_in_process(
        "churnformer-predict",
        f"model={trained_run}",
        f"events={tiny_world[0]}",
        f"cutoff={TINY_CUTOFF}",
        f"output={tmp_path / 'scores.parquet'}",
        "explain=true",
        "explain.only=segment:vip",
    )
    assert finished.code == 2
    assert finished.error_line.startswith("error: explain.only=segment:vip: the segments are high value at risk")
