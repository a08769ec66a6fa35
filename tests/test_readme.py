"""The README's own commands, run as written: every command block of "Set up", "Day one" and "Month after
month".

A user's first commands are the README's, so a README edit that breaks one must fail CI. The blocks are
read from README.md at test time and run through the real console entry points, in order, in one
directory holding a tiny log with a user's column names (``user``, ``ts``, ``value``, ``kind``), as CSV
and Parquet. What changes from the README, and only that: the install step is skipped (the package is
installed), ``pytest`` is not run from inside pytest, ``tensorboard`` (a server) is not started,
``experiment=quick`` is appended to training and backtest commands to keep them to seconds (and a backtest
runs two cutoffs, and the notebook example trains one epoch, not five), ``churnformer-monitor`` may end in its
drift status 3, and ``engine=spark`` is left out on a machine without a Java runtime (where the Spark tests are
skipped too; CI installs one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from churnformer.data.synthetic import SyntheticWorldConfig, generate_world
from tests.conftest import BIN, run_in_process

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The docs pages whose every command block runs here, in order, after "Set up": day one in detail, then the
# monthly workflow (the README's short "Day one" is a subset of their commands).
GETTING_STARTED = ROOT / "docs" / "getting-started.md"
MONTHLY = ROOT / "docs" / "guide" / "monitoring.md"
CI_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"
TINY = "experiment=quick"
# The notebook example's own number of epochs: one in the test, as experiment=quick trains.
NOTEBOOK_EPOCHS = "trainer.max_epochs=5"
BACKTEST_CUTOFFS = "backtest.count=2"
# churnformer-monitor's status when a quantity reaches the alert threshold: the job ran and says "drift".
DRIFT_ALERT = 3
JAVA = shutil.which("java") or os.environ.get("JAVA_HOME")
RENAMED = {"customer_id": "user", "timestamp": "ts", "amount": "value", "event_type": "kind"}

pytestmark = pytest.mark.slow


def section(heading: str, page: Path = README) -> str:
    """The text of ``page`` (the README, or a docs page) from ``## heading`` to the next ``## `` heading."""
    text = page.read_text()
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def page_text(page: Path) -> str:
    return page.read_text()


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def commands(block: str) -> list[str]:
    """One string per command: continuation lines joined, the install step and the test run dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in joined.splitlines():
        steps = [s.strip() for s in line.split("&&") if s.strip()]
        steps = [s.removeprefix(".venv/bin/") for s in steps if not s.startswith("python3 -m venv")]
        steps = [s for s in steps if "pip install" not in s and not s.startswith(("pytest", "tensorboard"))]
        if steps:
            found.append(" && ".join(steps))
    return found


def tiny(command: str) -> str:
    """``experiment=quick`` after every ``churnformer-train`` and ``churnformer-backtest`` invocation's
    arguments (and two cutoffs instead of six for a backtest)."""
    if not command.startswith(("churnformer-train", "churnformer-backtest")) or TINY in command:
        return command
    extra = f"{TINY} {BACKTEST_CUTOFFS}" if command.startswith("churnformer-backtest") else TINY
    code, _, comment = command.partition(" #")
    return f"{code.rstrip()} {extra}" + (f" #{comment}" if comment else "")


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-year log under a user's column names, as every file the README's commands name; it runs
    past 2024-12-29, so the 90-day horizon after the README's scoring cutoff (2024-09-30) is observed."""
    directory = tmp_path_factory.mktemp("readme")
    events, customers = generate_world(SyntheticWorldConfig.with_defaults(n_customers=400, n_weeks=106, seed=5))
    events = events.rename(columns=RENAMED)
    customers = customers.rename(columns={"customer_id": "user"})
    events.to_parquet(directory / "events.parquet", index=False)
    events.to_csv(directory / "events.csv", index=False)
    (directory / "big.parquet").symlink_to(directory / "events.parquet")
    customers.to_csv(directory / "customers.csv", index=False)
    return directory


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONHASHSEED": "0"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_all(block_commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    done = []
    for command in block_commands:
        if "engine=spark" in command and not JAVA:
            continue
        result = run(tiny(command), cwd)
        allowed = (0, DRIFT_ALERT) if command.startswith("churnformer-monitor") else (0,)
        assert result.returncode in allowed, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        done.append(result)
    return done


