"""The labelled examples a model learns from: featurizer fitted on the training customers, their sequences
and labels at the main cutoff and at earlier (rolling) cutoffs, and the validation split.

Torch-free, so anything that needs a run's validation customers (the int8 check, baselines) gets exactly
the ones training used without Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.featurizer import Featurizer, FeaturizerConfig, fit_featurizer
from churnformer.data.labels import make_labels
from churnformer.data.sequences import Sequences, build_sequences, concat_sequences
from churnformer.data.window import Window, require_events_before
from churnformer.errors import InputError
from churnformer.schema import CHURN, SPEND


def validation_mask(customer_ids: np.ndarray, fraction: float, salt: str = "churnformer") -> np.ndarray:
    """Stable customer-level split: a hash of the id, so a customer stays on its side across runs and logs."""
    hashed = pd.util.hash_array(np.asarray(customer_ids, dtype=object), hash_key=f"{salt:<16}"[:16])
    return (hashed % np.uint64(10_000)) < np.uint64(round(fraction * 10_000))


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
class LabelStats:
    """Base rates of the training labels, used to initialise the output biases."""

    churn_rate: float
    log_spend_mean: float
    log_spend_std: float


@dataclass
class TrainingSet:
    """Rows ``0 .. main_count - 1`` of ``sequences`` and ``labels`` are the customers at the main cutoff (the
    validation customers among them); later rows are training customers at earlier cutoffs."""

    featurizer: Featurizer
    sequences: Sequences
    labels: pd.DataFrame
    train_rows: np.ndarray
    val_rows: np.ndarray
    main_count: int

    @property
    def main_train_rows(self) -> np.ndarray:
        """Training customers at the main cutoff (no rolling-cutoff copies)."""
        return self.train_rows[self.train_rows < self.main_count]

    def label_stats(self) -> LabelStats:
        train = self.labels.iloc[self.train_rows]
        positive = np.log(train[SPEND][train[SPEND] > 0].to_numpy(np.float64))
        return LabelStats(
            churn_rate=float(train[CHURN].mean()),
            log_spend_mean=float(positive.mean()) if len(positive) else 0.0,
            log_spend_std=float(positive.std()) if len(positive) > 1 else 1.0,
        )


def build_training_set(
    events: pd.DataFrame,
    customers: pd.DataFrame | None,
    windows: list[Window],
    features: FeaturizerConfig,
    val_fraction: float,
    purchase_types: Sequence[str] | None,
    event_type_column: str,
) -> TrainingSet:
    """Fit the featurizer on the training customers' events before the main cutoff (``windows[0]``), then
    build sequences and labels at every window; validation customers appear at the main cutoff only."""
    main = windows[0]
    require_events_before(events[TIMESTAMP], main, source_of(events, "events"))
    before = events[TIMESTAMP] < main.feature_end
    population = np.sort(events.loc[before, CUSTOMER_ID].unique())
    train_ids = population[~validation_mask(population, val_fraction)]
    train_events = events.loc[before & events[CUSTOMER_ID].isin(train_ids)]
    train_customers = customers[customers[CUSTOMER_ID].isin(train_ids)] if customers is not None else None
    featurizer = fit_featurizer(train_events, train_customers, features)
    parts, labels = [], []
    for index, window in enumerate(windows):
        sequences = build_sequences(events, window, featurizer, customers)
        if index > 0:  # earlier cutoffs: extra examples of the training customers only
            sequences = sequences.subset(np.flatnonzero(~validation_mask(sequences.customer_ids, val_fraction)))
        if len(sequences):
            parts.append(sequences)
            labels.append(make_labels(events, window, sequences.customer_ids, purchase_types, event_type_column))
    sequences = concat_sequences(parts)
    main_count = len(parts[0])
    is_val = np.zeros(len(sequences), dtype=bool)
    is_val[:main_count] = validation_mask(parts[0].customer_ids, val_fraction)
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise InputError(
            f"{source_of(events, 'events')}: {main_count} customers are too few for a train/validation split "
            f"(data.val_fraction={val_fraction})"
        )
    return TrainingSet(featurizer, sequences, pd.concat(labels, ignore_index=True), train_rows, val_rows, main_count)


def validation_labels(
    events: pd.DataFrame,
    window: Window,
    val_fraction: float,
    purchase_types: Sequence[str] | None,
    event_type_column: str,
) -> pd.DataFrame:
    """Labels of the validation customers at ``window`` (those :func:`build_training_set` holds out), without
    building any features: customer_id, churn, spend."""
    require_events_before(events[TIMESTAMP], window, source_of(events, "events"))
    before = events[TIMESTAMP] < window.feature_end
    population = np.sort(events.loc[before, CUSTOMER_ID].unique())
    held_out = population[validation_mask(population, val_fraction)]
    return make_labels(events, window, held_out, purchase_types, event_type_column)
