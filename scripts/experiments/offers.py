"""Protocol O: which offer for whom, on the synthetic world with two offers whose true effects are known.

Usage::

    python -m scripts.experiments.offers [--seeds 0 1 2] [--customers 10000]
                                         [--models churnformer churnformer_per_offer t_learner]
                                         [--override key=value ...] [--record PATH]

Per seed, the world of protocol U with two offers (``churnformer-synthetic --campaigns --offers 2 --seed S``:
each contacted customer is given a call, cost 2, or a coupon, cost 12, at random, half of each held out): a call
resolves complaints, a coupon moves the price-sensitive, and contact-averse customers leave faster after either.
Every model is judged on the validation customers' contacts (the run's split), each scored as of its campaign's
day, at the main horizon (90 days), and each contact's offer values are the predicted spend uplift of each offer
minus its cost:

- ``captured_top20``: the true incremental value of contacting the 20% of contacts with the highest predicted
  value, each with its predicted best offer, as a share of the oracle's (the 20% with the highest true value,
  each with its truly best offer);
- ``captured_top20_one_offer``: the same model's best policy with one offer for everyone (the better of "the
  20% of highest predicted call value, all called" and the same for coupons): what choosing the offer per
  customer adds;
- ``best_offer_agreement``: the share of contacts whose predicted best offer is the true one;
- ``spend_uplift_corr`` / ``churn_uplift_corr``: Pearson correlation of the predicted effects with the true ones,
  over every contact and offer;
- ``churn_qini_auuc``: each contact's predicted churn effect of its own offer against what the holdouts show.

Models: ``churnformer`` (one network trained on both offers' contacts: an effect per offer); ``churnformer_per_offer``
(two networks, each trained on one offer's contacts, as ``data.offer=`` does); ``t_learner`` (per offer, the
two-model LightGBM of protocol U on that offer's contacts). Prints mean ± std over seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.api import train
from churnformer.baselines.uplift import t_learner
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.synthetic import SyntheticWorldConfig, simulate_world
from churnformer.data.synthetic_campaigns import OFFERS
from churnformer.evaluation.uplift import qini_auuc, top_share_value
from churnformer.schema import per_offer
from scripts.experiments.uplift import (
    CUTOFF,
    HORIZON,
    TOP_SHARE,
    contacts_of,
    observed_outcomes,
    protocol_arguments,
    run_protocol,
    scored_at_contacts,
)

WORLD_OFFERS = OFFERS[2]
KEYS = [CUSTOMER_ID, "day"]
METRICS = (
    "captured_top20",
    "captured_top20_one_offer",
    "best_offer_agreement",
    "spend_uplift_corr",
    "churn_uplift_corr",
    "churn_qini_auuc",
)


def per_offer_effects(scored: pd.DataFrame, offer: str | None) -> pd.DataFrame:
    """``customer_id, day, churn_uplift, spend_uplift`` of one offer from a model's predictions (``offer``: the
    columns of a model of several offers, None: a one-offer model's)."""
    name = (lambda column: per_offer(column, offer)) if offer else (lambda column: column)
    return pd.DataFrame(
        {
            CUSTOMER_ID: scored[CUSTOMER_ID].to_numpy(),
            "day": scored["day"].to_numpy(),
            "churn_uplift": scored[name(f"churn_uplift_{HORIZON}d")].to_numpy(),
            "spend_uplift": scored[name(f"spend_uplift_{HORIZON}d")].to_numpy(),
        }
    )


