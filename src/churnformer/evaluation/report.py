"""``churnformer-evaluate``: a predictions file against what happened in the horizon, as metrics, figures
and a markdown report. Predictions and labels must cover the same customers (an inner join would silently
evaluate a subset)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnformer.data.events import (
    CUSTOMER_ID,
    TIMESTAMP,
    ColumnMapping,
    check_customer_ids,
    load_customers,
    load_events,
    read_table,
    source_of,
)
from churnformer.data.labels import LabelSpec, horizon_labels
from churnformer.data.window import HorizonGrid, Window, require_events_before
from churnformer.errors import InputError
from churnformer.evaluation.campaign import evaluate_campaign
from churnformer.evaluation.figures import horizon_calibration_figure, horizons_figure, review_figures
from churnformer.evaluation.metrics import (
    aggregate_error,
    average_precision,
    concordance_index,
    decile_mape,
    expected_calibration_error,
    integrated_brier_score,
    log_loss,
    normalized_gini,
    roc_auc,
    spearman,
)
from churnformer.evaluation.slices import slice_metrics, slices_markdown
from churnformer.schema import (
    CHURN,
    CHURN_PROBABILITY,
    EXPECTED_SPEND,
    LABEL_COLUMNS,
    NO_PURCHASE,
    NO_PURCHASE_PROBABILITY,
    OBSERVED,
    PROBABILITY,
    SPEND,
    label_of,
    per_horizon,
)

# What an evaluation needs of a predictions file (any model's: churnformer's or a baseline's) and of its labels.
# Every other output named for a label (schema.label_of: x_probability, expected_x) is judged too, at the main
# horizon and at each horizon where both sides have it.
EVALUATED_COLUMNS = (CHURN_PROBABILITY, EXPECTED_SPEND)
MIN_CUSTOMERS = 10  # deciles need at least one customer each
EXAMPLES = 5
DECILE_NOTE = "*_decile_mape skips deciles whose mean actual value is 0 (the relative error is undefined there)."


@dataclass(frozen=True)
class Pair:
    """A predictions column and the labels column it is judged against."""

    predicted: str
    label: str
    kind: str  # schema.PROBABILITY or schema.EXPECTATION
    name: str  # the label's name, the prefix of its metrics
    days: float | None = None  # a horizon of the grid; None: the main horizon


def pairs(predictions: Iterable[str], labels: Iterable[str]) -> list[Pair]:
    """Every output of ``predictions`` named for a label that ``labels`` has: at the main horizon (``x`` and
    ``x_probability`` or ``expected_x``) and at each horizon whose labels say whether it is observed."""
    labels = set(labels)
    found = []
    for column in predictions:
        horizon = re.fullmatch(r"(.+)_([\d.]+)d", str(column))
        base, days = (horizon[1], float(horizon[2])) if horizon else (str(column), None)
        meaning = label_of(base)
        if meaning is None:
            continue
        name, kind = meaning
        label = name if days is None else per_horizon(name, days)
        if label in labels and (days is None or per_horizon(OBSERVED, days) in labels):
            found.append(Pair(str(column), label, kind, name, days))
    return found


# --- joining predictions and labels ---------------------------------------------------------------------------


def _examples(ids: Iterable[Any]) -> str:
    return ", ".join(repr(i.item() if hasattr(i, "item") else i) for i in list(ids)[:EXAMPLES])


def _checked_frame(frame: pd.DataFrame, columns: Sequence[str], where: str) -> pd.DataFrame:
    """The id and value columns of ``frame``: present, ids valid and unique, values finite numbers."""
    missing = [c for c in (CUSTOMER_ID, *columns) if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: required column(s) {missing} not found; columns present: {list(frame.columns)}")
    ids = check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {CUSTOMER_ID!r}")
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise InputError(f"{where}: {len(duplicated)} duplicate customer id(s), e.g. {_examples(duplicated)}")
    values = {}
    for column in columns:
        numeric = pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy()
        bad = ~np.isfinite(numeric)
        if bad.any():
            raise InputError(
                f"{where}: {int(bad.sum())} missing or non-numeric value(s) in column {column!r}, "
                f"e.g. for customer(s) {_examples(ids[bad])}"
            )
        values[column] = numeric
    return pd.DataFrame({CUSTOMER_ID: ids.to_numpy(), **values})


def _check_ranges(joined: pd.DataFrame, probabilities: list[Pair], names: tuple[str, str]) -> None:
    """Probabilities outside [0, 1] or labels other than 0/1 mean the wrong column or file, not a bad model."""
    for pair in probabilities:
        outside = ~joined[pair.predicted].between(0, 1)
        if outside.any():
            raise InputError(
                f"{names[0]}: {int(outside.sum())} {pair.predicted} value(s) outside [0, 1], "
                f"e.g. for customer(s) {_examples(joined.loc[outside, CUSTOMER_ID].to_numpy())}"
            )
        not_binary = ~joined[pair.label].isin([0.0, 1.0])
        if not_binary.any():
            raise InputError(
                f"{names[1]}: {int(not_binary.sum())} {pair.label} value(s) other than 0 or 1, "
                f"e.g. for customer(s) {_examples(joined.loc[not_binary, CUSTOMER_ID].to_numpy())}"
            )


def _same_id_type(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Integer ids on one side and strings on the other (Parquet vs CSV of the same ids) are compared as text."""
    if pd.api.types.is_integer_dtype(a[CUSTOMER_ID].dtype) == pd.api.types.is_integer_dtype(b[CUSTOMER_ID].dtype):
        return a, b
    return a.assign(**{CUSTOMER_ID: a[CUSTOMER_ID].astype(str)}), b.assign(**{CUSTOMER_ID: b[CUSTOMER_ID].astype(str)})


