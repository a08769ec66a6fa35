"""What is exported to ONNX: the network, its post-hoc calibration and the arithmetic from heads to the
model's outputs (:meth:`churnformer.modeling.heads.base.Heads.output_columns`), so scoring needs nothing but
the model file."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from churnformer.calibration import Calibration
from churnformer.modeling.heads.base import Heads, Predicted
from churnformer.modeling.network import ChurnFormer
from churnformer.schema import (
    CHURN_PROBABILITY,
    CHURN_PROBABILITY_IF_CONTACTED,
    CHURN_UPLIFT,
    SPEND,
    SPEND_UPLIFT,
    per_horizon,
    per_offer,
)


def contact_columns(heads: Heads, horizons: tuple[float, ...], offers: tuple[str, ...]) -> list[str]:
    """The outputs a model trained with campaigns adds after its heads' (:meth:`Heads.output_columns`):
    ``churn_probability_if_contacted`` (main horizon), then at every horizon ``churn_uplift`` (the drop in churn
    from contacting) and, with a spend head, ``spend_uplift`` (the expected spend it adds): each customer as one
    a campaign reaches (:mod:`churnformer.modeling.contact`), so ``churn_uplift`` is the held-out arm's churn
    minus the contacted arm's, not ``churn_probability`` (every customer's) minus the contacted arm's. A model
    of several offers has them per offer (``schema.per_offer``), offer after offer; scoring picks the best."""
    uplifts = [CHURN_UPLIFT] + ([SPEND_UPLIFT] if spend_quantity(heads) else [])
    columns = [CHURN_PROBABILITY_IF_CONTACTED] + [per_horizon(name, days) for days in horizons for name in uplifts]
    if len(offers) == 1:
        return columns
    return [per_offer(column, offer) for offer in offers for column in columns]


def contact_outputs(heads: Heads, held: Predicted, contacted: list[Predicted], main: int) -> tuple[torch.Tensor, ...]:
    """The tensors of :func:`contact_columns`, each (B,), from the calibrated predictions of a campaign's arms:
    held out, and sent each offer."""
    churn = next(head.quantity for head in heads.values() if heads.column(head) == CHURN_PROBABILITY)
    spend = spend_quantity(heads)
    outputs = []
    for sent in contacted:
        outputs.append(sent[churn][:, main])
        for k in range(held[churn].shape[1]):
            outputs.append(held[churn][:, k] - sent[churn][:, k])
            if spend:
                outputs.append(sent[spend][:, k] - held[spend][:, k])
    return tuple(outputs)


def spend_quantity(heads: Heads) -> str | None:
    """What the spend head predicts (``expected_spend``), None without one."""
    return next((head.quantity for head in heads.values() if head.label == SPEND), None)


class CalibrationParameters(nn.Module):
    """One head's calibration parameters as buffers (numbers as scalars, per-horizon lists as vectors), so the
    export bakes them into the graph as constants."""

    def __init__(self, params: dict[str, Any]) -> None:
        super().__init__()
        self.names = list(params)
        for name, value in params.items():
            self.register_buffer(name, torch.tensor(value, dtype=torch.float32))

    def values(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names}


class ScoringModel(nn.Module):
    """Positional inputs in the order of ``input_names`` (ONNX inputs are positional); outputs, each (B,), in
    the order of ``network.heads.output_columns(horizons)`` (then :func:`contact_columns` for a network trained
    with campaigns), with index ``main`` of the grid the main horizon.

    Calibration keeps the guarantees of the heads (S non-increasing, expected spend non-decreasing over the grid;
    see each head). A head the calibration does not name is exported uncalibrated (its identity parameters).
    ``with_embedding``: the customer representation the heads read (B, D) follows, as the model file's
    ``schema.EMBEDDING`` output (a session asked for the predictions alone never computes more than they need).
    """

    def __init__(
        self,
        network: ChurnFormer,
        input_names: list[str],
        main_index: int,
        calibration: Calibration | None = None,
        *,
        with_embedding: bool = False,
    ) -> None:
        super().__init__()
        self.with_embedding = with_embedding
        self.network = network
        self.input_names = list(input_names)
        self.main = main_index
        fitted = calibration.heads if calibration is not None else {}
        self.calibration = nn.ModuleDict(
            {
                name: CalibrationParameters({**head.identity(), **fitted.get(name, {})})
                for name, head in network.heads.items()
            }
        )

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        heads = self.network.heads
        named = dict(zip(self.input_names, inputs, strict=True))
        contact = self.network.contact is not None
        representation = self.network.represent(named) if self.with_embedding or contact else None
        raw = self.network(named) if representation is None else self.network.heads_of(representation, named)
        params = {name: parameters.values() for name, parameters in self.calibration.items()}
        predicted = heads.predict(raw, params, self.main, extras=True)
        outputs = heads.outputs(predicted, self.main)
        if contact:  # the same customers as a campaign's, held out and contacted, with the same calibration
            held, sent = self.network.heads_in_campaign(representation, named)
            contacted = [heads.predict(raw, params, self.main) for raw in sent]
            outputs = (*outputs, *contact_outputs(heads, heads.predict(held, params, self.main), contacted, self.main))
        return (*outputs, representation) if self.with_embedding else outputs
