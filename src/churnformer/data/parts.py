"""A training set featurized part by part of the log's customers (partitions on one machine, buckets on Spark):
what every part shares (:class:`Featurization`), what one part does (:func:`featurize_part`) and what the parts add
up to (:class:`Tally`), how much memory a part may take (:class:`PartitionedBuild`), and the sample of whole
customers the featurizer is fitted on when the log's events do not fit (:func:`fit_bucket`).

Features and labels are per customer, so parts featurized apart hold exactly what the whole log featurized at
once holds, given the same featurizer and the whole log's end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnformer.data.campaigns import Campaigns
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, customer_hash
from churnformer.data.featurizer import Featurizer, FeaturizerConfig
from churnformer.data.labels import LabelSpec
from churnformer.data.sequences import BuildReport, combined_report
from churnformer.data.sources import EventLogSource
from churnformer.data.store import TrainingSetWriter
from churnformer.data.training_set import contact_examples, fit_training_featurizer, observable_grid, window_examples
from churnformer.data.window import HorizonGrid, Window, log_end_ns, require_events_before
from churnformer.errors import ConfigError

if TYPE_CHECKING:
    from churnformer.text.embeddings import TextEmbeddings

# Peak resident bytes per event of a partition while it is featurized at every cutoff (the partition's frame,
# its sequences and labels, the shards being written; the spill pass before the first), and per event of the
# sample the featurizer is fitted on (the first pass's frames, then the fit). Measured on the training benchmark's
# 10 M-event log (3 rolling cutoffs, in 1 and 4 partitions): at most 310 and 125 bytes; rounded up.
BUILD_BYTES_PER_EVENT = 400
FIT_BYTES_PER_EVENT = 160
# What the process holds besides them: interpreter, pandas, Arrow and torch (530 MB measured), and what the
# partitions featurized so far leave allocated (up to 350 MB over 4 partitions of the 10 M-event log).
BASE_BYTES = 900 * 2**20


def fit_bucket(ids: pd.Series, buckets: int) -> np.ndarray:
    """The fit-sample bucket of each id (a power-of-two modulus of the stable customer hash, from bits that
    neither job shards nor spill partitions use, so the sample is a random share of every partition)."""
    return ((customer_hash(ids) >> np.uint64(16)) % np.uint64(buckets)).astype(np.int64)


# Fit samples considered: every customer, half, a quarter, ... down to 1 / 2**(FIT_LEVELS - 1).
FIT_LEVELS = 32


def fit_sample_counts(ids: pd.Series) -> np.ndarray:
    """Per level k, how many of these events (one id each) the fit sample of ``2**k`` buckets keeps; summed over
    parts of a log, :func:`fit_buckets_within` then gives the sample :class:`LogPass` settles on."""
    bits = customer_hash(ids) >> np.uint64(16)
    return np.array([int((bits % np.uint64(2**k) == 0).sum()) for k in range(FIT_LEVELS)], dtype=np.int64)


def fit_buckets_within(counts: np.ndarray, cap: int) -> int:
    """The fewest buckets (a power of two) whose sample holds at most ``cap`` events."""
    return 2 ** int(np.argmax(counts <= cap)) if (counts <= cap).any() else 2 ** (FIT_LEVELS - 1)


@dataclass
class PartitionedBuild:
    """How a log is featurized in bounded memory: ``memory_budget_mb`` for the process (the number of partitions
    and the fit sample follow from it and the log's size), or ``partitions`` given outright (the featurizer then
    fitted on every customer unless a budget is given too)."""

    memory_budget_mb: float | None = None
    partitions: int | None = None

    def __post_init__(self) -> None:
        if self.partitions is not None and (isinstance(self.partitions, bool) or int(self.partitions) < 1):
            raise ConfigError(f"partitions={self.partitions}: give a number of partitions >= 1 (or leave it out)")
        if self.memory_budget_mb is not None and self.memory_budget_mb * 2**20 <= BASE_BYTES:
            raise ConfigError(
                f"memory_budget_mb={self.memory_budget_mb} is below the {BASE_BYTES // 2**20} MB the process takes "
                "before any event is read; raise it"
            )

    @property
    def enabled(self) -> bool:
        return self.memory_budget_mb is not None or self.partitions is not None

    def _events_within(self, bytes_per_event: int) -> int | None:
        if self.memory_budget_mb is None:
            return None
        return max(1, int((self.memory_budget_mb * 2**20 - BASE_BYTES) / bytes_per_event))

    @property
    def fit_cap(self) -> int:
        """The most events the fit sample may hold."""
        return self._events_within(FIT_BYTES_PER_EVENT) or np.iinfo(np.int64).max

    def partitions_for(self, events: int) -> int:
        if self.partitions is not None:
            return int(self.partitions)
        return max(1, math.ceil(events / self._events_within(BUILD_BYTES_PER_EVENT)))


@dataclass(frozen=True)
class FeaturizeRequest:
    """What a partitioned featurization builds, whatever engine runs it (this machine, Spark): the log, where the
    shards go, the cutoffs and horizons, the features, the split, what a purchase and a churn are, the customers
    kept (``data.sample_customers``), the memory it may take and, for text columns, the job's table of embedded
    texts (one for every part: its rows never move, so the parts' events index the same table)."""

    source: EventLogSource
    writer: TrainingSetWriter
    windows: list[Window]
    grid: HorizonGrid
    features: FeaturizerConfig
    val_fraction: float
    spec: LabelSpec
    sample_customers: float | int | None
    build: PartitionedBuild
    texts: TextEmbeddings | None = None
    campaigns: pd.DataFrame | None = None  # data.campaigns' table (load_campaigns), checked once the log is read


@dataclass
class PartitionedResult:
    """What a partitioned featurization wrote, for the manifest and the model card (``campaigns``: the
    summary of the contacts learned from, None without)."""

    partitions: int
    fit_share: float
    log_facts: dict
    campaigns: dict | None = None


@dataclass(frozen=True)
class Featurization:
    """What featurizes every part of the log alike (partitions here, Spark's buckets): the fitted featurizer, the
    cutoffs, the horizons the log observes, the split, what a purchase and a churn are, where the log ends and the
    table the texts are embedded into (None: no text columns), and the checked campaigns (None: none), whose
    contacts each part featurizes for its customers."""

    featurizer: Featurizer
    windows: list[Window]
    grid: HorizonGrid
    val_fraction: float
    spec: LabelSpec
    log_end: int
    texts: TextEmbeddings | None = None
    campaigns: Campaigns | None = None


@dataclass
class Tally:
    """What the parts featurized so far hold, added up part by part: the main cutoff's build reports, the split's
    counts and the log's facts (events, customers, first and last event, ns)."""

    reports: list[dict] = field(default_factory=list)
    main_count: int = 0
    training: int = 0
    validation: int = 0
    events: int = 0
    customers: int = 0
    first_ns: int | None = None
    last_ns: int | None = None

    def add(self, other: Tally) -> None:
        self.reports += other.reports
        for name in ("main_count", "training", "validation", "events", "customers"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        stamps = [s for s in (self.first_ns, other.first_ns) if s is not None]
        self.first_ns = min(stamps) if stamps else None
        stamps = [s for s in (self.last_ns, other.last_ns) if s is not None]
        self.last_ns = max(stamps) if stamps else None

    def report(self) -> BuildReport:
        """The main cutoff's build report over every part."""
        return combined_report([BuildReport(**report) for report in self.reports])

    def log_facts(self, customers: pd.DataFrame | None) -> dict:
        """:func:`churnformer.model_card.log_facts` of the log the parts came from."""
        return {
            "events": self.events,
            "customers": self.customers,
            "first_event": str(pd.Timestamp(self.first_ns)),
            "last_event": str(pd.Timestamp(self.last_ns)),
            "static_attributes": [c for c in customers.columns if c != CUSTOMER_ID] if customers is not None else [],
        }


def featurize_part(
    events: pd.DataFrame, customers: pd.DataFrame | None, plan: Featurization, writer: TrainingSetWriter
) -> Tally:
    """Featurize some of the log's customers (every event of theirs, and their rows of the customer table) at every
    cutoff, and their contacts at their campaigns' days, into ``writer``; what they hold."""
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    tally = Tally(
        events=len(events),
        customers=int(events[CUSTOMER_ID].nunique()),
        first_ns=int(stamps.min()),
        last_ns=int(stamps.max()),
    )
    parts = window_examples(
        events,
        customers,
        plan.windows,
        plan.grid,
        plan.featurizer,
        plan.val_fraction,
        plan.spec,
        plan.texts,
        log_end=plan.log_end,
    )
    if plan.campaigns is not None:
        contacts = plan.campaigns.among(pd.unique(events[CUSTOMER_ID]))
        parts += contact_examples(
            events,
            customers,
            contacts,
            len(plan.windows),
            plan.grid,
            plan.featurizer,
            plan.val_fraction,
            plan.spec,
            plan.texts,
        )
    for part in parts:
        cutoffs = np.full(len(part.sequences), part.cutoff)
        arms = part.arms() if plan.campaigns is not None else None
        writer.add(part.sequences, part.labels, plan.grid.days, part.is_validation, cutoffs, arms)
        if part.cutoff == 0:
            tally.reports.append(asdict(part.sequences.report))
            tally.main_count += len(part.sequences)
            tally.validation += int(part.is_validation.sum())
        tally.training += int((~part.is_validation).sum())
    return tally


def fit_on_sample(
    request: FeaturizeRequest, fit_events: pd.DataFrame, kept: np.ndarray | None, customers: pd.DataFrame | None
) -> Featurizer:
    """The featurizer, fitted on the fit sample's events (every event of its customers, in the file's order) of the
    customers ``data.sample_customers`` keeps (``kept``; None: all), as the in-memory build fits it."""
    if kept is not None:
        fit_events = fit_events.loc[fit_events[CUSTOMER_ID].isin(kept).to_numpy()]
    return fit_training_featurizer(
        fit_events, customers, request.windows[0], request.features, request.val_fraction, request.texts
    )


def observed_log(first_ns: int, last_ns: int, windows: list[Window], grid: HorizonGrid) -> tuple[int, HorizonGrid]:
    """Where a log spanning ``first_ns`` to ``last_ns`` is taken to end, and the horizons it observes; the
    in-memory build's errors when no event precedes the main cutoff or the main horizon runs past the log."""
    where = "the event log"
    require_events_before(pd.Series(pd.to_datetime([first_ns])), windows[0], where)
    end = log_end_ns(np.array([last_ns], dtype=np.int64).view("datetime64[ns]"))
    return end, observable_grid(end, windows, grid, where)


def customers_of(customers: pd.DataFrame | None, events: pd.DataFrame) -> pd.DataFrame | None:
    """The rows of the customer table (if any) of the customers in ``events``."""
    if customers is None:
        return None
    return customers.loc[customers[CUSTOMER_ID].isin(events[CUSTOMER_ID]).to_numpy()]
