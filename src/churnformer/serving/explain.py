"""Why this customer: the groups of a customer's history that drive its churn risk and its value.

A driver group is defined on raw events (all events of one type, the events of the last 30 days, ...) or
is one static attribute. Removing a group means re-featurizing the customer without it (gaps, recency and
the history summary recomputed, an attribute set to unknown) and scoring again with the same model, so an
effect is what the model itself does with that part of the history: an association inside the model, not
a causal effect of the behaviour.

- ``occlusion`` (default): the effect of a group is the score with everything minus the score without that
  group. One extra scoring per group present.
- ``shapley``: Shapley values of the groups present (exact up to :data:`EXACT_SHAPLEY_GROUPS` groups, else
  averaged over seeded random orders); they add up to the score minus the score of an empty history (the
  summary token alone, every attribute unknown).

Scoring is bit-identical however customers are batched, and a customer's groups and random orders depend
only on its own events and id, so explanations are identical across job shards and spill partitions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, customer_hash
from churnformer.data.featurizer import Featurizer
from churnformer.data.sequences import Sequences, build_sequences, concat_sequences, empty_histories
from churnformer.data.values import UNKNOWN_ID, numeric_values
from churnformer.data.window import NS_PER_DAY, Window
from churnformer.errors import ConfigError
from churnformer.schema import (
    CHURN_PROBABILITY,
    CHURN_RISK_DECILE,
    EXPECTED_SPEND,
    SEGMENT,
    SEGMENTS,
    VALUE_DECILE,
)

if TYPE_CHECKING:
    from churnformer.serving.retention import ReferencePercentiles
    from churnformer.text.embeddings import TextEmbeddings

METHODS = ("occlusion", "shapley")
EXACT_SHAPLEY_GROUPS = 6
MAX_GROUPS = 62  # groups are bits of an int64 mask
# Variant events re-featurized at a time: bounds the memory explanations add to a partition.
VARIANT_EVENTS_PER_CHUNK = 2_000_000
# The windows every explanation has (days before the cutoff, [from, to)).
BUILT_IN_WINDOWS = ({"name": "last 30 days", "days": [0, 30]}, {"name": "older than 180 days", "days": [180, None]})
TEXT_GROUP = "text"  # what the customer wrote (models with text features)
OTHER_EVENTS = "other events"
GROUP = "group"
CHURN_EFFECT = "churn_effect"
SPEND_EFFECT = "spend_effect"
EXPLAINED = "explained"
DRIVER_COLUMN = re.compile(r"(risk|value)_driver_\d+(_effect)?")


def drivers_last(predictions: pd.DataFrame) -> pd.DataFrame:
    """``predictions`` with the explanation columns (if any) moved to the end, in their order."""
    drivers = [c for c in predictions.columns if c == EXPLAINED or DRIVER_COLUMN.fullmatch(str(c))]
    return predictions[[c for c in predictions.columns if c not in drivers] + drivers] if drivers else predictions


def driver_columns(top_k: int) -> list[str]:
    """The columns explanations add to the predictions, in order."""
    columns = [EXPLAINED]
    for kind in ("risk", "value"):
        for k in range(1, top_k + 1):
            columns += [f"{kind}_driver_{k}", f"{kind}_driver_{k}_effect"]
    return columns


@dataclass(frozen=True)
class DriverGroup:
    """Events selected by the value of a categorical event ``column`` (``value`` None: values outside the
    model's vocabulary or missing), events within ``days`` before the cutoff, the events in no other group
    (``rest``), the static ``attribute``, or (``text``) what the customer wrote: removing it blanks the text
    columns of its events and keeps the events."""

    name: str
    column: str | None = None
    value: str | None = None
    days: tuple[float, float] | None = None
    rest: bool = False
    attribute: str | None = None
    text: bool = False


@dataclass(frozen=True)
class ExplainSettings:
    """``explain.*`` of ``conf/serving/predict.yaml``."""

    method: str = "occlusion"
    top_k: int = 3
    only: str | None = None
    event_type_column: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    permutations: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"explain.method must be one of {list(METHODS)}, got {self.method!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ConfigError(f"explain.top_k must be a whole number >= 1, got {self.top_k!r}")
        if not (isinstance(self.permutations, int) and self.permutations >= 1):
            raise ConfigError(f"explain.permutations must be a whole number >= 1, got {self.permutations!r}")
        Selection.parse(self.only)


@dataclass(frozen=True)
class Selection:
    """``explain.only``: ``segment:<segment>``, ``risk_decile<=N`` or ``value_decile<=N``; None: everyone."""

    column: str | None = None
    value: str | int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Selection:
        if text is None:
            return cls()
        text = str(text).strip()
        if text.startswith("segment:"):
            segment = text.removeprefix("segment:").strip()
            if segment not in SEGMENTS:
                raise ConfigError(f"explain.only={text}: the segments are {', '.join(SEGMENTS)}")
            return cls(SEGMENT, segment)
        decile = re.fullmatch(r"(risk|value)_decile\s*<=\s*(\d+)", text)
        if decile and 1 <= int(decile[2]) <= 10:
            return cls(CHURN_RISK_DECILE if decile[1] == "risk" else VALUE_DECILE, int(decile[2]))
        raise ConfigError(
            f"explain.only={text}: expected segment:<segment>, risk_decile<=N or value_decile<=N (N from 1 to 10)"
        )

    def rows(self, predictions: pd.DataFrame) -> np.ndarray:
        """Rows of ``predictions`` (with retention columns) selected."""
        if self.column is None:
            return np.arange(len(predictions))
        values = predictions[self.column].to_numpy()
        chosen = values == self.value if self.column == SEGMENT else values <= self.value
        return np.flatnonzero(chosen)


def driver_groups(featurizer: Featurizer, settings: ExplainSettings) -> list[DriverGroup]:
    """Every group of a model: the event-type values (its vocabulary, then the rest), the built-in windows,
    ``explain.groups`` (``{column: C}`` for one group per value of event column C, or ``{name: N, days: [a, b]}``),
    then each static attribute. Fixed by the model and the settings, never by the data scored."""
    categorical = featurizer.event_value_encoders
    type_column = settings.event_type_column
    if type_column is not None and type_column not in categorical:
        raise ConfigError(
            f"explain.event_type_column={type_column}: not a categorical event column of the model "
            f"(those are {sorted(categorical) or 'none'})"
        )
    type_column = type_column or ("event_type" if "event_type" in categorical else None)
    groups: list[DriverGroup] = []
    if type_column is not None:
        groups += _value_groups(categorical[type_column].name, categorical[type_column].vocabulary, prefix=False)
    for spec in [*BUILT_IN_WINDOWS, *settings.groups]:
        if "column" in spec:
            column = spec["column"]
            if column not in categorical:
                raise ConfigError(
                    f"explain.groups: {column!r} is not a categorical event column of the model "
                    f"(those are {sorted(categorical) or 'none'})"
                )
            groups += _value_groups(column, categorical[column].vocabulary, prefix=True)
        elif "days" in spec and "name" in spec:
            groups.append(DriverGroup(str(spec["name"]), days=_window_days(spec)))
        else:
            raise ConfigError(f"explain.groups: {spec} is neither {{column: C}} nor {{name: N, days: [from, to]}}")
    if type_column is None:  # events in no group above: with them, removing every group empties a history
        groups.append(DriverGroup(OTHER_EVENTS, rest=True))
    if featurizer.text_columns:
        groups.append(DriverGroup(TEXT_GROUP, text=True))
    groups += [DriverGroup(name, attribute=name) for name in featurizer.customer_attribute_columns]
    names = [group.name for group in groups]
    if len(set(names)) != len(names):
        raise ConfigError(f"explain.groups: group names must be distinct, got {names}")
    if len(groups) > MAX_GROUPS:
        raise ConfigError(f"explanations take at most {MAX_GROUPS} groups; this model and config give {len(groups)}")
    return groups


def _value_groups(column: str, vocabulary: list[str], prefix: bool) -> list[DriverGroup]:
    def name(value: str) -> str:
        return f"{column}={value}" if prefix else value

    return [DriverGroup(name(v), column=column, value=v) for v in vocabulary] + [
        DriverGroup(name("other") if prefix else f"other {column}", column=column)
    ]


def _window_days(spec: dict[str, Any]) -> tuple[float, float]:
    low, high = [*list(spec["days"]), None, None][:2]
    start, end = float(low or 0), math.inf if high is None else float(high)
    if not 0 <= start < end:
        raise ConfigError(
            f"explain.groups: {spec['name']!r} needs days [from, to) with 0 <= from < to, got {spec['days']}"
        )
    return start, end


@dataclass
class Explanations:
    """Per customer explained, every present group's effects (long), and the top drivers (wide, by
    customer id, :func:`driver_columns`)."""

    effects: pd.DataFrame
    drivers: pd.DataFrame


class Scorer(Protocol):
    """What explanations need of a model: its featurization and texts, its reference population, and scores
    of featurized customers (:class:`churnformer.serving.predictor.Predictor` is one)."""

    featurizer: Featurizer
    texts: TextEmbeddings | None
    reference: ReferencePercentiles | None

    def score_sequences(self, sequences: Sequences) -> pd.DataFrame: ...

    def retention(self, predictions: pd.DataFrame) -> pd.DataFrame: ...


class Explainer:
    """Explains customers of one frame at a time (a whole log, a shard or a spill partition) with the
    model ``scorer`` scores with."""

    def __init__(self, scorer: Scorer, settings: ExplainSettings) -> None:
        self.scorer = scorer
        self.settings = settings
        self.groups = driver_groups(scorer.featurizer, settings)
        self.selection = Selection.parse(settings.only)
        if self.selection.column is not None and scorer.reference is None:
            raise ConfigError(
                f"explain.only={settings.only}: this model has no reference percentiles (exported without "
                "calibration), so deciles and segments would depend on which customers a job scores"
            )

    def explain(
        self, frame: pd.DataFrame, window: Window, static: pd.DataFrame | None, predictions: pd.DataFrame
    ) -> Explanations:
        """Explain the selected customers among ``predictions`` (model outputs of ``frame``'s customers, in
        customer id order) from their events in ``frame``."""
        chosen = predictions.iloc[self.selection.rows(self.scorer.retention(predictions))]
        ids = chosen[CUSTOMER_ID].to_numpy()
        stamps = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        events = frame.loc[(stamps < window.feature_end_ns) & frame[CUSTOMER_ID].isin(ids).to_numpy()]
        scores = chosen[[CHURN_PROBABILITY, EXPECTED_SPEND]].to_numpy(np.float64)
        parts = [
            self._explain_chunk(events, window, static, ids[rows], scores[rows]) for rows in self._chunks(events, ids)
        ]
        effects = pd.concat(parts, ignore_index=True) if parts else _empty_effects()
        return Explanations(
            effects, top_drivers(effects, predictions[CUSTOMER_ID].to_numpy(), ids, self.settings.top_k)
        )

    def _chunks(self, events: pd.DataFrame, ids: np.ndarray) -> list[np.ndarray]:
        """Rows of ``ids`` in runs whose variants re-featurize about VARIANT_EVENTS_PER_CHUNK events."""
        counts = events[CUSTOMER_ID].value_counts().reindex(ids, fill_value=0).to_numpy()
        n_groups = len(self.groups) if self.settings.method == "occlusion" else 2**EXACT_SHAPLEY_GROUPS
        cost = np.cumsum((counts + 1) * n_groups)
        bounds = np.searchsorted(
            cost, np.arange(VARIANT_EVENTS_PER_CHUNK, cost[-1] if len(cost) else 0, VARIANT_EVENTS_PER_CHUNK)
        )
        return [rows for rows in np.split(np.arange(len(ids)), np.unique(bounds)) if len(rows)]

    def _explain_chunk(
        self, events: pd.DataFrame, window: Window, static: pd.DataFrame | None, ids: np.ndarray, scores: np.ndarray
    ) -> pd.DataFrame:
        events = events.loc[events[CUSTOMER_ID].isin(ids).to_numpy()]
        codes = pd.Index(ids).get_indexer(events[CUSTOMER_ID].to_numpy())
        order = np.argsort(codes, kind="stable")
        events, codes = events.iloc[order], codes[order]
        bits = self._event_bits(events, window)
        attribute_static = _static_rows(static, ids)
        present = self._attribute_bits(attribute_static, len(ids))  # then every event group a customer has
        np.bitwise_or.at(present, codes, bits | self._text_bits(events, window))
        plan = _plan(present, ids, self.settings)
        values = np.empty((len(plan.customer), 2))
        kept = plan.removed == 0
        values[kept] = scores[plan.customer[kept]]  # the customer as is: the scores it was given
        values[~kept] = self._values(
            events, codes, bits, window, attribute_static, plan.customer[~kept], plan.removed[~kept]
        )
        return plan.effects(values, ids, [group.name for group in self.groups])

    def _event_bits(self, events: pd.DataFrame, window: Window) -> np.ndarray:
        """Per event, the bit of every event group it belongs to."""
        bits = np.zeros(len(events), dtype=np.int64)
        stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        days_before = (window.feature_end_ns - stamps) / NS_PER_DAY
        encoded: dict[str, np.ndarray] = {}
        encoders = self.scorer.featurizer.event_value_encoders
        for index, group in enumerate(self.groups):
            if group.column is not None:
                if group.column not in encoded:
                    encoded[group.column] = encoders[group.column].encode(events[group.column])[0]
                vocabulary = encoders[group.column].vocabulary
                target = UNKNOWN_ID if group.value is None else vocabulary.index(group.value) + 2
                member = encoded[group.column] == target
            elif group.days is not None:
                member = (days_before >= group.days[0]) & (days_before < group.days[1])
            else:
                continue
            bits |= member.astype(np.int64) << index
        for index, group in enumerate(self.groups):
            if group.rest:
                bits |= (bits == 0).astype(np.int64) << index
        return bits

    def _text_bits(self, events: pd.DataFrame, window: Window) -> np.ndarray:
        """Per event, the text group's bit where the event (before the cutoff) holds text; kept apart from the
        event groups' bits, since removing the text group keeps the events."""
        bits = np.zeros(len(events), dtype=np.int64)
        index = self._text_index
        if index is None:
            return bits
        stamps = events[TIMESTAMP].to_numpy(dtype="datetime64[ns]").view(np.int64)
        written = np.zeros(len(events), dtype=bool)
        for column in self.scorer.featurizer.text_columns:
            written |= (events[column].astype("string").str.strip().fillna("") != "").to_numpy(dtype=bool)
        return (written & (stamps < window.feature_end_ns)).astype(np.int64) << index

    @property
    def _text_index(self) -> int | None:
        return next((index for index, group in enumerate(self.groups) if group.text), None)

    def _attribute_bits(self, static: pd.DataFrame | None, n: int) -> np.ndarray:
        """Per customer (``n``, the rows of ``static``), the bit of every static attribute it has (known to
        the model)."""
        bits = np.zeros(n, dtype=np.int64)
        if static is None:
            return bits
        featurizer = self.scorer.featurizer
        categorical = {encoder.name: encoder for encoder in featurizer.customer_categorical}
        for index, group in enumerate(self.groups):
            if group.attribute is None or group.attribute not in static.columns:
                continue
            if group.attribute in categorical:
                known = categorical[group.attribute].encode(static[group.attribute])[0] != UNKNOWN_ID
            else:
                known = np.isfinite(numeric_values(static[group.attribute]))
            bits |= known.astype(np.int64) << index
        return bits

    def _values(
        self,
        events: pd.DataFrame,
        codes: np.ndarray,
        bits: np.ndarray,
        window: Window,
        static: pd.DataFrame | None,
        customer: np.ndarray,
        removed: np.ndarray,
    ) -> np.ndarray:
        """(churn probability, expected spend) of every variant: customer ``customer[v]`` re-featurized
        without the groups in ``removed[v]`` and scored."""
        counts = np.bincount(codes, minlength=int(customer.max(initial=-1)) + 1)
        starts = np.cumsum(counts) - counts
        lengths = counts[customer]
        variant_of_row = np.repeat(np.arange(len(customer)), lengths)
        first = np.cumsum(lengths) - lengths
        rows = np.arange(int(lengths.sum())) - np.repeat(first - starts[customer], lengths)
        keep = (bits[rows] & removed[variant_of_row]) == 0
        variant_events = events.iloc[rows[keep]].reset_index(drop=True)
        variant_events[CUSTOMER_ID] = variant_of_row[keep]
        if self._text_index is not None:
            blank = (removed[variant_of_row[keep]] >> self._text_index) & 1 == 1
            for column in self.scorer.featurizer.text_columns:
                variant_events[column] = variant_events[column].mask(blank)
        variant_static = None
        if static is not None:
            variant_static = static.iloc[customer].reset_index(drop=True)
            variant_static[CUSTOMER_ID] = np.arange(len(customer))
            for index, group in enumerate(self.groups):
                if group.attribute is not None and group.attribute in variant_static.columns:
                    hidden = (removed >> index) & 1 == 1
                    variant_static[group.attribute] = variant_static[group.attribute].mask(hidden)
        featurizer = self.scorer.featurizer
        texts = self.scorer.texts
        sequences = build_sequences(variant_events, window, featurizer, variant_static, texts)
        empty = np.setdiff1d(np.arange(len(customer)), sequences.customer_ids)
        if len(empty):
            sequences = concat_sequences([sequences, empty_histories(empty, featurizer, variant_static, texts)])
        scored = self.scorer.score_sequences(sequences)
        values = np.empty((len(customer), 2))
        values[scored[CUSTOMER_ID].to_numpy(np.int64)] = scored[[CHURN_PROBABILITY, EXPECTED_SPEND]].to_numpy(
            np.float64
        )
        return values


