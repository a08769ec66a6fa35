"""What ``pip install churnformer`` gives, without extras: scoring and evaluation with no torch installed, the
same scores as a full install, and a one-line pointer to the train extra for the training tools. The core
takes the newest pandas (3) where the development install has pandas 2 (the spark extra's bound), so both
pandas majors score here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_CUTOFF, run_cli

ROOT = Path(__file__).parents[1]

pytestmark = pytest.mark.slow  # builds the wheel and installs it in a new virtual environment


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the project's wheel installed without extras, its dependencies at the
    versions of this environment (so that scores can be compared byte for byte) except pandas, which takes the
    newest release the core allows."""
    root = tmp_path_factory.mktemp("core-install")
    wheels = root / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
        check=True,
    )
    (wheel,) = wheels.glob("churnformer-*.whl")
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze"], check=True, capture_output=True, text=True)
    pins = root / "pins.txt"
    pinned = re.compile(r"[A-Za-z0-9_.-]+==")  # name==version lines (not the editable project itself)
    lines = frozen.stdout.splitlines()
    kept = [line for line in lines if pinned.match(line) and not line.startswith(("churnformer", "pandas=="))]
    pins.write_text("\n".join(kept))
    subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True)
    pip = root / "venv" / "bin" / "pip"
    subprocess.run([pip, "install", "-q", "-c", pins, wheel], check=True)
    return root / "venv" / "bin"


def run_core(bin_dir: Path, tool: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [bin_dir / tool, *arguments], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"}
    )


def test_the_core_install_has_no_torch_and_pandas_3(core_venv: Path) -> None:
    pandas = subprocess.run(
        [core_venv / "python", "-c", "import pandas; print(pandas.__version__)"], capture_output=True, text=True
    )
    assert pandas.stdout.startswith("3."), pandas.stdout + pandas.stderr
    for module in ("torch", "pytorch_lightning", "tensorboard"):
        found = subprocess.run(
            [core_venv / "python", "-c", f"import importlib.util as u; print(u.find_spec({module!r}) is None)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert found.stdout.strip() == "True", module


def test_the_core_install_scores_a_model_as_a_full_install_does(
    core_venv: Path, trained_run: Path, tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    events, customers = tiny_world
    common = (f"model={trained_run / 'model.onnx'}", f"events={events}", f"customers={customers}")
    common += (f"cutoff={TINY_CUTOFF}", "progress=false")
    core = run_core(core_venv, "churnformer-predict", *common, f"output={tmp_path / 'core.csv'}", cwd=tmp_path)
    assert core.returncode == 0, core.stderr[-3000:]
    run_cli("churnformer-predict", *common, f"output={tmp_path / 'full.csv'}", cwd=tmp_path)
    assert (tmp_path / "core.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    core = run_core(core_venv, "churnformer-predict", *common, f"output={tmp_path / 'core.parquet'}", cwd=tmp_path)
    assert core.returncode == 0, core.stderr[-3000:]
    evaluated = run_core(
        core_venv,
        "churnformer-evaluate",
        f"predictions={tmp_path / 'core.parquet'}",
        f"events={events}",
        f"cutoff={TINY_CUTOFF}",
        "horizon_days=60",
        f"output={tmp_path / 'evaluation'}",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (tmp_path / "evaluation" / "metrics.json").is_file()
    # Drift monitoring is torch-free too: the core's two outputs of one log agree, against the model as well.
    for reference in (tmp_path / "full.csv", trained_run):
        monitored = run_core(
            core_venv,
            "churnformer-monitor",
            f"current={tmp_path / 'core.csv'}",
            f"reference={reference}",
            f"output={tmp_path / 'monitoring'}",
            cwd=tmp_path,
        )
        assert monitored.returncode in (0, 3) and "quantities compared" in monitored.stdout, monitored.stderr[-3000:]


@pytest.mark.parametrize(
    "tool", ["churnformer-train", "churnformer-export", "churnformer-backtest", "churnformer-runs"]
)
def test_training_tools_name_the_train_extra_in_one_line(core_venv: Path, tool: str, tmp_path: Path) -> None:
    arguments = {"churnformer-export": ("ckpt=x.ckpt", "output=x.onnx"), "churnformer-runs": (str(tmp_path),)}
    finished = run_core(core_venv, tool, *arguments.get(tool, ()), cwd=tmp_path)
    assert finished.returncode == 2 and finished.stdout == ""
    (line,) = finished.stderr.splitlines()
    assert line.startswith("error: ") and "pip install 'churnformer[train]'" in line, line
