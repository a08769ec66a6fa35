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
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

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
    # Every horizon of the grid, every epoch, in both runs: one tag per horizon.
    days = {t.rsplit("/", 1)[1] for t in val if t.startswith("horizons/churn_auc/")}
    assert len(days) >= 2 and "60d" in days  # the fixture's main horizon among them
    expected |= {f"horizons/{m}/{d}" for m in ("churn_auc", "churn_ece", "spend_gini") for d in days}
    assert expected <= train and expected <= val
    assert {"optim/lr", "optim/grad_norm", "joint/loss_per_step"} <= train  # step-level curves, training only
    assert not any(tag.endswith(("/train", "/val")) or tag.startswith("hparams/") for tag in train | val)
    # The step loss and the gradient norm are logged only on the steps Lightning writes: the learning rate's.
    loss_steps = [event.step for event in board.Scalars("train", "joint/loss_per_step")]
    assert loss_steps and loss_steps == [event.step for event in board.Scalars("train", "optim/lr")]
    assert loss_steps == [event.step for event in board.Scalars("train", "optim/grad_norm")]
    assert loss_steps == [event.step for event in board.Scalars("train", "joint/loss_epoch_mean_so_far")]


def test_every_scalar_is_at_a_training_step(trained_run: Path) -> None:
    """Epoch metrics, per-horizon ones and the best checkpoint's at the step an epoch ended; step curves within
    the run's steps. No scalar has a horizon or an epoch number for its step."""
    board = tensorboard(trained_run)
    epoch_ends = {event.step for event in board.Scalars("val", "joint/loss")}
    last = max(epoch_ends)
    step_level = {"optim/lr", "optim/grad_norm", "joint/loss_per_step", "joint/loss_epoch_mean_so_far", "epoch"}
    for run in (".", "train", "val"):
        for tag in board.GetAccumulator(run).Tags()["scalars"]:
            steps = {event.step for event in board.Scalars(run, tag)}
            if tag in step_level:
                assert all(0 <= step <= last for step in steps), (run, tag)
            else:
                assert steps <= epoch_ends, (run, tag, steps, epoch_ends)


def test_validation_curves_have_one_point_per_finished_epoch(trained_run: Path) -> None:
    """The best checkpoint's final evaluation adds no point after the last epoch (it goes to validation_best/);
    figures and PR curves are at the epoch's number, so the image slider reads epochs."""
    board = tensorboard(trained_run)
    epochs = OmegaConf.load(trained_run / "config.yaml").trainer.max_epochs  # the fixture run stops there
    for tag in board.GetAccumulator("val").Tags()["scalars"]:
        steps = [event.step for event in board.Scalars("val", tag)]
        assert len(steps) == epochs and steps == sorted(set(steps)), tag
    assert [event.step for event in board.Tensors("val", "churn/pr_curve")] == list(range(epochs))
    assert [image.step for image in board.Images("val", "churn/calibration")] == list(range(epochs))


def test_best_checkpoint_has_tags_of_its_own_equal_to_metrics_json(trained_run: Path) -> None:
    """At the step its epoch ended, beside the curves; its figures once, unless it is the last epoch, whose
    figures the val run holds already (a note in Text says so)."""
    board = tensorboard(trained_run)
    final = json.loads((trained_run / "metrics.json").read_text())
    (epoch,) = board.Scalars(".", "validation_best/epoch")
    for name, value in final.items():
        (point,) = board.Scalars(".", "validation_best/" + name.removesuffix("/val"))
        assert point.value == pytest.approx(value, rel=1e-6, abs=1e-6) and point.step == epoch.step, name
    # the best epoch's validation curve point is the same evaluation, at the same step
    (val_point,) = [event for event in board.Scalars("val", "churn/auroc") if event.step == epoch.step]
    assert val_point.value == pytest.approx(final["churn/auroc/val"], abs=1e-6)
    images = set(board.GetAccumulator(".").Tags()["images"])
    best_figures = {f"validation_best/{tag}" for tag in ("churn/roc", "churn/calibration", "churn/deciles")}
    last_epoch = OmegaConf.load(trained_run / "config.yaml").trainer.max_epochs - 1
    texts = board.GetAccumulator(".").Tags()["tensors"]
    if int(epoch.value) == last_epoch:
        assert not best_figures & images and "validation_best/figures/text_summary" in texts
    else:
        assert best_figures <= images and "validation_best/figures/text_summary" not in texts
        assert board.Images(".", "validation_best/churn/roc")[0].encoded_image_string.startswith(b"\x89PNG")


