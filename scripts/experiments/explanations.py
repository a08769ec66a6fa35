"""Benchmark: do the explanations name the drivers the synthetic world is built with?

Usage::

    python -m scripts.experiments.explanations --model RUN_DIR/model.onnx [--customers 20000] [--seed 7]
                                    [--cutoff 2024-06-30] [--shapley-sample 300] [--record PATH]

The synthetic world's churn has known causes (``churnformer.data.synthetic``): a complaint adds to the
weekly hazard of starting to decline for a few weeks, and some static attributes multiply it (age band
18-24 by 2.0, signup channel paid_social by 2.2). A fresh world (``--seed``: one the model never saw) is
explained at the cutoff with occlusion, the default, and the table compares against the targets:

* customers with a complaint in the 30 days up to the cutoff: share whose ``risk_driver_1`` is ``complaint``;
* customers in a static group that raises dropout: share whose attribute has a positive churn effect;
* every explained customer with a ``risk_driver_1`` and another group present: share for whom removing
  ``risk_driver_1`` lowers churn probability more than removing one other present group drawn at random;
* ``explain.method=shapley`` on ``--shapley-sample`` customers: the largest gap between the sum of a
  customer's Shapley values and f(x) − f(empty history, no attributes), churn probability and spend.

The model should be trained on the synthetic world (the README's main command trains one).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID
from churnformer.data.sequences import empty_histories
from churnformer.data.synthetic import (
    AGE_BANDS,
    AGE_HAZARD,
    SIGNUP_CHANNELS,
    SIGNUP_HAZARD,
    SyntheticWorldConfig,
    generate_world,
)
from churnformer.serving.explain import CHURN_EFFECT, GROUP, SPEND_EFFECT
from churnformer.serving.predictor import Predictor
from scripts.common import record

TARGETS = {"complaint_first": 0.80, "static_positive": 0.80, "driver_beats_random": 0.90, "shapley_gap": 1e-5}
RAISING = {
    "age_band": dict(zip(AGE_BANDS, AGE_HAZARD, strict=True)),
    "signup_channel": dict(zip(SIGNUP_CHANNELS, SIGNUP_HAZARD, strict=True)),
}


def recent_complainers(events: pd.DataFrame, cutoff: str) -> np.ndarray:
    """Customers with a complaint in the 30 days up to the end of the cutoff day."""
    end = pd.Timestamp(cutoff) + pd.Timedelta(days=1)
    recent = (events["event_type"] == "complaint") & events["timestamp"].between(end - pd.Timedelta(days=30), end)
    return events.loc[recent & (events["timestamp"] < end), CUSTOMER_ID].unique()


def static_positive_shares(effects: pd.DataFrame, customers: pd.DataFrame) -> dict[str, float]:
    """Per attribute value that at least doubles the hazard: share of its customers with a positive effect."""
    shares = {}
    for column, hazards in RAISING.items():
        for value, hazard in hazards.items():
            if hazard < 2.0:
                continue
            members = customers.loc[customers[column] == value, CUSTOMER_ID]
            rows = effects.loc[(effects[GROUP] == column) & effects[CUSTOMER_ID].isin(members)]
            shares[f"{column}={value}"] = float((rows[CHURN_EFFECT] > 0).mean())
    return shares


def driver_beats_random(effects: pd.DataFrame, predictions: pd.DataFrame, seed: int) -> float:
    """Share of customers whose ``risk_driver_1`` lowers churn more, removed, than a random other group."""
    with_driver = effects.merge(predictions[[CUSTOMER_ID, "risk_driver_1"]], on=CUSTOMER_ID)
    with_driver = with_driver.loc[with_driver["risk_driver_1"] != ""]
    is_driver = with_driver[GROUP] == with_driver["risk_driver_1"]
    driver = with_driver.loc[is_driver].set_index(CUSTOMER_ID)[CHURN_EFFECT]
    other = with_driver.loc[~is_driver].groupby(CUSTOMER_ID).sample(1, random_state=seed)
    other = other.set_index(CUSTOMER_ID)[CHURN_EFFECT]
    both = driver.index.intersection(other.index)
    return float((driver[both] > other[both]).mean())


def shapley_gap(model: Predictor, events: pd.DataFrame, customers: pd.DataFrame, cutoff: str, n: int) -> float:
    """Largest |sum of Shapley values − (f(x) − f(empty))| over ``n`` customers, churn and spend."""
    ids = np.sort(events[CUSTOMER_ID].unique())[:n]
    result = model.explaining({"method": "shapley"}).score(events.loc[events[CUSTOMER_ID].isin(ids)], cutoff, customers)
    totals = result.effects.groupby(CUSTOMER_ID)[[CHURN_EFFECT, SPEND_EFFECT]].sum()
    scored = result.predictions.set_index(CUSTOMER_ID).loc[totals.index]
    blank = customers.loc[customers[CUSTOMER_ID].isin(totals.index)].copy()
    blank.loc[:, [c for c in blank.columns if c != CUSTOMER_ID]] = None
    empty = model.score_sequences(empty_histories(totals.index.to_numpy(), model.featurizer, blank))
    empty = empty.set_index(CUSTOMER_ID).loc[totals.index]
    gaps = [
        np.abs(totals[effect].to_numpy() - (scored[column].to_numpy(np.float64) - empty[column].to_numpy(np.float64)))
        for effect, column in ((CHURN_EFFECT, "churn_probability"), (SPEND_EFFECT, "expected_spend"))
    ]
    return float(max(gap.max() for gap in gaps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cutoff", default="2024-06-30")
    parser.add_argument("--shapley-sample", type=int, default=300)
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("experiments.explanations", args) as run:
        run.figures, rows = measure(args)
        run.tables["checks"] = record.table(["check", "value", "target"], rows)


def measure(args: argparse.Namespace) -> tuple[dict, list[tuple[str, str, str]]]:
    """Every check on the explained world: the figures and the table's rows."""
    events, customers = generate_world(SyntheticWorldConfig.with_defaults(n_customers=args.customers, seed=args.seed))
    model = Predictor(args.model)
    started = time.perf_counter()
    explained = model.explaining(True).score(events, args.cutoff, customers)
    wall_s = time.perf_counter() - started
    predictions, effects = explained.predictions, explained.effects
    complainers = predictions.loc[predictions[CUSTOMER_ID].isin(recent_complainers(events, args.cutoff))]
    result = {
        "customers_explained": explained.summary.customers_explained,
        "explain_wall_s": wall_s,
        "infer_s": explained.summary.infer_s,
        "recent_complainers": len(complainers),
        "complaint_first": float((complainers["risk_driver_1"] == "complaint").mean()),
        "static_positive": static_positive_shares(effects, customers),
        "driver_beats_random": driver_beats_random(effects, predictions, args.seed),
        "shapley_gap": shapley_gap(model, events, customers, args.cutoff, args.shapley_sample),
    }
    rows = [
        (
            f"complaint in the last 30 days ({len(complainers):,}): complaint is risk_driver_1",
            f"{result['complaint_first']:.1%}",
            f">= {TARGETS['complaint_first']:.0%}",
        ),
        *(
            (f"{group}: positive churn effect", f"{share:.1%}", f">= {TARGETS['static_positive']:.0%}")
            for group, share in result["static_positive"].items()
        ),
        (
            "removing risk_driver_1 beats removing a random group",
            f"{result['driver_beats_random']:.1%}",
            f">= {TARGETS['driver_beats_random']:.0%}",
        ),
        ("Shapley: |sum - (f(x) - f(empty))|, max", f"{result['shapley_gap']:.1e}", f"<= {TARGETS['shapley_gap']:g}"),
        (
            f"occlusion of {result['customers_explained']:,} customers: wall (s)",
            f"{wall_s:.1f} ({explained.summary.infer_s:.1f} plain inference)",
            "",
        ),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{args.model}: synthetic world of {args.customers:,} customers (seed {args.seed}), cutoff {args.cutoff}")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}  {target}")
    return result, rows


if __name__ == "__main__":
    main()
