"""Experiment review, read back with TensorBoard's own event reader as a reviewer's TensorBoard would: clean
per-epoch curves, train and validation as sibling runs, the best checkpoint apart, HPARAMS, sweeps, the
run table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from churnformer.schema import RUN_EVALUATION
from churnformer.training.metrics import KIND_METRICS
from churnformer.training.runs import collect_runs, main, runs_table
from tests.conftest import TRAIN_OVERRIDES, run_cli, run_in_process

EVERYTHING = {"scalars": 0, "images": 0, "tensors": 0}


def tensorboard(run_dir: Path) -> EventMultiplexer:
    """The run's TensorBoard directory as TensorBoard reads it: runs ".", "train" and "val"."""
    multiplexer = EventMultiplexer(size_guidance=EVERYTHING)
    multiplexer.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    multiplexer.Reload()
    return multiplexer


def hparams_data(multiplexer: EventMultiplexer, tag: str) -> plugin_data_pb2.HParamsPluginData:
    content = multiplexer.PluginRunToTagToContent("hparams")["."][tag]
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def test_train_and_validation_are_sibling_runs_with_the_same_tags(trained_run: Path) -> None:
    board = tensorboard(trained_run)
    assert set(board.Runs()) == {".", "train", "val"}
    train, val = (set(board.GetAccumulator(run).Tags()["scalars"]) for run in ("train", "val"))
    groups = {"churn": "probability", "spend": "expectation", "joint": None}
    expected = {
        f"{group}/{metric}" for group, kind in groups.items() for metric in ("loss", *KIND_METRICS.get(kind, ()))
    }
    assert expected <= train and expected <= val
    assert {"optim/lr", "joint/loss_per_step"} <= train  # step-level curves, training only
    assert not any(tag.endswith(("/train", "/val")) or tag.startswith("hparams/") for tag in train | val)
    # The step loss is handed to Lightning only on the steps it writes: the same steps as the learning rate.
    loss_steps = [event.step for event in board.Scalars("train", "joint/loss_per_step")]
    assert loss_steps and loss_steps == [event.step for event in board.Scalars("train", "optim/lr")]


def test_validation_curves_have_one_point_per_finished_epoch(trained_run: Path) -> None:
    """The best checkpoint's final evaluation adds no point after the last epoch (it goes to best/)."""
    board = tensorboard(trained_run)
    epochs = OmegaConf.load(trained_run / "config.yaml").trainer.max_epochs  # the fixture run stops there
    for tag in board.GetAccumulator("val").Tags()["scalars"]:
        steps = [event.step for event in board.Scalars("val", tag)]
        assert len(steps) == epochs and steps == sorted(set(steps)), tag
    pr_steps = [event.step for event in board.Tensors("val", "churn/pr_curve")]
    assert pr_steps == [event.step for event in board.Scalars("val", "churn/auroc")]
    assert len(board.Images("val", "churn/calibration")) == epochs


def test_best_checkpoint_has_tags_of_its_own_equal_to_metrics_json(trained_run: Path) -> None:
    board = tensorboard(trained_run)
    final = json.loads((trained_run / "metrics.json").read_text())
    (epoch,) = board.Scalars(".", "best/epoch")
    for name, value in final.items():
        (point,) = board.Scalars(".", "best/" + name.removesuffix("/val"))
        assert point.value == pytest.approx(value, rel=1e-6, abs=1e-6) and point.step == epoch.step, name
    # the best epoch's validation curve point is the same evaluation
    val_points = [event.value for event in board.Scalars("val", "churn/auroc")]
    assert min(abs(value - final["churn/auroc/val"]) for value in val_points) < 1e-6
    images = board.GetAccumulator(".").Tags()["images"]
    assert {"best/churn/roc", "best/churn/calibration", "best/churn/deciles", "best/spend/deciles"} <= set(images)
    assert all(len(board.Images(".", tag)) == 1 for tag in images)
    assert board.Images(".", "best/churn/roc")[0].encoded_image_string.startswith(b"\x89PNG")


def test_metrics_over_the_horizon_grid_are_charted_against_the_horizon(trained_run: Path) -> None:
    """``best/horizons/<metric>``: one point per observed horizon, at its number of days, equal to the
    validation report of the exported model; the survival summaries and the grid figures once."""
    board = tensorboard(trained_run)
    report = json.loads((trained_run / RUN_EVALUATION / "metrics.json").read_text())
    points = board.Scalars(".", "best/horizons/churn_auc")
    assert len(points) >= 2 and [p.step for p in points] == sorted(p.step for p in points)
    for point in points:
        assert point.value == pytest.approx(report[f"churn_auc_{point.step}d"], abs=1e-6)
    (c_index,) = board.Scalars(".", "best/survival/c_index")
    assert c_index.value == pytest.approx(report["survival_c_index"], abs=1e-6)
    images = board.GetAccumulator(".").Tags()["images"]
    assert {"best/horizons/survival_and_spend", "best/horizons/churn_calibration"} <= set(images)


