"""Protocol A: churnformer against BG/NBD + Gamma-Gamma, LightGBM on RFM features and a GRU, in one run.

Usage::

    python scripts/benchmark_cdnow.py [--dataset cdnow|synthetic] [--cutoff YYYY-MM-DD] [--horizon-days N]
                                      [--seeds 0 1 2]
                                      [--models churnformer gru lightgbm btyd] [--ensemble MODEL ...]
                                      [--json PATH] [--markdown PATH]
                                      [--override key=value ...]

CDNOW master log (pip install -e ".[baselines]"), cutoff 1997-09-30, horizon 273 days, all 23,570
customers split 50/50 at random by seed; every model trains on the training half only (its own
validation split taken from inside it) and is scored on the test half. ``--dataset synthetic`` runs the
same protocol on the built-in synthetic world (20,000 customers, cutoff 2024-06-30, horizon 90 days);
``--cutoff``/``--horizon-days`` run it at another cutoff of the same log (do the defaults generalize?).
``--ensemble churnformer gru lightgbm`` adds the mean of those models' predictions as one more row: a
rough ceiling of what the log's information supports, to read the single models' rows against.
``churn_ece_floor`` is the ECE a perfectly calibrated model with the same predictions would show on the
same number of test customers: the part of ``churn_ece`` that is sampling noise.
churnformer and the GRU run with the package defaults (``--override`` passes Hydra overrides to both),
trained and scored through the public API (ONNX model, onnxruntime). Prints mean ± std over seeds and
writes every per-seed row to JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # LightGBM's spinning threads starve everything else

import numpy as np
import pandas as pd

from churnformer.api import predict, train
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, load_events
from churnformer.data.labels import make_labels
from churnformer.data.window import Window
from churnformer.evaluation.metrics import expected_calibration_error
from churnformer.evaluation.report import evaluate

DATASETS = {
    "cdnow": {"cutoff": "1997-09-30", "horizon_days": 273},
    "synthetic": {"cutoff": "2024-06-30", "horizon_days": 90},
}
PREDICTED = ("churn_probability", "expected_spend")
SHOWN = (
    "churn_auc",
    "churn_pr_auc",
    "churn_brier",
    "churn_ece",
    "churn_ece_floor",
    "spend_gini",
    "spend_spearman",
    "spend_decile_mape",
    "spend_aggregate_error",
    "train_s",
)
Predictor = Callable[[pd.DataFrame, pd.DataFrame | None, Window, np.ndarray, np.ndarray, int], pd.DataFrame]


def load_dataset(name: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if name == "cdnow":
        from churnformer.data.cdnow import load_cdnow

        return load_events(load_cdnow()), None
    from churnformer.data.synthetic import SyntheticWorldConfig, generate_world

    events, customers = generate_world(SyntheticWorldConfig.with_defaults(n_customers=20_000, seed=0))
    return load_events(events), customers


def split(customer_ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Customers 50/50 at random by seed."""
    order = np.random.default_rng(seed).permutation(len(customer_ids))
    half = len(customer_ids) // 2
    return customer_ids[order[:half]], customer_ids[order[half:]]


def churnformer_model(overrides: list[str], workdir: Path) -> Predictor:
    def run(events, customers, window, train_ids, test_ids, seed) -> pd.DataFrame:
        cutoff = str((window.feature_end - pd.Timedelta(days=1)).date())
        run_dir = workdir / f"seed{seed}"
        trained = train(
            events[events[CUSTOMER_ID].isin(train_ids)],
            cutoff=cutoff,
            horizon_days=window.horizon_days,
            customers=customers,
            output_dir=run_dir,
            overrides=[f"seed={seed}", "trainer.enable_progress_bar=false", *overrides],
        )
        return predict(trained.model_path, events[events[CUSTOMER_ID].isin(test_ids)], cutoff, customers)

    return run


def baseline_model(name: str, threads: int) -> Predictor:
    def run(events, customers, window, train_ids, test_ids, seed) -> pd.DataFrame:
        if name == "lightgbm":
            from churnformer.baselines.gbm import fit_predict_gbm

            return fit_predict_gbm(events, window, train_ids, test_ids, seed=seed, num_threads=threads)
        from churnformer.baselines.btyd import fit_predict_btyd

        return fit_predict_btyd(events, window, train_ids, test_ids, seed=seed)

    return run


