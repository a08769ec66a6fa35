"""What a scoring job writes and prints: the predictions, the rejects, the summary JSON and one line.

Every file is written under a hidden temporary name and renamed into place only when complete; the
predictions come last, so their presence means the job completed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from churnformer.console import counts_in_words, reason_in_words
from churnformer.errors import ConfigError
from churnformer.files import write_atomically
from churnformer.serving.input_profile import add_profiles


@dataclass
class ScoringSummary:
    """Where every input row and customer went; scored + not scored = customers seen, always."""

    cutoff: str = ""  # as given to the job; with horizon_days: what churnformer-evaluate checks the run against
    horizon_days: float = 0.0  # the model's main horizon
    scored_at: str = ""  # when the job finished (UTC, ISO 8601)
    rows_read: int = 0
    customers_seen: int = 0
    customers_scored: int = 0
    customers_not_scored: dict[str, int] = field(default_factory=dict)
    events_ignored: dict[str, int] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    customers_without_static: int = 0
    # Models with data.features.group_by: rows that joined another row's group event (a basket's other items).
    events_grouped: int = 0
    # Models with text features: distinct texts, of them truncated to the encoder's limit, with bytes that
    # were not UTF-8 (replaced when read) and taken from text_cache (not embedded). Each text counts once per job.
    texts: dict[str, int] = field(default_factory=dict)
    # The scored customers' input, in fixed bins (churnformer.serving.input_profile): what churnformer-monitor compares.
    input_profile: dict[str, dict[str, int]] = field(default_factory=dict)
    provider: str = ""
    engine: str = "local"  # local: churnformer-predict's own process; spark: churnformer.spark
    buckets: int = 0  # groups of customers, each scored by one Python call (engine spark)
    shard: str = "0/1"
    partitions: int = 0  # spill partitions on disk; 0: scored in memory
    read_s: float = 0.0  # reading the log (every chunk of it, when spilled)
    spill_s: float = 0.0  # hashing ids for shards and partitions, writing and reading back spill files
    featurize_s: float = 0.0
    infer_s: float = 0.0
    customers_explained: int = 0
    explain_s: float = 0.0  # re-featurizing and scoring for the explanations
    wall_s: float = 0.0

    def add(self, other: ScoringSummary) -> None:
        """Accumulate the counts of another part (job shard or spill partition) of the same job."""
        self.cutoff, self.horizon_days = self.cutoff or other.cutoff, self.horizon_days or other.horizon_days
        self.rows_read += other.rows_read
        self.customers_seen += other.customers_seen
        self.customers_scored += other.customers_scored
        for mine, theirs in (
            (self.customers_not_scored, other.customers_not_scored),
            (self.events_ignored, other.events_ignored),
            (self.unknown_categories, other.unknown_categories),
            (self.texts, other.texts),
        ):
            for key, value in theirs.items():
                mine[key] = mine.get(key, 0) + value
        add_profiles(self.input_profile, other.input_profile)
        self.customers_without_static += other.customers_without_static
        self.events_grouped += other.events_grouped
        self.featurize_s += other.featurize_s
        self.infer_s += other.infer_s
        self.customers_explained += other.customers_explained
        self.explain_s += other.explain_s


@dataclass
class ScoringResult:
    predictions: pd.DataFrame
    rejects: pd.DataFrame
    summary: ScoringSummary
    # With explanations: every present driver group's effects per customer explained (long format).
    effects: pd.DataFrame | None = None


def check_output_path(path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in {".parquet", ".pq", ".csv"}:
        raise ConfigError(f"output={path}: the output must end in .parquet or .csv")
    return path


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Parquet or CSV by extension, written atomically."""
    path = check_output_path(path)
    if path.suffix.lower() == ".csv":
        return write_atomically(path, lambda partial: frame.to_csv(partial, index=False))
    return write_atomically(path, lambda partial: frame.to_parquet(partial, index=False))


def write_result(result: ScoringResult, output: str | Path) -> dict[str, Path]:
    """Predictions at ``output``; ``<output>.rejects.csv`` and ``<output>.summary.json`` beside it, and with
    explanations ``<output>.drivers.parquet`` (every group's effects per customer explained).

    The predictions are written last, so their presence means the job completed.
    """
    output = check_output_path(output)
    result.summary.scored_at = result.summary.scored_at or finished_at()
    paths = {"rejects": write_table(result.rejects, output.with_name(output.name + ".rejects.csv"))}
    if result.effects is not None:
        paths["drivers"] = write_table(result.effects, output.with_name(output.name + ".drivers.parquet"))
    summary_text = json.dumps(asdict(result.summary), indent=2)
    paths["summary"] = write_atomically(
        output.with_name(output.name + ".summary.json"), lambda p: p.write_text(summary_text)
    )
    return {"predictions": write_table(result.predictions, output), **paths}


def finished_at() -> str:
    """Now, as a scoring summary's ``scored_at``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def describe(summary: ScoringSummary) -> str:
    """The one-line summary a batch job prints (the full accounting is in the summary JSON)."""
    rate = summary.customers_scored / summary.wall_s if summary.wall_s else float("nan")
    where = f" (shard {summary.shard})" if summary.shard != "0/1" else ""
    spill = f", {summary.partitions} spill partitions" if summary.partitions else ""
    engine = f", Spark, {summary.buckets} buckets" if summary.engine == "spark" else ""
    explained = (
        f"; {summary.customers_explained:,} explained in {summary.explain_s:.1f} s"
        if summary.customers_explained
        else ""
    )
    grouped = f"; {summary.events_grouped:,} events grouped into others" if summary.events_grouped else ""
    return (
        f"scored {summary.customers_scored:,} of {summary.customers_seen:,} customers{where}"
        f"{not_scored_words(summary.customers_not_scored)} from {summary.rows_read:,} events in "
        f"{summary.wall_s:.1f} s ({rate:,.0f} customers/s) on {summary.provider}{engine}{spill}{explained}"
        f"{grouped}{text_words(summary.texts)}"
    )


def text_words(texts: dict[str, int]) -> str:
    """``; 385 distinct texts embedded (2 truncated, 1 with bytes that were not UTF-8)``, or nothing."""
    if not texts:
        return ""
    notes = [f"{texts['truncated']:,} truncated"] if texts.get("truncated") else []
    if texts.get("replaced_bytes"):
        notes.append(f"{texts['replaced_bytes']:,} with bytes that were not UTF-8")
    distinct, cached = texts.get("distinct", 0), texts.get("cached", 0)
    counted = f"{distinct:,} distinct texts, {distinct - cached:,} embedded and {cached:,} from text_cache"
    return f"; {counted if cached else f'{distinct:,} distinct texts embedded'}" + (
        f" ({', '.join(notes)})" if notes else ""
    )


def not_scored_words(reasons: dict[str, int]) -> str:
    """`` (1,992 not scored: no event before the cutoff)``, or nothing when every customer was scored."""
    total = sum(reasons.values())
    if not total:
        return ""
    why = reason_in_words(next(iter(reasons))) if len(reasons) == 1 else counts_in_words(reasons)
    return f" ({total:,} not scored: {why})"
