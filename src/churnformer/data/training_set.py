"""The labelled examples a model learns from: featurizer fitted on the training customers, their sequences
and labels at the main cutoff and at earlier (rolling) cutoffs, and the validation split.

Torch-free, so anything that needs a run's validation customers (the int8 check, baselines) gets exactly
the ones training used without Lightning.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnformer.data.aggregates import aggregate_quantiles
from churnformer.data.campaigns import Campaigns, campaign_window, check_campaigns
from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.featurizer import Featurizer, FeaturizerConfig, fit_featurizer
from churnformer.data.labels import LabelSpec, horizon_labels, make_labels
from churnformer.data.sequences import Sequences, build_sequences, concat_sequences
from churnformer.data.sharded import ShardedArray, ShardedLabels, ShardedSequences
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window, log_end_ns, require_events_before
from churnformer.errors import ConfigError, InputError
from churnformer.schema import CHURN, CUSTOMER_AGG, NO_PURCHASE, OBSERVED, PURCHASES, SPEND, per_horizon

if TYPE_CHECKING:
    from churnformer.text.embeddings import TextEmbeddings


def validation_mask(customer_ids: np.ndarray, fraction: float, salt: str = "churnformer") -> np.ndarray:
    """Stable customer-level split: a hash of the id, so a customer stays on its side across runs and logs."""
    hashed = pd.util.hash_array(np.asarray(customer_ids, dtype=object), hash_key=f"{salt:<16}"[:16])
    return (hashed % np.uint64(10_000)) < np.uint64(round(fraction * 10_000))


def sampled_customers(customer_ids: np.ndarray, sample: float | int | None) -> np.ndarray:
    """The customers a run trains on (``data.sample_customers``), chosen by a stable hash of the id (salted
    apart from the validation split's): a fraction in (0, 1] keeps each customer whose hash falls below it, so
    shards, reruns and DDP ranks agree customer by customer; a count keeps that many, those with the smallest
    hashes. None: everyone. Sorted."""
    ids = np.sort(pd.unique(np.asarray(customer_ids)))
    if sample is None:
        return ids
    hashed = pd.util.hash_array(np.asarray(ids, dtype=object), hash_key=f"{'sample':<16}"[:16])
    if isinstance(sample, bool) or not isinstance(sample, int | float) or sample <= 0:
        raise ConfigError(f"data.sample_customers must be a fraction in (0, 1] or a count >= 1, got {sample!r}")
    if isinstance(sample, float):
        if sample > 1:
            raise ConfigError(f"data.sample_customers={sample}: a fraction must be at most 1 (or give a count)")
        return ids[(hashed % np.uint64(1_000_000)) < np.uint64(round(sample * 1_000_000))]
    return np.sort(ids[np.argsort(hashed, kind="stable")[:sample]])


def rolling_windows(window: Window, count: int, step_days: float) -> list[Window]:
    """The main window, then ``count`` earlier cutoffs ``step_days`` apart.

    Each earlier cutoff gives every training customer active by then another labelled example (its label
    window lies inside the log, before the main label window ends): the only way to get more labels out of
    one log. Validation uses the main cutoff only.
    """
    steps = [k * step_days for k in range(1, count + 1)]
    earlier = [
        Window(window.feature_end - pd.Timedelta(days=days), window.horizon_days, f"{window} - {days:g} days")
        for days in steps
    ]
    return [window, *earlier]


@dataclass
class TrainingSet:
    """Rows ``0 .. main_count - 1`` of ``sequences`` and ``labels`` are the customers at the main cutoff (the
    validation customers among them); later rows are training customers at earlier cutoffs."""

    featurizer: Featurizer
    sequences: Sequences | ShardedSequences
    labels: pd.DataFrame | ShardedLabels
    train_rows: np.ndarray
    val_rows: np.ndarray
    main_count: int
    grid: HorizonGrid  # the horizons observed at some training cutoff (the others are dropped)
    cutoffs: np.ndarray  # per example, the index of its cutoff (0: the main one; after the windows, campaigns')
    spec: LabelSpec = LabelSpec()
    # With campaigns (data.campaigns): per example its arm (data.campaigns.contact_arm: with one offer 1 sent, 0 held
    # out; -1 no contact); the validation customers' contacts (``uplift_rows``) are kept apart to judge effects on.
    treated: np.ndarray | None = None
    uplift_rows: np.ndarray | None = None
    campaigns: dict | None = None  # Campaigns.summary() of the contacts learned from

    @property
    def contacted(self) -> np.ndarray | None:
        """The network's ``schema.CONTACTED`` input per example (float32: the arm of ``treated``), None without
        campaigns."""
        return None if self.treated is None else self.treated.astype(np.float32)

    def by_horizon(self, column: str) -> np.ndarray | ShardedArray:
        """``column`` (a label of ``schema.LABELS_BY_HORIZON``) at every horizon of the grid: (examples, K) float32
        (read from the shards by rows, for a training set on disk)."""
        if isinstance(self.labels, ShardedLabels):
            return self.labels.by_horizon[column]
        return self.labels[[per_horizon(column, days) for days in self.grid.days]].to_numpy(np.float32)

    def label_frame(self, rows: np.ndarray) -> pd.DataFrame:
        """The labels of examples ``rows`` (:func:`~churnformer.data.labels.horizon_labels`' columns)."""
        if isinstance(self.labels, ShardedLabels):
            return self.labels.frame(rows)
        return self.labels.iloc[rows]

    @property
    def main_train_rows(self) -> np.ndarray:
        """Training customers at the main cutoff (no rolling-cutoff copies)."""
        return self.train_rows[self.train_rows < self.main_count]

    def aggregate_quantiles(self) -> list[list[float]] | None:
        """The training examples' quantiles of each engineered aggregate (where the network's numeric encoding
        puts its bins); None for a featurizer without aggregates."""
        values = self.sequences.customers.get(CUSTOMER_AGG)
        return None if values is None else aggregate_quantiles(values[self.train_rows])

    def label_stats(self) -> dict[str, dict[str, list[float]]]:
        """Per label (churn, no_purchase, spend, purchases), per horizon of the grid, over the training examples
        where it is observed: the ``mean`` (0.5 where none is observed), and of the positive values their
        ``positive_mean``, ``log_positive_mean`` (0 where there are none) and ``log_positive_std`` (1 with fewer
        than two): what the heads start their output biases at."""
        rows = self.train_rows
        observed = self.by_horizon(OBSERVED)[rows]
        stats = {}
        for label in (CHURN, NO_PURCHASE, SPEND, PURCHASES):
            values = self.by_horizon(label)[rows]
            summary: dict[str, list[float]] = {
                "mean": [],
                "positive_mean": [],
                "log_positive_mean": [],
                "log_positive_std": [],
            }
            for k in range(len(self.grid.days)):
                seen = observed[:, k] > 0
                positive = values[seen & (values[:, k] > 0), k].astype(np.float64)
                summary["mean"].append(float(values[seen, k].mean()) if seen.any() else 0.5)
                summary["positive_mean"].append(float(positive.mean()) if len(positive) else 0.0)
                summary["log_positive_mean"].append(float(np.log(positive).mean()) if len(positive) else 0.0)
                summary["log_positive_std"].append(float(np.log(positive).std()) if len(positive) > 1 else 1.0)
            stats[label] = summary
        return stats


def build_training_set(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    windows: list[Window],
    grid: HorizonGrid,
    features: FeaturizerConfig,
    val_fraction: float,
    spec: LabelSpec,
    texts: TextEmbeddings | None = None,
    campaigns: pd.DataFrame | None = None,
) -> TrainingSet:
    """Fit the featurizer on the training customers' events before the main cutoff (``windows[0]``), then
    build sequences and labels at every window and horizon of ``grid``; validation customers appear at the
    main cutoff only. Horizons whose window ends after the log at every cutoff are dropped (a warning says
    so); the main horizon must be observed at the main cutoff. ``texts`` embeds the text columns
    (``features.text``), if any; ``spec`` says what a purchase and a churn are. ``campaigns`` (the table of
    :func:`~churnformer.data.campaigns.load_campaigns`): every contact is one more example at its campaign's
    day, sent or held out (:func:`contact_examples`)."""
    where = source_of(events, "events")
    require_events_before(events[TIMESTAMP], windows[0], where)
    end = log_end_ns(events[TIMESTAMP].to_numpy(dtype="datetime64[ns]"))
    grid = observable_grid(end, windows, grid, where)
    featurizer = fit_training_featurizer(events, customers, windows[0], features, val_fraction, texts)
    parts = window_examples(events, customers, windows, grid, featurizer, val_fraction, spec, texts)
    checked = check_campaigns(campaigns, events, end) if campaigns is not None else None
    if checked is not None:
        parts += contact_examples(events, customers, checked, len(windows), grid, featurizer, val_fraction, spec, texts)
    sequences = concat_sequences([part.sequences for part in parts])
    main_count = len(parts[0].sequences)
    is_val = np.zeros(len(sequences), dtype=bool)
    is_val[:main_count] = parts[0].is_validation
    treated = np.concatenate([part.arms() for part in parts])
    is_uplift = (treated >= 0) & np.concatenate([part.is_validation for part in parts])
    train_rows, val_rows = np.flatnonzero(~is_val & ~is_uplift), np.flatnonzero(is_val)
    require_split(main_count, len(train_rows), len(val_rows), val_fraction, where)
    labels = pd.concat([part.labels for part in parts], ignore_index=True)
    cutoffs = np.concatenate([np.full(len(part.sequences), part.cutoff, dtype=np.int16) for part in parts])
    data = TrainingSet(featurizer, sequences, labels, train_rows, val_rows, main_count, grid, cutoffs, spec)
    if checked is None:
        return data
    return replace(data, treated=treated, uplift_rows=np.flatnonzero(is_uplift), campaigns=checked.summary())


def require_split(customers: int, training: int, validation: int, val_fraction: float, where: str) -> None:
    """An error when the customers at the main cutoff leave either side of the split empty."""
    if training == 0 or validation == 0:
        raise InputError(
            f"{where}: {customers} customers are too few for a train/validation split "
            f"(data.val_fraction={val_fraction})"
        )


def fit_training_featurizer(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    main: Window,
    features: FeaturizerConfig,
    val_fraction: float,
    texts: TextEmbeddings | None = None,
) -> Featurizer:
    """The featurizer fitted on the training customers' events before the main cutoff (never a validation
    customer's, never a later event). ``events`` may be a sample of the log's customers (all their events)."""
    before = events[TIMESTAMP] < main.feature_end
    population = np.sort(events.loc[before, CUSTOMER_ID].unique())
    train_ids = population[~validation_mask(population, val_fraction)]
    train_events = events.loc[before & events[CUSTOMER_ID].isin(train_ids)]
    train_customers = customers[customers[CUSTOMER_ID].isin(train_ids)] if customers is not None else None
    featurizer = fit_featurizer(train_events, train_customers, features)
    if featurizer.text_columns:
        if texts is None:
            raise ValueError("features.text names text columns: build_training_set needs texts=TextEmbeddings(...)")
        featurizer.text_encoder = asdict(texts.encoder.identity)
    return featurizer


@dataclass
class CutoffExamples:
    """The examples of one cutoff (``cutoff``: its index in the windows, 0 the main one)."""

    cutoff: int
    sequences: Sequences
    labels: pd.DataFrame
    is_validation: np.ndarray
    treated: np.ndarray | None = None  # a campaign's: per example its arm (data.campaigns.contact_arm)

    def arms(self) -> np.ndarray:
        """Per example its arm, or -1 (no contact: a window's example), int8."""
        return np.full(len(self.sequences), -1, dtype=np.int8) if self.treated is None else self.treated


def window_examples(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    windows: list[Window],
    grid: HorizonGrid,
    featurizer: Featurizer,
    val_fraction: float,
    spec: LabelSpec,
    texts: TextEmbeddings | None = None,
    log_end: int | None = None,
) -> list[CutoffExamples]:
    """Sequences and labels of ``events``' customers at every window that has some: at the main one
    (``windows[0]``) every customer, validation ones included; at earlier ones the training customers only.
    ``events`` may hold some of the log's customers (all their events), with ``log_end`` the whole log's."""
    parts = []
    for index, window in enumerate(windows):
        sequences = build_sequences(events, window, featurizer, customers, texts)
        is_validation = validation_mask(sequences.customer_ids, val_fraction)
        if index > 0:  # earlier cutoffs: extra examples of the training customers only
            sequences, is_validation = sequences.subset(np.flatnonzero(~is_validation)), is_validation[~is_validation]
        if len(sequences):
            labels = horizon_labels(events, window, grid, sequences.customer_ids, spec, log_end)
            parts.append(CutoffExamples(index, sequences, labels, is_validation))
    return parts


def contact_examples(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    campaigns: Campaigns,
    first_index: int,
    grid: HorizonGrid,
    featurizer: Featurizer,
    val_fraction: float,
    spec: LabelSpec,
    texts: TextEmbeddings | None = None,
) -> list[CutoffExamples]:
    """One example per contact, campaign by campaign (cutoff indices from ``first_index``): the contacted
    customer's sequence before the campaign's day, the labels from the day on, and its arm (which offer, and
    whether it was sent).
    Contacts of customers with no event before their day cannot be featurized: left out, with a warning."""
    parts, unseen = [], 0
    for offset, day in enumerate(campaigns.days):
        contacts = campaigns.on(day)
        if contacts.empty:  # a part of the log's customers (Campaigns.among) none of whom it contacted
            continue
        contacted = events.loc[events[CUSTOMER_ID].isin(contacts[CUSTOMER_ID]).to_numpy()]
        window = campaign_window(day, grid.main)
        sequences = build_sequences(contacted, window, featurizer, customers, texts)
        unseen += len(contacts) - len(sequences)
        if not len(sequences):
            continue
        treated = pd.Series(campaigns.arms(contacts), index=contacts[CUSTOMER_ID]).loc[sequences.customer_ids]
        treated = treated.to_numpy(np.int8)
        labels = horizon_labels(contacted, window, grid, sequences.customer_ids, spec, campaigns.log_end_ns)
        is_validation = validation_mask(sequences.customer_ids, val_fraction)
        parts.append(CutoffExamples(first_index + offset, sequences, labels, is_validation, treated))
    if unseen:
        logging.getLogger(__name__).warning(
            "data.campaigns: %d contact(s) of customers with no event before their campaign's day left out", unseen
        )
    return parts


def observable_grid(end: int, windows: list[Window], grid: HorizonGrid, where: str) -> HorizonGrid:
    """``grid`` without the horizons no training window observes (the log, which ends at ``end`` ns, ends
    first); an error naming ``where`` when the main horizon is not observed at the main cutoff."""
    earliest_end = min(window.feature_end_ns for window in windows)
    if windows[0].feature_end_ns + round(grid.main * NS_PER_DAY) > end:
        raise ConfigError(
            f"{where}: the main horizon of {grid.main:g} days after the cutoff {windows[0]} runs past the end of "
            f"the log ({pd.Timestamp(end).date()}): choose an earlier data.cutoff or a shorter data.horizon_days"
        )
    unobserved = [days for days in grid.days if earliest_end + round(days * NS_PER_DAY) > end]
    if unobserved:
        logging.getLogger(__name__).warning(
            "data.horizons_days: %s dropped: the log ends %s, before any training window that long ends",
            ", ".join(f"{d:g}" for d in unobserved),
            pd.Timestamp(end).date(),
        )
    return grid.without(unobserved)


def validation_labels(events: pd.DataFrame, window: Window, val_fraction: float, spec: LabelSpec) -> pd.DataFrame:
    """Labels of the validation customers at ``window`` (those :func:`build_training_set` holds out), without
    building any features: customer_id, churn, spend."""
    require_events_before(events[TIMESTAMP], window, source_of(events, "events"))
    before = events[TIMESTAMP] < window.feature_end
    population = np.sort(events.loc[before, CUSTOMER_ID].unique())
    held_out = population[validation_mask(population, val_fraction)]
    return make_labels(events, window, held_out, spec)
