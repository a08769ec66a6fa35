"""Event-log contract: read a CSV, Parquet file or DataFrame into one validated, standard frame.

Everything downstream (labels, featurization, scoring) reads only the standard frame, so the rules
for column names, id types and timestamps live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnformer.errors import InputError

CUSTOMER_ID = "customer_id"
TIMESTAMP = "timestamp"
AMOUNT = "amount"
STANDARD_COLUMNS = (CUSTOMER_ID, TIMESTAMP, AMOUNT)
# Where a standard frame came from (file name or "events DataFrame"), kept in ``DataFrame.attrs`` so that
# later steps (featurization, labels) can name the file in their messages without being passed it.
SOURCE_ATTR = "churnformer_source"
# No single event moves a trillion in any currency unit; amounts this large are a unit or column mix-up
# (epoch milliseconds are ~1.7e12, ids and phone numbers are larger). Below it, float64 sums over a whole
# history stay exact to the cent (2**53 cents is ~9e13).
MAX_ABS_AMOUNT = 1e12
PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class ColumnMapping:
    """Names of the required columns in the user's files (they are renamed to the standard names): the event
    log's, and a campaign table's (``data.campaigns``, :mod:`churnformer.data.campaigns`; its customer id is
    ``customer_id`` too)."""

    customer_id: str = CUSTOMER_ID
    timestamp: str = TIMESTAMP
    amount: str = AMOUNT
    contacted_at: str = "contacted_at"
    treated: str = "treated"
    offer: str = "offer"
    cost: str = "cost"

    def overridden(self, names: Mapping[str, str | None] | None) -> ColumnMapping:
        """This mapping with the names given in ``names`` replaced; keys left out or null keep this mapping's
        name (``columns.customer_id=user`` on the command line changes the id column only)."""
        names = dict(names or {})
        unknown = sorted(set(names) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(
                f"columns: unknown key(s) {unknown}; the mapped columns are {', '.join(f.name for f in fields(self))}"
            )
        return replace(self, **{key: str(value) for key, value in names.items() if value is not None})


def check_table_file(path: str | Path) -> bool:
    """Check that ``path`` is a non-empty CSV or Parquet file whose bytes match its name; True for Parquet.

    Only the first and last bytes are read, so a CSV named ``.parquet`` (or the reverse) and a truncated
    Parquet file get a message that says so instead of a parser's internals.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffixes = "".join(path.suffixes[-2:]).lower()
    is_parquet = suffixes.endswith((".parquet", ".pq"))
    if not is_parquet and not suffixes.endswith((".csv", ".csv.gz", ".tsv")):
        raise InputError(f"{path}: unknown file type; use .csv, .csv.gz, .tsv or .parquet")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes); expected a header row and events")
    with path.open("rb") as handle:
        head = handle.read(len(PARQUET_MAGIC))
        handle.seek(max(size - len(PARQUET_MAGIC), 0))
        tail = handle.read()
    if is_parquet and head != PARQUET_MAGIC:
        raise InputError(
            f"{path}: not a Parquet file (it does not start with the Parquet magic bytes {PARQUET_MAGIC!r}); "
            "a CSV file must be named .csv"
        )
    if is_parquet and tail != PARQUET_MAGIC:
        raise InputError(f"{path}: corrupt or truncated Parquet file (its footer is missing)")
    if not is_parquet and head == PARQUET_MAGIC:
        raise InputError(f"{path}: this is a Parquet file; name it .parquet")
    return is_parquet


def csv_separator(path: Path) -> str:
    return "\t" if ".tsv" in "".join(path.suffixes[-2:]).lower() else ","


def read_table(
    path: str | Path, id_column: str, columns: Sequence[str] | None = None, dictionary: Sequence[str] = ()
) -> pd.DataFrame:
    """Read CSV or Parquet by file extension, after :func:`check_table_file`.

    CSV ids are read as strings so that ids such as ``00042`` come back unchanged in outputs. Parquet string
    columns named in ``dictionary`` are read dictionary-encoded (pandas categories): one string per distinct
    value instead of one per row.
    """
    path = Path(path)
    is_parquet = check_table_file(path)
    try:
        if is_parquet:
            frame = pd.read_parquet(
                path, columns=list(columns) if columns else None, read_dictionary=list(dictionary) or None
            )
        else:
            frame = read_csv(path, csv_separator(path), id_column, columns)
    except pd.errors.EmptyDataError as error:  # only blank lines: no header to read
        raise InputError(f"{path}: the file has no header row and no events") from error
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: cannot read as {path.suffix or 'table'}: {error}") from error
    return frame


