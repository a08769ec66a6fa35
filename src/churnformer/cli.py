"""Console entry points (Hydra apps): ``churnformer-train``, ``-export``, ``-predict``, ``-evaluate``.

Problems the user can fix (:class:`ChurnformerError`: bad input, impossible config) end with one
clear message and exit status 2; ``debug=true`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps

import hydra
from omegaconf import DictConfig, OmegaConf

from churnformer.errors import ChurnformerError


def _clear_errors(job: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    @wraps(job)
    def run(cfg: DictConfig) -> float | None:
        try:
            return job(cfg)
        except ChurnformerError as error:
            if cfg.get("debug"):
                raise
            print(f"error: {error}", file=sys.stderr)
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
    from churnformer.export import export_checkpoint

    print(f"exported {export_checkpoint(cfg.ckpt, cfg.output, cfg.get('calibration'))}")


@hydra.main(version_base="1.3", config_path="conf/serving", config_name="predict")
@_clear_errors
def predict(cfg: DictConfig) -> None:
    from churnformer.scoring import run_prediction

    run_prediction(OmegaConf.to_container(cfg, resolve=True))


@hydra.main(version_base="1.3", config_path="conf/serving", config_name="evaluate")
@_clear_errors
def evaluate(cfg: DictConfig) -> None:
    from churnformer.evaluation import run_evaluation

    run_evaluation(OmegaConf.to_container(cfg, resolve=True))
