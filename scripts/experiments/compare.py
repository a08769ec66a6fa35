"""Protocol A: churnformer against BG/NBD + Gamma-Gamma, LightGBM on RFM features and a GRU, in one run.

Usage::

    python -m scripts.experiments.compare [--dataset cdnow|synthetic|synthetic_text|completejourney]
                                      [--cutoff YYYY-MM-DD]
                                      [--horizon-days N] [--horizons-days 30 90 ...] [--discount-rate 0.1]
                                      [--seeds 0 1 2]
                                      [--models churnformer gru lightgbm btyd churnformer_main_only
                                                churnformer_purchases]
                                      [--ensemble MODEL ... | --seed-ensemble N]
                                      [--churn-definition no_purchase|decline] [--decline-threshold 0.5]
                                      [--label TEXT] [--record PATH] [--tables-from RECORD]
                                      [--override key=value ...]

CDNOW master log (pip install -e ".[baselines]"), cutoff 1997-09-30, horizon 273 days, all 23,570
customers split 50/50 at random by seed; every model trains on the training half only (its own
validation split taken from inside it) and is scored on the test half. ``--dataset synthetic`` runs the
same protocol on the built-in synthetic world (20,000 customers, cutoff 2024-06-30, horizon 90 days, a
year of log after the cutoff); ``--dataset synthetic_text`` on the same world with its customers' texts
(``churnformer_no_text``: churnformer on that log without them); ``--dataset completejourney`` on
dunnhumby's The Complete Journey (extra ``completejourney``: 2,469 households, cutoff 2017-09-30, horizon
92 days, the data config's features: one event per basket; ``churnformer_ungrouped``: one per line item;
LightGBM adds basket-level features; ``scripts/experiments/completejourney.py`` runs protocol C's rows);
``--cutoff``/``--horizon-days`` run it at another cutoff of the same log (do the defaults generalize?).
``churnformer_purchases`` is churnformer with the expected-purchases head (``model/heads=[survival,spend,
purchases]``); a fourth table then compares its ``expected_purchases_<h>d`` with BG/NBD's by horizon (MAE,
Spearman, aggregate error against the purchase days of each horizon).
``churnformer_main_only`` is churnformer trained on the main horizon alone (what releases before 0.2
trained): the grid's effect on the main horizon. ``--ensemble churnformer gru lightgbm`` adds the mean of
those models' predictions as one more row: a
rough ceiling of what the log's information supports, to read the single models' rows against.
``--seed-ensemble 3`` trains churnformer three times on each split (network seeds +0, +1000, +2000) and adds
the mean of the three as a row: what an ensemble of seeds buys, at three times the training and scoring.
``--churn-definition decline``: churn is spend in the horizon below ``--decline-threshold`` times the spend of
the same-length window before the cutoff, for every model (churnformer trains with ``churn_definition=decline``,
LightGBM's churn boosters learn the decline; BG/NBD, which predicts no purchase only, is left out).
``churn_ece_floor`` is the ECE a perfectly calibrated model with the same predictions would show on the
same number of test customers: the part of ``churn_ece`` that is sampling noise.
churnformer and the GRU run with the package defaults (``--override`` passes Hydra overrides to both),
trained and scored through the public API (ONNX model, onnxruntime). Prints mean ± std over seeds; the
record (``scripts.common.record``) holds every per-seed row and the tables.

Over the horizon grid (CDNOW 30/90/180/273 days: the log ends 273 days after the cutoff; synthetic
30/90/180/365): every model answers at each horizon (churnformer and the GRU from one network, LightGBM
with a pair of boosters per horizon, BG/NBD + Gamma-Gamma from one fit), and a second table reports each
horizon's metrics. A third reports the concordance index and integrated Brier score of S(t), the Gini of
``clv`` (lifetimes' for BG/NBD + Gamma-Gamma, churnformer's own, and for the others the same formula on
their spend by horizon) against the realized spend over the longest horizon discounted at ``--discount-rate`` (the same
formula: (1 + d) ** (t / 365) per purchase at t days), and ``monotonicity_violations``: customers whose
P(no purchase by t) rises or expected spend by t falls somewhere on the grid.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # LightGBM's spinning threads starve everything else

import numpy as np
import pandas as pd

from churnformer.api import predict, train
from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, load_events
from churnformer.data.labels import (
    DECLINE_DEFINITION,
    NO_PURCHASE_DEFINITION,
    ChurnDefinition,
    LabelSpec,
    horizon_labels,
)
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window
from churnformer.defaults import yaml_defaults
from churnformer.evaluation.metrics import expected_calibration_error, normalized_gini
from churnformer.evaluation.report import evaluate, predicted_horizons
from churnformer.schema import CHURN_PROBABILITY, CLV, EXPECTED_SPEND, per_horizon
from churnformer.serving.retention import discounted_value
from scripts.common import record


def data_config(name: str) -> dict:
    """Protocol settings of ``conf/data/<name>.yaml`` over the settings every source shares (their one home):
    cutoff, main horizon, grid, the feature settings that differ from the shared ones as overrides for
    churnformer and the GRU (as ``churnformer-train data=<name>`` reads them), and a line-item log's basket
    column (``group_by``), over which LightGBM adds basket-level features."""
    shared = yaml_defaults("data/settings/default")
    config = {**shared, **yaml_defaults(f"data/{name}")}
    features = {key: value for key, value in config["features"].items() if value != shared["features"].get(key)}
    return {
        "cutoff": config["cutoff"],
        "horizon_days": config["horizon_days"],
        "horizons_days": config["horizons_days"],
        "overrides": [f"data.features.{key}={override_value(value)}" for key, value in features.items()],
        "group_by": config["features"]["group_by"],
    }


def override_value(value: object) -> str:
    """A config value as the command line writes it: ``[a,b]`` for a list."""
    return f"[{','.join(map(str, value))}]" if isinstance(value, list) else str(value)


DATASETS = {
    "cdnow": data_config("cdnow"),
    "synthetic": data_config("synthetic"),
    # The same world with what its customers write (churnformer-synthetic --text); its text column is read by
    # churnformer and the GRU, and dropped for churnformer_no_text (LightGBM and BTYD never read it).
    "synthetic_text": {**data_config("synthetic"), "text": ["text"]},
    # group_by: LightGBM gets basket-level aggregates too (the fair strong baseline of a line-item log).
    "completejourney": data_config("completejourney"),
}
BY_HORIZON = (
    "churn_auc",
    "churn_brier",
    "churn_ece",
    "spend_gini",
    "spend_decile_mape",
    "spend_aggregate_error",
)
# Expected purchases by horizon, of the models that predict them (churnformer_purchases, btyd).
PURCHASES_BY_HORIZON = ("purchases_mae", "purchases_spearman", "purchases_aggregate_error")
OVER_THE_GRID = ("survival_c_index", "survival_integrated_brier", "clv_gini", "monotonicity_violations")
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


@dataclass(frozen=True)
class Protocol:
    """What every model is asked: at ``window`` (the main horizon) and over ``grid``, CLV at ``discount_rate``;
    ``group_by``: a line-item log's basket column (LightGBM adds basket-level features); ``definition``: what
    churn is (no purchase, or a decline)."""

    window: Window
    grid: HorizonGrid
    discount_rate: float
    group_by: str | None = None
    definition: ChurnDefinition = ChurnDefinition()


def load_dataset(name: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if name == "cdnow":
        from churnformer.data.cdnow import load_cdnow

        return load_events(load_cdnow()), None
    if name == "completejourney":
        from churnformer.data.completejourney import load_complete_journey

        events, customers = load_complete_journey()
        return load_events(events), customers
    from churnformer.data.synthetic import SyntheticWorldConfig, generate_world

    world = SyntheticWorldConfig.with_defaults(n_customers=20_000, seed=0, text=name == "synthetic_text")
    events, customers = generate_world(world)
    return load_events(events), customers


def split(customer_ids: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Customers 50/50 at random by seed."""
    order = np.random.default_rng(seed).permutation(len(customer_ids))
    half = len(customer_ids) // 2
    return customer_ids[order[:half]], customer_ids[order[half:]]


