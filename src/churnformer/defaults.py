"""The YAML files under ``conf/`` are the one home of every default; this reads them for code that runs
without Hydra (the Python API, ``Predictor``, ``churnformer-synthetic``, tests), so a default is never
written a second time in code."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from omegaconf import OmegaConf


@cache
def _read(name: str) -> dict[str, Any]:
    config = OmegaConf.load(str(files("churnformer.conf").joinpath(*f"{name}.yaml".split("/"))))
    return OmegaConf.to_container(config, resolve=False)


def _load(name: str) -> dict[str, Any]:
    return {key: value for key, value in _read(name).items() if key != "defaults"}


def yaml_defaults(name: str) -> dict[str, Any]:
    """The settings of ``conf/<name>.yaml`` (e.g. ``serving/predict``, ``data/synthetic``), without Hydra's
    defaults list and unresolved (interpolations stay strings); a fresh copy each call."""
    return OmegaConf.to_container(OmegaConf.create(_load(name)))


def model_heads(model: str = "small", names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``model.heads`` as ``conf/model/<model>.yaml`` chooses them (or the heads ``names``), each from its
    ``conf/model/heads/<name>.yaml``: for code that builds a network without Hydra."""
    if names is None:
        defaults = _read(f"model/{model}")["defaults"]
        chosen = [entry["heads"] for entry in defaults if isinstance(entry, dict) and "heads" in entry]
        if not chosen:  # a model config that extends another (model/base.yaml: defaults [small])
            return model_heads(next(entry for entry in defaults if isinstance(entry, str) and entry != "_self_"))
        names = tuple(chosen[0])
    heads: dict[str, Any] = {}
    for name in names:
        heads |= yaml_defaults(f"model/heads/{name}")
    return heads


def serving_defaults(job: str) -> dict[str, Any]:
    """``conf/serving/<job>.yaml``: ``predict``, ``export`` or ``evaluate``."""
    return yaml_defaults(f"serving/{job}")
