"""Export a trained network to one self-contained ONNX file: the calibrated predictions as outputs, the
featurization state, calibration and reference percentiles as metadata (``churnformer.schema``)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from churnformer import __version__
from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.stacked_trees import StackedTrees, stacked_example
from churnformer.calibration import Calibration
from churnformer.data.featurizer import Featurizer
from churnformer.data.inputs import EVENT_INPUTS, dynamic_axes, example_ids
from churnformer.files import write_atomically
from churnformer.modeling.backbones import SelfAttention
from churnformer.modeling.network import ChurnFormer
from churnformer.modeling.scoring_model import ScoringModel, contact_columns
from churnformer.schema import (
    CUSTOMER_AGG,
    CUSTOMER_CAT,
    CUSTOMER_NUM,
    DYNAMIC_AXES,
    EMBEDDING,
    LENGTHS,
    META_CALIBRATION,
    META_FEATURIZER,
    META_HORIZON_DAYS,
    META_HORIZONS,
    META_OUTPUTS,
    META_VERSION,
    METADATA_PREFIX,
    RUN_CALIBRATION,
)

# opset 23 turns SDPA into an ONNX `Attention` op whose CPU kernel rejects broadcast key-padding masks, so the
# portable export decomposes attention into opset-20 ops; the default is onnxruntime's fused kernel instead.
OPSET = 20


def example_inputs(featurizer: Featurizer, batch: int = 3, length: int = 5) -> dict[str, torch.Tensor]:
    """A valid example batch by input name, in the model file's input order (each event input's arrays, then
    lengths and the customer inputs); batch and length >= 2 so the exporter keeps both symbolic."""
    rng = np.random.default_rng(0)
    arrays = {}
    for event_input in EVENT_INPUTS:
        arrays |= event_input.example(featurizer, batch, length, rng)
    arrays[LENGTHS] = np.arange(length, length - batch, -1).clip(min=1).astype(np.int64)
    arrays[CUSTOMER_CAT] = example_ids(rng, (batch,), featurizer.customer_categorical_cardinalities)
    arrays[CUSTOMER_NUM] = rng.standard_normal((batch, len(featurizer.customer_numeric_names))).astype(np.float32)
    if featurizer.aggregates is not None:
        arrays[CUSTOMER_AGG] = rng.standard_normal((batch, len(featurizer.aggregate_names))).astype(np.float32)
    return {name: torch.from_numpy(values) for name, values in arrays.items()}


def input_axes(featurizer: Featurizer) -> dict[str, tuple[str, ...]]:
    """The dynamic axes of every input of a model of ``featurizer``: its event inputs' and the fixed ones."""
    return {**dynamic_axes(featurizer), **DYNAMIC_AXES}


def export_onnx(
    network: ChurnFormer,
    featurizer_json: str,
    output: str | Path,
    metadata: dict[str, Any],
    calibration: Calibration | None = None,
    *,
    fused_attention: bool,
    stacked_trees: StackedTrees | None = None,
) -> Path:
    """Write ``output`` atomically; batch and length are symbolic. ``metadata``: the training run's (at least
    ``schema.META_HORIZONS``, the grid, and ``schema.META_HORIZON_DAYS``, the main horizon), stored beside
    the featurization state and calibration.

    ``fused_attention``: attention as onnxruntime's ``com.microsoft.Attention`` kernel (CPU and CUDA; the
    fastest), or, when False, as standard ONNX ops that any ONNX runtime can execute. ``stacked_trees``: the
    boosted trees stacked under the network (``data.stacking``), put in front of its graph.
    """
    featurizer = Featurizer.from_json(featurizer_json)
    calibration = calibration or Calibration()
    inputs = example_inputs(featurizer)
    if stacked_trees is not None:  # the network reads the trees' columns after the featurizer's aggregates
        inputs[CUSTOMER_AGG] = torch.from_numpy(stacked_example(inputs[CUSTOMER_AGG].numpy()))
    horizons = tuple(float(h) for h in metadata[META_HORIZONS])
    outputs = network.heads.output_columns(horizons)
    if network.contact is not None:
        outputs += contact_columns(network.heads, horizons, network.contact.offers)
    main = horizons.index(float(metadata[META_HORIZON_DAYS]))
    model = ScoringModel(network, list(inputs), main, calibration, with_embedding=True)
    model.eval()
    dims = {axis: torch.export.Dim(axis) for axis in ("batch", "length", "texts")}
    # One entry for ScoringModel.forward's *inputs, a spec per input in order.
    axes = input_axes(featurizer)
    dynamic_shapes = {"inputs": tuple({i: dims[a] for i, a in enumerate(axes[name])} for name in inputs)}
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
            tuple(inputs.values()),
            dynamo=True,
            # The exporter's own graph optimizer (onnxscript's) took a third of an export (2 to 4 s a model) and
            # changed no output bit on the default model: onnxruntime folds and fuses the graph when it loads it.
            optimize=False,
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            input_names=list(inputs),
            output_names=[*outputs, EMBEDDING],
            verbose=False,
        )
    proto = program.model_proto
    if stacked_trees is not None:
        proto = stacked_trees.under(proto)
    require_symbolic_axes(proto, axes)
    props = {
        META_FEATURIZER: featurizer_json,
        META_VERSION: __version__,
        META_OUTPUTS: json.dumps(outputs),
        META_CALIBRATION: calibration.to_json(),
    }
    props.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(proto, {METADATA_PREFIX + k: v for k, v in props.items()})
    onnx.checker.check_model(proto)
    return write_atomically(Path(output), lambda partial: onnx.save(proto, partial))


def require_symbolic_axes(proto: onnx.ModelProto, axes: dict[str, tuple[str, ...]]) -> None:
    """Fail unless every dynamic axis (``axes``, by input) stayed symbolic in ``proto``'s inputs. When
    ``torch.export`` cannot prove a shape guard for every length it may fix the axis at the example's size
    and still write a model, which would then refuse every other batch or length at scoring time (seen with
    a GRU with the wide path exported after another in the same process, docs/guide/model.md)."""
    for graph_input in proto.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        for index, axis in enumerate(axes.get(graph_input.name, ())):
            if not dims[index].dim_param:
                raise RuntimeError(
                    f"the ONNX export fixed axis {axis!r} of input {graph_input.name!r} at {dims[index].dim_value}; "
                    "the model would refuse any other size"
                )


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, *, calibration: str | Path | None, fused_attention: bool
) -> Path:
    """Export a checkpoint (``churnformer-export``; settings in ``conf/serving/export.yaml``). ``calibration``:
    a calibration.json to apply; None: the run's own (beside ``checkpoints/``), when there is one."""
    checkpoint = Path(checkpoint)
    calibration_file = Path(calibration) if calibration else checkpoint.parent.parent / RUN_CALIBRATION
    fitted = Calibration.load(calibration_file) if calibration_file.is_file() else None
    network, hparams = load_checkpoint(checkpoint)
    metadata = hparams["export_metadata"]
    stacked = StackedTrees.from_state(hparams.get("stacked_trees"))
    featurizer_json = hparams["featurizer_json"]
    return export_onnx(
        network, featurizer_json, output, metadata, fitted, fused_attention=fused_attention, stacked_trees=stacked
    )
