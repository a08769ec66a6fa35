"""Batch scoring with onnxruntime: event log + ONNX model -> one row per customer.

Needs only onnx, onnxruntime, numpy, pandas and pyarrow (torch is never imported), so a scoring job
can run in a slim image. Featurization is the same code as training, with the state embedded in the
model file, so a model cannot be paired with the wrong vocabularies.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tqdm.auto import tqdm

from churnformer.data.events import (
    CUSTOMER_ID,
    TIMESTAMP,
    ColumnMapping,
    EventLogError,
    load_customers,
    load_events,
    source_of,
)
from churnformer.data.featurizer import FeatureMismatchError, Featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window, require_events_before
from churnformer.partition import EventSource

METADATA_PREFIX = "churnformer."
REQUIRED_INPUTS = {"event_cat", "event_num", "lengths", "customer_num"}
# Rows per batch are filled up to a multiple of this (see fill_rows).
ROW_MULTIPLE = 16


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
    shard: str = "0/1"
    partitions: int = 0  # spill partitions on disk; 0: scored in memory
    featurize_s: float = 0.0
    infer_s: float = 0.0
    wall_s: float = 0.0

    def add(self, other: ScoringSummary) -> None:
        """Accumulate the counts of another part (job shard or spill partition) of the same job."""
        self.rows_read += other.rows_read
        self.customers_seen += other.customers_seen
        self.customers_scored += other.customers_scored
        for mine, theirs in (
            (self.customers_not_scored, other.customers_not_scored),
            (self.events_ignored, other.events_ignored),
            (self.unknown_categories, other.unknown_categories),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        self.customers_without_static += other.customers_without_static
        self.featurize_s += other.featurize_s
        self.infer_s += other.infer_s


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
    is in the top ``1 - high_value_quantile`` of the reference population (or >= ``high_value_min_spend``)."""

    risk_threshold: float = 0.5
    high_value_quantile: float = 0.7
    high_value_min_spend: float | None = None


@dataclass(frozen=True)
class ReferencePercentiles:
    """Percentiles 1..99 of churn probability and expected spend over a reference population: the
    validation customers at training time, stored in the model. Deciles and the high-value threshold
    taken from them do not depend on which customers one job scores, so shards agree with a full run
    and segments are stable from one scoring run to the next."""

    churn_probability: list[float]
    expected_spend: list[float]

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ReferencePercentiles | None:
        calibration = json.loads(metadata.get("calibration", "{}"))
        churn, spend = calibration.get("churn_percentiles"), calibration.get("spend_percentiles")
        return cls(churn, spend) if churn and spend else None

    @classmethod
    def of(cls, predictions: pd.DataFrame) -> ReferencePercentiles:
        """The scored population itself (models exported without reference percentiles)."""
        levels = np.arange(1, 100) / 100
        churn = predictions["churn_probability"].to_numpy(dtype="float64")
        spend = predictions["expected_spend"].to_numpy(dtype="float64")
        empty = [0.0] * len(levels)
        return cls(
            np.quantile(churn, levels).tolist() if len(churn) else empty,
            np.quantile(spend, levels).tolist() if len(spend) else empty,
        )

    def spend_at(self, quantile: float) -> float:
        return float(np.interp(quantile * 100, np.arange(1, 100), self.expected_spend))


def descending_decile(values: np.ndarray, percentiles: list[float]) -> np.ndarray:
    """1 for values at or above the reference 90th percentile ... 10 below the 10th."""
    cuts = np.asarray(percentiles)[9::10]  # percentiles 10, 20, ..., 90
    return (10 - np.searchsorted(cuts, values, side="right")).astype(np.int8)


def add_retention_columns(
    predictions: pd.DataFrame, rules: SegmentRules, reference: ReferencePercentiles | None = None
) -> pd.DataFrame:
    """``churn_risk_decile``, ``value_decile`` (1 = highest) and ``segment``, relative to ``reference``
    (default: the scored population itself)."""
    reference = reference or ReferencePercentiles.of(predictions)
    churn = predictions["churn_probability"].to_numpy()
    spend = predictions["expected_spend"].to_numpy()
    threshold = (
        rules.high_value_min_spend
        if rules.high_value_min_spend is not None
        else reference.spend_at(rules.high_value_quantile)
    )
    value = np.where(spend >= threshold, "high value", "low value")
    risk = np.where(churn >= rules.risk_threshold, "at risk", "loyal")
    return predictions.assign(
        churn_risk_decile=descending_decile(churn, reference.churn_probability),
        value_decile=descending_decile(spend, reference.expected_spend),
        segment=np.char.add(np.char.add(value.astype(str), " "), risk.astype(str)),
    )


