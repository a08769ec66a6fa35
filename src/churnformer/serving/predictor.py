"""Batch scoring with onnxruntime: event log + ONNX model -> one row per customer.

Needs only onnx, onnxruntime, numpy, pandas and pyarrow (torch is never imported), so a scoring job
can run in a slim image. Featurization is the same code as training, with the state embedded in the
model file, so a model cannot be paired with the wrong vocabularies.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import pandas as pd
from tqdm.auto import tqdm

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, ColumnMapping, load_customers, load_events, source_of
from churnformer.data.featurizer import FeatureMismatchError, Featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window, require_events_before
from churnformer.errors import ModelFileError
from churnformer.files import ModelBytes
from churnformer.schema import (
    EMBEDDING,
    EMBEDDING_PREFIX,
    META_CAMPAIGNS,
    META_COLUMNS,
    META_FEATURIZER,
    META_HORIZON_DAYS,
    META_HORIZONS,
    META_MODEL_CARD,
    META_OUTPUTS,
    META_VERSION,
    N_EVENTS,
)
from churnformer.serving.batching import fill_rows, padded_width, token_budget_batches
from churnformer.serving.contact import add_contact_columns
from churnformer.serving.explain import EXPLAINED, Explainer, ExplainSettings, drivers_last
from churnformer.serving.input_profile import input_profile
from churnformer.serving.model_file import load_model
from churnformer.serving.output import ScoringResult, ScoringSummary
from churnformer.serving.partition import EventSource
from churnformer.serving.retention import ReferencePercentiles, add_retention_columns, add_value_columns
from churnformer.serving.settings import ScoringSettings
from churnformer.text.encoder import require_text_support

if TYPE_CHECKING:
    from churnformer.text.embeddings import TextEmbeddings


# Predictor.score(columns=AS_LOADED): the frames are already in the standard contract.
AS_LOADED = "as loaded"


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if "CUDAExecutionProvider" in available
        else ["CPUExecutionProvider"]
    )


class Predictor:
    """One onnxruntime session reused for every batch: ``Predictor(path).score(events, cutoff)``.

    ``settings``: how to score (default: ``conf/serving/predict.yaml``'s); with ``settings.explain`` every
    frame scored is explained too. ``max_streams``: the most streams automatic ``streams`` may choose
    (``churnformer-predict``: what ``memory_budget_mb`` allows).

    The verbs, one per level: :meth:`score` (a user's events, in memory), :meth:`score_frame` (a frame in the
    standard contract: every engine's unit of work, no retention columns) and :meth:`score_sequences`
    (featurized customers: the model's outputs). :func:`churnformer.serving.job.score_log` scores a log on
    disk within a memory budget, :func:`churnformer.spark.score_table` a Spark table.
    """

    def __init__(
        self, model: str | Path | ModelBytes, settings: ScoringSettings | None = None, max_streams: int | None = None
    ) -> None:
        """``model``: an .onnx file, a training run directory, or a model's bytes as a distributed job ships them
        (with its text encoder: ``ModelBytes.text_encoder``). A model with text features reads its texts with
        ``settings.text_encoder`` (default: the ``text_encoder.onnx`` beside the model, as its training run
        wrote it), taking the embeddings of ``settings.text_cache`` when that file exists."""
        self.settings = settings = settings or ScoringSettings.defaults()
        self.path, raw, self.metadata = load_model(model)
        self.featurizer = Featurizer.from_json(self.metadata[META_FEATURIZER])
        self.columns = ColumnMapping(**json.loads(self.metadata.get(META_COLUMNS, "{}")))
        self.outputs = json.loads(self.metadata[META_OUTPUTS])
        self.horizons = [float(days) for days in json.loads(self.metadata[META_HORIZONS])]
        self.reference = ReferencePercentiles.from_metadata(self.metadata)
        # Trained with campaigns: what contacting costs, per offer (a contact.cost naming no cost for one of the
        # model's offers is refused here, before any event is read).
        self.contact_costs = settings.contact.costs_for(self.metadata) if META_CAMPAIGNS in self.metadata else None
        # The training run's model card (models exported before it: none).
        self.card = json.loads(self.metadata[META_MODEL_CARD]) if META_MODEL_CARD in self.metadata else None
        requested = settings.providers or default_providers()
        self.streams, threads = stream_layout(
            settings.streams, settings.threads, gpu=requested[0] == "CUDAExecutionProvider", most=max_streams
        )
        with warnings.catch_warnings():  # onnxruntime's own words on a missing provider: ours follow, clearer
            warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
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
        if settings.embeddings:
            self.embedding_size()  # a model file without the output is refused before any event is read
        shipped = model.text_encoder if isinstance(model, ModelBytes) else None
        # Texts are embedded during featurization, before any batch runs: the encoder gets every stream's threads.
        self.texts = self.open_texts(shipped or settings.text_encoder, threads * self.streams, settings.text_cache)
        self.explainer = (
            Explainer(self.without_embeddings(), settings.explain) if settings.explain is not None else None
        )
        self.infer_s = 0.0  # wall time of the batch loop of the last score_sequences call

    def explaining(self, explain: bool | Mapping[str, Any] | ExplainSettings | None) -> Predictor:
        """This predictor (the same model, session and texts) explaining what it scores as ``explain`` says:
        True (``conf/serving/predict.yaml``'s ``explain.*``), some of those settings (``{"only":
        "risk_decile<=2"}``), ExplainSettings, or False/None (no explanations)."""
        other = copy.copy(self)
        other.settings = self.settings.explaining(explain)
        explain = other.settings.explain
        other.explainer = Explainer(other.without_embeddings(), explain) if explain is not None else None
        return other

    def open_texts(
        self, text_encoder: str | Path | ModelBytes | None, threads: int, text_cache: str | Path | None
    ) -> TextEmbeddings | None:
        """The job's text embeddings for a model with text features (None without), its encoder (default: the
        file beside the model) checked against the one the model was trained with, reading ``text_cache``
        when that file exists."""
        featurizer = self.featurizer
        if not featurizer.text_columns:
            return None
        require_text_support(f"{self.path} (reads text columns {featurizer.text_columns})")
        from churnformer.text.embeddings import TextEmbeddings
        from churnformer.text.encoder import EncoderIdentity, TextEncoder

        expected = EncoderIdentity(**featurizer.text_encoder)
        source = text_encoder or Path(self.path).parent / expected.file
        texts = TextEmbeddings(TextEncoder(source, expected, threads))
        if text_cache is not None and Path(text_cache).is_file():
            texts.load(text_cache)
        return texts

    def _run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        feed = {name: inputs[name] for name in self.input_names}
        if self.provider != "CUDAExecutionProvider":
            return self.session.run(outputs, feed)
        # IO binding: inputs are copied to the device once and outputs come back in one copy each.
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def score_sequences(self, sequences: Sequences, progress: bool = False) -> pd.DataFrame:
        """Model outputs per customer (no retention columns: those need the whole population).

        ``streams`` threads each pad a batch and run it (onnxruntime releases the GIL), so one pads while
        another runs; each thread holds one batch at a time."""
        embedding = self.embedding_size() if self.settings.embeddings else 0
        names = [*self.outputs, EMBEDDING] if embedding else self.outputs
        results = np.zeros((len(sequences), len(self.outputs) + embedding), dtype=np.float32)
        batches = token_budget_batches(sequences.lengths, self.settings.batch_tokens, self.settings.max_batch_size)

        def score(rows: np.ndarray) -> int:
            width = int(padded_width(sequences.lengths[rows[:1]])[0])
            outputs = self._run(sequences.pad(fill_rows(rows), width=width), names)
            predicted = np.stack(outputs[: len(self.outputs)], axis=1)
            if embedding:
                predicted = np.concatenate([predicted, outputs[-1]], axis=1)
            results[rows] = predicted[: len(rows)]
            return len(rows)

        started = time.perf_counter()
        # The bar starts once the customers are known (after featurization), so its total never moves.
        with (
            ThreadPoolExecutor(max_workers=self.streams) as runners,
            tqdm(total=len(sequences), unit="customers", disable=not progress, smoothing=0.1, desc="scoring") as bar,
        ):
            for scored in runners.map(score, batches):
                bar.update(scored)
        self.infer_s = time.perf_counter() - started
        frame = pd.DataFrame(results[:, : len(self.outputs)], columns=self.outputs)
        frame.insert(0, CUSTOMER_ID, sequences.customer_ids)
        frame[N_EVENTS] = sequences.n_events_total
        frame = add_value_columns(frame, self.horizons, self.settings.discount_rate)
        if self.contact_costs is not None:
            frame = add_contact_columns(
                frame,
                tuple(self.horizons),
                float(self.metadata[META_HORIZON_DAYS]),
                self.contact_costs,
                self.settings.contact.uplift_threshold,
                self.settings.segments.risk_threshold,
            )
        if embedding:
            columns = [f"{EMBEDDING_PREFIX}{i}" for i in range(embedding)]
            frame = pd.concat([frame, pd.DataFrame(results[:, len(self.outputs) :], columns=columns)], axis=1)
        return frame

    def without_embeddings(self) -> Predictor:
        """This predictor (same session) scoring without the embedding columns: what explanations score their
        changed histories with, so ``embeddings=true`` costs them nothing."""
        if not self.settings.embeddings:
            return self
        other = copy.copy(self)
        other.settings = replace(self.settings, embeddings=False)
        return other

    def embedding_size(self) -> int:
        """Size of the model's customer representation (its ``embedding`` output); a model file exported before
        it has none, and is told to be exported again."""
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        if EMBEDDING not in shapes:
            raise ModelFileError(
                f"{self.path}: exported by churnformer {self.metadata.get(META_VERSION, 'unknown')} without the "
                f"customer embedding output ({EMBEDDING}); export its checkpoint again with this version's "
                "churnformer-export to write embeddings"
            )
        return int(shapes[EMBEDDING][-1])

    def embed(
        self,
        events: str | Path | pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: str | Path | pd.DataFrame | None = None,
        columns: ColumnMapping | Mapping[str, str | None] | str | None = None,
    ) -> pd.DataFrame:
        """The customer representation the heads read, one row per customer scored: ``customer_id`` and
        ``embedding_0 .. embedding_<D-1>`` (for clustering, look-alikes, or as features of another model). The
        same events, cutoff and columns as :meth:`score`; the customers it could not score are in a score's
        rejects."""
        other = copy.copy(self)
        other.settings = replace(self.settings, embeddings=True, explain=None)
        other.explainer = None
        predictions = other.score(events, cutoff, customers, columns).predictions
        return predictions[[CUSTOMER_ID, *(c for c in predictions.columns if c.startswith(EMBEDDING_PREFIX))]]

    def retention(self, predictions: pd.DataFrame) -> pd.DataFrame:
        """Retention columns added; the embedding columns, if any, after them, and explanation columns last."""
        scored = add_retention_columns(predictions, self.settings.segments, self.reference)
        embedding = [c for c in scored.columns if str(c).startswith(EMBEDDING_PREFIX)]
        if embedding:
            scored = scored[[c for c in scored.columns if c not in embedding] + embedding]
        return drivers_last(scored)

    def score_frame(
        self, frame: pd.DataFrame, window: Window, static: pd.DataFrame | None, progress: bool = False
    ) -> ScoringResult:
        """Score one frame in the standard contract (a whole log, a job shard, a spill partition, a Spark
        bucket), and explain the customers the settings select; no retention columns (they are relative to
        the whole population when the model has no reference percentiles)."""
        started = time.perf_counter()
        texts_before = self.texts.stats.copy() if self.texts is not None else None
        with self.naming_the_model():
            sequences = build_sequences(frame, window, self.featurizer, static, self.texts)
        featurize_s = time.perf_counter() - started
        predictions = self.score_sequences(sequences, progress)
        infer_s = self.infer_s
        effects, explain_s, explained = None, 0.0, 0
        if self.explainer is not None:
            explain_started = time.perf_counter()
            explanations = self.explainer.explain(frame, window, static, predictions)
            predictions = pd.concat([predictions, explanations.drivers.drop(columns=CUSTOMER_ID)], axis=1)
            effects, explained = explanations.effects, int(explanations.drivers[EXPLAINED].sum())
            explain_s = time.perf_counter() - explain_started
        not_scored = customers_without_events_before(frame, window, sequences.customer_ids)
        rejects = pd.DataFrame({CUSTOMER_ID: not_scored, "reason": "no_event_before_cutoff"})
        report = sequences.report
        summary = ScoringSummary(
            cutoff=str(window),
            horizon_days=window.horizon_days,
            rows_read=len(frame),
            customers_seen=len(sequences.customer_ids) + len(not_scored),
            customers_scored=len(predictions),
            customers_not_scored={"no_event_before_cutoff": len(rejects)} if len(rejects) else {},
            events_ignored={
                "after_cutoff": report.events_after_cutoff,
                "duplicate": report.events_duplicate,
                "truncated": report.events_truncated,
            },
            unknown_categories={k: v for k, v in report.unknown_categories.items() if v},
            customers_without_static=report.customers_without_static,
            events_grouped=report.events_grouped,
            input_profile=input_profile(sequences, self.featurizer),
            texts=asdict(self.texts.stats.minus(texts_before)) if self.texts is not None else {},
            provider=self.provider,
            featurize_s=round(featurize_s, 3),
            infer_s=round(infer_s, 3),
            customers_explained=explained,
            explain_s=round(explain_s, 3),
        )
        return ScoringResult(predictions, rejects, summary, effects)

    def window(self, cutoff: str | pd.Timestamp) -> Window:
        return Window.from_cutoff(cutoff, float(self.metadata[META_HORIZON_DAYS]))

    def score(
        self,
        events: str | Path | pd.DataFrame,
        cutoff: str | pd.Timestamp,
        customers: str | Path | pd.DataFrame | None = None,
        columns: ColumnMapping | Mapping[str, str | None] | str | None = None,
    ) -> ScoringResult:
        """Score every customer with at least one event up to ``cutoff``; report everyone else.

        ``events`` and ``customers`` are the user's file or DataFrame, with the user's column names:
        ``columns`` maps them (a :class:`ColumnMapping`, or ``{"customer_id": "user", ...}`` where keys left
        out keep the names the model was trained with); ``columns=AS_LOADED`` takes frames already in the
        standard contract (``load_events``/``load_customers`` output, as training holds them) as they are.
        In memory; :func:`churnformer.serving.job.score_log` scores a log on disk within a memory budget.
        """
        started = time.perf_counter()
        if columns is AS_LOADED:
            frame, static = events, customers
        else:
            columns = self.column_mapping(columns)
            if isinstance(events, pd.DataFrame):
                frame = load_events(events, columns)
            else:
                frame = self.open_events(events, columns).read_all()
            static = load_customers(customers, columns.customer_id) if customers is not None else None
        window = self.window(cutoff)
        require_events_before(frame[TIMESTAMP], window, source_of(frame, "events"))
        result = self.score_frame(frame, window, static, self.settings.progress)
        result.predictions = self.retention(result.predictions)
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


def customers_without_events_before(frame: pd.DataFrame, window: Window, scored: np.ndarray) -> np.ndarray:
    """The customers of ``frame`` missing from ``scored`` (those with an event before the feature end): only
    rows at or after it can name one, so the ids of the whole frame need not be hashed again."""
    stamps = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    late = frame[CUSTOMER_ID][stamps >= window.feature_end_ns].unique()  # Arrow string ids stay in Arrow
    if len(late) == 0:
        return np.asarray(late)
    return np.asarray(pd.Index(late).difference(pd.Index(scored)))


def stream_layout(streams: int, threads: int, gpu: bool = False, most: int | None = None) -> tuple[int, int]:
    """(batches run at once, onnxruntime intra-op threads per batch) from the ``streams`` and ``threads``
    settings, 0 meaning automatic: on CPU, one stream per core with one thread each unless ``threads``
    asks for more per stream; on a GPU, two streams (one batch is padded and copied while the other runs);
    automatic streams are at most ``most``.

    This model is small (d_model 64, short rows), so one batch split between threads leaves cores idle in
    every small kernel; batches side by side keep them busy: two single-threaded streams on 2 cores score
    the same batches in 15-20% less time than one stream with two threads (``scripts/benchmarks/score.py
    --sweep-session``). A customer's score does not depend on its stream or thread count (tested)."""
    if gpu:
        return streams if streams > 0 else min(2, most or 2), threads
    cores = available_cores()
    if streams <= 0:
        streams = min(max(1, cores // threads) if threads > 0 else cores, most or cores)
    if threads <= 0:
        threads = max(1, cores // streams)
    return streams, threads


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def session_options(threads: int = 0) -> ort.SessionOptions:
    """The onnxruntime settings scoring uses, chosen with ``scripts/benchmarks/score.py --sweep-session``:
    basic graph optimizations (the extended fusions were 3-8% slower for this small model), ``threads``
    intra-op threads per stream (see :func:`stream_layout`), sequential execution (parallel: 1.3-2x
    slower), no spinning (within noise, and idle threads then leave the cores to Python, which pads the
    next batch), no memory arena (see below)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Without the arena, memory follows the batch in flight; with it, onnxruntime keeps its high-water
    # mark for good (450 MB more between spill partitions, measured) at no measurable speed gain.
    options.enable_cpu_mem_arena = False
    return options
