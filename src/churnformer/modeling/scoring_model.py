"""What is exported to ONNX: the network, its post-hoc calibration and the arithmetic from heads to the
model's outputs (:meth:`churnformer.modeling.heads.base.Heads.output_columns`), so scoring needs nothing but
the model file."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from churnformer.calibration import Calibration
from churnformer.modeling.network import ChurnFormer


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
    the order of ``network.heads.output_columns(horizons)``, with index ``main`` of the grid the main horizon.

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
        representation = self.network.represent(named) if self.with_embedding else None
        raw = self.network(named) if representation is None else self.network.heads_of(representation, named)
        params = {name: parameters.values() for name, parameters in self.calibration.items()}
        outputs = heads.outputs(heads.predict(raw, params, self.main, extras=True), self.main)
        return outputs if representation is None else (*outputs, representation)
