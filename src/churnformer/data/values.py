"""Per-column value encoders of the featurization state: a vocabulary per categorical column, a scaler per
numeric one. JSON-able dataclasses, fitted on training data and applied unchanged at scoring."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

PADDING_ID = 0
UNKNOWN_ID = 1
NUMERIC_CLIP = 10.0


@dataclass
class CategoricalEncoder:
    """Maps values to ids: 0 is padding, 1 is unknown (unseen, rare or missing), 2.. the vocabulary."""

    name: str
    vocabulary: list[str]

    @property
    def cardinality(self) -> int:
        return len(self.vocabulary) + 2

    @classmethod
    def fit(cls, name: str, values: pd.Series, max_size: int, min_count: int) -> CategoricalEncoder:
        codes, uniques = pd.factorize(pd.Series(values), use_na_sentinel=True)
        counts = pd.Series(np.bincount(codes[codes >= 0], minlength=len(uniques)), index=category_labels(uniques))
        counts = counts.groupby(level=0).sum()
        counts = counts[counts >= min_count]
        # Frequency first, then value, so the vocabulary does not depend on row order.
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:max_size]
        return cls(name=name, vocabulary=[value for value, _ in ordered])

    def encode(self, values: pd.Series | np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, int]:
        """Ids of ``values[rows]`` (int32) and how many non-missing ones fell into the unknown bucket.

        The column is factorized whole and then indexed: for category and Arrow string columns that
        is far cheaper than materializing the selected values as Python objects first.
        """
        codes, uniques = pd.factorize(values if isinstance(values, pd.Series) else pd.Series(values))
        if rows is not None:
            codes = codes[rows]
        lookup = pd.Index(self.vocabulary).get_indexer(category_labels(uniques))
        lookup = np.append(np.where(lookup >= 0, lookup + 2, UNKNOWN_ID), UNKNOWN_ID).astype(np.int32)
        ids = lookup[codes]  # code -1 (missing) takes the appended unknown id
        unseen = int(np.count_nonzero((codes >= 0) & (ids == UNKNOWN_ID)))
        return ids, unseen


def category_labels(uniques: pd.Index | np.ndarray) -> pd.Index:
    """Category values as strings; integral floats print as integers, so 10.0 (an int column that also
    holds NaN) and 10 are the same category in training and scoring."""
    uniques = pd.Index(uniques)
    if pd.api.types.is_float_dtype(uniques.dtype):
        values = uniques.to_numpy(dtype="float64")
        whole = np.isfinite(values) & (values == np.round(values))
        return pd.Index([str(int(v)) if w else str(v) for v, w in zip(values, whole, strict=True)])
    return uniques.astype(str)


@dataclass
class NumericScaler:
    """Standardizes with training mean and std, clips to +-NUMERIC_CLIP; missing -> 0 plus an indicator."""

    name: str
    mean: float
    std: float

    @classmethod
    def fit(cls, name: str, values: pd.Series) -> NumericScaler:
        finite = numeric_values(values)
        finite = finite[np.isfinite(finite)]
        mean = float(finite.mean()) if len(finite) else 0.0
        std = float(finite.std()) if len(finite) > 1 else 1.0
        return cls(name=name, mean=mean, std=std if std > 0 else 1.0)

    def encode(self, values: pd.Series | np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scaled ``values[rows]`` and their missing indicator, both float32."""
        raw = numeric_values(values, rows)
        missing = ~np.isfinite(raw)
        scaled = np.clip((raw - self.mean) / self.std, -NUMERIC_CLIP, NUMERIC_CLIP)
        scaled[missing] = 0.0
        return scaled.astype(np.float32), missing.astype(np.float32)


def numeric_values(values: pd.Series | np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """``values[rows]`` as float64; anything that is not a number becomes NaN (a missing value)."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        series = pd.to_numeric(series, errors="coerce")
    raw = series.to_numpy(dtype="float64", na_value=np.nan)
    return raw if rows is None else raw[rows]
