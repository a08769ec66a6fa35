"""What the entry points print: third-party noise filtered out, counts and reasons in words.

The console is for the person who launched the job: errors, warnings that need action, and one summary
line per job. Library chatter (Lightning's hardware report and advertisements, deprecation notices of one
library about another) goes to the run's log file at most, never in front of an error message.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import TextIO

# Log records that advertise a product rather than report on the job (Lightning's "💡 Tip: ... litlogger").
ADVERTISEMENT_MARKERS = ("💡 Tip", "litlogger", "litmodels", "lightning.ai")

# Warnings about library internals that a user can do nothing about (regex of the message start).
KNOWN_HARMLESS_WARNINGS = (
    # pytorch-lightning calls a torch pytree API that torch 2.13 deprecates.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Small runs have fewer batches per epoch than the step-logging interval; epoch metrics are unaffected.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # Epoch metrics are computed over every rank by torchmetrics and logged already reduced (see
    # churnformer.training.module): Lightning cannot know that and suggests sync_dist, which would add collectives.
    r"It is recommended to use `self\.log\(.*sync_dist=True\)` when logging on epoch level",
    # Lightning's DDP on CPU: a message about the gloo backend it picked itself.
    r"The `srun` command is available on your system but is not used",
    # PySpark 4 warns on every Arrow conversion under pandas 3; the conversions churnformer.spark makes are
    # checked bit for bit against the local job under pandas 3 (tests/test_spark.py).
    r"PySpark does not yet fully support pandas >= 3\.0\.0",
)

# Reasons a customer is not scored (rejects file, summary JSON keys) and how the console says them.
REASON_WORDS = {"no_event_before_cutoff": "no event before the cutoff"}


class CurrentStderrHandler(logging.StreamHandler):
    """A console handler that writes to whatever ``sys.stderr`` is when a record comes, not the stream it was
    configured with: Hydra configures logging while the entry point still holds stderr back (cli.HeldStderr)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler.__init__ sets it; the property decides
        pass


class DropAdvertisements(logging.Filter):
    """Logging filter (used by ``conf/hydra/job_logging/churnformer.yaml``) that drops advertisements."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(marker in message for marker in ADVERTISEMENT_MARKERS)


# The loggers Lightning reports through (rank_zero_info), which print on their own when no logging is configured
# (the Python API in a notebook); a filter on a logger applies to what is logged to it by name.
LIBRARY_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


def silence_known_noise() -> None:
    """Ignore :data:`KNOWN_HARMLESS_WARNINGS` and drop the libraries' advertisements for the rest of the
    process (entry points call this first; the console scripts' logging config drops them too)."""
    for pattern in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropAdvertisements) for f in logger.filters):
            logger.addFilter(DropAdvertisements())


def reason_in_words(reason: str) -> str:
    """``no_event_before_cutoff`` -> ``no event before the cutoff``."""
    return REASON_WORDS.get(reason, reason.replace("_", " "))


def counts_in_words(counts: dict[str, int]) -> str:
    """``{"no_event_before_cutoff": 1992}`` -> ``"1,992 no event before the cutoff"``."""
    return ", ".join(f"{count:,} {reason_in_words(reason)}" for reason, count in counts.items())
