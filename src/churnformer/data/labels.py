"""Labels from the horizon window: churn (no purchase, or a decline), net spend and the days with a purchase
per customer, by what a :class:`LabelSpec` says a purchase and a churn are."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.window import NS_PER_DAY, HorizonGrid, Window, log_end_ns
from churnformer.errors import ConfigError, InputError
from churnformer.schema import CHURN, META_CHURN_DEFINITION, NO_PURCHASE, OBSERVED, PURCHASES, SPEND, per_horizon

NO_PURCHASE_DEFINITION = "no_purchase"
DECLINE_DEFINITION = "decline"


@dataclass(frozen=True)
class ChurnDefinition:
    """What ``churn`` means at a horizon of h days (``churn_definition`` and ``decline_threshold`` in the
    config). ``no_purchase`` (the default): no purchase in the h days after the cutoff. ``decline``: net spend
    in the h days after the cutoff below ``decline_threshold`` times the net spend in the h days before it, the
    early warning of a grocery or subscription business, where customers fade long before they stop buying. A
    customer who spent nothing in the h days before cannot fall below it and never counts as declining.

    Either way the model also learns when the next purchase comes and what is spent (the survival and spend
    heads): a decline model adds a head for the decline and reports P(no purchase) beside it."""

    name: str = NO_PURCHASE_DEFINITION
    decline_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in (NO_PURCHASE_DEFINITION, DECLINE_DEFINITION):
            raise ConfigError(
                f"churn_definition={self.name!r}: choose {NO_PURCHASE_DEFINITION} (no purchase in the horizon) or "
                f"{DECLINE_DEFINITION} (spend in the horizon below decline_threshold times the same-length window "
                "before the cutoff)"
            )
        threshold = self.decline_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
            raise ConfigError(f"decline_threshold={threshold!r}: must be a number in (0, 1], e.g. 0.5")

    @property
    def is_decline(self) -> bool:
        return self.name == DECLINE_DEFINITION

    def __str__(self) -> str:
        if not self.is_decline:
            return "no purchase in the horizon"
        return f"spend in the horizon below {self.decline_threshold:.0%} of the same-length window before the cutoff"

    def to_metadata(self) -> dict[str, str]:
        """The model file's record (scoring and evaluation read it back with :meth:`of_metadata`)."""
        return {META_CHURN_DEFINITION: json.dumps(asdict(self))}

    @classmethod
    def of_metadata(cls, metadata: dict[str, str]) -> ChurnDefinition:
        """From a model file's (or checkpoint's) metadata; files without the record predict no purchase."""
        stored = metadata.get(META_CHURN_DEFINITION)
        return cls(**json.loads(stored)) if stored else cls()


@dataclass(frozen=True)
class LabelSpec:
    """What the labels count, in one object: which events are purchases (those of ``purchase_types`` in
    ``event_type_column``, or with ``purchase_types`` unset any event with amount > 0) and what churn is
    (``churn``). ``data.purchase_types``, ``data.event_type_column``, ``churn_definition`` and
    ``decline_threshold`` in the config; ``churnformer-evaluate`` takes the same keys."""

    purchase_types: tuple[str, ...] | None = None
    event_type_column: str = "event_type"
    churn: ChurnDefinition = ChurnDefinition()

    @classmethod
    def of(
        cls,
        purchase_types: Sequence[str] | None,
        event_type_column: str,
        churn_definition: str = NO_PURCHASE_DEFINITION,
        decline_threshold: float = 0.5,
    ) -> LabelSpec:
        """From the config's keys (``purchase_types`` a list or null)."""
        types = tuple(str(t) for t in purchase_types) if purchase_types else None
        return cls(types, event_type_column, ChurnDefinition(churn_definition, decline_threshold))

    def is_purchase(self, events: pd.DataFrame) -> np.ndarray:
        """A purchase is an event with amount > 0, or, when configured, an event of the given types."""
        if not self.purchase_types:
            return events[AMOUNT].to_numpy() > 0
        if self.event_type_column not in events.columns:
            raise InputError(
                f"events: purchase types {list(self.purchase_types)} need column {self.event_type_column!r}, "
                f"which is not among {list(events.columns)}"
            )
        return events[self.event_type_column].astype(str).isin(self.purchase_types).to_numpy()

    def __str__(self) -> str:
        return str(self.churn)


def make_labels(
    events: pd.DataFrame, window: Window, customer_ids: np.ndarray, spec: LabelSpec = LabelSpec()
) -> pd.DataFrame:
    """Labels at the window's horizon for ``customer_ids`` (normally :attr:`Sequences.customer_ids`), in
    that order: ``churn`` is 1 when the customer churns in the horizon window (by default: makes no purchase
    there; see :class:`ChurnDefinition`); ``spend`` is the net sum of amounts in the window (refunds
    subtract), floored at 0. Identical duplicate events count once, as in the features
    (:func:`churnformer.data.sequences.build_sequences`).

    A log that ends before the cutoff is an error: nothing after the cutoff was observed, so every label
    would read "churned, spent 0" and a model would learn that from nothing.
    """
    grid = HorizonGrid((window.horizon_days,), window.horizon_days)
    return horizon_labels(events, window, grid, customer_ids, spec)[[CUSTOMER_ID, CHURN, SPEND]]


