"""Protocol U: whom to contact, on the synthetic world with randomized campaigns whose true effects are known.

Usage::

    python -m scripts.experiments.uplift [--seeds 0 1 2] [--customers 20000]
                                         [--models churnformer t_learner x_learner t_learner_hidden]
                                         [--override key=value ...] [--record PATH]

Per seed, the world (``churnformer-synthetic --campaigns --seed S``: every 8 weeks from week 26, 30% of the
active customers contacted, half of them held out at random) and churnformer trained on it through the Python
API with its campaigns (``data.campaigns``; cutoff 2024-06-30, the package defaults, ``seed=S``). Every model is
judged on the validation customers' contacts (the run's own split: the hash of the id), each scored as of its
campaign's day, at the main horizon (90 days):

- ``churn_qini_auuc`` / ``spend_qini_auuc``: the Qini AUUC of the predicted effect against the outcomes the
  holdout shows (:mod:`churnformer.evaluation.uplift`; retention for churn);
- ``churn_uplift_corr``: Pearson correlation of the predicted drop in churn with the true one
  (``true_uplift.parquet``, from each customer's hidden state);
- ``captured_top20``: the true incremental value (spend uplift minus the offer's cost) of contacting the 20% of
  contacts with the highest predicted contact value, as a share of the oracle's (the 20% with the highest true
  value); ``captured_top20_by_risk``: the same for the 20% with the highest churn probability;
- ``churn_uplift_bias`` / ``spend_uplift_bias``: the mean predicted effect minus the mean true one (what a
  budget drawn up from the predictions would be off by, per contact).

Baselines on the same contacts: ``t_learner`` (two LightGBM models per outcome on RFM features at each contact's
day, one per arm: :mod:`churnformer.baselines.uplift`); ``x_learner`` (causalml's X-learner with LightGBM
learners on the same features, propensity 0.5; needs ``pip install causalml``). A ceiling row,
``t_learner_hidden``: the T-learner given also the hidden state that decides each effect (price sensitivity,
contact aversion, whether declining, recent complaints; no real log has it): what this many randomized contacts
allow a learner that sees everything. Prints mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.api import train
from churnformer.baselines.gbm import BASE_PARAMS, top_event_types
from churnformer.baselines.uplift import ContactRows, t_learner
from churnformer.data.events import CUSTOMER_ID
from churnformer.data.labels import LabelSpec
from churnformer.data.synthetic import SyntheticWorldConfig, simulate_world
from churnformer.data.synthetic_campaigns import OFFERS
from churnformer.data.training_set import validation_mask
from churnformer.evaluation.uplift import qini_auuc, top_share_value
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings
from scripts.common import record

CUTOFF = "2024-06-30"
HORIZON = 90
VAL_FRACTION = 0.2
TOP_SHARE = 0.2
OFFER_COST = OFFERS[1][0].cost  # the one-offer world's coupon
METRICS = (
    "churn_qini_auuc",
    "spend_qini_auuc",
    "churn_uplift_corr",
    "spend_uplift_corr",
    "captured_top20",
    "captured_top20_by_risk",
    "churn_uplift_bias",
    "spend_uplift_bias",
)


def contacts_of(campaigns: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and the validation customers' contacts (the run's split), each with its day."""
    contacts = campaigns.assign(day=campaigns["contacted_at"].dt.normalize())
    held = validation_mask(contacts[CUSTOMER_ID].to_numpy(), VAL_FRACTION)
    return contacts.loc[~held].reset_index(drop=True), contacts.loc[held].reset_index(drop=True)


