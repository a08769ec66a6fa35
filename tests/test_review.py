"""Experiment review: TensorBoard content, Optuna sweeps in one log directory, run records, run table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from churnformer.review import HEAD_METRICS
from churnformer.runs import collect_runs, main, runs_table
from tests.conftest import TRAIN_OVERRIDES, run_cli

EVERYTHING = {"scalars": 0, "images": 0, "tensors": 0}


def read_events(run_dir: Path) -> list[EventAccumulator]:
    accumulators = []
    for path in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance=EVERYTHING)
        accumulator.Reload()
        accumulators.append(accumulator)
    return accumulators


def plugin_tags(accumulators: list[EventAccumulator], plugin: str) -> set[str]:
    tags: set[str] = set()
    for accumulator in accumulators:
        try:
            tags |= set(accumulator.PluginTagToContent(plugin))
        except KeyError:
            continue
    return tags


def test_scalars_are_grouped_per_head_with_train_and_validation(trained_run: Path) -> None:
    scalars = {tag for a in read_events(trained_run) for tag in a.Tags()["scalars"]}
    for head, metrics in HEAD_METRICS.items():
        for metric in metrics:
            assert {f"{head}/{metric}/train", f"{head}/{metric}/val"} <= scalars, (head, metric)
    assert "optim/lr" in scalars


def test_custom_scalar_layout_architecture_pr_curve_and_figures(trained_run: Path) -> None:
    accumulators = read_events(trained_run)
    assert "custom_scalars__config__" in plugin_tags(accumulators, "custom_scalars")
    assert "churn/pr_curve" in plugin_tags(accumulators, "pr_curves")
    assert {"model/architecture/text_summary", "run/info/text_summary", "run/config/text_summary"} <= plugin_tags(
        accumulators, "text"
    )
    images = {tag for a in accumulators for tag in a.Tags()["images"]}
    assert {"churn/calibration", "churn/roc", "deciles/lift", "spend/predicted_vs_actual"} <= images
    first = next(a for a in accumulators if "churn/roc" in a.Tags()["images"])
    assert first.Images("churn/roc")[-1].encoded_image_string.startswith(b"\x89PNG")
    # one figure per validation epoch (2 epochs in the fixture run)
    assert len(first.Images("churn/calibration")) == 2


def test_hparams_tab_has_knobs_and_final_metrics(trained_run: Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulators = read_events(trained_run)
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= plugin_tags(accumulators, "hparams")
    holder = next(a for a in accumulators if "_hparams_/experiment" in plugin_tags([a], "hparams"))
    content = holder.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {m.name.tag for m in experiment.metric_infos}
    assert {"hparams/churn/auroc/val", "hparams/spend/gini/val", "hparams/joint/loss/val"} <= metric_tags
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = dict(session.session_start_info.hparams)
    assert hparams["model.network.d_model"].number_value == 16
    assert hparams["data.cutoff"].string_value == "2023-09-30"
    final = json.loads((trained_run / "metrics.json").read_text())
    logged = holder.Scalars("hparams/churn/auroc/val")[-1].value
    assert logged == pytest.approx(final["churn/auroc/val"], abs=1e-6)


def test_run_directory_records_what_reproduces_it(trained_run: Path, tiny_world) -> None:
    info = json.loads((trained_run / "run_info.json").read_text())
    events, customers = tiny_world
    assert info["data"]["events"]["sha256"] == hashlib.sha256(events.read_bytes()).hexdigest()
    assert info["data"]["customers"]["sha256"] == hashlib.sha256(customers.read_bytes()).hexdigest()
    assert info["data"]["cutoff"] == "2023-09-30" and info["data"]["horizon_days"] == 60
    assert info["seed"] == 0 and info["churnformer"]
    assert info["libraries"]["torch"].startswith("2.") and "git_commit" in info
    config = OmegaConf.load(trained_run / "config.yaml")
    assert config.data.events == str(events)  # resolved, not interpolations


@pytest.fixture(scope="module")
def sweep_dir(tiny_world, tmp_path_factory) -> Path:
    events, customers = tiny_world
    root = tmp_path_factory.mktemp("sweep")
    run_cli(
        "churnformer-train",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TRAIN_OVERRIDES,
        "trainer.max_epochs=1",
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.sweep.dir={root}",
        cwd=root,
    )
    return root


def test_optuna_sweep_trials_share_one_log_directory(sweep_dir: Path) -> None:
    trials = sorted(p.parent.parent for p in sweep_dir.glob("*/tensorboard/hparams.yaml"))
    assert [t.name for t in trials] == ["0", "1"]
    configs = [OmegaConf.load(t / "config.yaml") for t in trials]
    assert configs[0].model.optimizer.lr != configs[1].model.optimizer.lr  # the sweeper chose the values
    for trial in trials:
        assert "_hparams_/session_start_info" in plugin_tags(read_events(trial), "hparams")
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = min(json.loads((t / "metrics.json").read_text())["joint/loss/val"] for t in trials)
    assert results.best_value == pytest.approx(best)


def test_runs_table_ranks_the_sweep(sweep_dir: Path, capsys) -> None:
    assert main([str(sweep_dir), "--sort", "joint/loss/val"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "model.optimizer.lr" in lines[0]
    table = runs_table(collect_runs(sweep_dir), "joint/loss/val")
    assert table["joint/loss/val"].is_monotonic_increasing  # a loss: lowest first
    table = runs_table(collect_runs(sweep_dir), "churn/auroc/val")
    assert table["churn/auroc/val"].is_monotonic_decreasing


def test_runs_table_rejects_unknown_metric(sweep_dir: Path, capsys) -> None:
    assert main([str(sweep_dir), "--sort", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_ddp_under_multirun_is_refused(tiny_world, tmp_path: Path) -> None:
    events, _ = tiny_world
    result = run_cli(
        "churnformer-train",
        "-m",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *TRAIN_OVERRIDES,
        f"data.events={events}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "Lightning issue 11300" in result.stderr and "Traceback" not in result.stderr