def padded_width(lengths: np.ndarray) -> np.ndarray:
    """The width a customer of each length is padded to: its length up to 8, then the next multiple of
    4 (to 32), 8 (to 64) or 16. A fixed width per length keeps scores independent of batch-mates (see
    :func:`fill_rows`) at about 7% padding on a skewed log."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    step = np.select([lengths <= 8, lengths <= 32, lengths <= 64], [1, 4, 8], 16)
    return -(-lengths // step) * step


def token_budget_batches(lengths: np.ndarray, batch_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Rows grouped by padded width (shortest first), each group cut so that a batch (rows x width)
    fits ``batch_tokens`` and ``max_batch_size``."""
    if len(lengths) == 0:
        return []
    widths = padded_width(lengths)
    order = np.argsort(widths, kind="stable")
    sorted_widths = widths[order]
    bounds = np.flatnonzero(np.diff(sorted_widths)) + 1
    batches = []
    for group in np.split(order, bounds):
        width = int(widths[group[0]])
        size = max(1, min(max_batch_size, batch_tokens // width))
        batches += [group[start : start + size] for start in range(0, len(group), size)]
    return batches


def fill_rows(rows: np.ndarray, multiple: int = ROW_MULTIPLE) -> np.ndarray:
    """``rows`` plus repeats of its first row up to a multiple of ``multiple``.

    onnxruntime's vectorized kernels compute the tail of a tensor that does not fill a SIMD register
    (and a softmax row of another length) with different rounding, so a customer's score would depend,
    in the last bit, on its batch-mates. With whole registers and a width fixed by the customer's own
    length (:func:`padded_width`), a customer's score is the same whichever customers share its batch,
    so sharded, spilled and in-memory runs agree exactly (tested).
    """
    return np.concatenate([rows, np.repeat(rows[:1], (-len(rows)) % multiple)])


class Predictor:
    """One onnxruntime session reused for every batch: ``Predictor(path).predict(events, cutoff)``."""

    def __init__(
        self,
        model: str | Path,
        providers: list[str] | None = None,
        batch_tokens: int = 8_192,
        max_batch_size: int = 4096,
        threads: int = 0,
        segments: SegmentRules | None = None,
    ) -> None:
        self.path = resolve_model_path(model)
        self.segments = segments or SegmentRules()
        raw, self.metadata = read_model(self.path)
        self.featurizer = Featurizer.from_json(self.metadata["featurizer"])
        self.columns = ColumnMapping(**json.loads(self.metadata.get("columns", "{}")))
        self.outputs = json.loads(self.metadata["outputs"])
        self.reference = ReferencePercentiles.from_metadata(self.metadata)
        requested = providers or default_providers()
        self.session = ort.InferenceSession(raw, session_options(threads), providers=requested)
        self.provider = self.session.get_providers()[0]
        if requested[0] != self.provider:
            # onnxruntime falls back silently; a GPU job running on CPU must not go unnoticed.
            print(
                f"warning: {requested[0]} was requested but is not usable here (onnxruntime providers available: "
                f"{ort.get_available_providers()}); scoring on {self.provider}",
                file=sys.stderr,
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.infer_s = 0.0  # time inside onnxruntime during the last score_sequences call

    def _run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        if self.provider != "CUDAExecutionProvider":
            return self.session.run(None, feed)
        # IO binding: inputs are copied to the device once and outputs come back in one copy each.
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def score_sequences(self, sequences: Sequences, bar: tqdm | None = None) -> pd.DataFrame:
        """Model outputs per customer (no retention columns: those need the whole population)."""
        results = np.zeros((len(sequences), len(self.outputs)), dtype=np.float32)
        if bar is not None:
            bar.total = (bar.total or 0) + len(sequences)
            bar.refresh()
        self.infer_s = 0.0
        batches = token_budget_batches(sequences.lengths, self.batch_tokens, self.max_batch_size)

        def padded(rows: np.ndarray) -> dict[str, np.ndarray]:
            width = int(padded_width(sequences.lengths[rows[:1]])[0])
            return sequences.pad(fill_rows(rows), width=width).as_inputs()

        # The next batch is padded on a helper thread while onnxruntime (which releases the GIL) runs
        # this one: 4% less scoring time on the benchmark log.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(padded, batches[0]) if batches else None
            for index, rows in enumerate(batches):
                inputs = pending.result()
                if index + 1 < len(batches):
                    pending = pool.submit(padded, batches[index + 1])
                started = time.perf_counter()
                outputs = self._run(inputs)
                self.infer_s += time.perf_counter() - started
                results[rows] = np.stack(outputs, axis=1)[: len(rows)]
                if bar is not None:
                    bar.update(len(rows))
        frame = pd.DataFrame(results, columns=self.outputs)
        frame.insert(0, CUSTOMER_ID, sequences.customer_ids)
        frame["n_events"] = sequences.n_events_total
        return frame

    def retention(self, predictions: pd.DataFrame) -> pd.DataFrame:
        return add_retention_columns(predictions, self.segments, self.reference)

    def score_frame(
        self, frame: pd.DataFrame, window: Window, static: pd.DataFrame | None, bar: tqdm | None = None
    ) -> ScoringResult:
        """Score one standard frame (a whole log, a job shard or a spill partition); no retention columns."""
        started = time.perf_counter()
        try:
            sequences = build_sequences(frame, window, self.featurizer, static)
        except FeatureMismatchError as error:
            raise FeatureMismatchError(f"{error}; model: {self.path}") from error
        featurize_s = time.perf_counter() - started
        predictions = self.score_sequences(sequences, bar)
        seen = pd.unique(frame[CUSTOMER_ID].to_numpy())
        not_scored = pd.Index(seen).difference(pd.Index(sequences.customer_ids))
        rejects = pd.DataFrame({CUSTOMER_ID: np.asarray(not_scored), "reason": "no_event_before_cutoff"})
        report = sequences.report
        summary = ScoringSummary(
            rows_read=len(frame),
            customers_seen=len(seen),
            customers_scored=len(predictions),
            customers_not_scored={"no_event_before_cutoff": len(rejects)} if len(rejects) else {},
            events_ignored={
                "after_cutoff": report.events_after_cutoff,
                "duplicate": report.events_duplicate,
                "truncated": report.events_truncated,
            },
            unknown_categories={k: v for k, v in report.unknown_categories.items() if v},
            customers_without_static=report.customers_without_static,
            provider=self.provider,
            featurize_s=round(featurize_s, 3),
            infer_s=round(self.infer_s, 3),
        )
        return ScoringResult(predictions, rejects, summary)

    def window(self, cutoff: str | pd.Timestamp) -> Window:
        return Window.from_cutoff(cutoff, float(self.metadata.get("horizon_days", 1)))

    def predict(
        self,
        events: str | Path | pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: str | Path | pd.DataFrame | None = None,
        columns: ColumnMapping | None = None,
        progress: bool = False,
    ) -> ScoringResult:
        """Score every customer with at least one event up to ``cutoff``; report everyone else.

        In memory; ``churnformer-predict`` (:func:`churnformer.predict_job.run_prediction`) adds
        memory-bounded spilling and job shards for logs of any size.
        """
        started = time.perf_counter()
        columns = columns or self.columns
        if isinstance(events, pd.DataFrame):
            frame = load_events(events, columns)
        else:
            frame = EventSource.open(events, columns, self.featurizer).read_all()
        static = load_customers(customers, columns.customer_id) if customers is not None else None
        window = self.window(cutoff)
        require_events_before(frame[TIMESTAMP], window, cutoff, source_of(frame, "events"))
        with tqdm(total=None, unit="customers", disable=not progress, smoothing=0.1) as bar:
            result = self.score_frame(frame, window, static, bar)
        result.predictions = self.retention(result.predictions)
        result.summary.wall_s = round(time.perf_counter() - started, 3)
        return result


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The onnxruntime settings scoring uses, chosen with ``scripts/bench_score.py --sweep-session``:
    basic graph optimizations (the extended fusions were 3-8% slower for this small model), one thread
    per core (one thread: 1.3x slower), sequential execution (parallel: 1.3-2x slower), no spinning
    (within noise, and idle threads then leave the cores to Python, which pads the next batch), no
    memory arena (see below)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Without the arena, memory follows the batch in flight; with it, onnxruntime keeps its high-water
    # mark for good (450 MB more between spill partitions, measured) at no measurable speed gain.
    options.enable_cpu_mem_arena = False
    return options


def check_output_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise EventLogError(f"{path}: output must end in .parquet or .csv")
    return path


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` to a hidden temporary name beside ``path``, renamed into place only when complete, so
    an interrupted job never leaves a partial file at ``path`` (the temporary is removed on errors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Parquet or CSV by extension, written atomically."""
    path = check_output_path(path)
    if path.suffix.lower() == ".csv":
        return write_atomically(path, lambda partial: frame.to_csv(partial, index=False))
    return write_atomically(path, lambda partial: frame.to_parquet(partial, index=False))


def write_result(result: ScoringResult, output: str | Path) -> dict[str, Path]:
    """Predictions at ``output``; ``<output>.rejects.csv`` and ``<output>.summary.json`` beside it.

    The predictions are written last, so their presence means the job completed.
    """
    output = check_output_path(output)
    rejects = write_table(result.rejects, output.with_name(output.name + ".rejects.csv"))
    summary_text = json.dumps(asdict(result.summary), indent=2)
    summary = write_atomically(output.with_name(output.name + ".summary.json"), lambda p: p.write_text(summary_text))
    return {"predictions": write_table(result.predictions, output), "rejects": rejects, "summary": summary}


def describe(summary: ScoringSummary) -> str:
    """The one-line summary a batch job prints (the full accounting is in the summary JSON)."""
    rate = summary.customers_scored / summary.wall_s if summary.wall_s else float("nan")
    where = f" (shard {summary.shard})" if summary.shard != "0/1" else ""
    spill = f", {summary.partitions} spill partitions" if summary.partitions else ""
    return (
        f"scored {summary.customers_scored:,} of {summary.customers_seen:,} customers{where} "
        f"({sum(summary.customers_not_scored.values()):,} not scored: {summary.customers_not_scored or 'none'}) "
        f"from {summary.rows_read:,} events in {summary.wall_s:.1f} s ({rate:,.0f} customers/s) on "
        f"{summary.provider}{spill}"
    )
