"""The observation window: which events are features and which decide the labels."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from churnformer.data.events import EventLogError

NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Window:
    """Features use events before ``feature_end``; labels use ``[feature_end, feature_end + horizon)``.

    A cutoff given as a date (``2024-06-30``) means the end of that day, so events on the cutoff date
    are features; a cutoff with a time of day is inclusive of that instant.
    """

    feature_end: pd.Timestamp
    horizon_days: float

    @classmethod
    def from_cutoff(cls, cutoff: str | dt.date | pd.Timestamp, horizon_days: float = 90) -> Window:
        if horizon_days is None or not horizon_days > 0:
            raise EventLogError(f"horizon_days must be > 0, got {horizon_days!r}")
        try:
            stamp = pd.Timestamp(cutoff)
        except (ValueError, TypeError) as error:
            raise EventLogError(f"cutoff {cutoff!r} is not a date or timestamp (use YYYY-MM-DD)") from error
        if stamp is pd.NaT:
            raise EventLogError("cutoff is missing")
        if stamp.tzinfo is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        is_date = stamp == stamp.normalize() and (
            (isinstance(cutoff, dt.date) and not isinstance(cutoff, dt.datetime))
            or (isinstance(cutoff, str) and len(cutoff.strip()) <= 10)
        )
        end = stamp + pd.Timedelta(days=1) if is_date else stamp + pd.Timedelta(1, "ns")
        return cls(feature_end=end.as_unit("ns"), horizon_days=float(horizon_days))

    @property
    def feature_end_ns(self) -> int:
        return int(self.feature_end.value)

    @property
    def label_end_ns(self) -> int:
        return self.feature_end_ns + round(self.horizon_days * NS_PER_DAY)
