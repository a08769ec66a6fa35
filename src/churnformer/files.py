"""Files every stage writes or ships, with no stage of their own: atomic writes, and a model file's bytes.

Text, serving, Spark and the export all need them; keeping them here lets each of those depend only on the
stages below it (README, Architecture).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from churnformer.errors import ModelFileError
from churnformer.schema import RUN_MODEL


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """``write`` to a hidden temporary name beside ``path``, renamed into place only when complete, so
    an interrupted job never leaves a partial file at ``path`` (the temporary is removed on errors)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def resolve_model_path(model: str | Path) -> Path:
    """A run directory means its ``model.onnx``."""
    path = Path(model)
    if path.is_dir():
        path = path / RUN_MODEL
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found (pass an .onnx file or a training run directory)")
    return path


@dataclass(frozen=True)
class ModelBytes:
    """A model file's content, named by the file it was read from: what a distributed job ships to its
    workers (a path on the driver means nothing there)."""

    name: str
    raw: bytes
    digest: str  # SHA-256 of raw, taken once where the file is read (workers key their sessions by it)
    # A model with text features: its sentence encoder's file, shipped with it (the path means nothing there).
    text_encoder: ModelBytes | None = None

    @classmethod
    def read(cls, model: str | Path) -> ModelBytes:
        return cls.of_file(resolve_model_path(model))

    @classmethod
    def of_file(cls, path: Path) -> ModelBytes:
        raw = path.read_bytes()
        return cls(str(path), raw, hashlib.sha256(raw).hexdigest())
