"""Fitted featurization state: vocabularies, scalers and the feature layout, stored as JSON.

The same state is used by training, embedded in the ONNX file and read back by scoring, so a
model can never be paired with the wrong vocabularies. JSON, never pickle: the state is data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import pandas as pd

from churnformer.data.aggregates import Aggregates
from churnformer.data.events import CUSTOMER_ID, STANDARD_COLUMNS, source_of
from churnformer.data.grouping import Grouping
from churnformer.data.values import CategoricalEncoder, NumericScaler
from churnformer.errors import ConfigError, InputError

FORMAT_VERSION = 1
# The state of a model that reads engineered aggregates: an older churnformer would not compute them, so it is
# told the state is newer than it reads instead of failing on a missing model input.
AGGREGATES_FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (FORMAT_VERSION, AGGREGATES_FORMAT_VERSION)
# Per-event numeric features computed from the standard columns, in this order, before attributes.
BASE_EVENT_NUMERIC = ("amount_signed_log", "log_gap_days", "is_first_event", "log_days_before_cutoff")
# Of those, the ones that measure time (the model encodes them with learned sinusoids).
EVENT_TIME_FEATURES = ("log_gap_days", "log_days_before_cutoff")
# Per-customer numeric features summarizing the whole history up to the cutoff (before truncation, so
# nothing is lost for long histories), in this order, before static attributes. A purchase is amount > 0.
BASE_CUSTOMER_NUMERIC = (
    "log_n_events",
    "log_tenure_days",
    "log_days_since_last_event",
    "log_days_since_last_purchase",
    "has_purchase",
    "log_purchases",
    "log_purchase_days",
    "log_purchases_last_30d",
    "log_purchases_last_90d",
    "log_total_purchase_amount",
    "signed_log_net_amount",
    "log_mean_purchase_amount",
)
CALENDAR = {"day_of_week": [str(d) for d in range(7)], "month": [str(m) for m in range(1, 13)]}
FREE_TEXT_MIN_CHARS = 40
FREE_TEXT_MIN_WORDS = 6


class FeatureMismatchError(InputError):
    """Data that lacks what the fitted featurization (the model) needs, e.g. a column it was trained with.

    Its own class so that scoring can add which model asked for it.
    """


@dataclass
class FeaturizerConfig:
    """Knobs for fitting: ``data.features`` (defaults in ``conf/data/settings/default.yaml``)."""

    max_len: int
    max_vocab_size: int
    min_category_count: int
    categorical: list[str]  # force these attribute columns categorical
    drop: list[str]  # attribute columns to ignore
    text: list[str]  # free-text event columns, read by the sentence encoder (churnformer.text)
    group_by: str | None = None  # rows with the same value of this column (per customer) are one event
    group_bag_size: int = 16  # per categorical column varying within groups: its most frequent values kept
    # Engineered per-customer aggregates (churnformer.data.aggregates): enabled, windows_days, top_values.
    aggregates: dict[str, Any] | None = None

    @classmethod
    def with_defaults(cls, **changes: Any) -> FeaturizerConfig:
        """The default ``data.features`` with ``changes``."""
        from churnformer.defaults import yaml_defaults

        return cls(**{**yaml_defaults("data/settings/default")["features"], **changes})


@dataclass
class Featurizer:
    """Everything needed to turn a standard event frame into model inputs, fitted on training data."""

    max_len: int
    event_categorical: list[CategoricalEncoder]
    event_numeric: list[NumericScaler]
    customer_categorical: list[CategoricalEncoder]
    customer_numeric: list[NumericScaler]
    text_columns: list[str] = field(default_factory=list)  # free-text event columns (data.features.text)
    # The sentence encoder that embeds them (churnformer.text.encoder.EncoderIdentity as a dict, with the
    # SHA-256 of its file): scoring refuses any other.
    text_encoder: dict[str, Any] | None = None
    grouping: Grouping | None = None  # data.features.group_by: events are groups of rows (churnformer.data.grouping)
    aggregates: Aggregates | None = None  # data.features.aggregates: the per-customer aggregates the model reads
    format_version: int = FORMAT_VERSION

    @property
    def event_categorical_names(self) -> list[str]:
        return [e.name for e in self.event_categorical] + list(CALENDAR)

    @property
    def event_categorical_cardinalities(self) -> list[int]:
        return [e.cardinality for e in self.event_categorical] + [len(v) + 2 for v in CALENDAR.values()]

    @property
    def event_numeric_names(self) -> list[str]:
        return list(BASE_EVENT_NUMERIC) + _with_indicators(self.event_numeric)

    @property
    def event_time_indices(self) -> list[int]:
        """Columns of the event numeric features that hold time (:data:`EVENT_TIME_FEATURES`)."""
        return [self.event_numeric_names.index(name) for name in EVENT_TIME_FEATURES]

    @property
    def event_value_encoders(self) -> dict[str, CategoricalEncoder]:
        """The event log's categorical columns by name, with their vocabularies: what explanations can group
        events by (a grouped model's bag columns too: removing a department's items from its baskets)."""
        encoders = {encoder.name: encoder for encoder in self.event_categorical}
        if self.grouping is not None:
            encoders.update({bag.name: bag for bag in self.grouping.bags})
        return encoders

    @property
    def text_dimension(self) -> int:
        """Size of the sentence embeddings (0 without text columns)."""
        return int(self.text_encoder["dimension"]) if self.text_columns and self.text_encoder else 0

    @property
    def customer_categorical_names(self) -> list[str]:
        return [e.name for e in self.customer_categorical]

    @property
    def customer_categorical_cardinalities(self) -> list[int]:
        return [e.cardinality for e in self.customer_categorical]

    @property
    def customer_numeric_names(self) -> list[str]:
        return list(BASE_CUSTOMER_NUMERIC) + _with_indicators(self.customer_numeric)

    @property
    def aggregate_names(self) -> list[str]:
        """The engineered aggregates' names (none without ``data.features.aggregates``)."""
        return self.aggregates.names if self.aggregates is not None else []

    @property
    def event_attribute_columns(self) -> list[str]:
        """The event log's attribute columns the model reads (those of its groups', when grouped)."""
        if self.grouping is not None:
            return self.grouping.source_columns
        return [e.name for e in self.event_categorical] + [s.name for s in self.event_numeric] + self.text_columns

    @property
    def customer_attribute_columns(self) -> list[str]:
        return [e.name for e in self.customer_categorical] + [s.name for s in self.customer_numeric]

    def require_event_columns(self, present: list[str], where: str) -> None:
        """Stop when the event log lacks an attribute column the model was trained with (``present``: every
        column of the file, so the message shows what is there instead)."""
        missing = [c for c in self.event_attribute_columns if c not in present]
        if missing:
            raise FeatureMismatchError(
                f"{where}: lacks attribute column(s) {missing} that the model was trained with; "
                f"columns present: {present}"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Featurizer:
        state = json.loads(text)
        if state.get("format_version") not in READABLE_FORMAT_VERSIONS:
            raise InputError(
                f"featurization state has format version {state.get('format_version')!r}; "
                f"this churnformer reads versions {list(READABLE_FORMAT_VERSIONS)} (a newer model needs a newer "
                "churnformer)"
            )
        return cls(
            max_len=int(state["max_len"]),
            event_categorical=[CategoricalEncoder(**e) for e in state["event_categorical"]],
            event_numeric=[NumericScaler(**s) for s in state["event_numeric"]],
            customer_categorical=[CategoricalEncoder(**e) for e in state["customer_categorical"]],
            customer_numeric=[NumericScaler(**s) for s in state["customer_numeric"]],
            text_columns=list(state.get("text_columns", [])),
            text_encoder=state.get("text_encoder"),
            grouping=Grouping.from_state(state["grouping"]) if state.get("grouping") else None,
            aggregates=Aggregates.from_state(state["aggregates"]) if state.get("aggregates") else None,
            format_version=int(state["format_version"]),
        )


def _with_indicators(scalers: list[NumericScaler]) -> list[str]:
    return [s.name for s in scalers] + [f"{s.name}__missing" for s in scalers]


def split_attributes(frame: pd.DataFrame, config: FeaturizerConfig, where: str) -> tuple[list[str], list[str]]:
    """Attribute columns by kind: strings, categories and booleans are categorical; numbers numeric. Text
    columns (``config.text``) are neither, and a column that holds free text but is not named there is left
    out with a warning: a vocabulary of sentences would only learn which sentences repeat."""
    categorical, numeric = [], []
    for column in frame.columns:
        if column in STANDARD_COLUMNS or column in config.drop or column in config.text:
            continue
        dtype = frame[column].dtype
        if column not in config.categorical and looks_like_free_text(frame[column]):
            logging.getLogger(__name__).warning(
                "%s: column %r holds free text; it is not used. Name it in data.features.text to read it with "
                "the sentence encoder, or in data.features.categorical to use its values as categories",
                where,
                column,
            )
            continue
        if (
            column in config.categorical
            or not pd.api.types.is_numeric_dtype(dtype)
            or (pd.api.types.is_bool_dtype(dtype))
        ):
            if pd.api.types.is_datetime64_any_dtype(dtype):
                raise InputError(
                    f"{where}: attribute column {column!r} holds datetimes; derive a number from it or "
                    "list it in data.features.drop"
                )
            categorical.append(column)
        else:
            numeric.append(column)
    return categorical, numeric


def looks_like_free_text(values: pd.Series, sample: int = 10_000) -> bool:
    """Strings that read like sentences: among the first ``sample`` non-missing values, the median is at least
    :data:`FREE_TEXT_MIN_CHARS` characters and :data:`FREE_TEXT_MIN_WORDS` words (category labels and product
    names are shorter)."""
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        return False
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return False
    head = values.dropna().head(sample).astype(str)
    if head.empty:
        return False
    return bool(
        head.str.len().median() >= FREE_TEXT_MIN_CHARS and head.str.split().str.len().median() >= FREE_TEXT_MIN_WORDS
    )


def fit_featurizer(
    events: pd.DataFrame, customers: pd.DataFrame | None = None, config: FeaturizerConfig | None = None
) -> Featurizer:
    """Fit vocabularies and scalers on the training events (already restricted to the feature window)."""
    config = config or FeaturizerConfig.with_defaults()
    missing = [column for column in config.text if column not in events.columns]
    if missing:
        raise InputError(
            f"{source_of(events, 'events')}: data.features.text names column(s) {missing} that the log lacks; "
            f"columns present: {list(events.columns)}"
        )
    grouping = None
    if config.group_by is not None:
        grouping = fit_grouping(events, config)
        events = grouping.apply(events)
        config = replace(config, drop=[*config.drop, config.group_by])
    event_cat, event_num = split_attributes(events, config, "events")
    static = customers if customers is not None else pd.DataFrame({CUSTOMER_ID: []})
    static_cat, static_num = split_attributes(static, config, "customers")

    def categorical(frame: pd.DataFrame, columns: list[str]) -> list[CategoricalEncoder]:
        return [CategoricalEncoder.fit(c, frame[c], config.max_vocab_size, config.min_category_count) for c in columns]

    event_categorical = categorical(events, event_cat)
    aggregates = fit_aggregates(config.aggregates, event_categorical, event_num)
    return Featurizer(
        max_len=config.max_len,
        event_categorical=event_categorical,
        event_numeric=[NumericScaler.fit(c, events[c]) for c in event_num],
        customer_categorical=categorical(static, static_cat),
        customer_numeric=[NumericScaler.fit(c, static[c]) for c in static_num],
        text_columns=list(config.text),
        grouping=grouping,
        aggregates=aggregates,
        format_version=FORMAT_VERSION if aggregates is None else AGGREGATES_FORMAT_VERSION,
    )


def fit_aggregates(
    settings: dict[str, Any] | None, event_categorical: list[CategoricalEncoder], event_numeric: list[str]
) -> Aggregates | None:
    """The aggregates of ``data.features.aggregates`` (None when not enabled): shares of each categorical event
    column's ``top_values`` most frequent training values, the numeric event columns' sums and means."""
    if not settings or not settings.get("enabled"):
        return None
    unknown = set(settings) - {"enabled", "windows_days", "top_values"}
    if unknown:
        raise ConfigError(
            f"data.features.aggregates: unknown key(s) {sorted(unknown)}; there are enabled, windows_days, top_values"
        )
    windows = sorted(int(days) for days in settings.get("windows_days", []))
    if not windows or windows[0] <= 0:
        raise ConfigError(f"data.features.aggregates.windows_days={windows}: give positive numbers of days")
    top = int(settings.get("top_values", 0))
    return Aggregates(
        windows_days=windows,
        categories=[(encoder.name, min(top, len(encoder.vocabulary))) for encoder in event_categorical],
        numbers=list(event_numeric),
    )


def fit_grouping(events: pd.DataFrame, config: FeaturizerConfig) -> Grouping:
    """The grouping of ``data.features.group_by`` on the training events (checked: the column exists, and
    no text column is asked for with it)."""
    where = source_of(events, "events")
    if config.group_by not in events.columns:
        raise InputError(
            f"{where}: data.features.group_by={config.group_by} names a column the log lacks; columns present: "
            f"{list(events.columns)}"
        )
    if config.text:
        raise ConfigError(
            f"data.features.group_by={config.group_by} with data.features.text={list(config.text)}: grouped events "
            "do not carry texts yet; leave one of the two out"
        )
    categorical, numeric = split_attributes(events, replace(config, drop=[*config.drop, config.group_by]), where)
    return Grouping.fit(events, config.group_by, categorical, numeric, config.group_bag_size, config.min_category_count)
