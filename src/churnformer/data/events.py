"""Event-log contract: read a CSV, Parquet file or DataFrame into one validated, standard frame.

Everything downstream (labels, featurization, scoring) reads only the standard frame, so the rules
for column names, id types and timestamps live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnformer.errors import ChurnformerError

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
AMOUNT = "amount"
STANDARD_COLUMNS = (CUSTOMER_ID, TIMESTAMP, AMOUNT)


class EventLogError(ChurnformerError):
    """Input that does not satisfy the event-log contract; the message names file, column and rows."""


@dataclass(frozen=True)
class ColumnMapping:
    """Names of the required columns in the user's file (they are renamed to the standard names)."""

    customer_id: str = CUSTOMER_ID
    timestamp: str = TIMESTAMP
    amount: str = AMOUNT


def read_table(path: str | Path, id_column: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read CSV or Parquet by file extension.

    CSV ids are read as strings so that ids such as ``00042`` come back unchanged in outputs.
    """
    path = Path(path)
    if not path.is_file():
        raise EventLogError(f"{path}: file not found")
    suffixes = "".join(path.suffixes[-2:]).lower()
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path, columns=list(columns) if columns else None)
        elif suffixes.endswith((".csv", ".csv.gz", ".tsv")):
            sep = "\t" if ".tsv" in suffixes else ","
            frame = pd.read_csv(path, sep=sep, usecols=columns, dtype={id_column: str})
        else:
            raise EventLogError(f"{path}: unknown file type; use .csv, .csv.gz, .tsv or .parquet")
    except EventLogError:
        raise
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise EventLogError(f"{path}: cannot read as {path.suffix or 'table'}: {error}") from error
    return frame


def _first_rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"{len(rows)} row(s), first at row index {shown}"


def parse_timestamps(values: pd.Series, where: str) -> pd.Series:
    """Parse datetimes, dates, ISO-8601 strings or epoch seconds into tz-naive UTC datetime64[ns].

    Time-zone-aware values (including strings with different offsets) are converted to UTC; naive
    values are taken to be UTC already.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        parsed = values.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = values
    elif pd.api.types.is_bool_dtype(values.dtype):
        raise EventLogError(f"{where}: boolean values are not timestamps")
    elif pd.api.types.is_numeric_dtype(values.dtype):
        seconds = values.astype("float64")
        bad = ~np.isfinite(seconds.to_numpy())
        if bad.any():
            raise EventLogError(f"{where}: missing or non-finite epoch seconds in {_first_rows(bad)}")
        parsed = pd.to_datetime(seconds, unit="s")
    else:
        try:
            parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
        except (ValueError, TypeError):
            # Mixed python objects (dates next to strings): element-wise parse.
            parsed = pd.to_datetime(values.astype(str), utc=True, format="mixed", errors="coerce")
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    parsed = parsed.astype("datetime64[ns]")
    missing = parsed.isna().to_numpy()
    if missing.any():
        example = values[missing].iloc[0]
        raise EventLogError(
            f"{where}: missing or unparseable timestamps in {_first_rows(missing)} "
            f"(e.g. {example!r}); expected datetime, date, ISO-8601 string or epoch seconds"
        )
    return parsed


def check_customer_ids(ids: pd.Series, where: str) -> pd.Series:
    """Ids must be all strings or all integers, never missing: they are echoed back as given."""
    missing = ids.isna().to_numpy()
    if missing.any():
        raise EventLogError(f"{where}: missing customer ids in {_first_rows(missing)}")
    if pd.api.types.is_integer_dtype(ids.dtype) or pd.api.types.is_string_dtype(ids.dtype):
        if ids.dtype == object:
            kinds = ids.map(type).astype(str)
            if kinds.nunique() > 1:
                counts = kinds.value_counts().to_dict()
                raise EventLogError(f"{where}: customer ids mix types {counts}; use one type")
        return ids
    if pd.api.types.is_float_dtype(ids.dtype):
        whole = np.isclose(ids.to_numpy() % 1, 0)
        if whole.all():
            return ids.astype("int64")
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return check_customer_ids(ids.astype(ids.cat.categories.dtype), where)
    raise EventLogError(f"{where}: customer ids must be strings or integers, got dtype {ids.dtype}")


def _parse_amounts(values: pd.Series, where: str) -> pd.Series:
    if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        numeric = pd.to_numeric(values, errors="coerce")
        bad = (numeric.isna() & values.notna()).to_numpy()
        if bad.any():
            example = values[bad].iloc[0]
            raise EventLogError(f"{where}: non-numeric amounts in {_first_rows(bad)} (e.g. {example!r})")
        values = numeric
    amounts = values.astype("float64")
    bad = ~np.isfinite(amounts.to_numpy())
    if bad.any():
        raise EventLogError(
            f"{where}: missing or infinite amounts in {_first_rows(bad)}; use 0 for non-monetary events"
        )
    return amounts


def load_events(
    source: str | Path | pd.DataFrame, mapping: ColumnMapping | None = None, name: str | None = None
) -> pd.DataFrame:
    """Load an event log into the standard frame.

    Returns a frame with ``customer_id`` (as given), ``timestamp`` (tz-naive UTC datetime64[ns]),
    ``amount`` (float64) and every other input column as an event attribute, in input row order.
    """
    mapping = mapping or ColumnMapping()
    if isinstance(source, pd.DataFrame):
        frame, where = source, name or "events DataFrame"
    else:
        frame, where = read_table(source, mapping.customer_id), name or str(source)
    required = {mapping.customer_id: CUSTOMER_ID, mapping.timestamp: TIMESTAMP, mapping.amount: AMOUNT}
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise EventLogError(
            f"{where}: required column(s) {missing} not found; columns present: {list(frame.columns)}. "
            "Map your names with data.columns.customer_id / timestamp / amount."
        )
    clashes = [c for c in STANDARD_COLUMNS if c in frame.columns and c not in required]
    if clashes:
        raise EventLogError(f"{where}: column(s) {clashes} clash with the standard names after mapping")
    if len(frame) == 0:
        raise EventLogError(f"{where}: no events (the table is empty)")
    frame = frame.rename(columns=required)
    attributes = [c for c in frame.columns if c not in STANDARD_COLUMNS]
    return pd.DataFrame(
        {
            CUSTOMER_ID: check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {mapping.customer_id!r}"),
            TIMESTAMP: parse_timestamps(frame[TIMESTAMP], f"{where}, column {mapping.timestamp!r}"),
            AMOUNT: _parse_amounts(frame[AMOUNT], f"{where}, column {mapping.amount!r}"),
            **{c: frame[c] for c in attributes},
        }
    ).reset_index(drop=True)


def load_customers(
    source: str | Path | pd.DataFrame, customer_id: str = CUSTOMER_ID, name: str | None = None
) -> pd.DataFrame:
    """Load the optional static customer table: one row per customer, other columns are attributes."""
    if isinstance(source, pd.DataFrame):
        frame, where = source, name or "customers DataFrame"
    else:
        frame, where = read_table(source, customer_id), name or str(source)
    if customer_id not in frame.columns:
        raise EventLogError(f"{where}: customer id column {customer_id!r} not found in {list(frame.columns)}")
    frame = frame.rename(columns={customer_id: CUSTOMER_ID})
    frame[CUSTOMER_ID] = check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {customer_id!r}")
    duplicated = frame[CUSTOMER_ID].duplicated().to_numpy()
    if duplicated.any():
        raise EventLogError(f"{where}: duplicate customer ids in {_first_rows(duplicated)}")
    return frame.reset_index(drop=True)