def horizon_labels(
    events: pd.DataFrame,
    window: Window,
    grid: HorizonGrid,
    customer_ids: np.ndarray,
    spec: LabelSpec = LabelSpec(),
    log_end: int | None = None,
) -> pd.DataFrame:
    """:func:`make_labels` at every horizon of ``grid`` after ``window.feature_end``: ``churn_<h>d``,
    ``spend_<h>d``, ``no_purchase_<h>d`` (what the survival head learns; ``churn_<h>d`` itself unless the
    definition is a decline), ``purchases_<h>d`` (the days with a purchase: several purchases on one day count
    once, as BG/NBD counts transactions) and ``observed_<h>d`` (1 when the horizon's window ends within the
    log, see :func:`log_end_ns`; where it does not, the labels count only what the log holds, and training
    leaves them out), and ``churn``/``spend``/``purchases`` at the main horizon. ``log_end`` (ns): where the
    whole log ends, when ``events`` is a part of it (one partition of its customers); by default the end of
    ``events``."""
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    if log_end is None and len(stamps) and stamps.max() < window.feature_end_ns:
        raise InputError(
            f"{source_of(events, 'events')}: no events after the cutoff {window} (the log ends at "
            f"{pd.Timestamp(stamps.max())}), so churn and spend in the {window.horizon_days:g}-day horizon "
            f"cannot be observed. Choose a cutoff at least {window.horizon_days:g} days before the end of the log."
        )
    if log_end is None:
        log_end = log_end_ns(stamps) if len(stamps) else window.feature_end_ns
    longest = window.feature_end_ns + round(max(grid.days) * NS_PER_DAY)
    after = (stamps >= window.feature_end_ns) & (stamps < longest)
    future = events.loc[after]
    unique = ~future.duplicated().to_numpy()
    future, offsets = future.loc[unique], (stamps[after] - window.feature_end_ns)[unique]
    position = pd.Index(customer_ids).get_indexer(future[CUSTOMER_ID].to_numpy())
    known = position >= 0
    position, offsets = position[known], offsets[known]
    purchase = spec.is_purchase(future)[known]
    amounts = future[AMOUNT].to_numpy()[known]
    purchase_day = (window.feature_end_ns + offsets) // NS_PER_DAY
    n = len(customer_ids)
    columns: dict[str, np.ndarray] = {CUSTOMER_ID: customer_ids}
    for days in grid.days:
        inside = offsets < round(days * NS_PER_DAY)
        purchases = np.bincount(position[inside], weights=purchase[inside], minlength=n)
        spend = np.maximum(np.bincount(position[inside], weights=amounts[inside], minlength=n), 0.0)
        observed = window.feature_end_ns + round(days * NS_PER_DAY) <= log_end
        no_purchase = (purchases == 0).astype(np.float32)
        if spec.churn.is_decline:
            before = spend_before(events, stamps, window.feature_end_ns, days, customer_ids)
            columns[per_horizon(CHURN, days)] = (spend < spec.churn.decline_threshold * before).astype(np.float32)
        else:
            columns[per_horizon(CHURN, days)] = no_purchase
        columns[per_horizon(SPEND, days)] = spend.astype(np.float32)
        columns[per_horizon(NO_PURCHASE, days)] = no_purchase
        columns[per_horizon(PURCHASES, days)] = purchase_days(position, purchase_day, inside & purchase, n)
        columns[per_horizon(OBSERVED, days)] = np.full(n, observed, dtype=np.float32)
    labels = pd.DataFrame(columns)
    labels[CHURN] = labels[per_horizon(CHURN, grid.main)]
    labels[SPEND] = labels[per_horizon(SPEND, grid.main)]
    labels[PURCHASES] = labels[per_horizon(PURCHASES, grid.main)]
    return labels


def purchase_days(position: np.ndarray, day: np.ndarray, chosen: np.ndarray, n: int) -> np.ndarray:
    """Per customer (``position`` into ``n`` customers), the distinct ``day`` values of the ``chosen`` events."""
    keys = np.unique(position[chosen].astype(np.int64) << 32 | (day[chosen] - day.min(initial=0)))
    return np.bincount(keys >> 32, minlength=n).astype(np.float32)


def spend_before(
    events: pd.DataFrame, stamps: np.ndarray, cutoff_ns: int, days: float, customer_ids: np.ndarray
) -> np.ndarray:
    """Net spend of each of ``customer_ids`` in the ``days`` before the cutoff (identical duplicates counted
    once, as everywhere), floored at 0: what a decline is measured against."""
    inside = (stamps < cutoff_ns) & (stamps >= cutoff_ns - round(days * NS_PER_DAY))
    window = events.loc[inside]
    window = window.loc[~window.duplicated().to_numpy()]
    position = pd.Index(customer_ids).get_indexer(window[CUSTOMER_ID].to_numpy())
    known = position >= 0
    spend = np.bincount(position[known], weights=window[AMOUNT].to_numpy()[known], minlength=len(customer_ids))
    return np.maximum(spend, 0.0)