def scored_at_contacts(model: Path, events: pd.DataFrame, customers: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The exported model's predictions (every column) for each test contact, with its ``day``, scored as of the
    day before its campaign (features from the events before the campaign's day, as in training)."""
    predictor = Predictor(model, ScoringSettings.defaults(progress=False))
    parts = []
    for day, group in test.groupby("day", sort=True):
        cutoff = str((day - pd.Timedelta(days=1)).date())
        scored = predictor.score(events, cutoff, customers).predictions
        parts.append(scored.loc[scored[CUSTOMER_ID].isin(group[CUSTOMER_ID])].assign(day=day))
    return pd.concat(parts, ignore_index=True)


def churnformer_effects(model: Path, events: pd.DataFrame, customers: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The model's effects and churn probability at the protocol's horizon for each test contact."""
    scored = scored_at_contacts(model, events, customers, test)
    return pd.DataFrame(
        {
            CUSTOMER_ID: scored[CUSTOMER_ID].to_numpy(),
            "day": scored["day"].to_numpy(),
            "churn_uplift": scored[f"churn_uplift_{HORIZON}d"].to_numpy(),
            "spend_uplift": scored[f"spend_uplift_{HORIZON}d"].to_numpy(),
            "churn_probability": scored["churn_probability"].to_numpy(),
        }
    )


def x_learner(events: pd.DataFrame, train_contacts: pd.DataFrame, test: pd.DataFrame, seed: int) -> pd.DataFrame:
    """causalml's X-learner (LightGBM learners, propensity 0.5) on the T-learner's features and outcomes."""
    from causalml.inference.meta import BaseXRegressor
    from lightgbm import LGBMRegressor

    event_types = top_event_types(events.loc[events[CUSTOMER_ID].isin(train_contacts[CUSTOMER_ID]).to_numpy()])
    fitted, scored = (
        ContactRows.of(events, frame, HORIZON, event_types, LabelSpec()) for frame in (train_contacts, test)
    )
    params = {"learning_rate": 0.03, "num_leaves": 15, "min_child_samples": 50, "n_estimators": 300}
    params |= {"random_state": seed, "verbose": -1, "n_jobs": int(BASE_PARAMS.get("num_threads", 2))}
    effects = {}
    for name, outcome in (("churn_uplift", 1.0 - fitted.churn), ("spend_uplift", fitted.spend)):
        learner = BaseXRegressor(learner=LGBMRegressor(**params))
        learner.fit(X=fitted.features, treatment=fitted.treated, y=outcome, p=np.full(len(outcome), 0.5))
        effects[name] = learner.predict(scored.features, p=np.full(len(scored.features), 0.5)).ravel()
    return scored.keys.reset_index(drop=True).assign(**effects, churn_probability=np.nan)


def judged(effects: pd.DataFrame, test: pd.DataFrame, truth: pd.DataFrame, outcomes: pd.DataFrame) -> dict[str, float]:
    """The protocol's metrics of one model's effects on the test contacts."""
    keys = [CUSTOMER_ID, "day"]
    frame = test[[*keys, "treated"]].merge(effects, on=keys).merge(truth, on=keys).merge(outcomes, on=keys)
    frame = frame.loc[frame["observed"] > 0]
    treated = frame["treated"].to_numpy()
    true_value = frame[f"spend_uplift_{HORIZON}d"].to_numpy() - OFFER_COST
    oracle = top_share_value(true_value, true_value, TOP_SHARE)
    value = frame["spend_uplift"].to_numpy() - OFFER_COST
    risk = frame["churn_probability"].to_numpy()
    return {
        "contacts": len(frame),
        "churn_qini_auuc": qini_auuc(frame["churn_uplift"].to_numpy(), 1.0 - frame["churn"].to_numpy(), treated),
        "spend_qini_auuc": qini_auuc(frame["spend_uplift"].to_numpy(), frame["spend"].to_numpy(), treated),
        "churn_uplift_corr": float(np.corrcoef(frame["churn_uplift"], frame[f"churn_uplift_{HORIZON}d"])[0, 1]),
        "spend_uplift_corr": float(np.corrcoef(frame["spend_uplift"], frame[f"spend_uplift_{HORIZON}d"])[0, 1]),
        "captured_top20": top_share_value(value, true_value, TOP_SHARE) / oracle,
        "captured_top20_by_risk": top_share_value(risk, true_value, TOP_SHARE) / oracle
        if np.isfinite(risk).all()
        else np.nan,
        "churn_uplift_bias": float(frame["churn_uplift"].mean() - frame[f"churn_uplift_{HORIZON}d"].mean()),
        "spend_uplift_bias": float(frame["spend_uplift"].mean() - frame[f"spend_uplift_{HORIZON}d"].mean()),
    }


def observed_outcomes(events: pd.DataFrame, contacts: pd.DataFrame) -> pd.DataFrame:
    """Each contact's churn and spend at the horizon from its day, and whether the log observes it."""
    rows = ContactRows.of(events, contacts, HORIZON, [], LabelSpec())
    return rows.keys.reset_index(drop=True).assign(churn=rows.churn, spend=rows.spend, observed=1.0)


def run_seed(seed: int, args: argparse.Namespace, workdir: Path) -> list[dict]:
    frames = simulate_world(SyntheticWorldConfig.with_defaults(n_customers=args.customers, seed=seed, campaigns=True))
    events, customers, campaigns = frames.events, frames.customers, frames.campaigns
    truth = frames.true_uplift.assign(day=lambda t: t["contacted_at"].dt.normalize()).drop(columns="contacted_at")
    train_contacts, test = contacts_of(campaigns)
    outcomes = observed_outcomes(events, test)
    rows = []
    if "churnformer" in args.models:
        run = train(
            events,
            CUTOFF,
            HORIZON,
            customers,
            output_dir=workdir / f"seed{seed}",
            overrides=[f"seed={seed}", "explain_validation=false", *args.override],
            campaigns=campaigns,
        )
        effects = churnformer_effects(run.model_path, events, customers, test)
        rows.append({"model": "churnformer", "seed": seed, **judged(effects, test, truth, outcomes)})
    if "t_learner" in args.models:
        effects = t_learner(events, train_contacts, test, HORIZON, seed=seed, num_threads=args.gbm_threads)
        rows.append({"model": "t_learner (LightGBM)", "seed": seed, **judged(effects, test, truth, outcomes)})
    if "t_learner_hidden" in args.models:  # a ceiling: the hidden state that decides each effect, as features
        hidden = truth[[CUSTOMER_ID, "day", *(c for c in truth.columns if c.startswith("hidden_"))]]
        effects = t_learner(
            events, train_contacts, test, HORIZON, seed=seed, num_threads=args.gbm_threads, extra=hidden
        )
        rows.append(
            {"model": "t_learner + hidden state (ceiling)", "seed": seed, **judged(effects, test, truth, outcomes)}
        )
    if "x_learner" in args.models:
        effects = x_learner(events, train_contacts, test, seed)
        rows.append({"model": "x_learner (causalml)", "seed": seed, **judged(effects, test, truth, outcomes)})
    for row in rows:
        print({key: round(value, 4) if isinstance(value, float) else value for key, value in row.items()}, flush=True)
    return rows


def summary(rows: list[dict], metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Mean ± std over seeds per model."""
    frame = pd.DataFrame(rows)
    grouped = frame.groupby("model", sort=False)[list(metrics)]
    means, stds = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    cells = {m: [f"{means.loc[i, m]:.4f} ± {stds.loc[i, m]:.4f}" for i in means.index] for m in metrics}
    return pd.DataFrame({"model": means.index, **cells})


def protocol_arguments(parser: argparse.ArgumentParser, customers: int, models: list[str]) -> None:
    """The arguments of every campaign protocol (this one, ``scripts.experiments.offers``)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--customers", type=int, default=customers)
    parser.add_argument("--models", nargs="+", default=models, choices=models)
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for churnformer")
    parser.add_argument("--gbm-threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where training runs go (default: a temp dir)")
    record.add_argument(parser)


def run_protocol(
    benchmark: str,
    title: str,
    args: argparse.Namespace,
    run_seed: Callable[[int, argparse.Namespace, Path], list[dict]],
    metrics: tuple[str, ...],
) -> None:
    """Every seed's rows, recorded, and their mean ± std per model printed and tabled as ``title``."""
    with record.recorded(benchmark, args) as run, tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        rows = [row for seed in args.seeds for row in run_seed(seed, args, workdir)]
        table = summary(rows, metrics)
        print(table.to_string(index=False))
        run.figures = {"rows": rows}
        run.tables = {title: record.frame_table(table)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    protocol_arguments(parser, 20_000, ["churnformer", "t_learner", "x_learner", "t_learner_hidden"])
    title = "Protocol U: uplift on the synthetic world with campaigns (mean ± std over seeds)"
    run_protocol("experiments.uplift", title, parser.parse_args(), run_seed, METRICS)


if __name__ == "__main__":
    main()
