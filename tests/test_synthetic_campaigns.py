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
    OFFER,
    OFFER_COST,
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
    assert (campaigns["offer"] == OFFER).all() and (campaigns["cost"] == OFFER_COST).all()
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
    """Churn (no purchase) and net spend in the days after each contact, observed in the events: treated minus
    held-out customers estimates the average effect, which the true effects must match within its error."""
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
    truth = world.true_uplift
    for outcome, sign in (("churn", -1), ("spend", 1)):  # churn_uplift is the drop in churn
        values = observed[outcome]
        contrast = sign * (values[sent].mean() - values[~sent].mean())
        error = np.sqrt(values[sent].var() / sent.sum() + values[~sent].var() / (~sent).sum())
        true = truth[f"{outcome}_uplift_{days}d"].mean()
        assert abs(contrast - true) < 3.5 * error, (outcome, contrast, true, error)
        assert abs(true) > 2 * error  # an effect the log can show


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
