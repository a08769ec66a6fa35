"""Learning from past campaigns (``data.campaigns``): the contact table read and checked, each contact an example
at its campaign's day with nothing of that day or later among its features, a network that predicts every
customer with and without a contact, and what scoring adds (``churn_uplift_*``, ``contact_value``,
``response_segment``)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from churnformer.baselines.uplift import t_learner
from churnformer.data.campaigns import NO_CONTACT, check_campaigns, contact_arm, load_campaigns, one_offer
from churnformer.data.events import ColumnMapping, load_customers, load_events
from churnformer.data.parts import PartitionedBuild
from churnformer.data.sequences import build_sequences
from churnformer.data.sources import EventLogFiles
from churnformer.data.store import load_training_set
from churnformer.data.synthetic import SyntheticWorldConfig, write_world
from churnformer.data.training_set import validation_mask
from churnformer.data.window import Window
from churnformer.errors import InputError
from churnformer.evaluation.uplift import qini_auuc, qini_curve, uplift_by_decile
from churnformer.modeling.contact import ContactEffect
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import (
    BEST_OFFER,
    CHURN_PROBABILITY,
    CHURN_PROBABILITY_IF_CONTACTED,
    CONTACT_VALUE,
    CONTACTED,
    META_CAMPAIGNS,
    RESPONSE_SEGMENT,
    per_horizon,
    per_offer,
)
from churnformer.serving.model_file import load_model
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from tests.conftest import (
    CAMPAIGN_CUTOFF,
    CAMPAIGN_TRAINING,
    network_config,
    run_in_process,
    run_predict,
    tightest_budget_mb,
    train_in_process,
)


@pytest.fixture(scope="module")
def events(campaign_world: dict[str, Path]) -> pd.DataFrame:
    return load_events(campaign_world["events"])


def campaigns_of(world: dict[str, Path]) -> pd.DataFrame:
    return pd.read_csv(world["campaigns"], dtype={"customer_id": str})


# --- the table -------------------------------------------------------------------------------------------------


def test_a_table_with_its_own_column_names_reads_into_the_standard_one(campaign_world: dict[str, Path]) -> None:
    theirs = campaigns_of(campaign_world).rename(columns={"contacted_at": "sent_on", "treated": "group"})
    table = load_campaigns(
        theirs.drop(columns=["offer", "cost"]), ColumnMapping(contacted_at="sent_on", treated="group")
    )
    assert list(table.columns) == ["customer_id", "contacted_at", "treated", "offer", "cost"]
    assert table["treated"].dtype == np.int8 and set(table["treated"]) == {0, 1}
    assert (table["offer"] == "offer").all() and (table["cost"] == 0).all()  # neither column: the defaults


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop(columns=["treated"]), r"campaign column\(s\) \['treated'\] not found"),
        (lambda t: t.assign(treated=t["treated"].replace(1, 2)), r"treated must be 1 \(sent the offer\) or 0"),
        (lambda t: t.assign(treated=t["treated"].astype(str).replace("1", "yes")), "got 'yes'"),
        (lambda t: t.assign(cost=-1.0), r"a cost must be a number >= 0, got -1.0"),
        (lambda t: pd.concat([t, t.iloc[:1]]), "the same customer contacted at the same time twice"),
        (lambda t: t.iloc[:0], "no contacts"),
        (lambda t: t.assign(contacted_at="someday"), "unparseable timestamps"),
    ],
)
def test_bad_tables_are_named(campaign_world: dict[str, Path], change, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_campaigns(change(campaigns_of(campaign_world)).reset_index(drop=True), ColumnMapping())


def test_contacts_after_the_log_and_campaigns_without_a_holdout_are_refused(
    campaign_world: dict[str, Path], events: pd.DataFrame
) -> None:
    table = load_campaigns(campaigns_of(campaign_world), ColumnMapping())
    end = int(events["timestamp"].max().value) + 1
    late = table.copy()
    late.loc[3, "contacted_at"] = pd.Timestamp(end) + pd.Timedelta(days=1)
    with pytest.raises(InputError, match=r"contacts at or after the end of the event log .* in 1 row\(s\), first at"):
        check_campaigns(late, events, end)
    first_day = table["contacted_at"].min()
    everyone_sent = table.assign(treated=np.where(table["contacted_at"] == first_day, 1, table["treated"]))
    with pytest.raises(InputError, match=r"the campaign of .* has no held-out \(treated=0\) customers"):
        check_campaigns(everyone_sent.astype({"treated": np.int8}), events, end)


def test_contacts_of_customers_not_in_the_log_are_left_out_with_a_warning(
    campaign_world: dict[str, Path], events: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    table = load_campaigns(campaigns_of(campaign_world), ColumnMapping())
    stranger = table.iloc[:2].assign(customer_id=["nobody", "nobody-else"])
    end = int(events["timestamp"].max().value) + 1
    with caplog.at_level(logging.WARNING):
        checked = check_campaigns(pd.concat([table, stranger], ignore_index=True), events, end)
    assert len(checked.table) == len(table)
    assert "2 contact(s) of customers with no event in the log left out" in caplog.text


# --- the training set ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datamodules(
    campaign_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[bool, ChurnDataModule]:
    settings = DataSettings.defaults(cutoff=CAMPAIGN_CUTOFF, horizon_days=60, horizons_days=[30, 60])
    modules = {}
    for with_campaigns in (False, True):
        source = EventLogFiles(
            campaign_world["events"],
            campaign_world["customers"],
            {},
            campaign_world["campaigns"] if with_campaigns else None,
        )
        modules[with_campaigns] = ChurnDataModule(source, settings, tmp_path_factory.mktemp("run"))
        modules[with_campaigns].setup()
    return modules


def test_each_contact_is_an_example_at_its_campaign_s_day_with_no_feature_from_that_day_on(
    datamodules: dict[bool, ChurnDataModule], campaign_world: dict[str, Path], events: pd.DataFrame
) -> None:
    data = datamodules[True].data
    contacts = np.flatnonzero(data.treated >= 0)
    table = campaigns_of(campaign_world).sort_values(["contacted_at", "customer_id"])
    assert len(contacts) == len(table)  # every contacted customer has a history before the contact here
    np.testing.assert_array_equal(data.sequences.customer_ids[contacts], table["customer_id"].to_numpy())
    np.testing.assert_array_equal(data.treated[contacts], table["treated"].to_numpy())
    days = pd.to_datetime(table["contacted_at"]).to_numpy()
    customers = load_customers(campaign_world["customers"])
    for day in np.unique(days)[:2]:  # built again from the events before the day alone: the same inputs
        at_day = contacts[days == day]
        ids = data.sequences.customer_ids[at_day]
        before = events.loc[(events["timestamp"] < day) & events["customer_id"].isin(ids)]
        rebuilt = build_sequences(before, Window(pd.Timestamp(day), 60), data.featurizer, customers).pad()
        stored = data.sequences.subset(at_day).pad()
        for name, values in rebuilt.items():
            np.testing.assert_array_equal(stored[name], values, err_msg=name)


def test_validation_customers_contacts_are_kept_apart_and_the_rest_is_unchanged(
    datamodules: dict[bool, ChurnDataModule],
) -> None:
    plain, with_campaigns = datamodules[False].data, datamodules[True].data
    assert plain.treated is None and plain.contacted is None
    np.testing.assert_array_equal(with_campaigns.val_rows, plain.val_rows)
    first_contact = len(plain.sequences)
    np.testing.assert_array_equal(with_campaigns.train_rows[: len(plain.train_rows)], plain.train_rows)
    pd.testing.assert_frame_equal(
        with_campaigns.label_frame(np.arange(first_contact)), plain.label_frame(np.arange(first_contact))
    )
    contacts = np.flatnonzero(with_campaigns.treated >= 0)
    validation = np.isin(contacts, with_campaigns.uplift_rows)
    assert validation.any() and (~validation).any()
    assert not np.isin(with_campaigns.uplift_rows, with_campaigns.train_rows).any()
    assert np.isin(contacts[~validation], with_campaigns.train_rows).all()
    assert with_campaigns.contacted[contacts].sum() == (with_campaigns.treated == 1).sum()
    batch = next(iter(datamodules[True].uplift_loader()))
    assert CONTACTED in batch and set(batch[CONTACTED].unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "partitions", [None, pytest.param(3, marks=pytest.mark.slow)], ids=["in-memory", "in-partitions"]
)
def test_a_featurized_dataset_holds_the_contacts_as_training_in_memory_does(
    datamodules: dict[bool, ChurnDataModule], tmp_path: Path, partitions: int | None
) -> None:
    """churnformer-featurize and data.dataset_dir, in memory or partition by partition: each contact's arm, and
    the validation customers' contacts kept apart, read back as the in-memory build made them; the dataset's key
    covers the campaigns and data.offer."""
    module = datamodules[True]
    build = PartitionedBuild(partitions=partitions) if partitions else None
    module.write_dataset(tmp_path / "dataset", build=build)
    built, stored = module.data, load_training_set(tmp_path / "dataset")
    for name in ("treated", "train_rows", "val_rows", "uplift_rows", "cutoffs"):
        np.testing.assert_array_equal(getattr(stored, name), getattr(built, name), err_msg=name)
    assert stored.campaigns == built.campaigns
    contacts = np.flatnonzero(built.treated >= 0)
    pd.testing.assert_frame_equal(
        stored.label_frame(contacts).reset_index(drop=True), built.label_frame(contacts).reset_index(drop=True)
    )
    for name, values in built.sequences.pad(contacts[:50]).items():
        np.testing.assert_array_equal(stored.sequences.pad(contacts[:50])[name], values, err_msg=name)
    plain_settings, plain_inputs = datamodules[False].dataset_identity()
    settings, inputs = module.dataset_identity()
    assert "offer" not in plain_settings and settings["offer"] is None and inputs[:2] == plain_inputs
    assert len(inputs) == 3 and inputs[2] is not None


# --- the network -----------------------------------------------------------------------------------------------


def test_the_contact_effect_starts_at_nothing_and_leaves_the_rest_of_the_network_as_it_was(
    datamodules: dict[bool, ChurnDataModule],
) -> None:
    data = datamodules[True].data
    heads = {"survival": {"_target_": "churnformer.modeling.heads.survival.SurvivalHead"}}
    networks = {}
    for contact in (False, True):
        torch.manual_seed(0)
        networks[contact] = ChurnFormer.build(
            asdict(network_config(contact_offers=("coupon",) if contact else ())), data.featurizer, 2, heads
        )
    plain, contacting = (networks[c].state_dict() for c in (False, True))
    assert set(contacting) - set(plain) == {name for name in contacting if name.startswith("contact.")}
    for name, value in plain.items():
        torch.testing.assert_close(contacting[name], value, rtol=0, atol=0)
    inputs = {k: torch.from_numpy(v) for k, v in data.sequences.pad(np.arange(8)).items()}
    network = networks[True].eval()
    representation = network.represent(inputs)
    before = network.heads_of(representation, inputs)["survival"]["hazard_logits"]
    held, sent = network.heads_in_campaign(representation, inputs)
    for arm in (held, *sent):
        torch.testing.assert_close(arm["survival"]["hazard_logits"], before, rtol=0, atol=0)


SENT = 1  # with one offer, a sent contact's arm (contact_arm)


def test_each_example_is_read_in_its_arm_and_the_effect_is_the_difference_between_a_campaign_s_arms() -> None:
    torch.manual_seed(0)
    contact = ContactEffect(8)  # trained-looking: no zeroed layer
    representation = torch.randn(6, 8)
    arm = torch.tensor([NO_CONTACT, 0, SENT, NO_CONTACT, 0, SENT], dtype=torch.float32)
    moved = contact(representation, arm)
    held, (sent,) = contact.arms(representation)
    torch.testing.assert_close(moved[[0, 3]], representation[[0, 3]], rtol=0, atol=0)
    torch.testing.assert_close(moved[[1, 4]], held[[1, 4]], rtol=0, atol=0)
    torch.testing.assert_close(moved[[2, 5]], sent[[2, 5]], rtol=0, atol=0)
    assert not torch.allclose(held, representation) and not torch.allclose(sent, held)


def test_with_several_offers_each_sent_contact_is_moved_by_its_own_offer_and_every_held_out_one_alike() -> None:
    torch.manual_seed(0)
    contact = ContactEffect(8, ("call", "coupon"))
    representation = torch.randn(6, 8)
    treated, offer = np.array([0, 0, 1, 1, 0, 1]), np.array([0, 1, 0, 1, 0, 1])
    arm = torch.from_numpy(contact_arm(treated, offer).astype(np.float32))
    arm[4] = NO_CONTACT
    moved = contact(representation, arm)
    held, (call, coupon) = contact.arms(representation)
    torch.testing.assert_close(moved[[0, 1]], held[[0, 1]], rtol=0, atol=0)
    torch.testing.assert_close(moved[2], call[2], rtol=0, atol=0)
    torch.testing.assert_close(moved[[3, 5]], coupon[[3, 5]], rtol=0, atol=0)
    torch.testing.assert_close(moved[4], representation[4], rtol=0, atol=0)
    assert not torch.allclose(call, coupon)


@pytest.mark.parametrize(
    ("treated", "offer", "trained"),
    [
        (None, 0, set()),
        (0, 0, {"population"}),
        (0, 1, {"population"}),
        (1, 0, {"population", "effects.0"}),
        (1, 1, {"population", "effects.1"}),
    ],
)
def test_held_out_contacts_train_who_campaigns_reach_and_only_sent_ones_train_their_offer_s_effect(
    treated: int | None, offer: int, trained: set[str]
) -> None:
    torch.manual_seed(0)
    contact = ContactEffect(8, ("call", "coupon"))
    arm = NO_CONTACT if treated is None else int(contact_arm(np.array([treated]), np.array([offer]))[0])
    contact(torch.randn(4, 8), torch.full((4,), float(arm))).square().sum().backward()
    layers = {"population": contact.population, "effects.0": contact.effects[0], "effects.1": contact.effects[1]}
    moved = {
        name for name, mlp in layers.items() if mlp[0].weight.grad is not None and mlp[0].weight.grad.abs().sum() > 0
    }
    assert moved == trained


# --- the metrics -----------------------------------------------------------------------------------------------


def test_the_qini_measure_rewards_finding_the_customers_a_contact_changes() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    effect = rng.uniform(0, 0.3, n)  # each customer's true rise in retention when contacted
    treated = rng.integers(0, 2, n)
    retained = (rng.random(n) < 0.4 + effect * treated).astype(float)
    best, random = qini_auuc(effect, retained, treated), qini_auuc(rng.random(n), retained, treated)
    assert best > 0.01 and abs(random) < best / 4
    assert qini_auuc(-effect, retained, treated) < -0.01
    assert qini_curve(np.zeros(n), retained, treated)[n // 2] == pytest.approx(
        qini_curve(effect, retained, treated)[-1] / 2
    )
    deciles = uplift_by_decile(effect, retained, treated)
    assert deciles["observed"].iloc[0] > deciles["observed"].iloc[-1] + 0.1
    assert (deciles["low"] < deciles["observed"]).all() and (deciles["contacts"].sum() == n)


# --- end to end ------------------------------------------------------------------------------------------------


def test_a_model_trained_with_campaigns_scores_each_customer_with_and_without_a_contact(campaign_run: Path) -> None:
    predictions = pd.read_parquet(campaign_run / "predictions.parquet")
    for days in (30, 60):
        assert {per_horizon("churn_uplift", days), per_horizon("spend_uplift", days)} <= set(predictions.columns)
    churn, uplift = predictions[CHURN_PROBABILITY], predictions["churn_uplift_60d"]
    held_out = uplift + predictions[CHURN_PROBABILITY_IF_CONTACTED]  # the held-out arm: a probability too
    assert held_out.between(-1e-6, 1 + 1e-6).all() and predictions[CHURN_PROBABILITY_IF_CONTACTED].between(0, 1).all()
    _, _, metadata = load_model(campaign_run / "model.onnx")
    learned = json.loads(metadata[META_CAMPAIGNS])
    assert learned["sent"] > 0 and learned["held_out"] > 0 and learned["cost"] == pytest.approx(5.0)
    np.testing.assert_allclose(predictions[CONTACT_VALUE], predictions["spend_uplift_60d"] - 5.0, atol=1e-4)
    expected = np.where(churn >= 0.5, "lost cause", "sure thing").astype(object)
    expected[uplift >= 0.02], expected[uplift <= -0.02] = "persuadable", "do not disturb"
    np.testing.assert_array_equal(predictions[RESPONSE_SEGMENT].to_numpy(dtype=object), expected)
    metrics = json.loads((campaign_run / "metrics.json").read_text())
    assert metrics["uplift/contacts/val"] > 0 and np.isfinite(metrics["uplift/churn_qini_auuc/val"])
    for arm in ("held_out", "sent"):  # each arm's level beside what its contacts did
        assert (
            0 < metrics[f"uplift/churn_{arm}_predicted/val"] < 1
            and 0 <= metrics[f"uplift/churn_{arm}_observed/val"] <= 1
        )
        assert metrics[f"uplift/spend_{arm}_predicted/val"] > 0 and metrics[f"uplift/spend_{arm}_observed/val"] >= 0
    observed = metrics["uplift/churn_held_out_observed/val"] - metrics["uplift/churn_sent_observed/val"]
    assert observed == pytest.approx(metrics["uplift/churn_observed/val"], abs=1e-6)
    assert "- Campaigns: " in (campaign_run / "model_card.md").read_text()
    deciles = pd.read_csv(campaign_run / "evaluation" / "uplift_deciles.csv")
    assert (
        set(deciles["outcome"]) == {"churn", "spend"}
        and deciles["contacts"].sum() == 2 * metrics["uplift/contacts/val"]
    )


def test_scoring_with_a_contact_cost_and_in_spilled_partitions_gives_the_same_rows(
    campaign_run: Path, campaign_world: dict[str, Path], tmp_path: Path
) -> None:
    world = campaign_world
    whole, spilled = tmp_path / "whole.parquet", tmp_path / "spilled.parquet"
    common = (f"customers={world['customers']}", "contact.cost=2.5")
    run_predict(campaign_run / "model.onnx", world["events"], whole, *common, cutoff=CAMPAIGN_CUTOFF)
    run_predict(
        campaign_run / "model.onnx",
        world["events"],
        spilled,
        *common,
        f"memory_budget_mb={tightest_budget_mb()}",
        cutoff=CAMPAIGN_CUTOFF,
    )
    a, b = pd.read_parquet(whole), pd.read_parquet(spilled)
    pd.testing.assert_frame_equal(
        b.sort_values("customer_id").reset_index(drop=True), a.sort_values("customer_id").reset_index(drop=True)
    )
    np.testing.assert_allclose(a[CONTACT_VALUE], a["spend_uplift_60d"] - 2.5, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "override", "message"),
    [
        ({"treated": lambda t: t["treated"].replace(1, 7)}, (), "treated must be 1 (sent the offer) or 0 (held out)"),
        ({}, ("data.offer=call",), "no contacts of offer 'call' (data.offer); its offers: ['coupon']"),
    ],
    ids=["treated-not-0-or-1", "unknown-offer"],
)
def test_bad_campaign_input_ends_in_one_line(
    campaign_world: dict[str, Path], tmp_path: Path, change: dict, override: tuple[str, ...], message: str
) -> None:
    world = campaign_world
    campaigns_of(world).assign(**change).to_csv(tmp_path / "campaigns.csv", index=False)
    finished = run_in_process(
        "churnformer-train",
        *CAMPAIGN_TRAINING,
        f"data.events={world['events']}",
        f"data.campaigns={tmp_path / 'campaigns.csv'}",
        f"paths.output_dir={tmp_path / 'run'}",
        *override,
    )
    assert message in finished.error_line


def test_an_offer_is_learned_from_its_own_contacts_and_several_without_a_choice_each_from_theirs(
    campaign_world: dict[str, Path], events: pd.DataFrame
) -> None:
    table = campaigns_of(campaign_world)
    table["offer"] = np.where(np.arange(len(table)) % 3 == 0, "call", "coupon")
    loaded = load_campaigns(table, ColumnMapping(), name="contacts.csv")
    assert one_offer(loaded, None) is loaded
    calls = one_offer(loaded, "call")
    assert (calls["offer"] == "call").all() and len(calls) == (loaded["offer"] == "call").sum()
    assert set(calls["treated"]) == {0, 1} and calls.attrs["source"] == "contacts.csv"
    checked = check_campaigns(loaded, events, int(events["timestamp"].max().value) + 1)
    arms = checked.arms(checked.table)
    assert checked.offers == ("call", "coupon") and checked.summary()["costs"] == {"call": 5.0, "coupon": 5.0}
    expected = 2 * (checked.table["offer"] == "coupon").to_numpy() + checked.table["treated"].to_numpy()
    np.testing.assert_array_equal(arms, expected)


def test_a_campaign_after_the_scores_judges_their_predicted_effects(
    campaign_run: Path, campaign_world: dict[str, Path], tmp_path: Path
) -> None:
    """churnformer-evaluate campaigns=...: the campaigns after the cutoff against their holdout; the earlier
    ones are left out (the scores' features may hold what followed them)."""
    world, cutoff = campaign_world, "2023-12-10"  # before the last campaign (2023-12-17)
    scores = tmp_path / "scores.parquet"
    run_predict(campaign_run / "model.onnx", world["events"], scores, f"customers={world['customers']}", cutoff=cutoff)
    finished = run_in_process(
        "churnformer-evaluate",
        f"predictions={scores}",
        f"events={world['events']}",
        f"cutoff={cutoff}",
        "horizon_days=60",
        f"campaigns={world['campaigns']}",
        f"output={tmp_path / 'evaluation'}",
    )
    assert finished.code == 0, finished.err[-3000:]
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    last = campaigns_of(world).loc[lambda t: t["contacted_at"] == t["contacted_at"].max()]
    assert metrics["uplift_contacts"] == len(last)
    assert np.isfinite(metrics["uplift_churn_qini_auuc"]) and np.isfinite(metrics["uplift_spend_observed"])
    report = (tmp_path / "evaluation" / "report.md").read_text()
    assert "Effect of the contact by decile of predicted uplift" in report
    assert len(pd.read_csv(tmp_path / "evaluation" / "uplift_deciles.csv")) == 20


def test_the_two_model_baseline_predicts_an_effect_for_each_contact(
    campaign_world: dict[str, Path], events: pd.DataFrame
) -> None:
    contacts = pd.read_csv(campaign_world["campaigns"], dtype={"customer_id": str}, parse_dates=["contacted_at"])
    held = validation_mask(contacts["customer_id"].to_numpy(), 0.3)
    train, test = contacts.loc[~held], contacts.loc[held]
    effects = t_learner(events, train, test, 60, num_threads=1)
    assert len(effects) == len(test)
    keys = test.assign(day=test["contacted_at"].dt.normalize())[["customer_id", "day"]]
    pd.testing.assert_frame_equal(
        effects[["customer_id", "day"]].sort_values(["day", "customer_id"]).reset_index(drop=True),
        keys.sort_values(["day", "customer_id"]).reset_index(drop=True),
        check_dtype=False,
    )
    assert np.isfinite(effects[["churn_uplift", "spend_uplift", "churn_probability"]].to_numpy()).all()


# --- several offers --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_offer_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    """The campaign world's customers with two offers (a call and a coupon, at random), and a run trained on it
    without data.offer: one network, an effect per offer."""
    out = tmp_path_factory.mktemp("two-offer-world")
    config = SyntheticWorldConfig.with_defaults(n_customers=600, n_weeks=80, seed=2, campaigns=True, campaign_offers=2)
    write_world(config, out, "csv")
    world = {name: out / f"{name}.csv" for name in ("events", "customers", "campaigns")}
    run_dir = tmp_path_factory.mktemp("two-offer-run")
    train_in_process(
        run_dir,
        *CAMPAIGN_TRAINING,
        f"data.events={world['events']}",
        f"data.customers={world['customers']}",
        f"data.campaigns={world['campaigns']}",
    )
    return world, run_dir


@pytest.mark.slow
def test_one_network_of_several_offers_scores_each_and_picks_each_customer_s_best(
    two_offer_run: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    world, run_dir = two_offer_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for offer in ("call", "coupon"):
        assert metrics[f"uplift/{offer}/contacts/val"] > 0 and np.isfinite(
            metrics[f"uplift/{offer}/churn_qini_auuc/val"]
        )
    assert metrics["uplift/call/contacts/val"] + metrics["uplift/coupon/contacts/val"] == metrics["uplift/contacts/val"]
    scores = tmp_path / "scores.parquet"
    run_predict(
        run_dir / "model.onnx", world["events"], scores, f"customers={world['customers']}", cutoff=CAMPAIGN_CUTOFF
    )
    predictions = pd.read_parquet(scores)
    spend = {offer: predictions[per_offer("spend_uplift_60d", offer)].to_numpy() for offer in ("call", "coupon")}
    np.testing.assert_allclose(predictions[per_offer(CONTACT_VALUE, "call")], spend["call"] - 2.0, atol=1e-4)
    np.testing.assert_allclose(predictions[per_offer(CONTACT_VALUE, "coupon")], spend["coupon"] - 12.0, atol=1e-4)
    # Costs that make each offer the better one for about half of the customers.
    coupon_cost = float(np.median(spend["coupon"] - spend["call"]))
    run_predict(
        run_dir / "model.onnx",
        world["events"],
        scores,
        f"customers={world['customers']}",
        f"contact.cost={{call: 0, coupon: {coupon_cost}}}",
        cutoff=CAMPAIGN_CUTOFF,
    )
    predictions = pd.read_parquet(scores)
    run_predict(
        run_dir / "model.onnx",
        world["events"],
        tmp_path / "spilled.parquet",
        f"customers={world['customers']}",
        f"contact.cost={{call: 0, coupon: {coupon_cost}}}",
        f"memory_budget_mb={tightest_budget_mb()}",
        cutoff=CAMPAIGN_CUTOFF,
    )
    spilled = pd.read_parquet(tmp_path / "spilled.parquet").sort_values("customer_id", ignore_index=True)
    pd.testing.assert_frame_equal(spilled, predictions.sort_values("customer_id", ignore_index=True))
    value = {offer: predictions[per_offer(CONTACT_VALUE, offer)].to_numpy() for offer in ("call", "coupon")}
    np.testing.assert_allclose(value["coupon"], spend["coupon"] - coupon_cost, atol=1e-4)
    best = np.where(value["coupon"] > value["call"], "coupon", "call")  # the first offer where they tie
    np.testing.assert_array_equal(predictions[BEST_OFFER].to_numpy(dtype=object), best)
    assert 0.3 < (best == "call").mean() < 0.7
    for column in (CONTACT_VALUE, CHURN_PROBABILITY_IF_CONTACTED, "churn_uplift_30d", "spend_uplift_60d"):
        own = np.where(best == "call", predictions[per_offer(column, "call")], predictions[per_offer(column, "coupon")])
        np.testing.assert_array_equal(predictions[column].to_numpy(), own)
    missing = run_predict(
        run_dir / "model.onnx", world["events"], scores, "contact.cost={call: 1}", cutoff=CAMPAIGN_CUTOFF, check=False
    )
    assert "contact.cost names no cost for offer(s) ['coupon']; the model's offers: ['call', 'coupon']" in (
        missing.error_line
    )


@pytest.mark.slow
def test_one_offer_s_contacts_judge_its_predicted_effects(
    two_offer_run: tuple[dict[str, Path], Path], tmp_path: Path
) -> None:
    world, run_dir = two_offer_run
    cutoff, scores = "2023-12-10", tmp_path / "scores.parquet"  # before the last campaign (2023-12-17)
    run_predict(run_dir / "model.onnx", world["events"], scores, f"customers={world['customers']}", cutoff=cutoff)
    contacts = campaigns_of(world).loc[lambda t: t["contacted_at"] == t["contacted_at"].max()]
    common = (f"predictions={scores}", f"events={world['events']}", f"cutoff={cutoff}", "horizon_days=60")
    for offer, expected in ((None, len(contacts)), ("call", int((contacts["offer"] == "call").sum()))):
        output = tmp_path / f"evaluation-{offer}"
        chosen = () if offer is None else (f"offer={offer}",)
        finished = run_in_process(
            "churnformer-evaluate", *common, f"campaigns={world['campaigns']}", f"output={output}", *chosen
        )
        assert finished.code == 0, finished.err[-3000:]
        assert json.loads((output / "metrics.json").read_text())["uplift_contacts"] == expected
    unknown = run_in_process(
        "churnformer-evaluate", *common, f"campaigns={world['campaigns']}", f"output={tmp_path / 'x'}", "offer=sms"
    )
    assert "no contacts of offer 'sms'" in unknown.error_line