def run_protocol(
    dataset: str, seeds: list[int], models: dict[str, Predictor], window: Window, ensemble: list[str] | None = None
) -> list[dict[str, float | int | str]]:
    """Rows of per-seed metrics; with ``ensemble``, one more row per seed for the mean of those models'
    predictions (a rough ceiling: how much better any one model could get from what they jointly know)."""
    events, customers = load_dataset(dataset)
    eligible = np.sort(events.loc[events[TIMESTAMP] < window.feature_end, CUSTOMER_ID].unique())
    rows = []
    for seed in seeds:
        train_ids, test_ids = split(np.sort(events[CUSTOMER_ID].unique()), seed)
        test_population = np.intersect1d(test_ids, eligible)
        labels = make_labels(events[events[CUSTOMER_ID].isin(test_population)], window, test_population)
        predicted, seconds = {}, {}
        for name, model in models.items():
            started = time.perf_counter()
            predictions = model(events, customers, window, train_ids, test_ids, seed)
            seconds[name] = time.perf_counter() - started
            predicted[name] = predictions.set_index(CUSTOMER_ID)[list(PREDICTED)].sort_index()
        if ensemble:
            name = "mean(" + "+".join(ensemble) + ")"
            predicted[name] = sum(predicted[member] for member in ensemble) / len(ensemble)
            seconds[name] = sum(seconds[member] for member in ensemble)
        for name, predictions in predicted.items():
            metrics = evaluate(predictions.reset_index(), labels)
            metrics["churn_ece_floor"] = calibrated_ece_floor(predictions["churn_probability"].to_numpy())
            rows.append({"dataset": dataset, "model": name, "seed": seed, **metrics, "train_s": seconds[name]})
            print(
                f"seed {seed} {name:<12} auc {metrics['churn_auc']:.4f} gini {metrics['spend_gini']:.4f} "
                f"({seconds[name]:.0f} s)",
                flush=True,
            )
    return rows


def calibrated_ece_floor(probability: np.ndarray, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model with these predictions would show on this many customers (mean
    over label sets drawn from the predictions themselves): the sampling noise under any measured ECE."""
    generator = np.random.default_rng(0)
    labels = (generator.random((draws, len(probability))) < probability).astype(float)
    return float(np.mean([expected_calibration_error(probability, drawn) for drawn in labels]))


def summary_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    grouped = frame.groupby("model", sort=False)[list(SHOWN)]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    table = pd.DataFrame(index=mean.index)
    for column in SHOWN:
        digits = 0 if column == "train_s" else 4
        table[column] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean[column], std[column], strict=True)]
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cdnow")
    parser.add_argument("--cutoff", default=None, help="another cutoff than the protocol's (YYYY-MM-DD)")
    parser.add_argument("--horizon-days", type=float, default=None, help="another horizon than the protocol's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=["churnformer", "gru", "lightgbm", "btyd"])
    parser.add_argument(
        "--ensemble", nargs="+", default=None, help="also score the mean of these models' predictions (a ceiling)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for churnformer and gru")
    parser.add_argument("--gbm-threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where training runs go (default: a temp dir)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="churnformer-benchmark-"))
    builders = {
        "churnformer": lambda: churnformer_model(args.override, workdir / "churnformer"),
        "gru": lambda: churnformer_model(["model=gru", *args.override], workdir / "gru"),
        "lightgbm": lambda: baseline_model("lightgbm", args.gbm_threads),
        "btyd": lambda: baseline_model("btyd", args.gbm_threads),
    }
    protocol = DATASETS[args.dataset]
    cutoff, horizon = args.cutoff or protocol["cutoff"], args.horizon_days or protocol["horizon_days"]
    window = Window.from_cutoff(cutoff, horizon)
    if args.ensemble and not set(args.ensemble) <= set(args.models):
        parser.error(f"--ensemble {args.ensemble}: every member must be among --models {args.models}")
    models = {name: builders[name]() for name in args.models}
    rows = run_protocol(args.dataset, args.seeds, models, window, args.ensemble)
    table = summary_table(rows)
    print(f"\n{args.dataset}, cutoff {cutoff}, horizon {horizon:g} days: mean ± std over seeds {args.seeds}\n")
    print(table.to_string(index=False))
    if args.json:
        header = {"dataset": args.dataset, "cutoff": cutoff, "horizon_days": horizon, "seeds": args.seeds}
        args.json.write_text(json.dumps({**header, "rows": rows}, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown(table) + "\n")


if __name__ == "__main__":
    main()