def judged(
    effects: dict[str, pd.DataFrame], test: pd.DataFrame, truth: pd.DataFrame, outcomes: pd.DataFrame
) -> dict[str, float]:
    """The protocol's metrics of one model's effects per offer (offer name -> its effects on the test contacts)."""
    frame = test[[*KEYS, "treated", "offer"]].merge(truth, on=KEYS).merge(outcomes, on=KEYS)
    for offer, table in effects.items():
        renamed = table[[*KEYS, "churn_uplift", "spend_uplift"]].rename(
            columns={c: f"{c}@{offer}" for c in ("churn_uplift", "spend_uplift")}
        )
        frame = frame.merge(renamed, on=KEYS)
    names = [offer.name for offer in WORLD_OFFERS]
    cost = np.array([offer.cost for offer in WORLD_OFFERS])
    predicted = np.stack([frame[f"spend_uplift@{o}"] for o in names], axis=1) - cost
    true = np.stack([frame[per_offer(f"spend_uplift_{HORIZON}d", o)] for o in names], axis=1) - cost
    rows = np.arange(len(frame))
    chosen = predicted.argmax(axis=1)
    oracle = top_share_value(true.max(axis=1), true.max(axis=1), TOP_SHARE)
    one_offer = max(top_share_value(predicted[:, k], true[:, k], TOP_SHARE) for k in range(len(names)))
    own = frame["offer"].map({o: k for k, o in enumerate(names)}).to_numpy()
    churn_predicted = np.stack([frame[f"churn_uplift@{o}"] for o in names], axis=1)
    churn_true = np.stack([frame[per_offer(f"churn_uplift_{HORIZON}d", o)] for o in names], axis=1)
    observed = frame["observed"].to_numpy() > 0
    return {
        "contacts": len(frame),
        "captured_top20": top_share_value(predicted[rows, chosen], true[rows, chosen], TOP_SHARE) / oracle,
        "captured_top20_one_offer": one_offer / oracle,
        "best_offer_agreement": float((chosen == true.argmax(axis=1)).mean()),
        "spend_uplift_corr": float(np.corrcoef((predicted + cost).ravel(), (true + cost).ravel())[0, 1]),
        "churn_uplift_corr": float(np.corrcoef(churn_predicted.ravel(), churn_true.ravel())[0, 1]),
        "churn_qini_auuc": qini_auuc(
            churn_predicted[rows, own][observed],
            1.0 - frame["churn"].to_numpy()[observed],
            frame["treated"].to_numpy()[observed],
        ),
    }


def run_seed(seed: int, args: argparse.Namespace, workdir: Path) -> list[dict]:
    config = SyntheticWorldConfig.with_defaults(
        n_customers=args.customers, seed=seed, campaigns=True, campaign_offers=len(WORLD_OFFERS)
    )
    frames = simulate_world(config)
    events, customers, campaigns = frames.events, frames.customers, frames.campaigns
    truth = frames.true_uplift.assign(day=lambda t: t["contacted_at"].dt.normalize()).drop(columns="contacted_at")
    train_contacts, test = contacts_of(campaigns)
    outcomes = observed_outcomes(events, test)
    names = [offer.name for offer in WORLD_OFFERS]

    def trained(name: str, contacts: pd.DataFrame) -> Path:
        overrides = [f"seed={seed}", "explain_validation=false", *args.override]
        run = train(
            events, CUTOFF, HORIZON, customers, output_dir=workdir / name, overrides=overrides, campaigns=contacts
        )
        return run.model_path

    rows = []
    if "churnformer" in args.models:
        scored = scored_at_contacts(trained(f"seed{seed}", campaigns), events, customers, test)
        effects = {offer: per_offer_effects(scored, offer) for offer in names}
        rows.append({"model": "churnformer (one network)", "seed": seed, **judged(effects, test, truth, outcomes)})
    if "churnformer_per_offer" in args.models:
        effects = {}
        for offer in names:
            model = trained(f"seed{seed}-{offer}", campaigns.loc[campaigns["offer"] == offer])
            effects[offer] = per_offer_effects(scored_at_contacts(model, events, customers, test), None)
        rows.append(
            {"model": "churnformer (a network per offer)", "seed": seed, **judged(effects, test, truth, outcomes)}
        )
    if "t_learner" in args.models:
        effects = {
            offer: t_learner(
                events,
                train_contacts.loc[train_contacts["offer"] == offer],
                test,
                HORIZON,
                seed=seed,
                num_threads=args.gbm_threads,
            )
            for offer in names
        }
        rows.append({"model": "t_learner per offer (LightGBM)", "seed": seed, **judged(effects, test, truth, outcomes)})
    for row in rows:
        print({key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    protocol_arguments(parser, 10_000, ["churnformer", "churnformer_per_offer", "t_learner"])
    title = "Protocol O: which offer for whom, two offers (mean ± std over seeds)"
    run_protocol("experiments.offers", title, parser.parse_args(), run_seed, METRICS)


if __name__ == "__main__":
    main()