def align(
    predictions: pd.DataFrame, labels: pd.DataFrame, names: tuple[str, str] = ("predictions", "labels")
) -> pd.DataFrame:
    """One row per customer with predictions and labels; both sides must cover exactly the same customers.

    An inner join would silently evaluate a subset (say, only customers the model happened to score), so
    any customer on one side only is an error that names how many and which. The frame keeps every
    :func:`pairs` column of both sides, and whether each horizon is observed.
    """
    found = pairs(predictions.columns, labels.columns)
    observed = list(dict.fromkeys(per_horizon(OBSERVED, pair.days) for pair in found if pair.days is not None))
    predicted_columns = list(dict.fromkeys([*EVALUATED_COLUMNS, *(pair.predicted for pair in found)]))
    label_columns = list(dict.fromkeys([*LABEL_COLUMNS, *(pair.label for pair in found), *observed]))
    predicted = _checked_frame(predictions, predicted_columns, names[0])
    labelled = _checked_frame(labels, label_columns, names[1])
    predicted, labelled = _same_id_type(predicted, labelled)
    predicted_ids, labelled_ids = pd.Index(predicted[CUSTOMER_ID]), pd.Index(labelled[CUSTOMER_ID])
    unpredicted, unlabelled = labelled_ids.difference(predicted_ids), predicted_ids.difference(labelled_ids)
    gaps = [
        f"{len(ids)} {side} customer(s) have no {missing} (e.g. {_examples(ids)})"
        for ids, side, missing in ((unpredicted, "labelled", "prediction"), (unlabelled, "predicted", "label"))
        if len(ids)
    ]
    if gaps:
        raise InputError(
            f"{names[0]} and {names[1]} cover different customers: {'; '.join(gaps)}. Score and label the same "
            "population (every customer with an event up to the cutoff)"
        )
    if len(predicted) < MIN_CUSTOMERS:
        raise InputError(f"{names[0]}: {len(predicted)} customer(s); evaluation needs at least {MIN_CUSTOMERS}")
    joined = predicted.merge(labelled, on=CUSTOMER_ID, how="inner", validate="one_to_one")
    _check_ranges(joined, [pair for pair in pairs(joined.columns, joined.columns) if pair.kind == PROBABILITY], names)
    return joined