def _static_rows(static: pd.DataFrame | None, ids: np.ndarray) -> pd.DataFrame | None:
    """The customers table rows of ``ids`` in order (a customer absent from it: every attribute missing)."""
    if static is None or not len(static):
        return None
    table_ids, wanted = static[CUSTOMER_ID], pd.Index(ids)
    if pd.api.types.is_integer_dtype(table_ids.dtype) != pd.api.types.is_integer_dtype(wanted.dtype):
        table_ids, wanted = table_ids.astype(str), wanted.astype(str)
    position = pd.Index(table_ids).get_indexer(wanted)
    rows = static.iloc[np.maximum(position, 0)].reset_index(drop=True)
    attributes = [column for column in rows.columns if column != CUSTOMER_ID]
    rows[attributes] = rows[attributes].mask(np.repeat((position < 0)[:, None], len(attributes), axis=1))
    return rows


# Per customer explained: its variants' rows, the (variants, groups) weights that turn their values into
# effects, and the groups present.
CustomerWeights = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Plan:
    """Which variants to score (``customer``, ``removed`` group bits; removed 0 = the customer as is) and how
    to turn their values into effects per present group."""

    customer: np.ndarray
    removed: np.ndarray
    present: np.ndarray
    weights: list[CustomerWeights]

    def effects(self, values: np.ndarray, ids: np.ndarray, names: list[str]) -> pd.DataFrame:
        rows = []
        for index, (variants, weights, groups) in enumerate(self.weights):
            effect = weights.T @ values[variants]  # (groups, 2)
            rows += [(ids[index], names[g], e[0], e[1]) for g, e in zip(groups, effect, strict=True)]
        return pd.DataFrame(rows, columns=[CUSTOMER_ID, GROUP, CHURN_EFFECT, SPEND_EFFECT])


