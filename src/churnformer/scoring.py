"""Batch scoring with onnxruntime: event log + ONNX model -> one row per customer.

Needs only onnx, onnxruntime, numpy, pandas and pyarrow (torch is never imported), so a scoring job
can run in a slim image. Featurization is the same code as training, with the state embedded in the
model file, so a model cannot be paired with the wrong vocabularies.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tqdm.auto import tqdm

from churnformer.data.events import CUSTOMER_ID, ColumnMapping, EventLogError, load_customers, load_events
from churnformer.data.featurizer import Featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window

METADATA_PREFIX = "churnformer."
REQUIRED_INPUTS = {"event_cat", "event_num", "lengths", "customer_num"}


@dataclass
class ScoringSummary:
    """Where every input row and customer went; scored + not scored = customers seen, always."""

    rows_read: int = 0
    customers_seen: int = 0
    customers_scored: int = 0
    customers_not_scored: dict[str, int] = field(default_factory=dict)
    events_ignored: dict[str, int] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    customers_without_static: int = 0
    provider: str = ""
    wall_s: float = 0.0


@dataclass
class ScoringResult:
    predictions: pd.DataFrame
    rejects: pd.DataFrame
    summary: ScoringSummary


def resolve_model_path(model: str | Path) -> Path:
    """A run directory means its ``model.onnx``."""
    path = Path(model)
    if path.is_dir():
        path = path / "model.onnx"
    if not path.is_file():
        raise EventLogError(f"{path}: model file not found (pass an .onnx file or a training run directory)")
    return path


def read_model(path: Path) -> tuple[bytes, dict[str, str]]:
    """Load and check the ONNX file; return its bytes and churnformer metadata."""
    raw = path.read_bytes()
    try:
        proto = onnx.load_from_string(raw)
        onnx.checker.check_model(proto)
    except Exception as error:  # onnx raises DecodeError, ValidationError and others for junk files
        raise EventLogError(f"{path}: not a valid ONNX model ({type(error).__name__}: {error})") from error
    metadata = {
        p.key.removeprefix(METADATA_PREFIX): p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)
    }
    if "featurizer" not in metadata:
        raise EventLogError(
            f"{path}: ONNX model has no churnformer featurization metadata; export it with churnformer-export"
        )
    missing = REQUIRED_INPUTS - {i.name for i in proto.graph.input}
    if missing:
        raise EventLogError(f"{path}: ONNX model lacks inputs {sorted(missing)}; not a churnformer model")
    return raw, metadata


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


@dataclass(frozen=True)
class SegmentRules:
    """Retention segments: at risk if churn_probability >= ``risk_threshold``; high value if expected_spend
    is in the top ``1 - high_value_quantile`` of the scored customers (or >= ``high_value_min_spend``)."""

    risk_threshold: float = 0.5
    high_value_quantile: float = 0.7
    high_value_min_spend: float | None = None


def descending_decile(values: np.ndarray) -> np.ndarray:
    """1 for the highest tenth of ``values`` ... 10 for the lowest; ties keep row order."""
    order = np.argsort(-values, kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return (rank * 10 // max(len(values), 1) + 1).astype(np.int8)


def add_retention_columns(predictions: pd.DataFrame, rules: SegmentRules) -> pd.DataFrame:
    """``churn_risk_decile``, ``value_decile`` (1 = highest) and ``segment``, relative to this population."""
    churn = predictions["churn_probability"].to_numpy()
    spend = predictions["expected_spend"].to_numpy()
    threshold = (
        rules.high_value_min_spend
        if rules.high_value_min_spend is not None
        else float(np.quantile(spend, rules.high_value_quantile))
        if len(spend)
        else 0.0
    )
    value = np.where(spend >= threshold, "high value", "low value")
    risk = np.where(churn >= rules.risk_threshold, "at risk", "loyal")
    return predictions.assign(
        churn_risk_decile=descending_decile(churn),
        value_decile=descending_decile(spend),
        segment=np.char.add(np.char.add(value.astype(str), " "), risk.astype(str)),
    )


def token_budget_batches(lengths: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Rows sorted by length, cut so each padded batch (rows x its longest length) fits ``batch_tokens``."""
    order = np.argsort(lengths, kind="stable")
    sorted_lengths = np.maximum(lengths[order], 1)
    batches, start = [], 0
    while start < len(order):
        candidate = sorted_lengths[start : start + max_batch_size]
        cost = np.arange(1, len(candidate) + 1) * candidate  # padded cells if the batch ended there
        size = max(1, int(np.searchsorted(cost, batch_tokens, side="right")))
        batches.append(order[start : start + size])
        start += size
    return batches


