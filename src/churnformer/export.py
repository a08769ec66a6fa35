"""Export a trained network to one self-contained ONNX file with its featurization state embedded."""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import onnx
import torch

from churnformer import __version__
from churnformer.calibration import Calibration
from churnformer.data.featurizer import Featurizer
from churnformer.model import ChurnFormer, ScoringModel, SelfAttention
from churnformer.module import build_network
from churnformer.schema import (
    DYNAMIC_AXES,
    META_CALIBRATION,
    META_FEATURIZER,
    META_OUTPUTS,
    META_VERSION,
    METADATA_PREFIX,
    MODEL_INPUTS,
    MODEL_OUTPUTS,
    RUN_CALIBRATION,
)

# opset 23 turns SDPA into an ONNX `Attention` op whose CPU kernel rejects broadcast key-padding masks, so the
# portable export decomposes attention into opset-20 ops; the default is onnxruntime's fused kernel instead.
OPSET = 20


def load_checkpoint(path: str | Path) -> tuple[ChurnFormer, dict[str, Any]]:
    """Rebuild the network from a Lightning checkpoint without unpickling code (``weights_only=True``)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    network = build_network(hparams["network"], hparams["featurizer_json"])
    state = {k.removeprefix("network."): v for k, v in checkpoint["state_dict"].items() if k.startswith("network.")}
    network.load_state_dict(state)
    return network.eval(), hparams


def example_inputs(featurizer: Featurizer, batch: int = 3, length: int = 5) -> tuple[torch.Tensor, ...]:
    """A valid example batch; batch and length >= 2 so the exporter keeps both dimensions symbolic."""
    generator = torch.Generator().manual_seed(0)

    def ids(shape: tuple[int, ...], cardinalities: list[int]) -> torch.Tensor:
        high = torch.tensor(cardinalities or [2])[: len(cardinalities)]
        return (torch.rand(*shape, len(cardinalities), generator=generator) * (high - 1)).int() + 1

    lengths = torch.arange(length, length - batch, -1).clamp(min=1)
    return (
        ids((batch, length), featurizer.event_categorical_cardinalities),
        torch.randn(batch, length, len(featurizer.event_numeric_names), generator=generator),
        lengths.long(),
        ids((batch,), featurizer.customer_categorical_cardinalities),
        torch.randn(batch, len(featurizer.customer_numeric_names), generator=generator),
    )


def export_onnx(
    network: ChurnFormer,
    featurizer_json: str,
    output: str | Path,
    metadata: dict[str, Any] | None = None,
    calibration: Calibration | None = None,
    fused_attention: bool = True,
) -> Path:
    """Write ``output`` atomically; batch and length are symbolic, metadata holds the featurizer state.

    ``fused_attention``: attention as onnxruntime's ``com.microsoft.Attention`` kernel (CPU and CUDA; the
    fastest), or, when False, as standard ONNX ops that any ONNX runtime can execute.
    """
    featurizer = Featurizer.from_json(featurizer_json)
    calibration = calibration or Calibration()
    model = ScoringModel(
        network,
        calibration.churn_temperature,
        calibration.churn_bias,
        calibration.spend_log_scale,
        calibration.spend_power,
    ).eval()
    dims = {name: torch.export.Dim(name) for name in ("batch", "length")}
    dynamic_shapes = {name: {i: dims[axis] for i, axis in enumerate(DYNAMIC_AXES[name])} for name in MODEL_INPUTS}
    # The exporter logs every graph pass at INFO and warns that torchvision (unused here) is missing.
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    for module in network.modules():
        if isinstance(module, SelfAttention):
            module.fused_export = fused_attention
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            example_inputs(featurizer),
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            input_names=list(MODEL_INPUTS),
            output_names=list(MODEL_OUTPUTS),
            verbose=False,
        )
    proto = program.model_proto
    props = {
        META_FEATURIZER: featurizer_json,
        META_VERSION: __version__,
        META_OUTPUTS: json.dumps(MODEL_OUTPUTS),
        META_CALIBRATION: json.dumps(asdict(calibration)),
    }
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in props.items()})
    onnx.checker.check_model(proto)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    onnx.save(proto, partial)
    os.replace(partial, output)
    return output


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, calibration: str | Path | None = None, fused_attention: bool = True
) -> Path:
    """Export a checkpoint; the run's ``calibration.json`` (next to ``checkpoints/``) is applied when present."""
    checkpoint = Path(checkpoint)
    calibration_file = Path(calibration) if calibration else checkpoint.parent.parent / RUN_CALIBRATION
    fitted = Calibration.load(calibration_file) if calibration_file.is_file() else None
    if fitted is not None:
        print(f"calibration from {calibration_file}: {fitted}")
    network, hparams = load_checkpoint(checkpoint)
    metadata = hparams.get("export_metadata")
    return export_onnx(network, hparams["featurizer_json"], output, metadata, fitted, fused_attention)