def _plan(present: np.ndarray, ids: np.ndarray, settings: ExplainSettings) -> _Plan:
    customer, removed, weights = [], [], []
    for index, bits in enumerate(present.tolist()):
        groups = [g for g in range(MAX_GROUPS) if (bits >> g) & 1]
        if settings.method == "occlusion":
            masks = [0] + [1 << g for g in groups]
            w = np.zeros((len(masks), len(groups)))
            w[0, :] = 1.0  # effect = f(x) - f(x without g)
            w[np.arange(1, len(masks)), np.arange(len(groups))] = -1.0
        else:
            masks, w = _shapley_weights(groups, bits, ids[index], settings)
        start = len(customer)
        customer += [index] * len(masks)
        removed += masks
        weights.append((np.arange(start, start + len(masks)), w, groups))
    return _Plan(np.asarray(customer, dtype=np.int64), np.asarray(removed, dtype=np.int64), present, weights)


def _shapley_weights(groups: list[int], present: int, customer_id: Any, settings: ExplainSettings):
    """Removal masks and (masks, groups) weights whose product with the masks' values gives the Shapley
    values: exact over all subsets up to EXACT_SHAPLEY_GROUPS groups, else averaged over random orders
    seeded by the settings' seed and the customer (so a customer's values never depend on its company)."""
    n = len(groups)
    index: dict[int, int] = {}

    def slot(kept: int) -> int:  # kept: bits of the groups kept
        return index.setdefault(present & ~kept, len(index))

    entries: list[tuple[int, int, float]] = []  # (variant slot, group position, weight)
    if n <= EXACT_SHAPLEY_GROUPS:
        for size in range(n):
            weight = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
            for subset in combinations(range(n), size):
                kept = sum(1 << groups[j] for j in subset)
                for i in range(n):
                    if i not in subset:
                        entries += [(slot(kept | 1 << groups[i]), i, weight), (slot(kept), i, -weight)]
    else:
        rng = np.random.default_rng([settings.seed, int(customer_hash(np.array([customer_id]))[0])])
        for _ in range(settings.permutations):
            kept = 0
            for i in rng.permutation(n).tolist():
                entries += [(slot(kept | 1 << groups[i]), i, 1.0 / settings.permutations)]
                entries += [(slot(kept), i, -1.0 / settings.permutations)]
                kept |= 1 << groups[i]
    slot(present)  # the customer as is (removed 0): its value is the score given
    masks = [0] * len(index)
    for mask, position in index.items():
        masks[position] = mask
    weights = np.zeros((len(masks), n))
    for variant, position, weight in entries:
        weights[variant, position] += weight
    return masks, weights


