"""What makes a run reproducible, written next to it as ``run_info.json``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from churnformer import __version__

LIBRARIES = (
    "torch",
    "pytorch-lightning",
    "torchmetrics",
    "numpy",
    "pandas",
    "pyarrow",
    "hydra-core",
    "onnx",
    "onnxruntime",
    "onnxscript",
)


def git_commit(directory: Path) -> str | None:
    """The commit of the checkout ``directory`` is in, with ``+dirty`` for local changes; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def fingerprint(source: str | Path | pd.DataFrame | None) -> dict[str, Any] | None:
    """SHA-256 of a file (streamed) or of a DataFrame's contents, with its size."""
    if source is None:
        return None
    if isinstance(source, pd.DataFrame):
        hashed = pd.util.hash_pandas_object(source, index=False).to_numpy()
        return {"dataframe_sha256": hashlib.sha256(hashed.tobytes()).hexdigest(), "rows": len(source)}
    path = Path(source)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(seed: int, cutoff: str, horizon_days: float, events: Any, customers: Any) -> dict[str, Any]:
    return {
        "churnformer": __version__,
        "git_commit": git_commit(Path(__file__).parent),
        "seed": seed,
        "libraries": library_versions(),
        "data": {
            "cutoff": cutoff,
            "horizon_days": horizon_days,
            "events": fingerprint(events),
            "customers": fingerprint(customers),
        },
    }