def test_the_readmes_day_one_commands_are_the_tested_ones_of_the_docs() -> None:
    """The README's short "Day one" runs nothing of its own: each command is one the docs pages run here."""
    tested = {
        c for page in (GETTING_STARTED, MONTHLY) for b in code_blocks(page_text(page), "bash") for c in commands(b)
    }
    readme = [c for b in code_blocks(section("Day one"), "bash") for c in commands(strip_comments(b))]
    assert readme and not [c for c in readme if c not in tested]
    # And the docs start with the README's set-up commands, the same ones.
    docs_set_up = GETTING_STARTED.read_text().split("\n## Day one", 1)[0]
    assert code_blocks(docs_set_up, "bash") == code_blocks(section("Set up"), "bash")


def strip_comments(block: str) -> str:
    """A command block without its whole-line comments (the README's short Day one explains each command)."""
    return "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))


def test_the_test_command_is_what_ci_runs() -> None:
    blocks = code_blocks(section("Set up"), "bash")
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    assert test_command in CI_SCRIPT.read_text()


def test_set_up_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    blocks = [commands(b) for b in code_blocks(section("Set up"), "bash")]
    # At tiny size the main command and the smoke command are the same command: run it once.
    unique = list(dict.fromkeys(tiny(c) for block in blocks for c in block))
    results = run_all(unique, tmp_path)
    assert any("TensorBoard: tensorboard --logdir" in r.stdout for r in results)
    assert any("status" in r.stdout and " ok " in r.stdout for r in results)  # churnformer-runs
    run_dirs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert run_dirs, "no run directory under outputs/train"
    listed = re.findall(r"^- `([^`]+)`", section("Set up"), flags=re.MULTILINE)
    assert "model.onnx" in listed and "cli.log" in listed
    for run_dir in run_dirs:
        for name in listed:
            assert (run_dir / name.rstrip("/")).exists(), f"{run_dir}: the README lists {name}"


@pytest.fixture(scope="module")
def day_one(user_dir: Path) -> list[subprocess.CompletedProcess]:
    """Every command of "Day one", in order, in the user's directory (training first: the rest use it)."""
    day_one_text = section("Day one", GETTING_STARTED)
    results = []
    for block in code_blocks(day_one_text, "bash"):
        block_commands = commands(block)
        if any("labels=labels.csv" in c for c in block_commands):
            make_labels_file(user_dir)
        results += run_all(block_commands, user_dir)
    return results


def make_labels_file(directory: Path) -> None:
    """labels.csv (customer_id, churn, spend) for the customers scores.parquet holds, from the log."""
    from churnformer.data.events import ColumnMapping, load_events
    from churnformer.data.labels import make_labels
    from churnformer.data.window import Window

    scores = pd.read_parquet(directory / "scores.parquet")
    events = load_events(
        directory / "events.parquet", ColumnMapping(customer_id="user", timestamp="ts", amount="value")
    )
    labels = make_labels(events, Window.from_cutoff("2024-09-30", 90), scores["customer_id"].to_numpy())
    labels.to_csv(directory / "labels.csv", index=False)


def test_day_one_train_on_a_renamed_parquet_log(day_one, user_dir: Path) -> None:
    run_dir = user_dir / "runs" / "first"
    for name in ("model.onnx", "predictions.parquet", "metrics.json", "calibration.json", "cli.log"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "evaluation" / "report.md").is_file()
    assert any(f"tensorboard --logdir {run_dir}" in r.stdout for r in day_one)
    scored = pd.read_parquet(run_dir / "predictions.parquet")
    assert len(scored) == pd.read_parquet(user_dir / "events.parquet")["user"].nunique()


def test_day_one_scoring_evaluation_shards_and_export(day_one, user_dir: Path) -> None:
    plain, mapped = (pd.read_parquet(user_dir / name) for name in ("scores.parquet", "scores-mapped.parquet"))
    pd.testing.assert_frame_equal(plain, mapped)
    assert (user_dir / "scores.parquet.summary.json").is_file() and (user_dir / "scores.parquet.rejects.csv").is_file()
    parts = pd.concat([pd.read_parquet(p) for p in sorted((user_dir / "scores").glob("part-*.parquet"))])
    pd.testing.assert_frame_equal(parts.sort_values("customer_id", ignore_index=True), plain)
    if JAVA:
        on_spark = pd.read_parquet(user_dir / "scores-spark.parquet")  # a dataset directory
        pd.testing.assert_frame_equal(on_spark.sort_values("customer_id", ignore_index=True), plain)
    for out in ("eval", "eval-labels"):
        assert (user_dir / out / "metrics.json").is_file() and (user_dir / out / "report.md").is_file()
    assert (user_dir / "runs" / "first" / "model.onnx").is_file()