def top_drivers(effects: pd.DataFrame, all_ids: np.ndarray, explained: np.ndarray, top_k: int) -> pd.DataFrame:
    """Per customer of ``all_ids``: whether it was explained, the ``top_k`` groups that raise its churn
    probability most (positive effects only, largest first) and those that add most to its expected spend,
    with their effects; empty names and NaN effects where fewer groups qualify."""
    out = pd.DataFrame({CUSTOMER_ID: all_ids, EXPLAINED: pd.Index(all_ids).isin(explained)})
    position = pd.Index(all_ids).get_indexer(effects[CUSTOMER_ID].to_numpy())
    for kind, column in (("risk", CHURN_EFFECT), ("value", SPEND_EFFECT)):
        raising = effects.assign(_row=position).loc[effects[column].to_numpy() > 0]
        # Largest effect first; ties by the group's order in the long frame (fixed by the model).
        raising = raising.assign(_order=np.arange(len(raising))).sort_values(
            ["_row", column, "_order"], ascending=[True, False, True], kind="stable"
        )
        rank = raising.groupby("_row").cumcount().to_numpy()
        for k in range(1, top_k + 1):
            at = raising.loc[rank == k - 1]
            names = np.full(len(all_ids), "", dtype=object)
            values = np.full(len(all_ids), np.nan)
            names[at["_row"].to_numpy()] = at[GROUP].to_numpy()
            values[at["_row"].to_numpy()] = at[column].to_numpy()
            out[f"{kind}_driver_{k}"] = names
            out[f"{kind}_driver_{k}_effect"] = values
    return out


