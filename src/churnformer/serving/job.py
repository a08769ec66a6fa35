"""The ``churnformer-predict`` batch job: an event log of any size in, one row per customer out.

Peak memory follows ``memory_budget_mb``, not the size of the log: a log that fits is scored in one
block; a larger one is read in chunks (only the columns the model needs) and its customers are
hash-partitioned into Parquet spill files in a temporary directory, each then featurized and scored
on its own. ``shard=i/N`` scores one hash shard of the customers, so N independent jobs cover a log
and their outputs concatenate to the full result. Every customer in the input (or the shard) is
either scored or listed in the rejects file with the reason.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from churnformer.data.events import CUSTOMER_ID, TIMESTAMP, ColumnMapping, load_customers
from churnformer.data.window import require_events_before
from churnformer.errors import ConfigError
from churnformer.memory import release_memory, reuse_freed_memory
from churnformer.model_card import summary_line as card_summary
from churnformer.serving.output import ScoringResult, ScoringSummary, check_output_path, describe, write_result
from churnformer.serving.partition import (
    PEAK_BYTES_PER_EVENT,
    Shard,
    SpillWriter,
    bytes_for_events,
    customer_hash,
    keep_shard,
    partitions_needed,
    read_partition,
    remove_orphaned_spill_directories,
    spill_directory,
    streams_within,
)
from churnformer.serving.predictor import Predictor
from churnformer.serving.settings import ScoringSettings

T = TypeVar("T")
# Chunks are a quarter of what one partition may hold, so reading never dominates the peak.
CHUNK_SHARE = 4
MIN_CHUNK_ROWS = 50_000


def score_log(
    predictor: Predictor,
    events: str | Path,
    cutoff: str,
    customers: str | Path | None = None,
    columns: ColumnMapping | Mapping[str, str | None] | None = None,
    shard: Shard | None = None,
    chunk_rows: int | None = None,
) -> ScoringResult:
    """Score an event-log file within the predictor's ``memory_budget_mb`` (spilling to its ``spill_dir``),
    explaining what its settings ask, partition by partition; see the module docstring.

    ``chunk_rows`` (default: derived from the budget) is the number of input rows read at a time when
    the log does not fit.
    """
    started = time.perf_counter()
    memory_budget_mb, spill_dir, progress = (
        predictor.settings.memory_budget_mb,
        predictor.settings.spill_dir,
        predictor.settings.progress,
    )
    shard = shard or Shard()
    columns = predictor.column_mapping(columns)
    window = predictor.window(cutoff)
    source = predictor.open_events(events, columns)
    static = load_customers(customers, columns.customer_id) if customers is not None else None
    rows = source.estimated_rows()
    clock = Stopwatch()
    if partitions_needed(rows, memory_budget_mb, predictor.streams) == 1:  # the whole file, whatever the shard
        with clock("read"):
            frame = source.read_all()
        require_events_before(frame[TIMESTAMP], window, str(source.path))
        with clock("spill"):
            mine = keep_shard(frame, shard)
        other_shards, spilled = len(frame) - len(mine), 0
        del frame
        parts = [predictor.score_frame(mine, window, static, progress)]
    else:
        available = bytes_for_events(memory_budget_mb, predictor.streams)
        chunk_rows = chunk_rows or max(MIN_CHUNK_ROWS, int(available / PEAK_BYTES_PER_EVENT / CHUNK_SHARE))
        spilled = partitions_needed(rows // shard.count, memory_budget_mb, predictor.streams)  # this shard only
        parts, other_shards = [], 0
        removed, size = remove_orphaned_spill_directories(spill_dir)
        if removed:
            print(
                f"removed {removed} spill director{'y' if removed == 1 else 'ies'} ({size / 2**20:,.0f} MB) left "
                "by scoring jobs on this machine that did not finish",
                file=sys.stderr,
            )
        with spill_directory(spill_dir) as directory:
            writer = SpillWriter(directory, spilled, predictor.featurizer)

            def spill(chunk: pd.DataFrame) -> int:
                """Write this shard's rows of ``chunk`` to their partitions; the count of other shards' rows."""
                hashes = customer_hash(chunk[CUSTOMER_ID])
                mine = shard.contains(hashes)
                writer.write(chunk.loc[mine], hashes[mine])
                return int((~mine).sum())

            time_range: list[np.datetime64] = []
            # A chunk is hashed and written on a helper thread while the next one is read (Arrow and numpy
            # release the GIL); spill_s is the time the job waits for it.
            with ThreadPoolExecutor(max_workers=1) as spiller:
                pending: Future[int] | None = None
                for chunk in clock.iterate("read", source.chunks(chunk_rows)):
                    time_range += [chunk[TIMESTAMP].min(), chunk[TIMESTAMP].max()]
                    with clock("spill"):
                        other_shards += pending.result() if pending is not None else 0
                    pending = spiller.submit(spill, chunk)
                    del chunk  # at most two chunks in memory: the one being read and the one being spilled
                with clock("spill"):
                    other_shards += pending.result() if pending is not None else 0
                    partitions = writer.close()
            release_memory()
            require_events_before(np.array(time_range, dtype="datetime64[ns]"), window, str(source.path))
            # One step per partition: the customer total is only known once every partition is featurized.
            with tqdm(total=len(partitions), unit="partition", disable=not progress, desc="scoring") as bar:
                scoring_started, scored = time.perf_counter(), 0
                for path in partitions:
                    with clock("spill"):
                        partition = read_partition(path, str(source.path))
                    parts.append(predictor.score_frame(partition, window, static))
                    del partition
                    path.unlink()
                    release_memory()
                    scored += parts[-1].summary.customers_scored
                    bar.set_postfix_str(f"{scored / (time.perf_counter() - scoring_started):,.0f} customers/s")
                    bar.update(1)
    result = combine(parts, predictor)
    result.summary.read_s, result.summary.spill_s = round(clock.seconds["read"], 3), round(clock.seconds["spill"], 3)
    result.summary.shard = str(shard)
    result.summary.partitions = spilled
    if other_shards:
        result.summary.events_ignored["other_shards"] = other_shards
    result.summary.wall_s = round(time.perf_counter() - started, 3)
    return result


class Stopwatch:
    """Seconds spent per named step, summed over every time the step runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - started

    def iterate(self, step: str, items: Iterable[T]) -> Iterator[T]:
        """``items``, with the time spent producing each one counted as ``step``."""
        iterator = iter(items)
        while True:
            with self(step):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item


