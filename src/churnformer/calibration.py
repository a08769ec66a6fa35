"""A model's post-hoc calibration as it is stored: ``calibration.json`` in a run directory, and the same JSON in
the model file's metadata (``schema.META_CALIBRATION``). Torch-free: scoring reads its reference percentiles.

Fitted by :mod:`churnformer.artifacts.calibration`, head by head (what each head's parameters mean is in its
module under :mod:`churnformer.modeling.heads`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from churnformer.schema import CHURN_PROBABILITY, EXPECTED_SPEND, SPEND_IF_RETAINED

# Files written before heads were components kept every head's parameters side by side; what they mean now.
_LEGACY_HEADS = {
    "survival": {"churn_temperature": "temperature", "churn_bias": "bias"},
    "spend": {"spend_power": "power", "spend_log_scale": "log_scale"},
    "decline": {"decline_temperature": "temperature", "decline_bias": "bias"},
}
_LEGACY_PERCENTILES = {
    "churn_percentiles": CHURN_PROBABILITY,
    "spend_percentiles": EXPECTED_SPEND,
    "spend_if_retained_percentiles": SPEND_IF_RETAINED,
}


@dataclass
class Calibration:
    """Each head's calibration parameters by head name (a head left out is uncalibrated); the percentiles 1..99
    (``schema.PERCENTILE_LEVELS``) of each main-horizon output over the validation customers: the reference
    population scoring's deciles and value segments are relative to (:mod:`churnformer.serving.retention`);
    and why a fitted part was replaced by the identity (``fallback``; empty: everything fitted was kept).
    ``reference_inputs``: the same validation customers' input profile (:mod:`churnformer.serving.input_profile`),
    what ``churnformer-monitor reference=<model>`` compares a scoring run's input with."""

    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    percentiles: dict[str, list[float]] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    reference_inputs: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Calibration:
        """From its JSON, or from the flat JSON of a release before heads were components."""
        if "heads" in stored or not stored:
            heads, percentiles = dict(stored.get("heads", {})), dict(stored.get("percentiles", {}))
            return cls(heads, percentiles, list(stored.get("fallback", [])), dict(stored.get("reference_inputs", {})))
        heads = {}
        for head, names in _LEGACY_HEADS.items():
            values = {new: stored[old] for old, new in names.items() if old in stored}
            # Empty lists meant zeros; a release without a decline head left its parameters empty.
            if head == "decline" and not stored.get("decline_bias"):
                continue
            heads[head] = {name: value for name, value in values.items() if value != []}
        percentiles = {column: stored[name] for name, column in _LEGACY_PERCENTILES.items() if stored.get(name)}
        return cls(heads, percentiles, list(stored.get("fallback", [])))