class Predictor:
    """One onnxruntime session reused for every batch: ``Predictor(path).predict(events, cutoff)``."""

    def __init__(
        self,
        model: str | Path,
        providers: list[str] | None = None,
        batch_tokens: int = 65_536,
        max_batch_size: int = 2048,
        threads: int = 0,
        segments: SegmentRules | None = None,
    ) -> None:
        self.path = resolve_model_path(model)
        self.segments = segments or SegmentRules()
        raw, self.metadata = read_model(self.path)
        self.featurizer = Featurizer.from_json(self.metadata["featurizer"])
        self.columns = ColumnMapping(**json.loads(self.metadata.get("columns", "{}")))
        self.outputs = json.loads(self.metadata["outputs"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        requested = providers or default_providers()
        self.session = ort.InferenceSession(raw, options, providers=requested)
        self.provider = self.session.get_providers()[0]
        if requested[0] != self.provider:
            print(f"churnformer: {requested[0]} unavailable, scoring on {self.provider}")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size

    def score_sequences(self, sequences: Sequences, progress: bool = False) -> pd.DataFrame:
        results = np.zeros((len(sequences), len(self.outputs)), dtype=np.float32)
        bar = tqdm(total=len(sequences), unit="customers", disable=not progress, smoothing=0.1)
        for rows in token_budget_batches(sequences.lengths, self.batch_tokens, self.max_batch_size):
            inputs = sequences.pad(rows).as_inputs()
            outputs = self.session.run(None, {name: inputs[name] for name in self.input_names})
            results[rows] = np.stack(outputs, axis=1)
            bar.update(len(rows))
        bar.close()
        frame = pd.DataFrame(results, columns=self.outputs)
        frame.insert(0, CUSTOMER_ID, sequences.customer_ids)
        frame["n_events"] = sequences.n_events_total
        return add_retention_columns(frame, self.segments)

    def predict(
        self,
        events: str | Path | pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: str | Path | pd.DataFrame | None = None,
        columns: ColumnMapping | None = None,
        progress: bool = False,
    ) -> ScoringResult:
        """Score every customer with at least one event up to ``cutoff``; report everyone else."""
        started = time.perf_counter()
        columns = columns or self.columns
        frame = load_events(events, columns)
        static = load_customers(customers, columns.customer_id) if customers is not None else None
        window = Window.from_cutoff(cutoff, float(self.metadata.get("horizon_days", 1)))
        sequences = build_sequences(frame, window, self.featurizer, static)
        predictions = self.score_sequences(sequences, progress)

        seen = pd.unique(frame[CUSTOMER_ID].to_numpy())
        not_scored = pd.Index(seen).difference(pd.Index(sequences.customer_ids))
        rejects = pd.DataFrame({CUSTOMER_ID: np.asarray(not_scored), "reason": "no_event_before_cutoff"})
        report = sequences.report
        summary = ScoringSummary(
            rows_read=len(frame),
            customers_seen=len(seen),
            customers_scored=len(predictions),
            customers_not_scored={"no_event_before_cutoff": len(rejects)} if len(rejects) else {},
            events_ignored={"after_cutoff": report.events_after_cutoff, "truncated": report.events_truncated},
            unknown_categories={k: v for k, v in report.unknown_categories.items() if v},
            customers_without_static=report.customers_without_static,
            provider=self.provider,
            wall_s=round(time.perf_counter() - started, 3),
        )
        return ScoringResult(predictions, rejects, summary)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Parquet or CSV by extension, written to a temporary name and renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    if path.suffix.lower() in {".parquet", ".pq"}:
        frame.to_parquet(partial, index=False)
    elif path.suffix.lower() == ".csv":
        frame.to_csv(partial, index=False)
    else:
        raise EventLogError(f"{path}: output must end in .parquet or .csv")
    os.replace(partial, path)
    return path


def write_result(result: ScoringResult, output: str | Path) -> dict[str, Path]:
    """Predictions at ``output``; ``<output>.rejects.csv`` and ``<output>.summary.json`` beside it."""
    output = Path(output)
    rejects = write_table(result.rejects, output.with_name(output.name + ".rejects.csv"))
    summary = output.with_name(output.name + ".summary.json")
    summary.write_text(json.dumps(asdict(result.summary), indent=2))
    return {"predictions": write_table(result.predictions, output), "rejects": rejects, "summary": summary}


def describe(summary: ScoringSummary) -> str:
    rate = summary.customers_scored / summary.wall_s if summary.wall_s else float("nan")
    return (
        f"scored {summary.customers_scored:,} of {summary.customers_seen:,} customers "
        f"({sum(summary.customers_not_scored.values()):,} not scored: {summary.customers_not_scored or 'none'}) "
        f"from {summary.rows_read:,} events in {summary.wall_s:.1f} s ({rate:,.0f} customers/s) on {summary.provider}"
    )


def run_prediction(config: dict[str, Any]) -> dict[str, Path]:
    """The ``churnformer-predict`` job from a plain config dict (see ``conf/predict.yaml``)."""
    predictor = Predictor(
        config["model"],
        providers=config.get("providers"),
        batch_tokens=config.get("batch_tokens", 65_536),
        threads=config.get("threads", 0),
        segments=SegmentRules(**(config.get("segments") or {})),
    )
    columns = ColumnMapping(**config["columns"]) if config.get("columns") else None
    result = predictor.predict(
        config["events"], config["cutoff"], config.get("customers"), columns, progress=config.get("progress", True)
    )
    paths = write_result(result, config["output"])
    print(describe(result.summary))
    print(f"predictions: {paths['predictions']}  rejects: {paths['rejects']}  summary: {paths['summary']}")
    return paths