def churnformer_model(
    overrides: list[str], workdir: Path, protocol: Protocol, drop: tuple[str, ...] = (), seed_offset: int = 0
) -> Predictor:
    """churnformer through the public API with ``overrides``, on the log without the columns ``drop``; the
    network's seed is the split's plus ``seed_offset`` (another network on the same split: seed ensembles)."""
    horizons = ",".join(f"{days:g}" for days in protocol.grid.days)

    def run(events, customers, window, train_ids, test_ids, seed) -> pd.DataFrame:
        events = events.drop(columns=list(drop))
        cutoff = str((window.feature_end - pd.Timedelta(days=1)).date())
        run_dir = workdir / f"seed{seed}"
        trained = train(
            events[events[CUSTOMER_ID].isin(train_ids)],
            cutoff=cutoff,
            horizon_days=window.horizon_days,
            customers=customers,
            output_dir=run_dir,
            overrides=[
                f"seed={seed + seed_offset}",
                f"data.horizons_days=[{horizons}]",
                f"churn_definition={protocol.definition.name}",
                f"decline_threshold={protocol.definition.decline_threshold}",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )
        test_events = events[events[CUSTOMER_ID].isin(test_ids)]
        return predict(trained.model_path, test_events, cutoff, customers, discount_rate=protocol.discount_rate)

    return run


def baseline_model(name: str, threads: int, protocol: Protocol) -> Predictor:
    def run(events, customers, window, train_ids, test_ids, seed) -> pd.DataFrame:
        if name == "lightgbm":
            from churnformer.baselines.gbm import Boosting, fit_predict_gbm

            return fit_predict_gbm(
                events,
                window,
                train_ids,
                test_ids,
                seed=seed,
                boosting=Boosting(num_threads=threads),
                horizons=protocol.grid.days,
                group_by=protocol.group_by,
                spec=LabelSpec(churn=protocol.definition),
            )
        from churnformer.baselines.btyd import fit_predict_btyd

        return fit_predict_btyd(
            events, window, train_ids, test_ids, horizons=protocol.grid.days, discount_rate=protocol.discount_rate
        )

    return run


def run_protocol(
    dataset: str, seeds: list[int], models: dict[str, Predictor], protocol: Protocol, ensemble: list[str] | None = None
) -> list[dict[str, float | int | str]]:
    """Rows of per-seed metrics, each seed splitting the customers 50/50 (:func:`split`); with ``ensemble``,
    one more row per seed for the mean of those models' predictions (a rough ceiling: how much better any one
    model could get from what they jointly know)."""
    events, customers = load_dataset(dataset)
    rows = []
    for seed in seeds:
        train_ids, test_ids = split(np.sort(events[CUSTOMER_ID].unique()), seed)
        for row in run_models(events, customers, protocol, models, train_ids, test_ids, seed, ensemble):
            rows.append({"dataset": dataset, **row})
    return rows


def run_models(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    protocol: Protocol,
    models: dict[str, Predictor],
    train_ids: np.ndarray,
    test_ids: np.ndarray,
    seed: int,
    ensemble: list[str] | None = None,
) -> list[dict[str, float | int | str]]:
    """Every model trained on ``train_ids`` and scored on the ``test_ids`` with history before the cutoff: a row
    of metrics per model (and the ensemble's)."""
    window = protocol.window
    eligible = np.sort(events.loc[events[TIMESTAMP] < window.feature_end, CUSTOMER_ID].unique())
    test_population = np.intersect1d(test_ids, eligible)
    test_events = events[events[CUSTOMER_ID].isin(test_population)]
    spec = LabelSpec(churn=protocol.definition)
    labels = horizon_labels(test_events, window, protocol.grid, test_population, spec)
    realized = discounted_spend(test_events, window, max(protocol.grid.days), protocol.discount_rate)
    predicted, seconds = {}, {}
    for name, model in models.items():
        started = time.perf_counter()
        predictions = model(events, customers, window, train_ids, test_ids, seed)
        seconds[name] = time.perf_counter() - started
        predicted[name] = predictions.set_index(CUSTOMER_ID).sort_index()
    if ensemble:
        name = "mean(" + "+".join(ensemble) + ")"
        shared = sorted(set.intersection(*(set(predicted[member].columns) for member in ensemble)) - {CLV})
        # The predictions averaged: the numbers (segments and deciles are recomputed by nobody here).
        shared = [c for c in shared if all(pd.api.types.is_float_dtype(predicted[m][c]) for m in ensemble)]
        predicted[name] = sum(predicted[member][shared] for member in ensemble) / len(ensemble)
        seconds[name] = sum(seconds[member] for member in ensemble)
    rows = []
    for name, predictions in predicted.items():
        metrics = evaluate(predictions.reset_index(), labels)
        metrics["churn_ece_floor"] = calibrated_ece_floor(predictions[CHURN_PROBABILITY].to_numpy())
        metrics["monotonicity_violations"] = monotonicity_violations(predictions)
        if CLV not in predictions.columns:  # the grid formula on the model's spend by horizon
            predictions = predictions.assign(
                **{CLV: discounted_value(predictions, protocol.grid.days, protocol.discount_rate)}
            )
        actual = realized.reindex(predictions.index, fill_value=0.0).to_numpy()
        metrics["clv_gini"] = normalized_gini(actual, predictions[CLV].to_numpy())
        rows.append({"model": name, "seed": seed, **metrics, "train_s": seconds[name]})
        print(
            f"seed {seed} {name:<12} auc {metrics['churn_auc']:.4f} gini {metrics['spend_gini']:.4f} "
            f"({seconds[name]:.0f} s)",
            flush=True,
        )
    return rows


def discounted_spend(events: pd.DataFrame, window: Window, days: float, discount_rate: float) -> pd.Series:
    """Net spend per customer in the ``days`` after the cutoff, each amount discounted to the cutoff at
    (1 + d) ** (t / 365) for t days after it (the realized counterpart of ``clv``), floored at 0."""
    offset = (events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64) - window.feature_end_ns) / NS_PER_DAY
    inside = (offset >= 0) & (offset < days)
    value = events[AMOUNT].to_numpy()[inside] / (1.0 + discount_rate) ** (offset[inside] / 365.0)
    by_customer = pd.Series(value).groupby(events[CUSTOMER_ID].to_numpy()[inside]).sum()
    return by_customer.clip(lower=0.0)