def test_one_ece_per_checkpoint_horizon_and_calibration_state(trained_run: Path) -> None:
    """The network's ECE (uncalibrated) at the main horizon is one number wherever it shows; the exported
    model's (calibrated) by horizon is the evaluation report's."""
    from tensorboard.util import tensor_util

    board = tensorboard(trained_run)
    final = json.loads((trained_run / "metrics.json").read_text())
    main = OmegaConf.load(trained_run / "config.yaml").data.horizon_days
    (raw,) = board.Scalars(".", "validation_best/churn/ece")
    (raw_at_main,) = board.Scalars(".", f"validation_best/horizons/churn_ece/{main:g}d")
    assert raw.value == pytest.approx(raw_at_main.value, abs=1e-7) == final["churn/ece/val"]
    report = json.loads((trained_run / RUN_EVALUATION / "metrics.json").read_text())
    (event,) = board.Tensors(".", "validation_best/calibrated/horizons/text_summary")
    table = tensor_util.make_ndarray(event.tensor_proto).item().decode()
    assert "calibrated" in table and f"{report[f'churn_ece_{main:g}d']:.4f}" in table
    assert f"{report[f'churn_auc_{main:g}d']:.4f}" in table


def test_metrics_over_the_horizon_grid_are_a_figure_and_a_table(trained_run: Path) -> None:
    """The exported model's metrics by horizon: a figure of each against the horizon and a table, the
    survival summaries at the best checkpoint's step, the grid figures, once."""
    board = tensorboard(trained_run)
    report = json.loads((trained_run / RUN_EVALUATION / "metrics.json").read_text())
    (epoch,) = board.Scalars(".", "validation_best/epoch")
    (c_index,) = board.Scalars(".", "validation_best/calibrated/survival/c_index")
    assert c_index.value == pytest.approx(report["survival_c_index"], abs=1e-6) and c_index.step == epoch.step
    images = board.GetAccumulator(".").Tags()["images"]
    expected = {f"validation_best/calibrated/horizons{suffix}" for suffix in ("", "/survival_and_spend")}
    assert expected | {"validation_best/calibrated/horizons/churn_calibration"} <= set(images)


def test_pr_curve_reaches_low_recall(trained_run: Path) -> None:
    """Thresholds on the quantiles of the predictions, so the curve starts near recall 0."""
    import numpy as np
    from tensorboard.util import tensor_util

    event = tensorboard(trained_run).Tensors("val", "churn/pr_curve")[-1]
    data = tensor_util.make_ndarray(event.tensor_proto)  # rows: tp, fp, tn, fn, precision, recall
    recall = data[5]
    assert recall.max() == pytest.approx(1.0) and recall[np.nonzero(data[0] + data[1])].min() < 0.05


