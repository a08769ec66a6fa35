"""How far stacked trees take a stacked churnformer on protocol C: its trees alone, and a blend fitted on validation.

Usage::

    python -m scripts.experiments.compare --dataset completejourney --models churnformer --workdir RUNS \\
        --override data.features.aggregates.enabled=true data.stacking.enabled=true
    python -m scripts.experiments.stacking_ceiling RUNS/churnformer/seed0 RUNS/churnformer/seed1 RUNS/churnformer/seed2

For each run directory of that benchmark (``seed<N>``: its split is ``scripts.experiments.compare.split`` by N), on the
test customers: the stacked network's churn PR-AUC and spend Gini (its model file, through ``Predictor``), its
boosted trees' alone (LightGBM from the checkpoint, on the same aggregates), and a blend of the two, in logit
space for churn and log space for spend, with the weight (0, 0.1, ..., 1) that scores best on the run's own
validation customers (held out from both the network and the trees). extra ``completejourney``, ``stacking``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.stacked_trees import StackedTrees
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, load_customers
from churnformer.data.featurizer import Featurizer
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.sequences import build_sequences
from churnformer.data.training_set import validation_mask
from churnformer.data.window import HorizonGrid, Window
from churnformer.evaluation.metrics import average_precision, normalized_gini
from churnformer.schema import CHURN, CHURN_PROBABILITY, CUSTOMER_AGG, EXPECTED_SPEND, SPEND
from churnformer.serving.predictor import Predictor
from scripts.common import record
from scripts.experiments.compare import DATASETS, load_dataset, split

WEIGHTS = np.linspace(0.0, 1.0, 11)


def predictions(run: Path, events: pd.DataFrame, customers: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    """The network's and its trees' churn and spend for customers ``ids``, with their labels."""
    settings = DATASETS["completejourney"]
    window = Window.from_cutoff(settings["cutoff"], settings["horizon_days"])
    log = events[events[CUSTOMER_ID].isin(ids)]
    _, hparams = load_checkpoint(next((run / "checkpoints").glob("epoch*.ckpt")))
    sequences = build_sequences(
        log, window, Featurizer.from_json(hparams["featurizer_json"]), load_customers(customers)
    )
    trees = StackedTrees.from_state(hparams["stacked_trees"]).predict(sequences.customers[CUSTOMER_AGG])
    scored = Predictor(run / "model.onnx").score(log, settings["cutoff"], customers).predictions
    network = scored.set_index(CUSTOMER_ID).loc[sequences.customer_ids]
    grid = HorizonGrid.of(settings["horizons_days"], settings["horizon_days"])
    labels = horizon_labels(log, window, grid, sequences.customer_ids, LabelSpec())
    return pd.DataFrame(
        {
            "churn_network": network[CHURN_PROBABILITY].to_numpy(),
            "spend_network": network[EXPECTED_SPEND].to_numpy(),
            "churn_trees": trees[:, 0],
            "spend_trees": np.exp(trees[:, 1]),
            CHURN: labels[CHURN].to_numpy(),
            SPEND: labels[SPEND].to_numpy(),
        }
    )


def blended(frame: pd.DataFrame, label: str, weight: float) -> np.ndarray:
    """(1 - weight) * network + weight * trees, in logit space for churn, log space for spend."""
    if label == CHURN:
        p = np.clip(frame[["churn_network", "churn_trees"]].to_numpy(), 1e-6, 1 - 1e-6)
        logits = np.log(p / (1 - p))
        return (1 - weight) * logits[:, 0] + weight * logits[:, 1]
    logs = np.log(frame[["spend_network", "spend_trees"]].to_numpy() + 1e-3)
    return np.exp((1 - weight) * logs[:, 0] + weight * logs[:, 1])


def score(frame: pd.DataFrame, label: str, values: np.ndarray) -> float:
    metric = average_precision if label == CHURN else normalized_gini
    return metric(frame[label].to_numpy(), values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="the benchmark's run directories, seed<N>")
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("experiments.stacking_ceiling", args) as run:
        run.figures["rows"] = measure(args.runs)
        run.tables["test"] = record.table(
            ["run", "metric", "network", "trees", "blend weight (validation)", "blend"],
            [
                (
                    r["run"],
                    r["metric"],
                    *(f"{r[k]:.4f}" for k in ("network", "trees")),
                    f"{r['weight']:.1f}",
                    f"{r['blend']:.4f}",
                )
                for r in run.figures["rows"]
            ],
        )


def measure(runs: list[Path]) -> list[dict]:
    """Per run and metric: the network's, the trees' and the validation-weighted blend's test score."""
    events, customers = load_dataset("completejourney")
    cutoff = Window.from_cutoff(DATASETS["completejourney"]["cutoff"], 1).feature_end
    rows = []
    for run in runs:
        seed = int(run.name.removeprefix("seed"))
        train_ids, test_ids = split(np.sort(events[CUSTOMER_ID].unique()), seed)
        history = events.loc[(events[TIMESTAMP] < cutoff) & events[CUSTOMER_ID].isin(train_ids), CUSTOMER_ID]
        population = np.sort(history.unique())
        validation = predictions(run, events, customers, population[validation_mask(population, 0.2)])
        test = predictions(run, events, customers, test_ids)
        for label, name in ((CHURN, "churn PR-AUC"), (SPEND, "spend Gini")):
            weight = max(WEIGHTS, key=lambda w: score(validation, label, blended(validation, label, w)))
            row = {
                "run": run.name,
                "metric": name,
                "network": score(test, label, blended(test, label, 0.0)),
                "trees": score(test, label, blended(test, label, 1.0)),
                "weight": float(weight),
                "blend": score(test, label, blended(test, label, weight)),
            }
            rows.append(row)
            print(
                f"{run.name} {name}: network {row['network']:.4f}, trees {row['trees']:.4f}, "
                f"blend (weight {weight:.1f} on validation) {row['blend']:.4f}"
            )
    return rows


if __name__ == "__main__":
    main()
