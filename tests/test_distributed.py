"""Distributed training as users run it: ``trainer=ddp`` with the default callbacks and progress bar, on a
customer count that splits unevenly across 2 ranks, scoring after training; metrics over the whole
validation set; launched by torchrun; killed and resumed. A hang fails the test with every rank's stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

from churnformer.artifacts.checkpoint import load_checkpoint
from churnformer.data.sources import EventLogFiles
from churnformer.schema import META_HORIZON_DAYS, META_HORIZONS
from churnformer.training.datamodule import ChurnDataModule, DataSettings
from churnformer.training.module import evaluate_network
from churnformer.training.sampler import LengthBucketBatchSampler
from tests.conftest import BIN, TINY_CUTOFF, TRAIN_OVERRIDES, kill_mid_epoch

HANG_TIMEOUT = 240  # seconds; a 2-rank run of the tiny world takes well under a minute
# 48 customers a batch: about 7 training batches (odd, so the ranks' shares differ before padding) and 2
# validation batches. One thread per rank, so runs launched differently do the same arithmetic.
DDP_OVERRIDES = (
    *(o for o in TRAIN_OVERRIDES if not o.startswith("data.batch_size")),
    "data.batch_size=48",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "threads=1",
)

pytestmark = pytest.mark.slow


def run_ranks(command: list[str], cwd: Path, timeout: float = HANG_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a multi-process command in its own process group; if it outlives ``timeout``, every process of the
    group dumps its Python stacks (faulthandler, on SIGABRT) and the test fails with them."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONFAULTHANDLER": "1"}
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGABRT)
        out, err = process.communicate(timeout=60)
        pytest.fail(f"hung for {timeout} s; the ranks' stacks:\n{err[-20000:]}")
    if process.returncode != 0:
        pytest.fail(f"exit {process.returncode}:\n{out[-3000:]}\n{err[-5000:]}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def torchrun(*overrides: str) -> list[str]:
    """torchrun with 2 processes on this host: the stand-in for 2 nodes (``--nnodes``/``--node-rank`` there)."""
    return [str(BIN / "torchrun"), "--nproc-per-node=2", "--standalone", str(BIN / "churnformer-train"), *overrides]


@pytest.fixture(scope="module")
def ddp_run(tiny_world: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``churnformer-train trainer=ddp`` with the default progress bar (rich is installed with the dev extras)
    and scoring after training."""
    events, customers = tiny_world
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    command = [
        str(BIN / "churnformer-train"),
        *DDP_OVERRIDES,
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={run_dir}",
    ]
    return run_dir, run_ranks(command, run_dir.parent).stdout


def test_ddp_run_finishes_with_progress_bar_and_scoring(ddp_run: tuple[Path, str]) -> None:
    run_dir, stdout = ddp_run
    for name in ("model.onnx", "metrics.json", "predictions.parquet", "calibration.json"):
        assert (run_dir / name).is_file(), name
    assert "Epoch 1/1" in stdout  # the progress bar ran
    assert "trained 2 epochs" in stdout


def test_ddp_validation_metrics_are_over_the_whole_validation_set(ddp_run: tuple[Path, str], tiny_world) -> None:
    """Each epoch's validation metrics gather every rank's share: at the best epoch they equal a single-process
    evaluation of the best checkpoint on all validation customers."""
    run_dir, _ = ddp_run
    best = next((run_dir / "checkpoints").glob("epoch*.ckpt"))
    network, hparams = load_checkpoint(best)
    events, customers = tiny_world
    from churnformer.defaults import yaml_defaults

    settings = DataSettings.defaults(
        seed=0,
        cutoff=TINY_CUTOFF,
        horizon_days=60,
        batch_size=48,
        features={**yaml_defaults("data/settings/default")["features"], "max_len": 32},
    )
    datamodule = ChurnDataModule(EventLogFiles(events, customers, {}), settings)
    datamodule.setup("fit")
    metadata = hparams["export_metadata"]
    main = metadata[META_HORIZONS].index(metadata[META_HORIZON_DAYS])
    single, _ = evaluate_network(network, datamodule.validation_loader(), metadata[META_HORIZONS], main)

    board = EventMultiplexer(size_guidance={"scalars": 0})
    board.AddRunsFromDirectory(str(run_dir / "tensorboard"))
    board.Reload()
    best_epoch = int(board.Scalars(".", "validation_best/epoch")[0].value)
    for name, value in single.items():
        tag = name.removesuffix("/val")
        per_epoch = board.Scalars("val", tag)[best_epoch].value  # logged by the 2 ranks during training
        tolerance = 1e-6 if "auroc" in name else 1e-5  # float32 sums in another order: relative 1e-6 too
        assert per_epoch == pytest.approx(value, rel=1e-6, abs=tolerance), name
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["churn/auroc/val"] == pytest.approx(single["churn/auroc/val"], abs=1e-6)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_torchrun_killed_mid_epoch_resumes_to_the_uninterrupted_ddp_metrics(
    ddp_run: tuple[Path, str], tiny_world: tuple[Path, Path], tmp_path: Path
) -> None:
    """Launched by torchrun (what SLURM or a multi-node launch runs on each node), killed with SIGKILL mid-epoch,
    resumed with ckpt_path=last: the same metrics as the uninterrupted run launched by Lightning."""
    uninterrupted, _ = ddp_run
    events, customers = tiny_world
    killed = tmp_path / "killed"
    overrides = (
        *DDP_OVERRIDES,
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={killed}",
        "callbacks.last_checkpoint.train_time_interval=null",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        # The metrics compared are the best checkpoint's, computed before calibration and export: the resumed run
        # leaves both out (the uninterrupted run keeps them on).
        "calibrate=false",
        "export=false",
    )
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        torchrun(*overrides),
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
        start_new_session=True,
    )
    steps_per_epoch = torch.load(uninterrupted / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] // 2
    try:
        kill_mid_epoch(process, killed / "checkpoints" / "last.ckpt", steps_per_epoch, group=True)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    assert not (killed / "metrics.json").exists()
    resumed = run_ranks(torchrun(*overrides, "ckpt_path=last"), tmp_path)
    assert "resuming from" in resumed.stdout
    got = json.loads((killed / "metrics.json").read_text())
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


@pytest.mark.parametrize("batch_tokens", [None, 700])
@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_rank_gets_the_same_number_of_batches(world_size: int, shuffle: bool, batch_tokens: int | None) -> None:
    """Ranks that step a different number of times wait for each other forever. Training pads with repeated
    batches (every customer still trains each epoch); evaluation splits into a multiple of the ranks (each
    customer exactly once). The same with batches cut by a token budget."""
    lengths = np.random.default_rng(0).integers(1, 60, size=339)  # 7 batches of 48 and a remainder
    samplers = [
        LengthBucketBatchSampler(
            lengths, 48, shuffle=shuffle, seed=3, rank=rank, world_size=world_size, batch_tokens=batch_tokens
        )
        for rank in range(world_size)
    ]
    shares = [list(sampler) for sampler in samplers]
    assert len({len(share) for share in shares}) == 1
    assert all(len(share) == len(sampler) for share, sampler in zip(shares, samplers, strict=True))
    rows = [row for share in shares for batch in share for row in batch]
    assert set(rows) == set(range(len(lengths)))
    if not shuffle:
        assert sorted(rows) == list(range(len(lengths)))
    if batch_tokens is None:
        single = list(LengthBucketBatchSampler(lengths, 48, shuffle=shuffle, seed=3))
        assert len(single) == -(-len(lengths) // 48)