def test_pr_curve_reaches_low_recall(trained_run: Path) -> None:
    """Thresholds on the quantiles of the predictions, so the curve starts near recall 0."""
    import numpy as np
    from tensorboard.util import tensor_util

    (event,) = tensorboard(trained_run).Tensors(".", "best/churn/pr_curve")
    data = tensor_util.make_ndarray(event.tensor_proto)  # rows: tp, fp, tn, fn, precision, recall
    recall = data[5]
    assert recall.max() == pytest.approx(1.0) and recall[np.nonzero(data[0] + data[1])].min() < 0.05


def test_hparams_show_every_knob_and_final_metric_under_display_names(trained_run: Path) -> None:
    board = tensorboard(trained_run)
    experiment = hparams_data(board, "_hparams_/experiment").experiment
    shown = {info.display_name: info for info in experiment.hparam_infos}
    assert {"lr", "d_model", "n_layers", "dropout", "batch size", "cutoff", "horizon (days)"} <= set(shown)
    metrics = [info.display_name for info in experiment.metric_infos]
    assert metrics[:2] == ["churn AUROC (best)", "spend Gini (best)"]
    assert {"spend Spearman (best)", "spend MAE (best)", "churn ECE (best)"} <= set(metrics)
    assert all(board.Scalars(".", info.name.tag) for info in experiment.metric_infos)
    start = hparams_data(board, "_hparams_/session_start_info").session_start_info
    assert start.group_name == trained_run.name  # the trial is named after the run directory
    assert start.hparams["model.network.d_model"].string_value == "16"  # integers shown as integers
    assert start.hparams["model.optimizer.lr"].number_value == pytest.approx(0.001)
    assert start.hparams["data.cutoff"].string_value == "2023-09-30"
    assert start.hparams["model.network.backbone._target_"].string_value == "Transformer"


def test_hparams_put_the_knobs_given_on_the_command_line_first(cli_run: Path) -> None:
    """TensorBoard shows the first five knobs by default: those the run's command line set come first."""
    experiment = hparams_data(tensorboard(cli_run), "_hparams_/experiment").experiment
    differs = [info.name for info in experiment.hparam_infos if info.differs]
    assert "model.network.d_model" in differs and "seed" not in differs
    assert experiment.hparam_infos[0].differs


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


def test_optuna_sweep_trials_are_named_rows_with_their_knobs(sweep_dir: Path) -> None:
    trials = sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))
    assert [t.name for t in trials] == ["0", "1"]
    configs = [OmegaConf.load(t / "config.yaml") for t in trials]
    assert configs[0].model.optimizer.lr != configs[1].model.optimizer.lr  # the sweeper chose the values
    for trial in trials:
        board = tensorboard(trial)
        start = hparams_data(board, "_hparams_/session_start_info").session_start_info
        assert start.group_name == f"trial {trial.name}"
        experiment = hparams_data(board, "_hparams_/experiment").experiment
        lr = next(info for info in experiment.hparam_infos if info.name == "model.optimizer.lr")
        assert lr.differs and (lr.domain_interval.min_value, lr.domain_interval.max_value) == (0.0003, 0.005)
        d_model = next(info for info in experiment.hparam_infos if info.name == "model.network.d_model")
        assert [v.string_value for v in d_model.domain_discrete.values] == ["32", "64", "128"] and d_model.differs
        differs = {info.name for info in experiment.hparam_infos if info.differs}
        assert differs == {  # the swept knobs: the shared command line (data.cutoff, ...) does not tell trials apart
            "model.optimizer.lr",
            "model.network.d_model",
            "model.network.n_layers",
            "model.network.dropout",
            "model.heads.spend.weight",
        }
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    best = min(json.loads((t / "metrics.json").read_text())["joint/loss/val"] for t in trials)
    assert results.best_value == pytest.approx(best)


def test_runs_table_ranks_the_sweep(sweep_dir: Path, capsys) -> None:
    assert main([str(sweep_dir), "--sort", "joint/loss/val"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "lr" in lines[0].split() and "status" in lines[0].split()
    table = runs_table(collect_runs(sweep_dir), "joint/loss/val")
    assert table["joint/loss/val"].is_monotonic_increasing  # a loss: lowest first
    table = runs_table(collect_runs(sweep_dir), "churn/auroc/val")
    assert table["churn/auroc/val"].is_monotonic_decreasing


def test_runs_table_rejects_unknown_metric(sweep_dir: Path, capsys) -> None:
    assert main([str(sweep_dir), "--sort", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_torchrun_without_a_run_directory_is_refused(
    tiny_world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every rank torchrun starts would name its own time-stamped run directory: refused before any data."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.chdir(tmp_path)
    result = run_in_process("churnformer-train", "trainer=ddp", *TRAIN_OVERRIDES, f"data.events={tiny_world[0]}")
    assert result.code == 2
    assert result.error_line.startswith("error: launched by torchrun") and "hydra.run.dir=DIR" in result.error_line


def test_ddp_under_multirun_is_refused(tiny_world, tmp_path: Path) -> None:
    events, _ = tiny_world
    result = run_in_process(
        "churnformer-train",
        "-m",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *TRAIN_OVERRIDES,
        f"data.events={events}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    )
    assert result.code == 2  # Hydra reports the launch of the sweep first; then the one error line
    assert result.err.splitlines()[-1].startswith("error: ") and "Lightning issue 11300" in result.err
