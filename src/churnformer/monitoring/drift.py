"""How far one distribution has moved from another: the population stability index (PSI) and the
Jensen-Shannon distance, over bins or categories counted in both, with a status per quantity.

PSI = sum over bins of (current share - reference share) * ln(current share / reference share), shares floored
at ``SHARE_FLOOR`` so an empty bin counts as rare rather than infinite (the usual practice: a bin of zero is a
bin the sample did not reach). The customary reading: below 0.1 stable, 0.1-0.2 worth a look, above 0.2 a
shift. The Jensen-Shannon distance (base 2) lies in [0, 1] and is symmetric: 0 for equal distributions, 1 for
disjoint ones.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from churnformer.errors import ConfigError

SHARE_FLOOR = 1e-4
OK, WARN, ALERT = "ok", "warn", "alert"


@dataclass(frozen=True)
class Thresholds:
    """``thresholds.*`` of ``churnformer-monitor``: PSI at or above ``psi_warn`` warns, at or above
    ``psi_alert`` alerts (exit status 3)."""

    psi_warn: float = 0.1
    psi_alert: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.psi_warn <= self.psi_alert:
            raise ConfigError(
                f"thresholds: need 0 <= psi_warn <= psi_alert, got psi_warn={self.psi_warn}, psi_alert={self.psi_alert}"
            )

    def status(self, psi: float) -> str:
        return ALERT if psi >= self.psi_alert else WARN if psi >= self.psi_warn else OK


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts, dtype=np.float64)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """The population stability index of ``current`` counts against ``reference`` counts, bin for bin."""
    p = np.maximum(shares(np.asarray(reference, dtype=np.float64)), SHARE_FLOOR)
    q = np.maximum(shares(np.asarray(current, dtype=np.float64)), SHARE_FLOOR)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """The Jensen-Shannon distance (base 2) between the two count vectors' distributions."""
    p, q = shares(np.asarray(reference, dtype=np.float64)), shares(np.asarray(current, dtype=np.float64))
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        held = a > 0
        return float(np.sum(a[held] * np.log2(a[held] / m[held])))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


@dataclass(frozen=True)
class Shift:
    """One quantity compared: its bins (or categories) with the reference's and the current run's shares."""

    name: str
    kind: str  # "output" or "input"
    bins: list[str]
    reference_share: list[float]
    current_share: list[float]
    psi: float
    js_distance: float
    status: str

    @classmethod
    def of(
        cls, name: str, kind: str, reference: dict[str, float], current: dict[str, float], thresholds: Thresholds
    ) -> Shift:
        """From counts (or shares) by bin; a bin present in one side only counts 0 in the other."""
        bins = list(reference) + [key for key in current if key not in reference]
        r = np.array([reference.get(key, 0.0) for key in bins], dtype=np.float64)
        c = np.array([current.get(key, 0.0) for key in bins], dtype=np.float64)
        value = psi(r, c)
        return cls(
            name=name,
            kind=kind,
            bins=bins,
            reference_share=[round(float(v), 6) for v in shares(r)],
            current_share=[round(float(v), 6) for v in shares(c)],
            psi=round(value, 6),
            js_distance=round(js_distance(r, c), 6),
            status=thresholds.status(value),
        )


def bin_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner edges at the reference's quantiles (deciles by default), repeated edges merged: a column with
    few distinct values gets fewer, wider bins."""
    levels = np.arange(1, bins) / bins
    return np.unique(np.quantile(reference, levels)) if len(reference) else np.zeros(0)


def binned_counts(values: np.ndarray, edges: np.ndarray) -> dict[str, float]:
    """Counts of ``values`` in the bins the inner ``edges`` make (``< e1``, ``[e1, e2)``, ..., ``>= ek``)."""
    index = np.searchsorted(edges, values, side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return {label: float(count) for label, count in zip(bin_labels(edges), counts, strict=True)}


def bin_labels(edges: np.ndarray) -> list[str]:
    """The bins' names, with as many significant digits as it takes to tell close edges apart."""
    if not len(edges):
        return ["all"]
    for digits in (4, 6, 8, 12, 17):
        text = [f"{edge:.{digits}g}" for edge in edges]
        if len(set(text)) == len(text):
            break
    inner = [f"[{low}, {high})" for low, high in itertools.pairwise(text)]
    return [f"< {text[0]}", *inner, f">= {text[-1]}"]
