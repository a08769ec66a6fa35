"""Post-hoc calibration fitted on validation customers and carried into the exported model.

Two numbers: a temperature for the churn logit (fixes over- or under-confidence without changing the
ranking) and a scale for spend (the log-normal mean is biased by the spread of sigma; the scale
makes total predicted spend match total actual spend on validation). Both keep the heads consistent:
the spend mixture uses the calibrated churn probability.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from churnformer.model import ChurnFormer
from churnformer.module import INPUT_NAMES

SPEND_SCALE_LIMITS = (0.2, 5.0)


@dataclass(frozen=True)
class Calibration:
    churn_temperature: float = 1.0
    spend_log_scale: float = 0.0
    # Percentiles 1..99 of the calibrated predictions on validation: the reference population that
    # scoring's deciles and value segments are relative to (churnformer.scoring.ReferencePercentiles).
    churn_percentiles: list[float] = field(default_factory=list)
    spend_percentiles: list[float] = field(default_factory=list)

    def __str__(self) -> str:
        return f"churn temperature {self.churn_temperature:.3f}, spend scale {math.exp(self.spend_log_scale):.3f}"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


@torch.no_grad()
def _collect(network: ChurnFormer, batches) -> dict[str, torch.Tensor]:
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {"logit": [], "mu": [], "sigma": [], "churn": [], "spend": []}
    for batch in batches:
        heads = network(*(batch[name] for name in INPUT_NAMES))
        for key, value in zip(parts, (*heads, batch["churn"], batch["spend"]), strict=True):
            parts[key].append(value.double())
    return {key: torch.cat(values) for key, values in parts.items()}


def fit_calibration(network: ChurnFormer, batches) -> Calibration:
    """Fit on validation batches (dicts as produced by the datamodule's loaders)."""
    data = _collect(network, batches)
    log_temperature = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = F.binary_cross_entropy_with_logits(data["logit"] / log_temperature.exp(), data["churn"])
        value.backward()
        return value

    optimizer.step(loss)
    temperature = float(log_temperature.detach().exp())
    p_churn = torch.sigmoid(data["logit"] / temperature)
    expected = (1 - p_churn) * torch.exp(data["mu"] + 0.5 * data["sigma"] ** 2)
    scale = float(data["spend"].sum() / expected.sum().clamp(min=1e-12))
    scale = min(max(scale, SPEND_SCALE_LIMITS[0]), SPEND_SCALE_LIMITS[1])
    levels = torch.arange(1, 100, dtype=torch.float64) / 100
    return Calibration(
        churn_temperature=temperature,
        spend_log_scale=math.log(scale),
        churn_percentiles=torch.quantile(p_churn, levels).tolist(),
        spend_percentiles=torch.quantile(expected * scale, levels).tolist(),
    )