def read_csv(
    source: str | Path | IO[bytes], separator: str, id_column: str, columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """pandas' CSV reader as churnformer reads every CSV (types inferred, missing-value words, quoting),
    ids as strings; also what a Spark job applies to the text columns Spark read, so both read alike. Bytes
    that are not UTF-8 become U+FFFD (free text from old systems holds them; text features count them)."""
    return pd.read_csv(source, sep=separator, usecols=columns, dtype={id_column: str}, encoding_errors="replace")


def first_rows(mask: np.ndarray, limit: int = 5) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"{len(rows)} row(s), first at row index {shown}"


# Largest |epoch seconds| that datetime64[ns] holds (years 1677..2262).
EPOCH_SECONDS_LIMIT = 9.2e9


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
        raise InputError(f"{where}: boolean values are not timestamps")
    elif pd.api.types.is_numeric_dtype(values.dtype):
        seconds = values.astype("float64")
        bad = ~np.isfinite(seconds.to_numpy())
        if bad.any():
            raise InputError(f"{where}: missing or non-finite epoch seconds in {first_rows(bad)}")
        out = (seconds.abs() > EPOCH_SECONDS_LIMIT).to_numpy()
        if out.any():
            raise InputError(
                f"{where}: epoch seconds outside 1677..2262 in {first_rows(out)} (e.g. {values[out].iloc[0]!r}); "
                "milliseconds or microseconds? Convert to seconds or to datetimes"
            )
        parsed = pd.to_datetime(seconds, unit="s")
    else:
        try:
            parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
        except (ValueError, TypeError):
            # Mixed python objects (dates next to strings): element-wise parse.
            parsed = pd.to_datetime(values.astype(str), utc=True, format="mixed", errors="coerce")
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    out = ((parsed < pd.Timestamp.min) | (parsed > pd.Timestamp.max)).to_numpy()
    unparsed = parsed.isna().to_numpy()
    if unparsed.any():  # pandas 2 reads a date it cannot hold as missing; pandas 3 holds it at a coarser unit
        out[unparsed] = outside_nanoseconds(values[unparsed])
    if out.any():
        raise InputError(
            f"{where}: timestamps outside {pd.Timestamp.min:%Y-%m-%d}..{pd.Timestamp.max:%Y-%m-%d} in "
            f"{first_rows(out)} (e.g. {values[out].iloc[0]!r}); a placeholder such as 9999-12-31? Use a missing "
            "event instead"
        )
    parsed = parsed.astype("datetime64[ns]")
    missing = parsed.isna().to_numpy()
    if missing.any():
        example = values[missing].iloc[0]
        raise InputError(
            f"{where}: missing or unparseable timestamps in {first_rows(missing)} "
            f"(e.g. {example!r}); expected datetime, date, ISO-8601 string or epoch seconds"
        )
    return parsed


def outside_nanoseconds(values: pd.Series) -> np.ndarray:
    """Which values are dates (read at day precision) that a nanosecond timestamp cannot hold."""

    def day(value: object) -> np.datetime64:
        try:
            return np.datetime64(str(value).strip()[:10], "D")
        except ValueError:
            return np.datetime64("NaT")

    days = np.array([day(value) for value in values], dtype="datetime64[D]")
    low, high = (np.datetime64(limit.date(), "D") for limit in (pd.Timestamp.min, pd.Timestamp.max))
    return ~np.isnat(days) & ((days < low) | (days > high))


def check_customer_ids(ids: pd.Series, where: str) -> pd.Series:
    """Ids must be all strings or all integers, never missing: they are echoed back as given."""
    missing = ids.isna().to_numpy()
    if missing.any():
        raise InputError(f"{where}: missing customer ids in {first_rows(missing)}")
    if pd.api.types.is_integer_dtype(ids.dtype) or pd.api.types.is_string_dtype(ids.dtype):
        if ids.dtype == object:
            kinds = ids.map(lambda value: type(value).__name__)
            counts = kinds.value_counts()
            if len(counts) > 1:
                # The rarer types are the ones to fix; name where they are.
                odd = (kinds != counts.index[0]).to_numpy()
                mix = ", ".join(f"{count} {kind}" for kind, count in counts.items())
                raise InputError(
                    f"{where}: customer ids mix types ({mix}); the ones not of type {counts.index[0]} are in "
                    f"{first_rows(odd)}; use one type"
                )
        return ids
    if pd.api.types.is_float_dtype(ids.dtype):
        whole = np.isclose(ids.to_numpy() % 1, 0)
        if whole.all():
            return ids.astype("int64")
    if isinstance(ids.dtype, pd.CategoricalDtype):
        return check_customer_ids(ids.astype(ids.cat.categories.dtype), where)
    raise InputError(f"{where}: customer ids must be strings or integers, got dtype {ids.dtype}")


def _parse_amounts(values: pd.Series, where: str) -> pd.Series:
    if not pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype):
        numeric = pd.to_numeric(values, errors="coerce")
        bad = (numeric.isna() & values.notna()).to_numpy()
        if bad.any():
            example = values[bad].iloc[0]
            raise InputError(f"{where}: non-numeric amounts in {first_rows(bad)} (e.g. {example!r})")
        values = numeric
    amounts = values.astype("float64")
    numbers = amounts.to_numpy()
    bad = ~np.isfinite(numbers)
    if bad.any():
        raise InputError(f"{where}: missing or infinite amounts in {first_rows(bad)}; use 0 for non-monetary events")
    extreme = np.abs(numbers) >= MAX_ABS_AMOUNT
    if extreme.any():
        raise InputError(
            f"{where}: amounts of absolute value >= {MAX_ABS_AMOUNT:.0e} in {first_rows(extreme)} "
            f"(e.g. {float(numbers[extreme][0])!r}); no single event is that large: is this the right column and unit?"
        )
    return amounts