def test_hparams_show_every_knob_and_final_metric_under_display_names(trained_run: Path) -> None:
    board = tensorboard(trained_run)
    experiment = hparams_data(board, "_hparams_/experiment").experiment
    shown = {info.display_name: info for info in experiment.hparam_infos}
    assert {"lr", "d_model", "n_layers", "dropout", "batch size", "cutoff", "horizon (days)"} <= set(shown)
    metrics = [info.display_name for info in experiment.metric_infos]
    label = "(val, best epoch, uncalibrated)"
    assert metrics[:2] == [f"churn AUROC {label}", f"spend Gini {label}"]
    assert {f"spend Spearman {label}", f"spend MAE {label}", f"churn ECE {label}"} <= set(metrics)
    assert all(board.Scalars(".", info.name.tag) for info in experiment.metric_infos)
    start = hparams_data(board, "_hparams_/session_start_info").session_start_info
    assert start.group_name == trained_run.name  # the trial is named after the run directory
    values = {name.partition(":")[2]: value for name, value in start.hparams.items()}
    assert values["model.network.d_model"].number_value == 16  # integers as numbers
    assert shown["d_model"].type == api_pb2.DATA_TYPE_FLOAT64
    assert values["model.optimizer.lr"].number_value == pytest.approx(0.001)
    assert values["data.cutoff"].string_value == "2023-09-30"
    assert values["model.network.backbone._target_"].string_value == "Transformer"
    assert values["model.network.wide"].bool_value is True


def test_hparams_hold_every_training_knob_the_optimizer_and_architecture_first(trained_run: Path) -> None:
    """Every leaf of the composed config under model, data, pretrain and the trainer is a column, but for the
    paths, column names and logging settings named here; TensorBoard sorts the columns by name, and the names
    put the optimizer's, then the architecture's first."""
    config = OmegaConf.load(trained_run / "config.yaml")
    not_knobs = (
        "model._target_",
        "model.optimizer._partial_",
        "data.source.",
        "data.columns.",
        "data.events",
        "data.customers",
        "data.dataset_dir",
        "data.seed",
        "data.churn_definition",
        "data.decline_threshold",
        "trainer._target_",
        "trainer.default_root_dir",
        "trainer.log_every_n_steps",
        "trainer.use_distributed_sampler",
        "trainer.num_sanity_val_steps",
        "trainer.enable_model_summary",
        "trainer.enable_progress_bar",
        "trainer.plugins",
    )

    def leaves(node: object, prefix: str) -> list[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [key for name, child in node.items() for key in leaves(child, f"{prefix}.{name}")]

    expected = {
        key
        for section in ("model", "data", "pretrain", "trainer")
        for key in leaves(OmegaConf.to_container(config[section]), section)
        if OmegaConf.select(config, key) is not None
        and (key == "data.source._target_" or not any(key == n or key.startswith(n) for n in not_knobs))
    }
    experiment = hparams_data(tensorboard(trained_run), "_hparams_/experiment").experiment
    names = sorted(info.name for info in experiment.hparam_infos if not info.differs)
    keys = {name.partition(":")[2] for name in names}
    assert expected <= keys, sorted(expected - keys)
    assert {"seed", "churn_definition", "decline_threshold", "calibrate"} <= keys
    assert [name.partition(":")[2] for name in names[:3]] == [
        "model.optimizer.lr",
        "model.optimizer.weight_decay",
        "model.optimizer._target_",
    ]


def test_hparams_put_the_knobs_given_on_the_command_line_first(cli_run: Path) -> None:
    """TensorBoard shows the first five knobs by default: those the run's command line set come first."""
    experiment = hparams_data(tensorboard(cli_run), "_hparams_/experiment").experiment
    differs = [info.name.partition(":")[2] for info in experiment.hparam_infos if info.differs]
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
        infos = {info.name.partition(":")[2]: info for info in experiment.hparam_infos}
        lr = infos["model.optimizer.lr"]
        assert lr.differs and (lr.domain_interval.min_value, lr.domain_interval.max_value) == (0.0003, 0.005)
        d_model = infos["model.network.d_model"]
        assert [v.number_value for v in d_model.domain_discrete.values] == [32, 64, 128] and d_model.differs
        differs = {key for key, info in infos.items() if info.differs}
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
    overrides = ("trainer=ddp", *TRAIN_OVERRIDES, f"data.events={tiny_world[0]}")
    result = run_in_process("churnformer-train", *overrides, temporary_run_dir=False)
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