# --- metrics and figures of an aligned frame ------------------------------------------------------------------


def _columns(joined: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Churn probability, churn label, expected spend and actual spend of an aligned frame."""
    return tuple(joined[c].to_numpy() for c in (CHURN_PROBABILITY, CHURN, EXPECTED_SPEND, SPEND))


def compute_metrics(joined: pd.DataFrame) -> dict[str, float]:
    """Every metric of :func:`evaluate` from a frame made by :func:`align`: at the main horizon, then (when the
    frame has predictions and labels by horizon) at every observed horizon, and for S(t) over the grid."""
    main = [pair for pair in pairs(joined.columns, joined.columns) if pair.days is None]
    metrics: dict[str, float] = {}
    for pair in main:
        metrics |= _main_metrics(pair, joined[pair.predicted].to_numpy(), joined[pair.label].to_numpy())
    return {**metrics, "n_customers": len(joined), **horizon_metrics(joined)}


def horizon_metrics(joined: pd.DataFrame) -> dict[str, float]:
    """At each horizon whose window is observed, of every output there: AUC, Brier and ECE of a probability
    (``churn_auc_30d``, ...); Gini, decile MAPE, aggregate error, MAE and Spearman of an expectation
    (``spend_gini_30d``, ...); and the concordance index and integrated Brier score of S(t)."""
    by_horizon = [pair for pair in pairs(joined.columns, joined.columns) if pair.days is not None]
    if not by_horizon:
        return {}
    metrics: dict[str, float] = {}
    for pair in by_horizon:
        if not joined[per_horizon(OBSERVED, pair.days)].all():
            continue
        values = _horizon_metrics(pair, joined[pair.predicted].to_numpy(), joined[pair.label].to_numpy())
        metrics |= {per_horizon(name, pair.days): value for name, value in values.items()}
    horizons = [h for h in predicted_horizons(joined) if per_horizon(OBSERVED, h) in joined.columns]
    if horizons:
        survival, churn, observed = survival_arrays(joined, horizons)
        metrics["survival_c_index"] = concordance_index(survival, churn, observed)
        metrics["survival_integrated_brier"] = integrated_brier_score(survival, churn, observed, np.asarray(horizons))
    return metrics


def _main_metrics(pair: Pair, predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    name = pair.name
    if pair.kind == PROBABILITY:
        return {
            f"{name}_auc": roc_auc(actual, predicted),
            f"{name}_pr_auc": average_precision(actual, predicted),
            f"{name}_brier": float(np.mean((predicted - actual) ** 2)),
            f"{name}_log_loss": log_loss(actual, predicted),
            f"{name}_ece": expected_calibration_error(predicted, actual),
            f"{name}_rate": float(actual.mean()),
        }
    return {
        f"{name}_mae": float(np.mean(np.abs(predicted - actual))),
        f"{name}_rmse": float(np.sqrt(np.mean((predicted - actual) ** 2))),
        f"{name}_gini": normalized_gini(actual, predicted),
        f"{name}_spearman": spearman(predicted, actual),
        f"{name}_decile_mape": decile_mape(predicted, actual),
        f"{name}_aggregate_error": aggregate_error(predicted, actual),
    }


def _horizon_metrics(pair: Pair, predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    name = pair.name
    if pair.kind == PROBABILITY:
        return {
            f"{name}_auc": roc_auc(actual, predicted),
            f"{name}_brier": float(np.mean((predicted - actual) ** 2)),
            f"{name}_ece": expected_calibration_error(predicted, actual),
        }
    return {
        f"{name}_gini": normalized_gini(actual, predicted),
        f"{name}_decile_mape": decile_mape(predicted, actual),
        f"{name}_aggregate_error": aggregate_error(predicted, actual),
        f"{name}_mae": float(np.mean(np.abs(predicted - actual))),
        f"{name}_spearman": spearman(predicted, actual),
    }


def survival_arrays(joined: pd.DataFrame, horizons: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predicted S(t_k), "no purchase by t_k" and whether t_k is observed, (N, K) each: the churn columns, or
    for a decline model (whose churn is not "no purchase") its no_purchase_probability_<h>d against
    no_purchase_<h>d labels when :func:`align` kept them."""
    decline = per_horizon(NO_PURCHASE_PROBABILITY, horizons[0]) in joined.columns
    decline = decline and per_horizon(NO_PURCHASE, horizons[0]) in joined.columns
    predicted, label = (NO_PURCHASE_PROBABILITY, NO_PURCHASE) if decline else (CHURN_PROBABILITY, CHURN)
    return tuple(
        joined[[per_horizon(column, h) for h in horizons]].to_numpy(np.float64)
        for column in (predicted, label, OBSERVED)
    )


def predicted_horizons(frame: pd.DataFrame) -> list[float]:
    """The horizons a predictions frame has ``churn_probability_<h>d`` and ``expected_spend_<h>d`` for."""
    found = [float(m[1]) for c in frame.columns if (m := re.fullmatch(rf"{CHURN_PROBABILITY}_([\d.]+)d", str(c)))]
    return sorted(h for h in found if per_horizon(EXPECTED_SPEND, h) in frame.columns)


def horizon_columns(bases: Sequence[str], horizons: Sequence[float]) -> list[str]:
    return [per_horizon(base, h) for h in horizons for base in bases]


def evaluate(predictions: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Churn and spend metrics of ``predictions`` (customer_id, churn_probability, expected_spend) against
    ``labels`` (customer_id, churn, spend) of the same customers."""
    return compute_metrics(align(predictions, labels))


def report_figures(joined: pd.DataFrame) -> dict[str, Figure]:
    """The report's figures by file stem, from a frame made by :func:`align`: the main horizon's, then (with
    predictions and labels by horizon) those over the grid."""
    p, churn, expected, spend = _columns(joined)
    figures = review_figures(p, churn, expected, spend) | horizon_figures(joined)
    return {name.replace("/", "_"): figure for name, figure in figures.items()}


def horizon_figures(joined: pd.DataFrame) -> dict[str, Figure]:
    """S(t) and cumulative spend over the grid, and calibration by horizon; none without labels by horizon."""
    horizons = [h for h in predicted_horizons(joined) if per_horizon(OBSERVED, h) in joined.columns]
    if not horizons:
        return {}
    survival, churn, observed = survival_arrays(joined, horizons)
    expected, spend = (joined[horizon_columns([c], horizons)].to_numpy(np.float64) for c in (EXPECTED_SPEND, SPEND))
    days = np.asarray(horizons, dtype=np.float64)
    return {
        "horizons/survival_and_spend": horizons_figure(days, survival, churn, observed, expected, spend),
        "horizons/churn_calibration": horizon_calibration_figure(days, survival, churn, observed),
    }


# --- report ---------------------------------------------------------------------------------------------------


def format_value(name: str, value: float) -> str:
    """Counts as integers, undefined metrics (one class, no spend) as n/a, the rest to four decimals."""
    if name in ("n_customers", "uplift_contacts"):
        return f"{int(value):,}"
    return "n/a" if not math.isfinite(value) else f"{value:.4f}"


def format_metrics(metrics: dict[str, float]) -> str:
    """A compact two-column table for the console."""
    width = max(len(name) for name in metrics)
    return "\n".join(f"{name:<{width}}  {format_value(name, value)}" for name, value in metrics.items())


def write_report(
    metrics: dict[str, float],
    figures: dict[str, Figure],
    out_dir: str | Path,
    title: str,
    slices: pd.DataFrame | None = None,
    uplift: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """``metrics.json`` (undefined metrics as null, so strict JSON readers accept it), one PNG per figure,
    ``slices.csv`` with the metrics per customer slice when given, ``uplift_deciles.csv`` with the observed effect
    by decile of predicted uplift when given, and ``report.md`` with the metrics table, the slices, the deciles and
    the figures linked; returns the paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json", "report": out_dir / "report.md"}
    strict = {name: value if math.isfinite(value) else None for name, value in metrics.items()}
    paths["metrics"].write_text(json.dumps(strict, indent=2, allow_nan=False) + "\n")
    for name, figure in figures.items():
        paths[name] = out_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=100)
    rows = [f"| {name} | {format_value(name, value)} |" for name, value in metrics.items()]
    links = [f"## {name}\n\n![{name}]({name}.png)\n" for name in figures]
    by_slice = []
    if slices is not None and len(slices):
        paths["slices"] = out_dir / "slices.csv"
        slices.to_csv(paths["slices"], index=False)
        by_slice = ["## Slices\n", slices_markdown(slices), ""]
    by_decile = []
    if uplift is not None:
        paths["uplift_deciles"] = out_dir / "uplift_deciles.csv"
        uplift.to_csv(paths["uplift_deciles"], index=False)
        by_decile = [
            f"## Effect of the contact by decile of predicted uplift\n\n{UPLIFT_NOTE}\n",
            uplift_markdown(uplift),
            "",
        ]
    markdown = "\n".join(
        [
            f"# {title}\n",
            "| metric | value |",
            "|---|---|",
            *rows,
            "",
            f"{DECILE_NOTE}\n",
            *by_slice,
            *by_decile,
            *links,
        ]
    )
    paths["report"].write_text(markdown)
    return paths


UPLIFT_NOTE = (
    "Decile 1 holds the contacts with the highest predicted uplift. Observed: the mean outcome of those sent the "
    "offer minus that of those held out (retention, 1 - churn, for churn; spend for spend), with its 95% interval."
)


def uplift_markdown(deciles: pd.DataFrame) -> str:
    """The deciles of :func:`churnformer.evaluation.uplift.uplift_by_decile` (with an ``outcome`` column) as a
    markdown table."""
    rows = []
    for row in deciles.itertuples():
        interval = f"[{format_value('low', row.low)}, {format_value('high', row.high)}]"
        rows.append(
            f"| {row.outcome} | {row.decile} | {row.contacts:,} | {row.sent:,} | {row.held_out:,} | "
            f"{row.predicted:.4f} | {format_value('observed', row.observed)} | {interval} |"
        )
    header = "| outcome | decile | contacts | sent | held out | predicted | observed | 95% interval |"
    return "\n".join([header, "|---|---|---|---|---|---|---|---|", *rows])


# --- files and config -----------------------------------------------------------------------------------------


class HorizonNotObserved(InputError):
    """The log ends before the horizon after the cutoff does: what the customers did is not known yet."""


def labels_from_events(
    events: str | Path,
    cutoff: str,
    horizon_days: float,
    columns: ColumnMapping | None = None,
    spec: LabelSpec = LabelSpec(),
    horizons: Sequence[float] = (),
) -> pd.DataFrame:
    """Labels of every customer with at least one event before the cutoff (the population the predictor
    scores) at the main horizon and at each of ``horizons``, with whether the log covers each."""
    frame = load_events(events, columns)
    window = Window.from_cutoff(cutoff, horizon_days)
    require_events_before(frame[TIMESTAMP], window, source_of(frame, "events"))
    before = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64) < window.feature_end_ns
    population = np.sort(pd.unique(frame[CUSTOMER_ID].to_numpy()[before]))
    grid = HorizonGrid.of(horizons, horizon_days)
    return horizon_labels(frame, window, grid, population, spec)


