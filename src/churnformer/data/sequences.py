"""Leakage-safe, vectorized sequence builder: standard event frame -> per-customer event sequences.

One sort on a combined int64 (customer, second) key, group offsets from counts, and gathers; no
per-customer Python loop. Sequences are stored ragged (events of all customers back to back plus
offsets) and padded per batch with :meth:`Sequences.pad`, so memory follows the real number of
events rather than customers x max_len, and batches of similar lengths waste no compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from churnformer.data.aggregates import AggregateInputs
from churnformer.data.events import AMOUNT, CUSTOMER_ID, TIMESTAMP, source_of
from churnformer.data.featurizer import BASE_CUSTOMER_NUMERIC, FeatureMismatchError, Featurizer
from churnformer.data.inputs import EVENT_INPUTS, KeptEvents, event_arrays, signed_log1p, stack
from churnformer.data.values import UNKNOWN_ID, numeric_values
from churnformer.data.window import NS_PER_DAY, Window
from churnformer.schema import CUSTOMER_AGG, CUSTOMER_CAT, CUSTOMER_NUM, LENGTHS

if TYPE_CHECKING:
    from churnformer.text.embeddings import TextEmbeddings

_KEY_TIME_BITS = 32


@dataclass
class BuildReport:
    """What the builder did with the input, so nothing is dropped silently.

    ``events_read = events_after_cutoff + events_duplicate + events_grouped + sum(n_events_total)``; of the
    events kept, ``events_truncated`` fall outside the latest ``max_len`` of their customer (still in the
    summary). ``events_grouped``: rows that joined another row's group event (``data.features.group_by``).
    """

    events_read: int = 0
    events_after_cutoff: int = 0
    events_duplicate: int = 0
    events_grouped: int = 0
    events_truncated: int = 0
    customers: int = 0
    customers_truncated: int = 0
    unknown_categories: dict[str, int] = field(default_factory=dict)
    customers_without_static: int = 0


def combined_report(reports: list[BuildReport]) -> BuildReport:
    """One report of builds over disjoint sets of customers (the partitions of a log): every count added."""
    combined = BuildReport()
    for report in reports:
        for item in fields(BuildReport):
            if item.name != "unknown_categories":
                setattr(combined, item.name, getattr(combined, item.name) + getattr(report, item.name))
        for column, count in report.unknown_categories.items():
            combined.unknown_categories[column] = combined.unknown_categories.get(column, 0) + count
    return combined


@dataclass
class Sequences:
    """Ragged per-customer sequences: customer i owns event rows ``offsets[i]:offsets[i + 1]``.

    ``events`` and ``customers`` hold the model's inputs by name (``churnformer.schema``): per event, e.g.
    ``event_cat`` (N, Ce) int32 and ``event_num`` (N, Fe) float32, with N the events of all customers back
    to back; per customer, e.g. ``customer_cat`` (C, Cc) int32 and ``customer_num`` (C, Fc) float32. A new
    input is one more entry, padded and batched like the others. ``customer_ids`` are the ids exactly as
    given, sorted, one per customer with at least one event in the feature window; ``n_events_total``
    counts events before truncation to ``max_len``. With text features, ``event_text`` (N, Ct) int32 holds
    each event's row of ``text_table`` (the job's embedded texts, row 0 zeros: no text) per text column.
    """

    customer_ids: np.ndarray
    offsets: np.ndarray
    events: dict[str, np.ndarray]
    customers: dict[str, np.ndarray]
    n_events_total: np.ndarray
    report: BuildReport
    text_table: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.customer_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def lengths_of(self, rows: np.ndarray) -> np.ndarray:
        """The lengths of customers ``rows`` alone (a batch need not difference every customer's offsets)."""
        return self.offsets[rows + 1] - self.offsets[rows]

    def _event_rows(self, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Storage rows of the events of customers ``rows``, in order."""
        first = np.cumsum(lengths) - lengths
        return np.arange(int(lengths.sum())) + np.repeat(self.offsets[rows] - first, lengths)

    def subset(self, rows: np.ndarray) -> Sequences:
        """The chosen customers only, as a compact ragged set."""
        return self.slices(rows, np.zeros(len(rows), dtype=np.int64), self.lengths_of(rows))

    def slices(self, rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> Sequences:
        """Contiguous runs of events as a compact ragged set: entry i holds events ``starts[i]`` to
        ``starts[i] + lengths[i] - 1`` (positions within the history) of customer ``rows[i]``, with that
        customer's inputs; a customer may appear more than once (the views of contrastive pretraining)."""
        rows, lengths = np.asarray(rows, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
        first = np.cumsum(lengths) - lengths
        source = np.arange(int(lengths.sum())) + np.repeat(self.offsets[rows] + starts - first, lengths)
        return Sequences(
            customer_ids=self.customer_ids[rows],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            events={name: values[source] for name, values in self.events.items()},
            customers={name: values[rows] for name, values in self.customers.items()},
            n_events_total=self.n_events_total[rows],
            report=self.report,
            text_table=self.text_table,
        )

    def pad(self, rows: np.ndarray | None = None, width: int | None = None) -> dict[str, np.ndarray]:
        """Model inputs by name for the chosen customers (all by default), events left-aligned and padded with
        zeros to ``width`` (default: the longest among them): each event input (B, T, ...), ``lengths`` (B,)
        int64 and each customer input (B, ...). Position t of row b is a real event iff t < lengths[b];
        events are in time order, the latest at lengths[b] - 1. With text features, ``text_embeddings`` holds
        the rows of ``text_table`` the batch uses (row 0 first) and ``event_text`` indexes it."""
        every_row = rows is None
        rows = np.arange(len(self)) if every_row else np.asarray(rows, dtype=np.int64)
        lengths = self.lengths_of(rows)
        width = max(int(lengths.max(initial=0)), 1, width or 0)
        # Flat destination of each event: row * width + position within its sequence.
        first = np.cumsum(lengths) - lengths
        destination = np.arange(int(lengths.sum())) + np.repeat(np.arange(len(rows)) * width - first, lengths)
        source = None if every_row else self._event_rows(rows, lengths)  # all rows: the storage order already
        padded: dict[str, np.ndarray] = {}
        for name, values in self.events.items():
            out = np.zeros((len(rows), width, *values.shape[1:]), dtype=values.dtype)
            out.reshape(len(rows) * width, *values.shape[1:])[destination] = (
                values if source is None else values[source]
            )
            padded[name] = out
        padded[LENGTHS] = lengths.astype(np.int64)
        padded.update({name: values[rows] for name, values in self.customers.items()})
        for event_input in EVENT_INPUTS:
            event_input.pad(padded, self)
        return padded


def _time_order(
    codes: np.ndarray, seconds: np.ndarray, events: pd.DataFrame, kept: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order events by (customer, second); return the order, the sorted customer codes and the duplicates.

    The sort need not be stable: events of one customer in the same second are put in order by
    their content (full timestamp, amount, attributes) afterwards, so input row order never matters.
    Identical events (same customer and content) share a second, so only those tied rows need comparing:
    the positions (in the returned order) of every copy after the first are returned as duplicates.
    """
    base = seconds.min(initial=0)
    relative = seconds - base
    if len(codes) and (relative.max() >= 2**_KEY_TIME_BITS or codes.max() >= 2 ** (63 - _KEY_TIME_BITS)):
        order = np.lexsort((seconds, codes))
        sorted_codes, sorted_seconds = codes[order], seconds[order]
        tied = np.flatnonzero((sorted_codes[1:] == sorted_codes[:-1]) & (sorted_seconds[1:] == sorted_seconds[:-1]))
    else:
        key = (codes << _KEY_TIME_BITS) | relative
        order = np.argsort(key)
        key = key[order]
        sorted_codes, sorted_seconds = key >> _KEY_TIME_BITS, (key & (2**_KEY_TIME_BITS - 1)) + base
        tied = np.flatnonzero(key[1:] == key[:-1])
    duplicates = np.zeros(0, dtype=np.int64)
    if len(tied):
        slots = np.union1d(tied, tied + 1)
        columns = [c for c in events.columns if c != CUSTOMER_ID]
        tie_frame = events.iloc[kept[order[slots]]][columns].reset_index(drop=True)
        tie_frame.insert(0, "_code", sorted_codes[slots])
        tie_frame.insert(1, "_second", sorted_seconds[slots])
        for column in columns:
            if tie_frame[column].dtype == object or isinstance(tie_frame[column].dtype, pd.CategoricalDtype):
                tie_frame[column] = tie_frame[column].astype(str)
        resolved = tie_frame.sort_values(list(tie_frame.columns), kind="stable", na_position="last").index
        order[slots] = order[slots][resolved.to_numpy()]
        duplicates = slots[tie_frame.loc[resolved].duplicated().to_numpy()]
    return order, sorted_codes, duplicates


def _history_summary(
    codes: np.ndarray, stamps: np.ndarray, amounts: np.ndarray, starts: np.ndarray, counts: np.ndarray, window: Window
) -> list[np.ndarray]:
    """The columns of ``BASE_CUSTOMER_NUMERIC`` from every event up to the cutoff, in (customer, time) order."""
    end = window.feature_end_ns
    purchase = amounts > 0
    n = len(counts)
    days_before = (end - stamps) / NS_PER_DAY
    purchases = np.bincount(codes, weights=purchase, minlength=n)
    # Latest purchase: the maximum purchase time per customer (events of a customer are contiguous).
    purchase_stamps = np.where(purchase, stamps, np.iinfo(np.int64).min)
    last_purchase = np.maximum.reduceat(purchase_stamps, starts) if n else np.zeros(0, np.int64)
    tenure = (end - stamps[starts]) / NS_PER_DAY
    since_purchase = np.where(purchases > 0, (end - last_purchase) / NS_PER_DAY, tenure)
    # Distinct purchase days (same-day purchases are one visit, as in the BTYD literature).
    purchase_codes, purchase_days = codes[purchase], stamps[purchase] // NS_PER_DAY
    new_day = np.ones(len(purchase_codes), dtype=bool)
    new_day[1:] = (purchase_codes[1:] != purchase_codes[:-1]) | (purchase_days[1:] != purchase_days[:-1])
    purchase_total = np.bincount(codes, weights=np.where(purchase, amounts, 0.0), minlength=n)
    return [
        np.log1p(counts),
        np.log1p(tenure),
        np.log1p(days_before[starts + counts - 1]),
        np.log1p(since_purchase),
        (purchases > 0).astype(np.float64),
        np.log1p(purchases),
        np.log1p(np.bincount(purchase_codes[new_day], minlength=n)),
        np.log1p(np.bincount(codes, weights=purchase & (days_before <= 30), minlength=n)),
        np.log1p(np.bincount(codes, weights=purchase & (days_before <= 90), minlength=n)),
        np.log1p(purchase_total),
        signed_log1p(np.bincount(codes, weights=amounts, minlength=n)),
        np.log1p(purchase_total / np.maximum(purchases, 1)),
    ]


def _aggregates(
    featurizer: Featurizer,
    events: pd.DataFrame,
    rows: np.ndarray,
    codes: np.ndarray,
    stamps: np.ndarray,
    amounts: np.ndarray,
    n: int,
    window: Window,
) -> dict[str, np.ndarray]:
    """The engineered aggregates (:mod:`churnformer.data.aggregates`) of every event kept before truncation,
    ``rows`` of ``events`` in (customer, time) order; none for a model without them."""
    if featurizer.aggregates is None:
        return {}
    spec = featurizer.aggregates
    encoders = {encoder.name: encoder for encoder in featurizer.event_categorical}
    inputs = AggregateInputs(
        n_customers=n,
        codes=codes,
        stamps=stamps,
        amounts=amounts,
        feature_end_ns=window.feature_end_ns,
        categories={name: encoders[name].encode(events[name], rows)[0] for name, _ in spec.categories},
        numbers={name: numeric_values(events[name], rows) for name in spec.numbers},
    )
    return {CUSTOMER_AGG: spec.compute(inputs)}


def _static_features(
    customer_ids: np.ndarray, customers: pd.DataFrame | None, featurizer: Featurizer, report: BuildReport
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Static customer attributes aligned to ``customer_ids``; absent customers are unknown/missing."""
    n = len(customer_ids)
    if customers is None:  # no table given: every customer is absent from it
        customers = pd.DataFrame({CUSTOMER_ID: [], **{c: [] for c in featurizer.customer_attribute_columns}})
    missing = [c for c in featurizer.customer_attribute_columns if c not in customers.columns]
    if missing:
        raise FeatureMismatchError(
            f"{source_of(customers, 'customers table')}: lacks column(s) {missing} that the model was trained "
            f"with; columns present: {list(customers.columns)}"
        )
    table_ids, wanted = customers[CUSTOMER_ID], pd.Index(customer_ids)
    if pd.api.types.is_integer_dtype(table_ids.dtype) != pd.api.types.is_integer_dtype(wanted.dtype):
        table_ids, wanted = table_ids.astype(str), wanted.astype(str)
    position = pd.Index(table_ids).get_indexer(wanted)
    present = position >= 0
    report.customers_without_static = int(n - present.sum()) if featurizer.customer_attribute_columns else 0
    cat, num, indicators = [], [], []
    for encoder in featurizer.customer_categorical:
        ids, unseen = encoder.encode(customers[encoder.name], position[present])
        column = np.full(n, UNKNOWN_ID, dtype=np.int32)
        column[present] = ids
        report.unknown_categories[f"customers.{encoder.name}"] = unseen
        cat.append(column)
    for scaler in featurizer.customer_numeric:
        values = np.full(n, np.nan)
        values[present] = numeric_values(customers[scaler.name], position[present])
        scaled, indicator = scaler.encode(values)
        num.append(scaled)
        indicators.append(indicator)
    return cat, num + indicators


def build_sequences(
    events: pd.DataFrame,
    window: Window,
    featurizer: Featurizer,
    customers: pd.DataFrame | None = None,
    texts: TextEmbeddings | None = None,
) -> Sequences:
    """Build the sequences of every customer with at least one event before ``window.feature_end``.

    ``events`` is a standard frame (:func:`churnformer.data.events.load_events`), in any row order.
    Events at or after the feature end are ignored (counted in the report): no future event reaches
    any feature. Identical duplicate events (same customer, timestamp, amount and attributes: a log
    written twice) count once; the extra copies are dropped and counted. Each customer keeps the latest
    ``featurizer.max_len`` events. A featurizer with text columns needs ``texts``, which embeds the texts of
    the kept events (only those) it has not seen yet. A featurizer with a grouping builds them from the
    group events of the rows in the window (:mod:`churnformer.data.grouping`), duplicates dropped first.
    """
    featurizer.require_event_columns(list(events.columns), source_of(events, "events"))
    if featurizer.grouping is not None:
        return _grouped_sequences(events, window, featurizer, customers, texts)
    report = BuildReport(events_read=len(events))
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    in_window = stamps < window.feature_end_ns
    kept = np.flatnonzero(in_window)
    report.events_after_cutoff = int(len(events) - len(kept))
    # Factorized as a Series: Arrow string ids are encoded by Arrow, with no Python object per event.
    ids = events[CUSTOMER_ID]
    codes, customer_ids = pd.factorize(ids if len(kept) == len(ids) else ids.iloc[kept], sort=True)
    customer_ids = np.asarray(customer_ids)
    stamps = stamps[kept]
    order, codes, duplicates = _time_order(codes.astype(np.int64), stamps // 10**9, events, kept)
    if len(duplicates):
        unique = np.ones(len(order), dtype=bool)
        unique[duplicates] = False
        order, codes = order[unique], codes[unique]
    report.events_duplicate = len(duplicates)
    stamps = stamps[order]
    counts = np.bincount(codes, minlength=len(customer_ids))
    starts = np.cumsum(counts) - counts
    position = np.arange(len(codes)) - starts[codes]
    first_in_group = position == 0
    gap_days = np.zeros(len(codes))
    gap_days[1:] = np.diff(stamps) / NS_PER_DAY
    gap_days[first_in_group] = 0.0
    amounts = events[AMOUNT].to_numpy("float64")[kept[order]]
    summary = _history_summary(codes, stamps, amounts, starts, counts, window)
    aggregates = _aggregates(featurizer, events, kept[order], codes, stamps, amounts, len(customer_ids), window)

    keep = position >= counts[codes] - featurizer.max_len
    rows = kept[order[keep]]  # input row of each kept event, in (customer, time) order
    stamps, gap_days, first_in_group = stamps[keep], gap_days[keep], first_in_group[keep]
    lengths = np.minimum(counts, featurizer.max_len)
    report.customers = len(customer_ids)
    report.events_truncated = int((~keep).sum())
    report.customers_truncated = int((counts > featurizer.max_len).sum())
    kept_events = KeptEvents(
        events, rows, stamps, gap_days, first_in_group, window.feature_end_ns, report.unknown_categories, texts
    )
    event_inputs = {}
    for event_input in EVENT_INPUTS:
        if event_input.arrays(featurizer):
            event_inputs.update(event_input.write(featurizer, kept_events))

    static_cat, static_num = _static_features(customer_ids, customers, featurizer, report)
    customer_num = [*summary, *static_num]

    n = len(customer_ids)
    customer_inputs = {CUSTOMER_CAT: stack(static_cat, n, np.int32), CUSTOMER_NUM: stack(customer_num, n, np.float32)}
    return Sequences(
        customer_ids=customer_ids,
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        events=event_inputs,
        customers=customer_inputs | aggregates,
        n_events_total=counts.astype(np.int64),
        report=report,
        text_table=texts.table if featurizer.text_columns else None,
    )


def _grouped_sequences(
    events: pd.DataFrame,
    window: Window,
    featurizer: Featurizer,
    customers: pd.DataFrame | None,
    texts: TextEmbeddings | None,
) -> Sequences:
    """:func:`build_sequences` over the group events of the rows before the cutoff, counted in one report.

    Identical rows of one group are separate items (two of the same product in a basket); identical rows
    without a group value are copies, counted once as in any log. Rows compare on the columns the model
    reads, so training and scoring (which reads no other column) agree.
    """
    grouping = featurizer.grouping
    stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
    in_window = events.iloc[np.flatnonzero(stamps < window.feature_end_ns)]
    read = in_window[[CUSTOMER_ID, TIMESTAMP, AMOUNT, *grouping.source_columns]]
    duplicate = read.duplicated().to_numpy() & in_window[grouping.column].isna().to_numpy()
    unique = in_window[~duplicate]
    grouped = grouping.apply(unique)
    sequences = build_sequences(grouped, window, replace(featurizer, grouping=None), customers, texts)
    report = sequences.report
    report.events_read = len(events)
    report.events_after_cutoff = len(events) - len(in_window)
    report.events_duplicate = int(duplicate.sum())
    report.events_grouped = len(unique) - len(grouped)
    return sequences


def empty_histories(
    customer_ids: np.ndarray,
    featurizer: Featurizer,
    customers: pd.DataFrame | None = None,
    texts: TextEmbeddings | None = None,
) -> Sequences:
    """Sequences of customers with no event at all: only the summary token, with the history summary of an
    empty history (every count, time and amount 0) and the static attributes from ``customers``. What
    explanations score as the baseline with every event removed."""
    report = BuildReport()
    n = len(customer_ids)
    static_cat, static_num = _static_features(customer_ids, customers, featurizer, report)
    summary = [np.zeros(n) for _ in BASE_CUSTOMER_NUMERIC]
    events = {name: np.zeros((0, *spec.shape), dtype=spec.dtype) for name, spec in event_arrays(featurizer).items()}
    aggregates = {CUSTOMER_AGG: featurizer.aggregates.of_no_events(n)} if featurizer.aggregates is not None else {}
    return Sequences(
        customer_ids=np.asarray(customer_ids),
        offsets=np.zeros(n + 1, dtype=np.int64),
        events=events,
        customers={
            CUSTOMER_CAT: stack(static_cat, n, np.int32),
            CUSTOMER_NUM: stack([*summary, *static_num], n, np.float32),
            **aggregates,
        },
        n_events_total=np.zeros(n, dtype=np.int64),
        report=report,
        text_table=texts.table if featurizer.text_columns and texts is not None else None,
    )


def concat_sequences(parts: list[Sequences]) -> Sequences:
    """Stack sequence sets (e.g. one per cutoff) into one; a customer may then appear more than once.

    The report describes the first part (the main cutoff); the others are extra training examples. Parts
    with text index one growing table (:class:`~churnformer.text.embeddings.TextEmbeddings`), so the
    largest table serves them all.
    """
    tables = [p.text_table for p in parts if p.text_table is not None]
    shifts = np.cumsum([0] + [int(p.offsets[-1]) for p in parts[:-1]])
    offsets = [parts[0].offsets[:1]] + [p.offsets[1:] + shift for p, shift in zip(parts, shifts, strict=True)]
    return Sequences(
        customer_ids=np.concatenate([p.customer_ids for p in parts]),
        offsets=np.concatenate(offsets),
        events={name: np.concatenate([p.events[name] for p in parts]) for name in parts[0].events},
        customers={name: np.concatenate([p.customers[name] for p in parts]) for name in parts[0].customers},
        n_events_total=np.concatenate([p.n_events_total for p in parts]),
        report=parts[0].report,
        text_table=max(tables, key=len) if tables else None,
    )
