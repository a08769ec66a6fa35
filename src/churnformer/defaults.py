"""The YAML files under ``conf/`` are the one home of every default; this reads them for code that runs
without Hydra (the Python API, ``Predictor``, tests), so a default is never written a second time in code."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from omegaconf import OmegaConf


@cache
def serving_defaults(job: str) -> dict[str, Any]:
    """The settings of ``conf/serving/<job>.yaml`` (``predict``, ``export``, ``evaluate``), without Hydra's keys."""
    config = OmegaConf.load(str(files("churnformer.conf") / "serving" / f"{job}.yaml"))
    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("defaults", None)
    return plain
