"""The synthetic world's randomized retention campaigns: contacts with a random holdout among active customers,
effects that differ by customer, and true effects that the randomized contrast in the log agrees with."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from churnformer.data.synthetic import SyntheticFrames, SyntheticWorldConfig, main, simulate_world
from churnformer.data.synthetic_campaigns import (
    FIRST_CAMPAIGN_WEEK,
    HOLDOUT_SHARE,
    OFFERS,
    TRUTH_HORIZONS_DAYS,
    campaign_weeks,
)
from churnformer.errors import ConfigError

CONFIG = SyntheticWorldConfig.with_defaults(n_customers=4000, seed=5, campaigns=True)


@pytest.fixture(scope="module")
def world() -> SyntheticFrames:
    return simulate_world(CONFIG)


def test_before_the_first_campaign_the_world_is_the_world_without_campaigns(world: SyntheticFrames) -> None:
    without = simulate_world(replace(CONFIG, campaigns=False))
    assert without.campaigns is None and without.true_uplift is None
    first = pd.Timestamp(CONFIG.start) + pd.Timedelta(weeks=FIRST_CAMPAIGN_WEEK)
    before = world.events.loc[world.events["timestamp"] < first].reset_index(drop=True)
    pd.testing.assert_frame_equal(before, without.events.loc[without.events["timestamp"] < first])
    pd.testing.assert_frame_equal(world.customers, without.customers)
    assert not world.events.equals(without.events)  # the offers change the weeks after them


def test_contacts_go_to_active_customers_with_a_random_holdout(world: SyntheticFrames) -> None:
    campaigns = world.campaigns
    assert list(campaigns.columns) == ["customer_id", "contacted_at", "treated", "offer", "cost"]
    assert set(campaigns["treated"]) == {0, 1}
    held_out = 1 - campaigns["treated"].mean()
    assert abs(held_out - HOLDOUT_SHARE) < 4 * np.sqrt(HOLDOUT_SHARE * (1 - HOLDOUT_SHARE) / len(campaigns))
    (coupon,) = OFFERS[1]
    assert (campaigns["offer"] == coupon.name).all() and (campaigns["cost"] == coupon.cost).all()
    start = pd.Timestamp(CONFIG.start)
    weeks = sorted(campaigns["contacted_at"].unique())
    assert weeks == [start + pd.Timedelta(weeks=week) for week in campaign_weeks(CONFIG.n_weeks)]
    assert not campaigns.duplicated(["customer_id", "contacted_at"]).any()
    # Everyone contacted has a history before the contact, and the log runs the longest horizon past it.
    first_event = world.events.groupby("customer_id")["timestamp"].min()
    assert (first_event.loc[campaigns["customer_id"]].to_numpy() < campaigns["contacted_at"].to_numpy()).all()
    log_end = start + pd.Timedelta(weeks=CONFIG.n_weeks)
    assert (campaigns["contacted_at"] + pd.Timedelta(days=max(TRUTH_HORIZONS_DAYS)) <= log_end).all()


@pytest.mark.parametrize("days", [30, 90])
def test_the_randomized_contrast_in_the_log_agrees_with_the_true_effects(world: SyntheticFrames, days: int) -> None:
    for outcome, contrast, true, error in randomized_contrasts(world, days):
        assert abs(contrast - true) < 3.5 * error, (outcome, contrast, true, error)
        assert abs(true) > 2 * error  # an effect the log can show


def randomized_contrasts(world: SyntheticFrames, days: int) -> list[tuple[str, float, float, float]]:
    """Churn (no purchase) and net spend in the days after each contact, observed in the events: treated minus
    held-out customers estimates the average effect, which the true effects must match within its error.
    Per outcome: (outcome, the contrast, the mean true effect, the contrast's standard error)."""
    contacts = world.campaigns[["customer_id", "contacted_at", "treated"]]
    events = world.events.merge(contacts, on="customer_id")
    after = (events["timestamp"] >= events["contacted_at"]) & (
        events["timestamp"] < events["contacted_at"] + pd.Timedelta(days=days)
    )
    window = events.loc[after].groupby(["customer_id", "contacted_at"])
    key = pd.MultiIndex.from_frame(contacts[["customer_id", "contacted_at"]])
    purchases = window["event_type"].agg(lambda kinds: (kinds == "purchase").sum()).reindex(key, fill_value=0)
    observed = {
        "churn": (purchases.to_numpy() == 0).astype(float),
        "spend": np.maximum(window["amount"].sum().reindex(key, fill_value=0.0).to_numpy(), 0.0),
    }
    sent = contacts["treated"].to_numpy() == 1
    results = []
    for outcome, sign in (("churn", -1), ("spend", 1)):  # churn_uplift is the drop in churn
        values = observed[outcome]
        contrast = sign * (values[sent].mean() - values[~sent].mean())
        error = np.sqrt(values[sent].var() / sent.sum() + values[~sent].var() / (~sent).sum())
        results.append((outcome, contrast, world.true_uplift[f"{outcome}_uplift_{days}d"].mean(), error))
    return results


def test_the_offer_helps_some_customers_and_drives_others_away(world: SyntheticFrames) -> None:
    uplift = world.true_uplift["churn_uplift_90d"]
    assert (uplift > 0.05).mean() > 0.05  # persuadable
    assert (uplift < -0.02).mean() > 0.01  # do not disturb
    churn = world.true_uplift["churn_probability_90d"]
    assert ((churn > 0.8) & (uplift.abs() < 0.02)).mean() > 0.005  # lost causes


def test_the_same_seed_gives_the_same_campaigns(world: SyntheticFrames) -> None:
    again = simulate_world(CONFIG)
    pd.testing.assert_frame_equal(again.campaigns, world.campaigns)
    pd.testing.assert_frame_equal(again.true_uplift, world.true_uplift)


def test_a_log_too_short_for_a_campaign_says_how_long_it_must_be(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="at least 52 weeks"):
        simulate_world(replace(CONFIG, n_weeks=40))
    with pytest.raises(SystemExit) as exit_info:
        main(["--campaigns", "--weeks", "40"])
    assert exit_info.value.code == 2 and "at least 52 weeks" in capsys.readouterr().err


def test_the_cli_writes_the_campaigns_and_their_true_effects(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "world"
    assert main(["--customers", "300", "--weeks", "60", "--campaigns", "--out", str(out), "--format", "csv"]) == 0
    campaigns = pd.read_csv(out / "campaigns.csv", parse_dates=["contacted_at"])
    truth = pd.read_csv(out / "true_uplift.csv", parse_dates=["contacted_at"])
    assert len(campaigns) == len(truth) > 0
    pd.testing.assert_frame_equal(truth[["customer_id", "contacted_at"]], campaigns[["customer_id", "contacted_at"]])
    assert {f"churn_uplift_{days}d" for days in TRUTH_HORIZONS_DAYS} <= set(truth.columns)
    assert f"{len(campaigns)} contacts" in capsys.readouterr().out


# --- a world of two offers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_offers() -> SyntheticFrames:
    return simulate_world(replace(CONFIG, campaign_offers=2))


def test_with_two_offers_each_contact_gets_one_at_random_with_its_cost_and_its_own_holdout(
    world: SyntheticFrames, two_offers: SyntheticFrames
) -> None:
    campaigns = two_offers.campaigns
    pd.testing.assert_frame_equal(two_offers.customers, world.customers)
    assert {offer.name: offer.cost for offer in OFFERS[2]} == dict(campaigns.groupby("offer")["cost"].first())
    shares = campaigns["offer"].value_counts(normalize=True)
    assert abs(shares["call"] - 0.5) < 4 * np.sqrt(0.25 / len(campaigns))
    assert (campaigns.groupby(["contacted_at", "offer"])["treated"].nunique() == 2).all()


def test_with_two_offers_the_truth_holds_each_offer_s_effect_and_the_best_offer_differs_by_customer(
    two_offers: SyntheticFrames,
) -> None:
    truth, offer = two_offers.true_uplift, two_offers.campaigns["offer"].to_numpy()
    for column in ("churn_uplift_90d", "spend_uplift_90d", "churn_probability_if_contacted_30d"):
        own = np.where(offer == "call", truth[f"{column}__call"], truth[f"{column}__coupon"])
        np.testing.assert_array_equal(truth[column], own)
    value = np.stack([truth[f"spend_uplift_90d__{o.name}"] - o.cost for o in OFFERS[2]], axis=1)
    best, worth_it = value.argmax(axis=1), value.max(axis=1) > 0
    for index, _ in enumerate(OFFERS[2]):  # each offer is the one worth sending to some customers
        assert ((best == index) & worth_it).mean() > 0.02
    # A call resolves complaints: its churn effect is larger for those with recent complaints; a coupon's spend
    # effect larger for the price-sensitive.
    complained = truth["hidden_recent_complaints"] >= 0.5
    sensitive = truth["hidden_price_sensitivity"] > 0.5
    call, coupon = truth["churn_uplift_90d__call"], truth["spend_uplift_90d__coupon"]
    assert call[complained].mean() > call[~complained].mean() + 0.02
    assert coupon[sensitive].mean() > coupon[~sensitive].mean()


@pytest.mark.parametrize("offer", ["call", "coupon"])
def test_with_two_offers_each_offer_s_randomized_contrast_agrees_with_its_true_effect(
    two_offers: SyntheticFrames, offer: str
) -> None:
    chosen = (two_offers.campaigns["offer"] == offer).to_numpy()
    frames = SyntheticFrames(
        two_offers.events,
        two_offers.customers,
        two_offers.campaigns.loc[chosen].reset_index(drop=True),
        two_offers.true_uplift.loc[chosen].reset_index(drop=True),
    )
    for outcome, contrast, true, error in randomized_contrasts(frames, 90):
        assert abs(contrast - true) < 3.5 * error, (outcome, contrast, true, error)


def test_the_cli_writes_a_world_of_two_offers(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "world"
    assert main(["--customers", "300", "--weeks", "60", "--campaigns", "--offers", "2", "--out", str(out)]) == 0
    assert set(pd.read_parquet(out / "campaigns.parquet")["offer"]) == {"call", "coupon"}
    with pytest.raises(SystemExit) as exit_info:
        main(["--offers", "2", "--out", str(out)])
    assert exit_info.value.code == 2 and "--offers is for a world with --campaigns" in capsys.readouterr().err