def test_day_one_train_on_the_same_log_as_csv(day_one, user_dir: Path, tmp_path: Path) -> None:
    """The same command on the same log as CSV: the same run, to the last bit (the same config and seed give
    the same result, whatever the file format)."""
    blocks = code_blocks(section("Day one", GETTING_STARTED), "bash")
    train = next(c for b in blocks for c in commands(b) if "churnformer-train" in c)
    for name in ("events.csv", "customers.csv"):
        (tmp_path / name).symlink_to(user_dir / name)
    run_all([train.replace("events.parquet", "events.csv")], tmp_path)
    csv_run, parquet_run = tmp_path / "runs" / "first", user_dir / "runs" / "first"
    assert (csv_run / "metrics.json").read_text() == (parquet_run / "metrics.json").read_text()
    pd.testing.assert_frame_equal(
        pd.read_parquet(csv_run / "predictions.parquet"), pd.read_parquet(parquet_run / "predictions.parquet")
    )


def test_month_after_month_monitor_outcomes_and_backtest(day_one, user_dir: Path) -> None:
    """The section's commands after Day one's (its run and scores): drift against a run and against the model,
    past runs as one table, and a backtest, each with the outputs the section names."""
    results = run_all([c for b in code_blocks(page_text(MONTHLY), "bash") for c in commands(b)], user_dir)
    for out in ("monitoring", "monitoring-vs-model"):
        assert {"drift.json", "drift.md", "drift.png"} <= {p.name for p in (user_dir / out).iterdir()}
    outcomes = pd.read_csv(user_dir / "outcomes" / "outcomes.csv")
    assert outcomes["status"].tolist() == ["evaluated", "pending"]  # the second run's horizon is not over yet
    table = pd.read_csv(user_dir / "backtest" / "backtest.csv")
    assert set(table["model"]) == {"churnformer", "lightgbm", "btyd"} and table["cutoff"].nunique() == 2
    assert any(r.stdout.startswith("model: churn = ") for r in results)  # the model card's line, first


def test_notebook_example(user_dir: Path, tmp_path: Path) -> None:
    (example,) = code_blocks(section("Day one", GETTING_STARTED), "python")
    events_df = pd.read_parquet(user_dir / "events.parquet")
    customers_df = pd.read_csv(user_dir / "customers.csv", dtype={"user": str})
    example = example.replace('overrides=["', f'overrides=["{TINY}", "')
    assert NOTEBOOK_EPOCHS in example
    example = example.replace(NOTEBOOK_EPOCHS, "trainer.max_epochs=1")  # experiment=quick's one epoch
    namespace = {"events_df": events_df, "customers_df": customers_df}
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        exec(compile(example, "README.md", "exec"), namespace)  # the README's own example
    finally:
        os.chdir(cwd)
    scores = namespace["scores"]
    assert set(scores["customer_id"]) == set(events_df["user"])
    assert (tmp_path / "runs" / "nb" / "model.onnx").is_file()


def test_export_with_int8_check_on_a_column_mapped_run(
    day_one, user_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 check rescores the run's own (column-mapped) log, named relative to the user's directory: it
    keeps a checked model or refuses it, and never leaves an unchecked one behind. The export's entry point, in
    this process, there (Day one ran the console script)."""
    output = tmp_path / "model.onnx"
    monkeypatch.chdir(user_dir)
    result = run_in_process(
        "churnformer-export", "ckpt=runs/first/checkpoints/last.ckpt", f"output={output}", "quantize=true"
    )
    int8 = tmp_path / "model.int8.onnx"
    assert result.returncode in (0, 2), result.err[-3000:]
    assert "int8 quantization on" in result.out + result.err  # the check ran
    assert int8.is_file() == (result.returncode == 0)
