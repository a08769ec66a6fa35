"""Console entry points (Hydra apps): ``churnformer-train``, ``-export``, ``-predict``, ``-evaluate``.

Problems the user can fix (:class:`ChurnformerError`: bad input, impossible config) end with one
clear message and exit status 2; ``debug=true`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from churnformer.errors import ChurnformerError, ConfigError


def user_error(error: BaseException) -> ChurnformerError | None:
    """The user-fixable error behind ``error``, if any, following explicit causes (``raise ... from``).

    ``hydra.utils.instantiate`` re-raises whatever a constructor raised as an ``InstantiationException``
    from the original, so a bad ``data.horizon_days`` would otherwise end in a traceback. Implicit
    contexts are not followed: an error raised while handling a user error is a bug and should show.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, ChurnformerError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _missing_keys(value, f"{prefix}{name}.")]
    if isinstance(node, list):
        return [key for index, value in enumerate(node) for key in _missing_keys(value, f"{prefix}{index}.")]
    return [prefix.rstrip(".")] if node == "???" else []


def check_required(cfg: DictConfig) -> None:
    """Settings left at ``???`` are named up front, before anything reads them half-way through a job.

    Read without resolving interpolations (``OmegaConf.missing_keys`` resolves them, and an unrelated
    broken interpolation would then hide the missing setting behind its own error).
    """
    missing = _missing_keys(OmegaConf.to_container(cfg, resolve=False))
    if missing:
        raise ConfigError(
            f"missing required setting(s) {', '.join(missing)}; pass them on the command line as key=value"
        )


def _clear_errors(job: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    @wraps(job)
    def run(cfg: DictConfig) -> float | None:
        try:
            check_required(cfg)
            return job(cfg)
        except Exception as error:
            clear = user_error(error)
            if clear is None or cfg.get("debug"):
                raise
            print(f"error: {clear}", file=sys.stderr)
            sys.exit(2)

    return run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@_clear_errors
def train(cfg: DictConfig) -> float | None:
    from churnformer.train import configured_metric, train

    return configured_metric(cfg, train(cfg))


@hydra.main(version_base="1.3", config_path="conf/serving", config_name="export")
@_clear_errors
def export(cfg: DictConfig) -> None:
    from pathlib import Path

    from churnformer.export import export_checkpoint

    path = export_checkpoint(cfg.ckpt, cfg.output, cfg.get("calibration"), cfg.fused_attention)
    print(f"exported {path}")
    if cfg.get("quantize"):
        from churnformer.errors import ConfigError
        from churnformer.quantize import quantize_checked, run_validation_data

        quantized, check = quantize_checked(path, *run_validation_data(Path(cfg.ckpt).parent.parent))
        if quantized is None:
            raise ConfigError(f"int8 model refused: {check}")
        print(f"exported {quantized}")


@hydra.main(version_base="1.3", config_path="conf/serving", config_name="predict")
@_clear_errors
def predict(cfg: DictConfig) -> None:
    from churnformer.predict_job import run_prediction

    run_prediction(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="conf/serving", config_name="evaluate")
@_clear_errors
def evaluate(cfg: DictConfig) -> None:
    from churnformer.evaluation import run_evaluation

    run_evaluation(OmegaConf.to_container(cfg, resolve=True))