def monotonicity_violations(predictions: pd.DataFrame, tolerance: float = 1e-6) -> int:
    """Customers whose P(no purchase by t) rises, or whose expected spend by t falls, between two horizons."""
    horizons = predicted_horizons(predictions)
    if len(horizons) < 2:
        return 0
    survival = predictions[[per_horizon(CHURN_PROBABILITY, h) for h in horizons]].to_numpy(np.float64)
    spend = predictions[[per_horizon(EXPECTED_SPEND, h) for h in horizons]].to_numpy(np.float64)
    rises = (np.diff(survival, axis=1) > tolerance).any(axis=1)
    falls = (np.diff(spend, axis=1) < -tolerance * np.maximum(spend[:, 1:], 1.0)).any(axis=1)
    return int((rises | falls).sum())


def calibrated_ece_floor(probability: np.ndarray, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model with these predictions would show on this many customers (mean
    over label sets drawn from the predictions themselves): the sampling noise under any measured ECE."""
    generator = np.random.default_rng(0)
    labels = (generator.random((draws, len(probability))) < probability).astype(float)
    return float(np.mean([expected_calibration_error(probability, drawn) for drawn in labels]))


def mean_std(frame: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    """``mean ± std`` over seeds of ``columns``, per group of ``keys``."""
    grouped = frame.groupby(keys, sort=False)[columns]
    mean, std = grouped.mean(), grouped.std(ddof=1).fillna(0.0)
    table = pd.DataFrame(index=mean.index)
    for column in columns:
        digits = 0 if column in ("train_s", "monotonicity_violations") else 4
        table[column] = [
            "n/a" if np.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"
            for m, s in zip(mean[column], std[column], strict=True)
        ]
    return table.reset_index()


def summary_table(rows: list[dict]) -> pd.DataFrame:
    """The main horizon, as it has always been reported."""
    return mean_std(pd.DataFrame(rows), ["model"], list(SHOWN))


def horizon_table(rows: list[dict], horizons: tuple[float, ...], metrics: tuple[str, ...] = BY_HORIZON) -> pd.DataFrame:
    """One row per model and horizon it predicts: each horizon's ``metrics`` (churn and spend by default)."""
    long = []
    for row in rows:
        for days in horizons:
            values = {metric: row.get(per_horizon(metric, days), np.nan) for metric in metrics}
            if all(np.isnan(value) for value in values.values()):
                continue
            long.append({"model": row["model"], "horizon": f"{days:g}d", "seed": row["seed"], **values})
    if not long:
        return pd.DataFrame()
    return mean_std(pd.DataFrame(long), ["model", "horizon"], list(metrics))


def grid_table(rows: list[dict], horizons: tuple[float, ...]) -> pd.DataFrame:
    """S(t) over the grid, CLV ranking and consistency, per model; the survival metrics are n/a for a
    model that predicts one horizon of the grid (over one interval they are its churn AUC and Brier)."""
    frame = pd.DataFrame(rows)
    for column in OVER_THE_GRID:
        if column not in frame.columns:
            frame[column] = np.nan
    answered = sum(
        frame.get(per_horizon("churn_auc", days), pd.Series(np.nan, frame.index)).notna() for days in horizons
    )
    frame.loc[answered < 2, ["survival_c_index", "survival_integrated_brier"]] = np.nan
    return mean_std(frame, ["model"], list(OVER_THE_GRID))


def print_tables(rows: list[dict], header: dict) -> dict[str, pd.DataFrame]:
    """The three tables of ``rows`` (as run, or as saved in a record), printed under ``header``."""
    grid = tuple(header["horizons_days"])
    tables = {
        "main horizon": summary_table(rows),
        "by horizon": horizon_table(rows, grid),
        "over the grid": grid_table(rows, grid),
    }
    purchases = horizon_table(rows, grid, PURCHASES_BY_HORIZON)
    if len(purchases):
        tables["expected purchases by horizon"] = purchases
    print(
        f"\n{header['dataset']}, cutoff {header['cutoff']}, horizon {header['horizon_days']:g} days (grid "
        f"{'/'.join(f'{d:g}' for d in grid)}, clv discount {header['discount_rate']:g}): mean ± std over seeds "
        f"{header['seeds']}" + (f"; churn: {header['churn_definition']}" if "churn_definition" in header else "")
    )
    for title, table in tables.items():
        print(f"\n{title}\n{table.to_string(index=False)}")
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cdnow")
    parser.add_argument("--cutoff", default=None, help="another cutoff than the protocol's (YYYY-MM-DD)")
    parser.add_argument("--horizon-days", type=float, default=None, help="another main horizon than the protocol's")
    parser.add_argument("--horizons-days", type=float, nargs="+", default=None, help="another horizon grid")
    parser.add_argument("--discount-rate", type=float, default=0.10, help="annual rate of clv and its realized value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["churnformer", "gru", "lightgbm", "btyd"],
        choices=[
            "churnformer",
            "churnformer_main_only",
            "churnformer_no_text",
            "churnformer_ungrouped",
            "churnformer_purchases",
            "gru",
            "lightgbm",
            "btyd",
        ],
    )
    parser.add_argument(
        "--ensemble", nargs="+", default=None, help="also score the mean of these models' predictions (a ceiling)"
    )
    parser.add_argument(
        "--seed-ensemble",
        type=int,
        default=None,
        metavar="N",
        help="train churnformer N times per split (network seeds +0, +1000, ...) and score their mean",
    )
    parser.add_argument("--override", nargs="*", default=[], help="Hydra overrides for churnformer and gru")
    parser.add_argument(
        "--churn-definition",
        choices=[NO_PURCHASE_DEFINITION, DECLINE_DEFINITION],
        default=NO_PURCHASE_DEFINITION,
        help="what churn is: no purchase in the horizon, or spend below --decline-threshold times the window before",
    )
    parser.add_argument("--decline-threshold", type=float, default=ChurnDefinition().decline_threshold)
    parser.add_argument("--gbm-threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where training runs go (default: a temp dir)")
    parser.add_argument(
        "--label", default=None, help="a name for this run's settings, shown after each model's (e.g. 'stacked')"
    )
    parser.add_argument("--tables-from", type=Path, help="print the tables of a record, running nothing")
    record.add_argument(parser)
    args = parser.parse_args()
    if args.tables_from:
        figures = record.load(args.tables_from)["figures"]
        print_tables(figures["rows"], figures["header"])
        return
    with record.recorded("experiments.compare", args) as run:
        header, rows = compare(parser, args)
        rows = labelled(rows, args.label)
        run.figures = {"header": header, "rows": rows}
        run.tables = {title: record.frame_table(table) for title, table in print_tables(rows, header).items()}


def labelled(rows: list[dict], label: str | None) -> list[dict]:
    """``rows`` with ``label`` after each model's name: a run's settings, in a table beside other runs."""
    return rows if not label else [{**row, "model": f"{row['model']} ({label})"} for row in rows]


def compare(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    """Every model of ``args`` through the protocol on every seed: the header and the per-seed rows."""
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="churnformer-benchmark-"))
    defaults = DATASETS[args.dataset]
    cutoff, horizon = args.cutoff or defaults["cutoff"], args.horizon_days or defaults["horizon_days"]
    # The dataset's grid with its own main horizon; under another main horizon, the grid's horizons up to it
    # (the log may end there, as CDNOW's does 273 days after its cutoff).
    default_grid = (
        defaults["horizons_days"]
        if horizon == defaults["horizon_days"]
        else [d for d in defaults["horizons_days"] if d <= horizon]
    )
    grid = HorizonGrid.of(args.horizons_days or default_grid, horizon)
    definition = ChurnDefinition(args.churn_definition, args.decline_threshold)
    window = Window.from_cutoff(cutoff, horizon)
    protocol = Protocol(window, grid, args.discount_rate, defaults.get("group_by"), definition)
    main_only = HorizonGrid.of([], horizon)
    if definition.is_decline and "btyd" in args.models:
        print("btyd left out: BG/NBD + Gamma-Gamma predicts no purchase, not a decline", flush=True)
        args.models = [name for name in args.models if name != "btyd"]
    args.override = [*defaults.get("overrides", []), *args.override]
    text = tuple(defaults.get("text", ()))
    reading = [*args.override, f"data.features.text=[{','.join(text)}]"] if text else args.override
    builders = {
        "churnformer": lambda: churnformer_model(reading, workdir / "churnformer", protocol),
        "churnformer_ungrouped": lambda: churnformer_model(
            [*args.override, "data.features.group_by=null"], workdir / "ungrouped", protocol
        ),
        "churnformer_no_text": lambda: churnformer_model(args.override, workdir / "no_text", protocol, drop=text),
        "churnformer_purchases": lambda: churnformer_model(
            [*reading, "model/heads=[survival,spend,purchases]"], workdir / "purchases", protocol
        ),
        "gru": lambda: churnformer_model(["model=gru", *reading], workdir / "gru", protocol),
        "churnformer_main_only": lambda: churnformer_model(
            args.override,
            workdir / "main_only",
            Protocol(protocol.window, main_only, args.discount_rate, definition=definition),
        ),
        "lightgbm": lambda: baseline_model("lightgbm", args.gbm_threads, protocol),
        "btyd": lambda: baseline_model("btyd", args.gbm_threads, protocol),
    }
    if args.seed_ensemble:
        if args.ensemble or "churnformer" not in args.models:
            parser.error("--seed-ensemble needs churnformer among --models and no --ensemble")
        members = [f"churnformer_seed+{1000 * k}" for k in range(1, args.seed_ensemble)]
        for k, name in enumerate(members, start=1):
            builders[name] = functools.partial(
                churnformer_model, reading, workdir / name, protocol, seed_offset=1000 * k
            )
        args.models = [*args.models, *members]
        args.ensemble = ["churnformer", *members]
    if args.ensemble and not set(args.ensemble) <= set(args.models):
        parser.error(f"--ensemble {args.ensemble}: every member must be among --models {args.models}")
    models = {name: builders[name]() for name in args.models}
    rows = run_protocol(args.dataset, args.seeds, models, protocol, args.ensemble)
    header = {
        "dataset": args.dataset,
        "cutoff": cutoff,
        "horizon_days": horizon,
        "horizons_days": list(grid.days),
        "discount_rate": args.discount_rate,
        "churn_definition": str(definition),
        "seeds": args.seeds,
    }
    return header, rows


if __name__ == "__main__":
    main()
