"""ONNX export: parity with PyTorch, symbolic shapes, embedded featurization, safe checkpoint loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.artifacts.export import (
    example_inputs,
    export_checkpoint,
    export_onnx,
    input_axes,
    require_symbolic_axes,
)
from churnformer.calibration import Calibration
from churnformer.data.featurizer import Featurizer
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import EMBEDDING, MODEL_INPUTS, MODEL_OUTPUTS
from churnformer.serving.predictor import Predictor


@pytest.fixture(
    scope="module",
    params=[True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["fused-attention", "portable"],
)
def exported(
    request: pytest.FixtureRequest, trained_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ScoringModel, Featurizer]:
    checkpoint = next((trained_run / "checkpoints").glob("epoch*.ckpt"))
    network, hparams = load_checkpoint(checkpoint)
    # Perturb the trained weights so parity is checked on a network whose every path matters.
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    output = tmp_path_factory.mktemp("onnx") / "model.onnx"
    # A calibration far from identity, so every calibration parameter is on the checked path.
    metadata = hparams["export_metadata"]
    k = len(metadata["horizons_days"])
    calibration = Calibration(
        {
            "survival": {"temperature": 1.3, "bias": [0.2 * (-1) ** i for i in range(k)]},
            "spend": {"log_scale": [0.1 * (i + 1) for i in range(k)], "power": 1.2},
        }
    )
    path = export_onnx(
        network, hparams["featurizer_json"], output, metadata, calibration=calibration, fused_attention=request.param
    )
    main = metadata["horizons_days"].index(metadata["horizon_days"])
    model = ScoringModel(network, list(MODEL_INPUTS), main, calibration, with_embedding=True).eval()
    return path, model, Featurizer.from_json(hparams["featurizer_json"])


def test_attention_is_fused_or_standard_onnx(exported) -> None:
    path, model, _ = exported
    nodes = onnx.load(path).graph.node
    fused = {(n.domain, n.op_type) for n in nodes if n.domain == "com.microsoft"}
    blocks = model.network.backbone.blocks
    if blocks[0].attention.fused_export:
        assert fused == {("com.microsoft", "Attention")}
        assert sum(n.op_type == "Attention" for n in nodes) == len(blocks)
    else:
        assert fused == set() and all(n.domain in ("", "ai.onnx") for n in nodes)


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (2, 3), (7, 50), (64, 200)])
def test_onnxruntime_matches_pytorch(exported, batch: int, length: int) -> None:
    path, model, featurizer = exported
    inputs = example_inputs(featurizer, batch=batch, length=length)
    with torch.no_grad():
        expected = [t.numpy() for t in model(*inputs.values())]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    got = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, zip(got, expected, strict=True), strict=True))
    # The customer representation the heads read comes last (churnformer-predict embeddings=true).
    a, b = outputs.pop(EMBEDDING)
    assert a.shape == (batch, model.network.config.d_model) and names[-1] == EMBEDDING
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    names = names[:-1]
    for name, (a, _) in outputs.items():
        assert a.shape == (batch,), name
    a, b = outputs["churn_probability"]
    assert np.abs(a - b).max() <= 1e-4
    a, b = outputs["expected_spend"]
    assert np.abs(a - b).max() <= 1e-4 * max(1.0, float(np.abs(b).max()))
    # Quantiles just above the zero mass (P(churn) close to q) sit where the normal quantile is steep, so
    # float rounding differences between the runtimes are amplified: checked relative, at 1e-3.
    a, b = outputs["spend_if_retained"]
    np.testing.assert_allclose(a, b, rtol=1e-4)
    for name in ("spend_p10", "spend_p50", "spend_p90"):
        a, b = outputs[name]
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4, err_msg=name)
    for name in names[len(MODEL_OUTPUTS) :]:  # S(t) and expected spend at every horizon of the grid
        a, b = outputs[name]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=name)


def test_batch_and_length_are_symbolic(exported) -> None:
    path, model, _ = exported
    graph = onnx.load(path).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert isinstance(dims["event_cat"][0], str) and isinstance(dims["event_cat"][1], str)
    assert dims["event_num"][:2] == dims["event_cat"][:2]
    assert isinstance(dims["lengths"][0], str)
    horizons = json.loads(next(p.value for p in onnx.load(path).metadata_props if p.key == "churnformer.horizons_days"))
    assert [o.name for o in graph.output] == [*model.network.heads.output_columns(tuple(horizons)), EMBEDDING]


def test_an_export_that_fixed_an_axis_is_refused(exported) -> None:
    """The check behind every export: the real export passes it; the same model with its length axis fixed,
    as torch.export may leave it when it cannot prove a shape guard for every length, is refused."""
    path, _, featurizer = exported
    proto = onnx.load(path)
    axes = input_axes(featurizer)
    require_symbolic_axes(proto, axes)
    length = next(i for i in proto.graph.input if i.name == "event_num").type.tensor_type.shape.dim[1]
    length.dim_value = 5  # replaces the dim_param (a oneof)
    with pytest.raises(RuntimeError, match="fixed axis 'length' of input 'event_num' at 5"):
        require_symbolic_axes(proto, axes)


def test_featurizer_state_is_embedded(exported) -> None:
    path, _, featurizer = exported
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert Featurizer.from_json(props["churnformer.featurizer"]) == featurizer
    assert Predictor(path).featurizer == featurizer


def test_checkpoints_load_without_pickled_code(trained_run: Path) -> None:
    """Checkpoints hold only tensors and plain data: torch.load(weights_only=True) reads them."""
    checkpoint = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert isinstance(checkpoint["hyper_parameters"]["featurizer_json"], str)


@pytest.mark.slow
def test_export_checkpoint_reproduces_training_export(trained_run: Path, tmp_path: Path) -> None:
    """churnformer-export on the best checkpoint gives the model the training run exported."""
    best = next((trained_run / "checkpoints").glob("epoch*.ckpt"))
    path = export_checkpoint(best, tmp_path / "again.onnx", calibration=None, fused_attention=True)
    inputs = example_inputs(Predictor(path).featurizer, batch=5, length=9)
    feed = {name: t.numpy() for name, t in inputs.items()}
    outputs = []
    for model_path in (path, trained_run / "model.onnx"):
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {i.name: feed[i.name] for i in session.get_inputs()}))
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_array_equal(a, b)
