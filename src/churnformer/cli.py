"""Console entry points (Hydra apps): ``churnformer-train``, ``-featurize``, ``-export``, ``-predict``, ``-evaluate``,
``-monitor``, ``-backtest``.

Problems the user can fix (:class:`ChurnformerError`: bad input, impossible config) end with one
clear message and exit status 2; ``debug=true`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any, TextIO

import hydra
from omegaconf import DictConfig, OmegaConf

from churnformer.console import silence_known_noise
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


def report_error(message: str, debug: bool) -> None:
    """Print ``error: message`` as the one line on stderr (after the traceback under ``debug``), and put it in
    the run's log file too, so ``cli.log`` says why a run stopped."""
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    record = logging.LogRecord("churnformer", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class HeldStderr(io.StringIO):
    """Stands in for stderr until the job starts, so that what Hydra prints when it refuses a command line
    (an unknown group option, a misspelled key) can be turned into churnformer's one-line error."""

    def __init__(self, real: TextIO) -> None:
        super().__init__()
        self.real = real

    def release(self) -> None:
        """Put the real stderr back and pass on what was held (Hydra's own warnings, if any)."""
        if sys.stderr is self:
            sys.stderr = self.real
            self.real.write(self.getvalue())


def condense_hydra_error(text: str) -> str:
    """Hydra's multi-line refusal as one line: what is wrong and the choices, without the config search
    path, internal key paths, advice to add keys with ``+`` (except under ``spark.conf``, the one free-form
    setting, where adding is what the user meant) and the hint to set HYDRA_FULL_ERROR."""
    skipped = ("Set the environment variable HYDRA_FULL_ERROR", "full_key:", "object_type=")
    advice = "To append to your config use "
    parts: list[str] = []
    listing: list[str] | None = None  # the indented choices under a line ending in ":"
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith("\t") and listing is not None:
            listing.append(line)
            continue
        listing = None
        if not line or line.startswith(skipped) or line.startswith("See https://hydra.cc"):
            continue
        if line.startswith(advice):
            if line.startswith(advice + "+spark.conf."):
                parts.append("Spark settings are added with " + line.removeprefix(advice))
            continue
        if line == "Config search path:":
            listing = []  # read and dropped
            continue
        parts.append(line.rstrip("."))
        if line.endswith(":"):
            listing = []
            parts.append(listing)  # type: ignore[arg-type]  # filled in place
    words = [", ".join(part) if isinstance(part, list) else part for part in parts]
    condensed = "; ".join(word for word in words if word).replace(":;", ":")
    return re.sub(r"Key '([^']+)' is not in struct", r"there is no setting '\1' there", condensed)


def _job(job: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """The job as Hydra calls it: user errors end in one line and exit status 2."""

    @wraps(job)
    def run(cfg: DictConfig) -> float | None:
        if isinstance(sys.stderr, HeldStderr):
            sys.stderr.release()
        silence_known_noise()
        try:
            check_required(cfg)
            return job(cfg)
        except Exception as error:
            clear = user_error(error)
            if clear is None:
                raise
            report_error(str(clear), bool(cfg.get("debug")))
            sys.exit(2)

    return run


SPARK_MASTER = re.compile(r"(\+{0,2}spark\.master)=([^'\"].*\[.*)")


def quote_spark_master(argument: str) -> str:
    """``spark.master=local[2]`` as Spark users write it: Hydra would read the brackets as a list, so the
    value is quoted for it (``spark.master='local[2]'``)."""
    match = SPARK_MASTER.fullmatch(argument)
    return f"{match[1]}='{match[2]}'" if match else argument


def console_script(main: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a Hydra main so that a command line Hydra refuses (an unknown option of a config group, a key
    that does not exist, a malformed override) also ends in one ``error:`` line with exit status 2.
    ``HYDRA_FULL_ERROR=1`` keeps Hydra's own report and traceback."""

    @wraps(main)
    def entry() -> None:
        sys.argv = [quote_spark_master(argument) for argument in sys.argv]
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            main()
            return
        held = HeldStderr(sys.stderr)
        sys.stderr = held
        try:
            main()
        except SystemExit as stop:
            if sys.stderr is held and stop.code not in (0, None):  # refused before the job started
                sys.stderr = held.real
                print(f"error: {condense_hydra_error(held.getvalue())}", file=sys.stderr)
                sys.exit(2)
            raise
        finally:
            held.release()

    return entry


# What the training stack (the ``train`` extra) brings; scoring and evaluation need none of it.
TRAINING_MODULES = ("torch", "pytorch_lightning", "torchmetrics", "tensorboard")


def require_extra(tool: str, extra: str, modules: tuple[str, ...]) -> None:
    """One line naming the extra to install when ``tool`` runs on an install without it."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"{tool} needs the {extra} extra ({error}); install it with: pip install 'churnformer[{extra}]'"
            ) from error


def _train(cfg: DictConfig) -> float | None:
    require_extra("churnformer-train", "train", TRAINING_MODULES)
    from churnformer.training.job import configured_metric, train

    return configured_metric(cfg, train(cfg))


def _featurize(cfg: DictConfig) -> None:
    require_extra("churnformer-featurize", "train", TRAINING_MODULES)
    from churnformer.training.featurize import featurize

    featurize(cfg)


def _export(cfg: DictConfig) -> None:
    require_extra("churnformer-export", "train", TRAINING_MODULES)
    from pathlib import Path

    from churnformer.artifacts.export import export_checkpoint

    path = export_checkpoint(cfg.ckpt, cfg.output, calibration=cfg.calibration, fused_attention=cfg.fused_attention)
    print(f"exported {path}")
    if cfg.quantize:
        from churnformer.artifacts.quantize import quantize_checked, run_validation_data

        quantized, check = quantize_checked(path, *run_validation_data(Path(cfg.ckpt).parent.parent))
        if quantized is None:
            raise ConfigError(f"int8 model refused: {check}")
        print(f"exported {quantized}")


# churnformer-predict's engines: where each one's job is, and the extra it needs beyond the core install.
ENGINES = {
    "local": ("churnformer.serving.job", "run_prediction", None),
    "spark": ("churnformer.spark.job", "run_spark_prediction", "spark"),
}


def engine_job(engine: str) -> Callable[[dict[str, Any]], Any]:
    """The job of ``engine=...``, or one line saying which engines there are or what to install."""
    if engine not in ENGINES:
        raise ConfigError(f"engine={engine}: choose one of {', '.join(ENGINES)} (local: this process)")
    module, function, extra = ENGINES[engine]
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if extra is None or missing.startswith("churnformer"):
            raise
        raise ConfigError(
            f"engine={engine} needs {missing} ({error}); install it with: pip install 'churnformer[{extra}]'"
        ) from error


def _predict(cfg: DictConfig) -> None:
    config = OmegaConf.to_container(cfg, resolve=True)
    engine_job(config["engine"])(config)


def _evaluate(cfg: DictConfig) -> None:
    from churnformer.evaluation.job import run_evaluation

    run_evaluation(OmegaConf.to_container(cfg, resolve=True))


def _backtest(cfg: DictConfig) -> None:
    require_extra("churnformer-backtest", "train", TRAINING_MODULES)
    from churnformer.backtest import run_backtest

    run_backtest(cfg)


def _monitor(cfg: DictConfig) -> None:
    from churnformer.monitoring.job import run_monitor

    status = run_monitor(OmegaConf.to_container(cfg, resolve=True))
    if status:
        sys.exit(status)


train = console_script(hydra.main(version_base="1.3", config_path="conf", config_name="train")(_job(_train)))
export = console_script(hydra.main(version_base="1.3", config_path="conf/serving", config_name="export")(_job(_export)))
featurize = console_script(
    hydra.main(version_base="1.3", config_path="conf", config_name="featurize")(_job(_featurize))
)


def explain_arguments(arguments: list[str]) -> list[str]:
    """``explain=true`` (or ``false``) on the predict command line is ``explain.enabled=...``: one switch
    beside the ``explain.*`` settings. ``explain.only=risk_decile<=2`` reaches Hydra quoted: its override
    grammar has no unquoted ``<``, and the selection is a string, never a Hydra expression."""
    rewritten = []
    for argument in arguments:
        key, _, value = argument.partition("=")
        if key == "explain" and value.lower() in ("true", "false"):
            argument = f"explain.enabled={value}"
        elif key == "explain.only" and value and value[0] not in "'\"":
            argument = f"explain.only='{value}'"
        rewritten.append(argument)
    return rewritten


def _with_explain_arguments(main: Callable[[], Any]) -> Callable[[], Any]:
    @wraps(main)
    def run() -> Any:
        sys.argv[1:] = explain_arguments(sys.argv[1:])
        return main()

    return run


predict = console_script(
    _with_explain_arguments(
        hydra.main(version_base="1.3", config_path="conf/serving", config_name="predict")(_job(_predict))
    )
)
evaluate = console_script(
    hydra.main(version_base="1.3", config_path="conf/serving", config_name="evaluate")(_job(_evaluate))
)

backtest = console_script(hydra.main(version_base="1.3", config_path="conf", config_name="backtest")(_job(_backtest)))
monitor = console_script(
    hydra.main(version_base="1.3", config_path="conf/serving", config_name="monitor")(_job(_monitor))
)


def runs() -> None:
    """``churnformer-runs``: the training runs under a directory (it reads their TensorBoard knobs)."""
    try:
        require_extra("churnformer-runs", "train", TRAINING_MODULES)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    from churnformer.training.runs import main

    sys.exit(main())