def require_columns(present: Sequence[str], mapping: ColumnMapping, where: str) -> dict[str, str]:
    """The renaming ``{user's name: standard name}`` of the required columns, after checking that the
    file has them; ``present`` is every column of the file (not a projection), so the message lists them all."""
    required = {mapping.customer_id: CUSTOMER_ID, mapping.timestamp: TIMESTAMP, mapping.amount: AMOUNT}
    missing = [column for column in required if column not in present]
    if missing:
        mapped = ", ".join(f"{standard}={column!r}" for column, standard in required.items() if column != standard)
        raise InputError(
            f"{where}: required column(s) {missing} not found; columns present: {list(present)}. "
            + (f"The column mapping in use is {mapped}. " if mapped else "")
            + "Map your names with data.columns.customer_id=... / timestamp / amount (training) "
            "or columns.customer_id=... / timestamp / amount (scoring, evaluation)."
        )
    return required


def check_event_columns(present: Sequence[str], mapping: ColumnMapping, where: str) -> dict[str, str]:
    """:func:`require_columns`, and no other column that would take a standard name after renaming."""
    required = require_columns(present, mapping, where)
    clashes = [c for c in STANDARD_COLUMNS if c in present and c not in required]
    if clashes:
        raise InputError(f"{where}: column(s) {clashes} clash with the standard names after mapping")
    return required


def load_events(
    source: str | Path | pd.DataFrame, mapping: ColumnMapping | None = None, name: str | None = None
) -> pd.DataFrame:
    """Load an event log into the standard frame.

    Returns a frame with ``customer_id`` (as given), ``timestamp`` (tz-naive UTC datetime64[ns]),
    ``amount`` (float64) and every other input column as an event attribute, in input row order.
    ``attrs[SOURCE_ATTR]`` names where it came from.
    """
    mapping = mapping or ColumnMapping()
    if isinstance(source, pd.DataFrame):
        frame, where = source, name or "events DataFrame"
    else:
        frame, where = read_table(source, mapping.customer_id), name or str(source)
    required = check_event_columns(list(frame.columns), mapping, where)
    if len(frame) == 0:
        raise InputError(f"{where}: no events (the table is empty: a header and no rows)")
    frame = frame.rename(columns=required)
    attributes = [c for c in frame.columns if c not in STANDARD_COLUMNS]
    events = pd.DataFrame(
        {
            CUSTOMER_ID: check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {mapping.customer_id!r}"),
            TIMESTAMP: parse_timestamps(frame[TIMESTAMP], f"{where}, column {mapping.timestamp!r}"),
            AMOUNT: _parse_amounts(frame[AMOUNT], f"{where}, column {mapping.amount!r}"),
            **{c: frame[c] for c in attributes},
        }
    ).reset_index(drop=True)
    events.attrs[SOURCE_ATTR] = where
    return events


