"""A learning curve: churnformer (the default config) against RFM + LightGBM by number of training customers.

Usage::

    python -m scripts.experiments.learning_curve [--sizes 1000 3000 10000 30000 100000] [--seeds 0 1 2]
                                     [--max-seeds-above 10000:1] [--test-customers 5000]
                                     [--override key=value ...] [--record PATH] [--figure PATH]
                                     [--tables-from JSON]

One synthetic world (``churnformer.data.synthetic``, seed 0, cutoff and horizon of ``conf/data/synthetic.yaml``)
with ``--test-customers`` more customers than the largest size. The same test customers (drawn once) score
every model; each size trains on a random draw (by seed) of that many of the others: where does reading the
sequence start to pay over boosted trees on aggregates? ``--max-seeds-above 10000:1``: sizes above 10,000 run
only the first seed (training time grows with the customers). Metrics and models as
``scripts/experiments/compare.py`` measures them (extra ``baselines``); prints a table per size and writes a
figure of churn PR-AUC and spend Gini against the training customers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, load_events
from churnformer.data.synthetic import SyntheticWorldConfig, generate_world
from churnformer.data.window import HorizonGrid, Window
from scripts.common import record
from scripts.experiments.compare import (
    DATASETS,
    Protocol,
    baseline_model,
    churnformer_model,
    mean_std,
    run_models,
)

SHOWN = ("churn_auc", "churn_pr_auc", "churn_ece", "spend_gini", "spend_spearman", "train_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000, 30000, 100000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-seeds-above", default="10000:1", help="SIZE:N: sizes above SIZE run N seeds")
    parser.add_argument("--test-customers", type=int, default=5000)
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for churnformer")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--tables-from", type=Path, help="print the table and draw the figure of a record")
    record.add_argument(parser)
    args = parser.parse_args()
    if args.tables_from:
        rows = record.load(args.tables_from)["figures"]["rows"]
        print(curve_table(rows).to_string(index=False))
    else:
        with record.recorded("experiments.learning_curve", args) as run:
            rows = measure(args)
            table = curve_table(rows)
            print(table.to_string(index=False))
            run.figures, run.tables = {"rows": rows}, {"curve": record.frame_table(table)}
    if args.figure:
        draw(pd.DataFrame(rows), args.figure)


def curve_table(rows: list[dict]) -> pd.DataFrame:
    """Mean ± std over seeds, by training size and model."""
    return mean_std(pd.DataFrame(rows), ["size", "model"], list(SHOWN))


def measure(args: argparse.Namespace) -> list[dict]:
    settings = DATASETS["synthetic"]
    window = Window.from_cutoff(settings["cutoff"], settings["horizon_days"])
    protocol = Protocol(window, HorizonGrid.of(settings["horizons_days"], settings["horizon_days"]), 0.10)
    world = SyntheticWorldConfig.with_defaults(n_customers=max(args.sizes) + args.test_customers, seed=0)
    events, customers = generate_world(world)
    events = load_events(events)
    eligible = np.sort(events.loc[events[TIMESTAMP] < window.feature_end, CUSTOMER_ID].unique())
    drawn = np.random.default_rng(12345).permutation(eligible)
    test_ids, pool = np.sort(drawn[: args.test_customers]), drawn[args.test_customers :]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="churnformer-curve-"))
    threshold, capped = (int(part) for part in args.max_seeds_above.split(":"))
    rows = []
    for size in args.sizes:
        seeds = args.seeds if size <= threshold else args.seeds[:capped]
        for seed in seeds:
            train_ids = np.sort(np.random.default_rng(seed).permutation(pool)[:size])
            models = {
                "churnformer": churnformer_model(
                    [*settings["overrides"], *args.override], workdir / str(size), protocol
                ),
                "lightgbm": baseline_model("lightgbm", 1, protocol),
            }
            for row in run_models(events, customers, protocol, models, train_ids, test_ids, seed):
                rows.append({"size": size, **row})
                print(
                    f"size {size} seed {seed} {row['model']}: PR-AUC {row['churn_pr_auc']:.4f} "
                    f"Gini {row['spend_gini']:.4f} ({row['train_s']:.0f} s)",
                    flush=True,
                )
    return rows


def draw(rows: pd.DataFrame, path: Path) -> None:
    """Churn PR-AUC and spend Gini (mean, and the seeds' range) against the training customers, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric, title in zip(axes, ("churn_pr_auc", "spend_gini"), ("churn PR-AUC", "spend Gini"), strict=True):
        for model, group in rows.groupby("model"):
            by_size = group.groupby("size")[metric]
            axis.errorbar(
                by_size.mean().index, by_size.mean(), yerr=by_size.std().fillna(0), marker="o", capsize=3, label=model
            )
        axis.set_xscale("log")
        axis.set_xlabel("training customers")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
