"""How much can text help on the synthetic world? LightGBM on RFM features, alone and with ground truth.

Usage::

    python -m scripts.experiments.text_ceiling [--customers 20000] [--seed 0]

The default world with texts (``churnformer-synthetic --text``), cutoff 2024-06-30, churn within 90 days;
customers split 50/50 at random. Three rows, each LightGBM on the same RFM features (recency, tenure,
purchases and spend over 30/90/365 days, tickets and complaints over the same windows), plus:

* nothing (what the log says without its texts);
* counts of upset texts and of texts over 30/60/90/180 days, the tone taken from the generator's own
  sentences (a perfect reader of the texts, summarized);
* the customer's hidden state at the cutoff (unhappy or not): the ceiling of anything texts can add.
"""

from __future__ import annotations

import argparse

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

import churnformer.data.synthetic as synthetic
from churnformer.data.synthetic_text import UPSET
from scripts.common import record

CUTOFF = pd.Timestamp("2024-07-01")  # the end of the cutoff day 2024-06-30
HORIZON = pd.Timedelta(days=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="the split's seed")
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("experiments.text_ceiling", args) as run:
        run.figures = measure(args)
        run.tables["churn_auc"] = record.table(
            ["LightGBM on", "test churn AUC"], [(name, f"{auc:.4f}") for name, auc in run.figures["churn_auc"].items()]
        )


def measure(args: argparse.Namespace) -> dict:
    """LightGBM's test churn AUC on RFM features alone, with perfect tone counts, with the hidden state."""
    hidden = {}
    unhappiness = synthetic._unhappiness

    def keep_hidden_state(seed, state):  # the generator's own function, its result kept on the way
        drawn = unhappiness(seed, state)
        hidden["since"] = drawn[1]
        return drawn

    synthetic._unhappiness = keep_hidden_state
    world = synthetic.SyntheticWorldConfig.with_defaults(n_customers=args.customers, text=True)
    events, _ = synthetic.generate_world(world)
    before = events[events["timestamp"] < CUTOFF]
    after = events[(events["timestamp"] >= CUTOFF) & (events["timestamp"] < CUTOFF + HORIZON)]
    ids = before["customer_id"].unique()
    days = (CUTOFF - before["timestamp"]).dt.days
    purchases = before[before["amount"] > 0]
    rfm = pd.DataFrame(index=ids)
    rfm["recency"] = (CUTOFF - purchases.groupby("customer_id")["timestamp"].max()).dt.days
    rfm["tenure"] = (CUTOFF - before.groupby("customer_id")["timestamp"].min()).dt.days
    for window in (30, 90, 365):
        recent = purchases[(CUTOFF - purchases["timestamp"]).dt.days < window].groupby("customer_id")["amount"]
        rfm[f"purchases_{window}d"], rfm[f"spend_{window}d"] = recent.size(), recent.sum()
        for kind in ("support_ticket", "complaint"):
            rfm[f"{kind}_{window}d"] = (
                before[(days < window) & (before["event_type"] == kind)].groupby("customer_id").size()
            )
    rfm = rfm.fillna(0)
    upset = before["text"].fillna("").map(lambda text: any(sentence in text for sentence in UPSET))
    tone = rfm.copy()
    for window in (30, 60, 90, 180):
        tone[f"upset_{window}d"] = before[upset & (days < window)].groupby("customer_id").size()
        tone[f"texts_{window}d"] = before[before["text"].notna() & (days < window)].groupby("customer_id").size()
    tone = tone.fillna(0)
    state = rfm.copy()
    week = (CUTOFF - pd.Timestamp(world.start)).days // 7
    state["unhappy"] = hidden["since"][[int(i[1:]) for i in ids]] <= week
    churn = (~pd.Index(ids).isin(after.loc[after["amount"] > 0, "customer_id"])).astype(int)
    train = np.random.default_rng(args.seed).random(len(ids)) < 0.5
    print(f"{len(ids):,} customers, churn rate {churn.mean():.3f}; test churn AUC of LightGBM on")
    aucs = {}
    for name, features in (("RFM", rfm), ("RFM + upset-text counts", tone), ("RFM + hidden state", state)):
        model = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.03, verbose=-1, random_state=0)
        model.fit(features[train], churn[train])
        aucs[name] = roc_auc_score(churn[~train], model.predict_proba(features[~train])[:, 1])
        print(f"  {name:<26} {aucs[name]:.4f}")
    return {"customers": len(ids), "churn_rate": float(churn.mean()), "churn_auc": aucs}


if __name__ == "__main__":
    main()