def load_labels(
    labels: str | Path | None,
    events: str | Path | None,
    cutoff: str | None,
    horizon_days: float | None,
    columns: ColumnMapping | None = None,
    spec: LabelSpec = LabelSpec(),
    horizons: Sequence[float] = (),
) -> tuple[pd.DataFrame, str]:
    """Labels from a labels file or computed from an event log (at ``horizons`` too), and a description of
    where they came from. A labels file's ``churn_<h>d``/``spend_<h>d`` columns count as observed unless it
    says otherwise (``observed_<h>d``)."""
    if labels is not None and events is not None:
        raise InputError("pass either labels=PATH or events=PATH with cutoff and horizon_days, not both")
    if labels is not None:
        frame = read_table(labels, CUSTOMER_ID)
        for days in horizons:
            given = all(per_horizon(c, days) in frame.columns for c in (CHURN, SPEND))
            if given and per_horizon(OBSERVED, days) not in frame.columns:
                frame[per_horizon(OBSERVED, days)] = 1.0
        return frame, str(labels)
    if events is None or cutoff is None or horizon_days is None:
        raise InputError(
            "no labels: pass labels=PATH (columns customer_id, churn, spend), or events=PATH with "
            "cutoff=YYYY-MM-DD and horizon_days=N (the cutoff and horizon the predictions were made for)"
        )
    frame = labels_from_events(events, cutoff, horizon_days, columns, spec, horizons)
    if not frame[per_horizon(OBSERVED, float(horizon_days))].all():
        raise HorizonNotObserved(
            f"{events}: the log ends before the {float(horizon_days):g}-day horizon after {cutoff} does, so its "
            "churn and spend are not known yet: evaluate at an earlier cutoff or a shorter horizon_days"
        )
    return frame, f"labels from {events} (cutoff {cutoff}, horizon {horizon_days} days, churn: {spec})"


