"""How a model file scores, in one object built once from ``conf/serving/predict.yaml``: the Python API, the
local job and Spark read the same settings, so no engine turns config into arguments of its own."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from churnformer.defaults import serving_defaults
from churnformer.serving.contact import ContactRules
from churnformer.serving.explain import ExplainSettings
from churnformer.serving.retention import SegmentRules, check_discount_rate


@dataclass(frozen=True)
class ScoringSettings:
    """The scoring settings of ``conf/serving/predict.yaml`` (their defaults are there, and only there).

    ``explain``: the explanation settings when explanations are on (``explain.enabled``), else None.
    ``memory_budget_mb`` and ``spill_dir`` bound the local job (``churnformer-predict engine=local``)."""

    providers: list[str] | None
    batch_tokens: int
    max_batch_size: int
    streams: int
    threads: int
    segments: SegmentRules
    discount_rate: float
    text_encoder: str | None
    text_cache: str | None
    memory_budget_mb: float
    spill_dir: str | None
    progress: bool
    contact: ContactRules  # contact_value and response_segment of models trained with campaigns
    embeddings: bool = False  # add the customer representation as embedding_0.. columns
    explain: ExplainSettings | None = field(default=None)

    def __post_init__(self) -> None:
        check_discount_rate(self.discount_rate)

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ScoringSettings:
        """From predict.yaml's settings as a plain dict (the job's own keys, its files and engine, are ignored)."""
        nested = ("segments", "discount_rate", "explain", "contact")
        values = {f.name: config[f.name] for f in fields(cls) if f.name not in nested}
        explain = {key: value for key, value in config["explain"].items() if key != "enabled"}
        return cls(
            **values,
            segments=SegmentRules(**config["segments"]),
            contact=ContactRules(**config["contact"]),
            discount_rate=config["clv"]["discount_rate"],
            explain=ExplainSettings(**explain) if config["explain"]["enabled"] else None,
        )

    @classmethod
    def defaults(cls, **changes: Any) -> ScoringSettings:
        """predict.yaml's defaults with ``changes`` (fields of this class; ``explain=True`` for the default
        explanation settings, or a dict of some of them)."""
        explain = changes.pop("explain", None)
        settings = replace(cls.of(serving_defaults("predict")), **changes)
        return settings.explaining(explain) if explain else settings

    def explaining(self, explain: bool | Mapping[str, Any] | ExplainSettings | None) -> ScoringSettings:
        """The same settings with explanations as given: True (predict.yaml's ``explain.*``), some of those
        settings, ExplainSettings, or False/None (none)."""
        if isinstance(explain, ExplainSettings) or not explain:
            return replace(self, explain=explain or None)
        defaults = {k: v for k, v in serving_defaults("predict")["explain"].items() if k != "enabled"}
        return replace(self, explain=ExplainSettings(**{**defaults, **({} if explain is True else dict(explain))}))