def _empty_effects() -> pd.DataFrame:
    return pd.DataFrame({CUSTOMER_ID: [], GROUP: pd.Series([], dtype=object), CHURN_EFFECT: [], SPEND_EFFECT: []})


def driver_summary(effects: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The global picture over the customers explained (``predictions`` with retention columns): per group,
    how many have it and its mean absolute churn and spend effects, over everyone (a group a customer lacks
    counts 0) and over the top risk decile; largest mean churn effect first."""
    explained = predictions.loc[predictions[EXPLAINED].to_numpy(), [CUSTOMER_ID, CHURN_RISK_DECILE]]
    top = set(explained.loc[explained[CHURN_RISK_DECILE] == 1, CUSTOMER_ID])
    frame = effects.assign(
        _top=effects[CUSTOMER_ID].isin(top).to_numpy(),
        _churn=effects[CHURN_EFFECT].abs(),
        _spend=effects[SPEND_EFFECT].abs(),
    )
    groups = pd.unique(frame[GROUP])
    everyone = frame.groupby(GROUP, sort=False)
    in_top = frame.loc[frame["_top"]].groupby(GROUP, sort=False)
    summary = pd.DataFrame(
        {
            GROUP: groups,
            "customers_with_group": everyone.size().reindex(groups).to_numpy(),
            "mean_abs_churn_effect": everyone["_churn"].sum().reindex(groups).to_numpy() / max(len(explained), 1),
            "mean_abs_spend_effect": everyone["_spend"].sum().reindex(groups).to_numpy() / max(len(explained), 1),
            "top_risk_decile_mean_abs_churn_effect": in_top["_churn"].sum().reindex(groups, fill_value=0).to_numpy()
            / max(len(top), 1),
            "top_risk_decile_mean_abs_spend_effect": in_top["_spend"].sum().reindex(groups, fill_value=0).to_numpy()
            / max(len(top), 1),
        }
    )
    return summary.sort_values("mean_abs_churn_effect", ascending=False, kind="stable", ignore_index=True)
