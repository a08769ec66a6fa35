"""The observation window: which events are features and which decide the labels."""

from __future__ import annotations

import datetime as dt
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnformer.errors import ConfigError, InputError

NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Window:
    """Features use events before ``feature_end``; labels use ``[feature_end, feature_end + horizon)``.

    A cutoff given as a date (``2024-06-30``) means the end of that day, so events on the cutoff date
    are features; a cutoff with a time of day is inclusive of that instant.
    """

    feature_end: pd.Timestamp
    horizon_days: float
    # The cutoff as the user wrote it, for messages (``feature_end`` of a date is the next midnight).
    given: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.given or str(self.feature_end)

    @classmethod
    def from_cutoff(cls, cutoff: str | dt.date | pd.Timestamp, horizon_days: float = 90) -> Window:
        horizon = _horizon_days(horizon_days)
        if isinstance(cutoff, numbers.Number):
            # pd.Timestamp(20240630) is 20 ms after 1970: a number here is a typo for a date, never meant.
            raise InputError(f"cutoff {cutoff!r} is a number; write it as a date, YYYY-MM-DD")
        try:
            stamp = pd.Timestamp(cutoff)
        except (ValueError, TypeError) as error:
            raise InputError(f"cutoff {cutoff!r} is not a date or timestamp (use YYYY-MM-DD)") from error
        if stamp is pd.NaT:
            raise InputError("cutoff is missing")
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        is_date = stamp == stamp.normalize() and (
            (isinstance(cutoff, dt.date) and not isinstance(cutoff, dt.datetime))
            or (isinstance(cutoff, str) and len(cutoff.strip()) <= 10)
        )
        end = stamp + pd.Timedelta(days=1) if is_date else stamp + pd.Timedelta(1, "ns")
        return cls(feature_end=end.as_unit("ns"), horizon_days=horizon, given=str(cutoff).strip())

    @property
    def feature_end_ns(self) -> int:
        return int(self.feature_end.value)

    @property
    def label_end_ns(self) -> int:
        return self.feature_end_ns + round(self.horizon_days * NS_PER_DAY)


@dataclass(frozen=True)
class HorizonGrid:
    """The horizons (days after the cutoff) a model predicts on, sorted; ``main`` is one of them: the one
    ``churn_probability`` and ``expected_spend`` answer, and the one segments and deciles use."""

    days: tuple[float, ...]
    main: float

    @classmethod
    def of(cls, horizons: Sequence[object] | None, main: object) -> HorizonGrid:
        """``data.horizons_days`` with ``data.horizon_days`` (the main horizon) added when absent."""
        main_days = _horizon_days(main)
        given = [] if horizons is None else list(horizons)
        days = [_horizon_days(value, "data.horizons_days") for value in given]
        if days != sorted(days) or len(set(days)) != len(days):
            raise ConfigError(f"data.horizons_days must be sorted and distinct, got {given}")
        return cls(tuple(sorted({*days, main_days})), main_days)

    @property
    def main_index(self) -> int:
        return self.days.index(self.main)

    def without(self, unobserved: Sequence[float]) -> HorizonGrid:
        return HorizonGrid(tuple(d for d in self.days if d not in unobserved), self.main)


def log_end_ns(stamps: np.ndarray) -> int:
    """Where a log is taken to end: the end of the day of its last event (logs of dates, such as CDNOW's,
    hold that day whole). A horizon window ending later is not observed: its labels are unknown."""
    last = pd.Timestamp(int(np.asarray(stamps, dtype="datetime64[ns]").view(np.int64).max()))
    return int((last.normalize() + pd.Timedelta(days=1)).value)


def _horizon_days(value: object, key: str = "horizon_days") -> float:
    """A finite number of days > 0: labels need a window of positive length that ends."""
    try:
        days = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        days = math.nan
    if not (math.isfinite(days) and days > 0):
        raise ConfigError(f"{key} must be a finite number of days > 0, got {value!r}")
    return days


def require_events_before(stamps: pd.Series | np.ndarray, window: Window, where: str) -> None:
    """Stop when no event time in ``stamps`` precedes the feature end: nobody to train on or score at the cutoff.

    An empty result would look like a successful run; a cutoff before the whole log is a mistake in the
    cutoff (or the file), so the message gives the span of the log to pick a better one. ``stamps`` may be
    a whole timestamp column, or the first and last times of each chunk of a log read in chunks.
    """
    values = np.asarray(stamps, dtype="datetime64[ns]").view(np.int64)
    if len(values) and values.min() >= window.feature_end_ns:
        first, last = pd.Timestamp(values.min()), pd.Timestamp(values.max())
        raise InputError(
            f"{where}: no events up to the cutoff {window}; the log starts at {first} (and ends at {last}). "
            "Choose a later cutoff."
        )
