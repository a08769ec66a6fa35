"""A churnformer model file: found, checked (ONNX checker, churnformer's inputs and metadata) and read
before any data is, so a wrong file is named in one line rather than failing half-way through a job."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from churnformer.errors import ModelFileError
from churnformer.files import ModelBytes, resolve_model_path, write_atomically
from churnformer.schema import (
    META_OUTPUTS,
    META_VERSION,
    METADATA_PREFIX,
    MODEL_OUTPUTS,
    REQUIRED_METADATA,
    REQUIRED_MODEL_INPUTS,
)


def load_model(model: str | Path | ModelBytes) -> tuple[str, bytes, dict[str, str]]:
    """A model file or its bytes, checked: its name for messages, its bytes and its churnformer metadata."""
    if isinstance(model, ModelBytes):
        return model.name, model.raw, check_model(model.raw, model.name)
    path = resolve_model_path(model)
    raw = path.read_bytes()
    return str(path), raw, check_model(raw, str(path))


def check_model(raw: bytes, path: str) -> dict[str, str]:
    """Check an ONNX model's bytes (``path`` names it in messages); return its churnformer metadata."""
    try:
        proto = onnx.load_from_string(raw)
        onnx.checker.check_model(proto)
    except Exception as error:  # onnx raises DecodeError, ValidationError and others for junk files
        raise ModelFileError(f"{path}: not a valid ONNX model ({type(error).__name__}: {error})") from error
    metadata = {
        p.key.removeprefix(METADATA_PREFIX): p.value for p in proto.metadata_props if p.key.startswith(METADATA_PREFIX)
    }
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ModelFileError(
            f"{path}: ONNX model lacks churnformer metadata {[METADATA_PREFIX + key for key in missing]}; "
            "export it with churnformer-export"
        )
    missing = set(REQUIRED_MODEL_INPUTS) - {i.name for i in proto.graph.input}
    if missing:
        raise ModelFileError(f"{path}: ONNX model lacks inputs {sorted(missing)}; not a churnformer model")
    lacking = [name for name in MODEL_OUTPUTS if name not in json.loads(metadata[META_OUTPUTS])]
    if lacking:
        raise ModelFileError(
            f"{path}: exported by churnformer {metadata.get(META_VERSION, 'unknown')}, without the outputs "
            f"{lacking}; export its checkpoint again with this version's churnformer-export"
        )
    return metadata


def add_metadata(path: str | Path, entries: dict[str, str]) -> None:
    """Add churnformer metadata ``entries`` (key without prefix -> JSON text) to the model file at ``path``,
    atomically, keeping everything else: what the training job learns after the export (the model card)."""
    path = Path(path)

    def write(partial: Path) -> None:
        proto = onnx.load(path)
        props = {p.key: p.value for p in proto.metadata_props}
        props.update({METADATA_PREFIX + key: value for key, value in entries.items()})
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, partial)

    write_atomically(path, write)
