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
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from tqdm.auto import tqdm

from churnformer.console import counts_in_words, reason_in_words
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
from churnformer.defaults import serving_defaults
from churnformer.partition import EventSource
from churnformer.retention import ReferencePercentiles, SegmentRules, add_retention_columns
from churnformer.schema import (
    META_COLUMNS,
    META_FEATURIZER,
    META_HORIZON_DAYS,
    META_OUTPUTS,
    METADATA_PREFIX,
    REQUIRED_METADATA,
    REQUIRED_MODEL_INPUTS,
)

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
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise EventLogError(
            f"{path}: ONNX model lacks churnformer metadata {[METADATA_PREFIX + key for key in missing]}; "
            "export it with churnformer-export"
        )
    missing = set(REQUIRED_MODEL_INPUTS) - {i.name for i in proto.graph.input}
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
    """One onnxruntime session reused for every batch: ``Predictor(path).predict(events, cutoff)``.

    Settings left at None take ``churnformer-predict``'s defaults (``conf/serving/predict.yaml``).
    """

    def __init__(
        self,
        model: str | Path,
        providers: list[str] | None = None,
        batch_tokens: int | None = None,
        max_batch_size: int | None = None,
        threads: int | None = None,
        segments: SegmentRules | None = None,
    ) -> None:
        defaults = serving_defaults("predict")
        self.path = resolve_model_path(model)
        self.segments = segments or SegmentRules(**defaults["segments"])
        raw, self.metadata = read_model(self.path)
        self.featurizer = Featurizer.from_json(self.metadata[META_FEATURIZER])
        self.columns = ColumnMapping(**json.loads(self.metadata.get(META_COLUMNS, "{}")))
        self.outputs = json.loads(self.metadata[META_OUTPUTS])
        self.reference = ReferencePercentiles.from_metadata(self.metadata)
        requested = providers or default_providers()
        threads = defaults["threads"] if threads is None else threads
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
        self.batch_tokens = batch_tokens or defaults["batch_tokens"]
        self.max_batch_size = max_batch_size or defaults["max_batch_size"]
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

    def score_sequences(self, sequences: Sequences, progress: bool = False) -> pd.DataFrame:
        """Model outputs per customer (no retention columns: those need the whole population)."""
        results = np.zeros((len(sequences), len(self.outputs)), dtype=np.float32)
        self.infer_s = 0.0
        batches = token_budget_batches(sequences.lengths, self.batch_tokens, self.max_batch_size)

        def padded(rows: np.ndarray) -> dict[str, np.ndarray]:
            width = int(padded_width(sequences.lengths[rows[:1]])[0])
            return sequences.pad(fill_rows(rows), width=width).as_inputs()

        # The next batch is padded on a helper thread while onnxruntime (which releases the GIL) runs
        # this one: 4% less scoring time on the benchmark log.
        # The bar starts once the customers are known (after featurization), so its total never moves.
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=len(sequences), unit="customers", disable=not progress, smoothing=0.1, desc="scoring") as bar,
        ):
            pending = pool.submit(padded, batches[0]) if batches else None
            for index, rows in enumerate(batches):
                inputs = pending.result()
                if index + 1 < len(batches):
                    pending = pool.submit(padded, batches[index + 1])
                started = time.perf_counter()
                outputs = self._run(inputs)
                self.infer_s += time.perf_counter() - started
                results[rows] = np.stack(outputs, axis=1)[: len(rows)]
                bar.update(len(rows))
        frame = pd.DataFrame(results, columns=self.outputs)
        frame.insert(0, CUSTOMER_ID, sequences.customer_ids)
        frame["n_events"] = sequences.n_events_total
        return frame

    def retention(self, predictions: pd.DataFrame) -> pd.DataFrame:
        return add_retention_columns(predictions, self.segments, self.reference)

    def score_frame(
        self, frame: pd.DataFrame, window: Window, static: pd.DataFrame | None, progress: bool = False
    ) -> ScoringResult:
        """Score one standard frame (a whole log, a job shard or a spill partition); no retention columns."""
        started = time.perf_counter()
        with self.naming_the_model():
            sequences = build_sequences(frame, window, self.featurizer, static)
        featurize_s = time.perf_counter() - started
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
        return Window.from_cutoff(cutoff, float(self.metadata[META_HORIZON_DAYS]))

    def predict(
        self,
        events: str | Path | pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: str | Path | pd.DataFrame | None = None,
        columns: ColumnMapping | Mapping[str, str | None] | None = None,
        progress: bool = False,
    ) -> ScoringResult:
        """Score every customer with at least one event up to ``cutoff``; report everyone else.

        ``events`` and ``customers`` are the user's file or DataFrame, with the user's column names:
        ``columns`` maps them (a :class:`ColumnMapping`, or ``{"customer_id": "user", ...}`` where keys left
        out keep the names the model was trained with). In memory; ``churnformer-predict``
        (:func:`churnformer.predict_job.run_prediction`) adds memory-bounded spilling and job shards.
        """
        started = time.perf_counter()
        columns = self.column_mapping(columns)
        if isinstance(events, pd.DataFrame):
            frame = load_events(events, columns)
        else:
            frame = self.open_events(events, columns).read_all()
        static = load_customers(customers, columns.customer_id) if customers is not None else None
        result = self.predict_standard(frame, cutoff, static, progress)
        result.summary.wall_s = round(time.perf_counter() - started, 3)
        return result

    def open_events(self, path: str | Path, columns: ColumnMapping) -> EventSource:
        """The event-log file, checked against what the model needs (a mismatch names the model)."""
        with self.naming_the_model():
            return EventSource.open(path, columns, self.featurizer)

    @contextmanager
    def naming_the_model(self) -> Iterator[None]:
        """Adds which model asked for a column to a :class:`FeatureMismatchError`."""
        try:
            yield
        except FeatureMismatchError as error:
            raise FeatureMismatchError(f"{error}; model: {self.path}") from error

    def column_mapping(self, columns: ColumnMapping | Mapping[str, str | None] | None) -> ColumnMapping:
        """The mapping to read a log with: ``columns`` given in full, or the model's with some names replaced."""
        return columns if isinstance(columns, ColumnMapping) else self.columns.overridden(columns)

    def predict_standard(
        self,
        events: pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: pd.DataFrame | None = None,
        progress: bool = False,
    ) -> ScoringResult:
        """:meth:`predict` on frames already in the standard contract (``load_events`` / ``load_customers``
        output, as training holds them): no column mapping is applied again."""
        started = time.perf_counter()
        window = self.window(cutoff)
        require_events_before(events[TIMESTAMP], window, source_of(events, "events"))
        result = self.score_frame(events, window, customers, progress)
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
        f"scored {summary.customers_scored:,} of {summary.customers_seen:,} customers{where}"
        f"{not_scored_words(summary.customers_not_scored)} from {summary.rows_read:,} events in "
        f"{summary.wall_s:.1f} s ({rate:,.0f} customers/s) on {summary.provider}{spill}"
    )


def not_scored_words(reasons: dict[str, int]) -> str:
    """`` (1,992 not scored: no event before the cutoff)``, or nothing when every customer was scored."""
    total = sum(reasons.values())
    if not total:
        return ""
    why = reason_in_words(next(iter(reasons))) if len(reasons) == 1 else counts_in_words(reasons)
    return f" ({total:,} not scored: {why})"