def read_event_chunks(
    path: str | Path,
    mapping: ColumnMapping,
    rows_per_chunk: int,
    columns: Sequence[str] | None = None,
    dictionary: Sequence[str] = (),
) -> Iterator[pd.DataFrame]:
    """An event-log file as standard frames (:func:`load_events`) of at most ``rows_per_chunk`` input rows, in
    file order, so no step needs the whole log in memory: Parquet row batches, CSV chunks. ``columns``: the
    file's columns to read (all by default); ``dictionary``: Parquet string columns to read dictionary-encoded.
    Each chunk's messages name its rows."""
    path = Path(path)
    if not check_table_file(path):
        raw_chunks: Iterator[pd.DataFrame] = iter(
            pd.read_csv(
                path,
                sep=csv_separator(path),
                usecols=columns,
                dtype={mapping.customer_id: str},
                chunksize=rows_per_chunk,
                encoding_errors="replace",  # as read_csv
            )
        )
    else:
        try:
            parquet = pq.ParquetFile(path, read_dictionary=list(dictionary) or None)
        except (pa.ArrowInvalid, OSError) as error:
            raise InputError(f"{path}: not a readable Parquet file ({error})") from error
        batches = parquet.iter_batches(batch_size=rows_per_chunk, columns=list(columns) if columns else None)
        raw_chunks = (batch.to_pandas() for batch in batches)
    first_row = 0
    for raw in raw_chunks:
        name = f"{path} (rows {first_row:,} to {first_row + len(raw) - 1:,} of the data)"
        yield load_events(raw, mapping, name=name)
        first_row += len(raw)


def customer_hash(ids: pd.Series | np.ndarray) -> np.ndarray:
    """A stable 64-bit hash per id (pandas' fixed-key SipHash): the same on every machine and run.

    Numeric ids are hashed as they are. Other ids are factorized first and each distinct id hashed once:
    a Series of Arrow strings (what pandas reads from Parquet) is factorized by Arrow without a Python
    object per row. Either way each id gets the value ``pd.util.hash_array(np.asarray(ids), categorize=True)``
    gives it, so shards stay the same across versions."""
    values = ids if isinstance(ids, pd.Series) else np.asarray(ids)
    if pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_datetime64_any_dtype(values.dtype):
        return pd.util.hash_array(np.asarray(values))
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return pd.util.hash_array(np.asarray(uniques, dtype=object), categorize=False)[codes]


def source_of(frame: pd.DataFrame, default: str) -> str:
    """The file (or DataFrame) a standard frame was loaded from, for messages; ``default`` if unknown."""
    return str(frame.attrs.get(SOURCE_ATTR, default))


def load_customers(
    source: str | Path | pd.DataFrame, customer_id: str = CUSTOMER_ID, name: str | None = None
) -> pd.DataFrame:
    """Load the optional static customer table: one row per customer, other columns are attributes."""
    if isinstance(source, pd.DataFrame):
        frame, where = source, name or "customers DataFrame"
    else:
        frame, where = read_table(source, customer_id), name or str(source)
    if customer_id not in frame.columns:
        raise InputError(f"{where}: customer id column {customer_id!r} not found in {list(frame.columns)}")
    frame = frame.rename(columns={customer_id: CUSTOMER_ID})
    frame[CUSTOMER_ID] = check_customer_ids(frame[CUSTOMER_ID], f"{where}, column {customer_id!r}")
    duplicated = frame[CUSTOMER_ID].duplicated().to_numpy()
    if duplicated.any():
        raise InputError(f"{where}: duplicate customer ids in {first_rows(duplicated)}")
    customers = frame.reset_index(drop=True)
    customers.attrs[SOURCE_ATTR] = where
    return customers