def check_spill_dir(spill_dir: str | Path | None) -> None:
    """A ``spill_dir`` that is missing or not writable is refused at start-up, not once spilling begins."""
    if spill_dir is None:
        return
    path = Path(spill_dir)
    if not path.is_dir():
        raise ConfigError(f"spill_dir={spill_dir}: no such directory; create it or leave spill_dir unset")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"spill_dir={spill_dir}: the directory is not writable")


def combine(parts: list[ScoringResult], predictor: Predictor) -> ScoringResult:
    """One result from the parts: rows sorted by customer id (the same order whatever the partitioning),
    retention columns from the model's reference percentiles, counts summed."""
    summary = ScoringSummary(provider=predictor.provider)
    for part in parts:
        summary.add(part.summary)
    predictions = pd.concat([p.predictions for p in parts], ignore_index=True) if parts else pd.DataFrame()
    rejects = pd.concat([p.rejects for p in parts], ignore_index=True) if parts else pd.DataFrame()
    predictions = predictions.sort_values(CUSTOMER_ID, kind="stable", ignore_index=True)
    rejects = rejects.sort_values(CUSTOMER_ID, kind="stable", ignore_index=True)
    effects = None
    if parts and parts[0].effects is not None:  # customer by customer, each in its groups' order
        effects = pd.concat([p.effects for p in parts], ignore_index=True)
        effects = effects.sort_values(CUSTOMER_ID, kind="stable", ignore_index=True)
    return ScoringResult(predictor.retention(predictions), rejects, summary, effects)


def run_prediction(config: dict[str, Any]) -> dict[str, Path]:
    """``churnformer-predict engine=local``: the job from a plain config dict (``conf/serving/predict.yaml``)."""
    output = check_output_path(config["output"])
    settings = ScoringSettings.of(config)
    check_spill_dir(settings.spill_dir)
    reuse_freed_memory()
    predictor = Predictor(config["model"], settings, max_streams=streams_within(settings.memory_budget_mb))
    bytes_for_events(settings.memory_budget_mb, predictor.streams)  # a budget below the floor: before any event
    if predictor.card is not None:
        print(card_summary(predictor.card))
    if settings.text_cache is not None and predictor.texts is None:
        print(f"warning: text_cache={settings.text_cache} ignored: {predictor.path} reads no text", file=sys.stderr)
    result = score_log(
        predictor,
        config["events"],
        config["cutoff"],
        customers=config["customers"],
        columns=config["columns"],
        shard=Shard.parse(config["shard"]),
    )
    paths = write_result(result, output)
    if settings.text_cache is not None and predictor.texts is not None:
        predictor.texts.save(settings.text_cache)  # exactly this job's texts: the next job's cache
    print(describe(result.summary))
    print("  ".join(f"{name}: {path}" for name, path in paths.items()))
    return paths