def evaluate_files(
    predictions: str | Path,
    labels: str | Path | None = None,
    *,
    events: str | Path | None = None,
    cutoff: str | None = None,
    horizon_days: float | None = None,
    columns: ColumnMapping | None = None,
    spec: LabelSpec = LabelSpec(),
    output_dir: str | Path = "evaluation",
    customers: str | Path | None = None,
    campaigns: str | Path | None = None,
    offer: str | None = None,
) -> dict[str, Path]:
    """Evaluate a predictions file against a labels file, or against labels computed from an event log, and
    write the report to ``output_dir``; prints the metrics and where the report went. Metrics per slice: by
    the predictions' segments, and by every attribute of the ``customers`` table when given. ``campaigns``: a
    campaign table of contacts made after the cutoff (needs ``events``): the predicted effects of contacting
    judged against its holdout (:mod:`churnformer.evaluation.campaign`); ``offer``: that offer's contacts only."""
    # A directory is the Parquet dataset churnformer-predict engine=spark writes.
    predicted = pd.read_parquet(predictions) if Path(predictions).is_dir() else read_table(predictions, CUSTOMER_ID)
    horizons = predicted_horizons(predicted)
    decline_model = any(column.startswith(f"{NO_PURCHASE_PROBABILITY}_") for column in predicted.columns)
    if labels is None and decline_model and not spec.churn.is_decline:
        logging.getLogger(__name__).warning(
            "%s holds a decline model's predictions (no_purchase_probability_<h>d columns) and the labels from "
            "%s are no purchase: pass churn_definition=decline (and the model's decline_threshold) to judge "
            "its churn_probability against declines",
            predictions,
            events,
        )
    label_frame, label_source = load_labels(labels, events, cutoff, horizon_days, columns, spec, horizons)
    joined = align(predicted, label_frame, names=(str(predictions), label_source))
    metrics = compute_metrics(joined)
    columns = columns or ColumnMapping()
    static = load_customers(customers, columns.customer_id) if customers is not None else None
    slices = slice_metrics(joined, static, predicted)
    uplift = None
    if campaigns is not None:
        if events is None or cutoff is None or horizon_days is None:
            raise InputError(
                "campaigns=PATH needs events=PATH, cutoff= and horizon_days=: the outcomes after each contact"
            )
        campaign_metrics, uplift = evaluate_campaign(
            predicted, campaigns, events, cutoff, float(horizon_days), columns, spec, offer
        )
        metrics |= campaign_metrics
    title = f"Evaluation of {predictions} against {label_source}"
    paths = write_report(metrics, report_figures(joined), output_dir, title, slices, uplift)
    print(format_metrics(metrics))
    print(f"report: {paths['report']}  metrics: {paths['metrics']}")
    return paths
