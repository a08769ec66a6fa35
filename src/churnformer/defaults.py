"""The YAML files under ``conf/`` are the one home of every default; this reads them for code that runs
without Hydra (the Python API, ``Predictor``, ``churnformer-synthetic``, tests), so a default is never
written a second time in code."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from omegaconf import OmegaConf


@cache
def _load(name: str) -> dict[str, Any]:
    config = OmegaConf.load(str(files("churnformer.conf").joinpath(*f"{name}.yaml".split("/"))))
    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("defaults", None)
    return plain


def yaml_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/<name>.yaml`` (e.g. ``serving/predict``, ``data/synthetic``), without Hydra's
    defaults list and unresolved (interpolations stay strings); a fresh copy each call."""
    return OmegaConf.to_container(OmegaConf.create(_load(name)))


def serving_defaults(job: str) -> dict[str, Any]:
    """``conf/serving/<job>.yaml``: ``predict``, ``export`` or ``evaluate``."""
    return yaml_defaults(f"serving/{job}")
