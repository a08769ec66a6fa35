"""Baselines: output contract, no leakage, determinism, the derived BG/NBD P0, and exact RFM features."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from churnformer.baselines import BASELINE_COLUMNS, history, scored_ids
from churnformer.data.synthetic import SyntheticWorldConfig, generate_world
from churnformer.data.window import Window

CUTOFF, HORIZON_DAYS = "2023-09-30", 90
GHOST = "NO_SUCH_CUSTOMER"


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, Window, np.ndarray, np.ndarray]:
    """600 synthetic customers split in halves; the test half also holds a late joiner and an unknown id."""
    events, _ = generate_world(SyntheticWorldConfig.with_defaults(n_customers=600, n_weeks=60, seed=0))
    window = Window.from_cutoff(CUTOFF, HORIZON_DAYS)
    late = pd.DataFrame(
        {"customer_id": ["LATE"], "timestamp": [window.feature_end], "amount": [12.0], "event_type": ["purchase"]}
    )
    events = pd.concat([events, late], ignore_index=True)
    ids = np.sort(events["customer_id"].unique())
    ids = ids[ids != "LATE"]
    order = np.random.default_rng(0).permutation(len(ids))
    train, test = ids[order[: len(ids) // 2]], ids[order[len(ids) // 2 :]]
    return events, window, train, np.concatenate([test, ["LATE", GHOST]])


def _btyd() -> Callable[..., pd.DataFrame]:
    pytest.importorskip("lifetimes")
    from churnformer.baselines.btyd import fit_predict_btyd

    return fit_predict_btyd


def _gbm() -> Callable[..., pd.DataFrame]:
    pytest.importorskip("lightgbm")
    from functools import partial

    from churnformer.baselines.gbm import Boosting, fit_predict_gbm

    # One thread: OpenMP threads spin-wait and crawl when the shared cores are oversubscribed.
    return partial(fit_predict_gbm, boosting=Boosting(num_threads=1))


BASELINES = {"btyd": _btyd, "gbm": _gbm}


@pytest.fixture(scope="module", params=sorted(BASELINES))
def baseline(request: pytest.FixtureRequest, world) -> tuple[Callable[..., pd.DataFrame], pd.DataFrame]:
    """Each baseline with its predictions on the world, computed once."""
    fit_predict = BASELINES[request.param]()
    events, window, train, test = world
    return fit_predict, fit_predict(events, window, train, test, seed=0)


def test_output_contract(world, baseline) -> None:
    events, window, _, test = world
    _, predictions = baseline
    assert tuple(predictions.columns[:3]) == BASELINE_COLUMNS
    extra = list(predictions.columns[3:])  # BG/NBD also counts the purchases it expects
    assert extra in ([], ["expected_purchases"])
    if extra:
        assert np.isfinite(predictions["expected_purchases"]).all() and (predictions["expected_purchases"] >= 0).all()
    expected = np.sort(test[~np.isin(test, ["LATE", GHOST])])
    np.testing.assert_array_equal(predictions["customer_id"].to_numpy(), expected)
    np.testing.assert_array_equal(expected, scored_ids(history(events, window), test))
    churn, spend = predictions["churn_probability"].to_numpy(), predictions["expected_spend"].to_numpy()
    assert np.isfinite(churn).all() and ((churn >= 0) & (churn <= 1)).all()
    assert np.isfinite(spend).all() and (spend >= 0).all()
    assert churn.std() > 0 and spend.std() > 0


def test_future_events_of_test_customers_change_nothing(world, baseline) -> None:
    events, window, train, test = world
    fit_predict, predictions = baseline
    rng = np.random.default_rng(1)
    n = 500
    future = pd.DataFrame(
        {
            "customer_id": rng.choice(test, size=n),
            "timestamp": window.feature_end + pd.to_timedelta(rng.uniform(0, 400, size=n), unit="D"),
            "amount": rng.choice([0.0, 5_000.0, -300.0], size=n),
            "event_type": rng.choice(["purchase", "never_seen_before"], size=n),
            "channel": "web",
            "n_items": rng.integers(1, 50, size=n).astype(float),
        }
    )
    future.loc[0, "timestamp"] = window.feature_end  # the first label instant is future too
    leaked = pd.concat([events, future], ignore_index=True).sample(frac=1.0, random_state=2)
    pd.testing.assert_frame_equal(fit_predict(leaked, window, train, test, seed=0), predictions)


def test_same_seed_same_output(world, baseline) -> None:
    events, window, train, test = world
    fit_predict, predictions = baseline
    pd.testing.assert_frame_equal(fit_predict(events, window, train, test, seed=0), predictions)


def _bgnbd(r: float, alpha: float, a: float, b: float):
    """A BG/NBD model with given parameters, as if fitted."""
    lifetimes = pytest.importorskip("lifetimes")
    model = lifetimes.BetaGeoFitter()
    model.params_ = pd.Series({"r": r, "alpha": alpha, "a": a, "b": b})
    return model


def _simulate_p0(
    x: int, t_x: float, T: float, tau: float, params: tuple[float, ...], n: int = 2_000_000
) -> tuple[float, float]:
    """Monte Carlo P(no purchase in (T, T + tau] | x, t_x within 1 day, T) and its standard error.

    Forward simulation of BG/NBD, independent of the closed form: each simulated customer draws lambda and
    p, buys at Poisson times and may drop out right after each repeat purchase; we keep those whose history
    matches and count who then buys nothing in the horizon.
    """
    r, alpha, a, b = params
    rng = np.random.default_rng(0)
    rate = rng.gamma(r, 1.0 / alpha, size=n)
    dropout = rng.beta(a, b, size=n)
    times = np.cumsum(rng.exponential(1.0, size=(n, x + 1)) / rate[:, None], axis=1)
    dies_after = rng.random((n, max(x, 1))) < dropout[:, None]
    if x == 0:
        dead = np.zeros(n, dtype=bool)
        matches = times[:, 0] > T
    else:
        dead = dies_after[:, x - 1]
        matches = (~dies_after[:, : x - 1]).all(axis=1) & (np.abs(times[:, x - 1] - t_x) < 1.0)
        matches &= dead | (times[:, x] > T)
    assert matches.sum() > 2_000, "too few matching histories for a stable estimate"
    silent = (dead | (times[:, x] > T + tau))[matches]
    return float(silent.mean()), float(silent.std() / np.sqrt(len(silent)))


@pytest.mark.parametrize(("x", "t_x"), [(0, 0.0), (1, 20.0), (2, 60.0), (3, 95.0)])
def test_prob_no_purchase_matches_simulation(x: int, t_x: float) -> None:
    from churnformer.baselines.btyd import prob_no_purchase

    params, T, tau = (2.0, 20.0, 1.0, 3.0), 100.0, 60.0
    model = _bgnbd(*params)
    exact = prob_no_purchase(model, tau, np.array([x]), np.array([t_x]), np.array([T]))[0]
    estimate, error = _simulate_p0(x, t_x, T, tau, params)
    assert exact == pytest.approx(estimate, abs=4 * error + 0.005)  # 0.005: the 2-day t_x bin's bias


def test_prob_no_purchase_of_newborn_matches_lifetimes() -> None:
    """At T = 0 the conditional P0 is the unconditional P(X(tau) = 0) that lifetimes computes."""
    from churnformer.baselines.btyd import prob_no_purchase

    model = _bgnbd(0.25, 33.0, 0.75, 2.2)
    exact = prob_no_purchase(model, 273.0, np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]
    assert exact == pytest.approx(model.probability_of_n_purchases_up_to_time(273.0, 0), rel=1e-12)


@pytest.fixture
def tiny_log() -> tuple[pd.DataFrame, Window]:
    """Customer a buys twice on Jan 1, visits, buys, gets a refund; b only visits; c only acts after the cutoff."""
    rows = [
        ("a", "2024-01-01 10:00", 10.0, "purchase", 1.0),
        ("a", "2024-01-01 15:00", 5.0, "purchase", 2.0),
        ("a", "2024-01-05 12:00", 0.0, "visit", np.nan),
        ("a", "2024-01-06 00:00", 20.0, "purchase", 1.0),
        ("a", "2024-01-08 00:00", -4.0, "refund", np.nan),
        ("a", "2024-01-11 00:00", 100.0, "purchase", 9.0),
        ("b", "2023-12-21 00:00", 0.0, "visit", np.nan),
        ("c", "2024-01-20 00:00", 50.0, "purchase", 1.0),
    ]
    events = pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "event_type", "quantity"])
    events["timestamp"] = pd.to_datetime(events["timestamp"]).astype("datetime64[ns]")
    return events, Window.from_cutoff("2024-01-10", 30)


def test_rfm_features_on_hand_made_log(tiny_log) -> None:
    from churnformer.baselines.gbm import rfm_features

    events, window = tiny_log
    features = rfm_features(events, window, np.array(["a", "b", "c"])).set_index("customer_id")
    a, b, c = (features.loc[name] for name in "abc")
    first_age = 9 + 14 / 24  # 2024-01-01 10:00 to 2024-01-11 00:00
    expected_a = {
        "days_since_last_event": 3.0,
        "days_since_last_purchase": 5.0,
        "tenure_days": first_age,
        "days_since_first_purchase": first_age,
        "purchase_gap_mean_days": (first_age - 5.0) / 2,
        "n_events": 5,
        "n_purchases": 3,
        "n_purchase_days": 2,
        "spend_sum": 35.0,
        "spend_mean": 35.0 / 3,
        "spend_max": 20.0,
        "refund_sum": -4.0,
        "n_events_30d": 5,
        "spend_90d": 35.0,
        "purchase_trend_90d": 3,
        "n_event_type_purchase": 3,
        "n_event_type_visit": 1,
        "n_event_type_refund": 1,
        "quantity_sum": 4.0,
    }
    assert a[list(expected_a)].to_dict() == pytest.approx(expected_a)
    assert b["n_events"] == 1 and b["tenure_days"] == 21.0 and b["n_purchases"] == 0
    assert np.isnan(b[["days_since_last_purchase", "spend_mean", "purchase_gap_mean_days"]].to_numpy(float)).all()
    assert c["n_events"] == 0 and np.isnan(c["days_since_last_event"])


def test_rfm_features_of_baskets(tiny_log) -> None:
    from churnformer.baselines.gbm import rfm_features

    events, window = tiny_log
    # a's two purchases of Jan 1 are one basket of 2 items; everything else has no basket.
    events = events.assign(basket=[7.0, 7.0] + [np.nan] * (len(events) - 2))
    features = rfm_features(events, window, np.array(["a", "b"]), group_by="basket").set_index("customer_id")
    assert "basket_sum" not in features.columns and "basket_basket_sum" not in features.columns
    a = features.loc["a"]
    assert (a["n_purchases"], a["basket_n_purchases"], a["basket_spend_mean"]) == (3, 2, 35.0 / 2)
    assert (a["basket_quantity_sum"], a["basket_basket_items_sum"], a["basket_n_events"]) == (4.0, 5.0, 4)
    assert a["basket_days_since_last_purchase"] == a["days_since_last_purchase"]
    assert features.loc["b", "basket_n_events"] == 1


def test_btyd_summary_on_hand_made_log(tiny_log) -> None:
    from churnformer.baselines.btyd import btyd_summary

    events, window = tiny_log
    summary = btyd_summary(events, window, np.array(["a", "b", "c"])).set_index("customer_id")
    # a: purchase days Jan 1 (10 + 5 summed) and Jan 6 (20); observation ends at Jan 11 00:00.
    assert summary.loc["a"].to_dict() == {"frequency": 1.0, "recency": 5.0, "T": 10.0, "monetary_value": 20.0}
    # b never bought: born at its first event, no repeat purchase yet.
    assert summary.loc["b"].to_dict() == {"frequency": 0.0, "recency": 0.0, "T": 21.0, "monetary_value": 0.0}
    assert summary.loc["c"].isna().all()


# --- over a horizon grid --------------------------------------------------------------------------------------


def test_gbm_answers_each_horizon_with_its_own_boosters_and_the_main_one_unchanged(world) -> None:
    from churnformer.baselines.gbm import Boosting

    fit_predict = _gbm()
    events, window, train, test = world
    single = fit_predict(events, window, train, test, seed=0, boosting=Boosting(num_threads=1, max_rounds=50))
    grid = fit_predict(
        events, window, train, test, seed=0, boosting=Boosting(num_threads=1, max_rounds=50), horizons=[30, 90, 180]
    )
    pd.testing.assert_frame_equal(grid[list(BASELINE_COLUMNS)], single)
    np.testing.assert_array_equal(grid["churn_probability_90d"], grid["churn_probability"])
    # Separate boosters per horizon: different answers, not one scaled copy.
    assert not np.allclose(grid["churn_probability_30d"], grid["churn_probability_180d"])


def test_btyd_is_consistent_over_horizons_and_its_undiscounted_clv_is_the_spend_by_then(world) -> None:
    fit_predict = _btyd()
    events, window, train, test = world
    frame = fit_predict(events, window, train, test, seed=0, horizons=[30, 90, 360], discount_rate=0.0)
    survival = frame[["churn_probability_30d", "churn_probability_90d", "churn_probability_360d"]].to_numpy()
    spend = frame[["expected_spend_30d", "expected_spend_90d", "expected_spend_360d"]].to_numpy()
    assert (np.diff(survival, axis=1) <= 1e-12).all() and (np.diff(spend, axis=1) >= -1e-9).all()
    np.testing.assert_allclose(frame["clv"], frame["expected_spend_360d"], rtol=1e-9)  # 12 steps of 30 days
    discounted = fit_predict(events, window, train, test, seed=0, horizons=[360], discount_rate=0.1)
    assert (discounted["clv"] < frame["clv"]).all() and (discounted["clv"] > frame["clv"] / 1.1).all()


def test_btyd_expects_purchase_days_by_horizon_as_lifetimes_does(world) -> None:
    """``expected_purchases_<h>d`` is lifetimes' conditional expectation of the purchase count at each
    horizon (what the purchases head is compared with): non-decreasing over the grid, and the main horizon's."""
    fit_predict = _btyd()
    events, window, train, test = world
    frame = fit_predict(events, window, train, test, seed=0, horizons=[30, 90, 360])
    counts = frame[["expected_purchases_30d", "expected_purchases_90d", "expected_purchases_360d"]].to_numpy()
    assert (np.diff(counts, axis=1) >= -1e-12).all() and (counts[:, -1] > counts[:, 0]).any()
    main = fit_predict(events, window, train, test, seed=0, horizons=[window.horizon_days])
    np.testing.assert_allclose(main["expected_purchases"], main[f"expected_purchases_{window.horizon_days:g}d"])
    # With the expected spend per purchase fixed, spend follows the counts.
    ratio = frame["expected_spend_360d"] / frame["expected_purchases_360d"]
    np.testing.assert_allclose(frame["expected_spend_30d"], ratio * frame["expected_purchases_30d"], rtol=1e-9)
