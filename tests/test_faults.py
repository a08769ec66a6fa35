"""Fault tolerance: a training process killed with SIGKILL mid-epoch resumes from its last checkpoint
(``ckpt_path=last`` in the same run directory) and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from churnformer.training.sampler import LengthBucketBatchSampler
from tests.conftest import BIN, TRAIN_OVERRIDES, kill_mid_epoch, run_cli, run_in_process

MAX_EPOCHS = 4
# Mid-epoch checkpoints every 2 steps (the tiny world has 5 training batches per epoch); one thread per
# process, so both runs do the same arithmetic whatever the machine.
RESUMABLE_OVERRIDES = (
    *(o for o in TRAIN_OVERRIDES if not o.startswith("trainer.max_epochs=")),
    f"trainer.max_epochs={MAX_EPOCHS}",
    "threads=1",
    "calibrate=false",
    "export=false",
    "callbacks.last_checkpoint.train_time_interval=null",
    "callbacks.last_checkpoint.every_n_train_steps=2",
)


def _state_dict(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.slow
def test_run_killed_mid_epoch_resumes_to_the_same_metrics(tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    """The killed and the resumed run train from a featurized dataset on disk (``data.dataset_dir``: the killed
    run writes it, the resumed one reads it), the uninterrupted one in memory: the same end either way."""
    events, customers = tiny_world
    log = (*RESUMABLE_OVERRIDES, f"data.events={events}", f"data.customers={customers}")
    overrides = (*log, f"data.dataset_dir={tmp_path / 'datasets'}")
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"

    run_cli("churnformer-train", *log, f"hydra.run.dir={uninterrupted}", cwd=tmp_path)
    final = _state_dict(uninterrupted)
    steps_per_epoch = final["global_step"] // MAX_EPOCHS
    assert final["global_step"] == MAX_EPOCHS * steps_per_epoch and steps_per_epoch > 2

    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        [str(BIN / "churnformer-train"), *overrides, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    try:
        at_kill = kill_mid_epoch(process, killed / "checkpoints" / "last.ckpt", steps_per_epoch)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists()
    position = at_kill["ChurnDataModule"]["train_sampler"]
    assert position["epoch"] == at_kill["epoch"] and 0 < position["batches"] < steps_per_epoch

    (dataset,) = (tmp_path / "datasets").glob("*/manifest.json")
    written = dataset.stat().st_mtime_ns
    resumed = run_cli("churnformer-train", *overrides, f"hydra.run.dir={killed}", "ckpt_path=last", cwd=tmp_path)
    assert f"resuming from {killed / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert dataset.stat().st_mtime_ns == written  # read, not written again
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((uninterrupted / "metrics.json").read_text())
    again = _state_dict(killed)
    assert again["global_step"] == final["global_step"]
    for name, tensor in final["state_dict"].items():
        assert torch.equal(again["state_dict"][name], tensor), name


def test_resume_without_a_checkpoint_is_one_clear_error(tiny_world: tuple[Path, Path], tmp_path: Path) -> None:
    events, customers = tiny_world
    result = run_in_process(
        "churnformer-train",
        *TRAIN_OVERRIDES,
        f"data.events={events}",
        f"data.customers={customers}",
        f"hydra.run.dir={tmp_path / 'fresh'}",
        "ckpt_path=last",
    )
    assert "ckpt_path=last: nothing to resume, no last.ckpt in" in result.error_line


def test_sampler_reshuffles_each_epoch_and_resumes_mid_epoch() -> None:
    lengths = np.random.default_rng(0).integers(1, 50, size=100)

    def epoch(sampler: LengthBucketBatchSampler, number: int) -> list[list[int]]:
        sampler.set_epoch(number)
        return list(sampler)

    sampler = LengthBucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=1, pool_batches=2)
    first, second = epoch(sampler, 0), epoch(sampler, 1)
    assert first != second
    for batches in (first, second):
        assert sorted(row for batch in batches for row in batch) == list(range(100))

    iterator = iter(sampler)
    taken = [next(iterator) for _ in range(3)]
    saved = sampler.state_dict()
    assert saved == {"epoch": 1, "batches": 3} and taken == second[:3]

    restored = LengthBucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=1, pool_batches=2)
    restored.load_state_dict(saved)
    assert epoch(restored, 1) == second[3:]  # the rest of the interrupted epoch, then whole epochs
    assert epoch(restored, 2) == epoch(sampler, 2)


def test_token_budget_batches_fit_the_budget_and_vary_between_epochs_in_content_not_count() -> None:
    """Every batch holds at most batch_tokens padded tokens (rows x (longest + 1)) and batch_size rows, short
    histories share big batches, each epoch trains every customer once in as many batches as the last (the
    count Lightning's schedule was built for), and epochs differ in which customers share a batch."""
    lengths = np.random.default_rng(0).integers(1, 120, size=2000)
    sampler = LengthBucketBatchSampler(lengths, batch_size=64, shuffle=True, seed=1, batch_tokens=1000)
    epochs = []
    for number in range(3):
        sampler.set_epoch(number)
        epochs.append(list(sampler))
        batches = epochs[-1]
        assert len(batches) == len(sampler)
        assert sorted(row for batch in batches for row in batch) == list(range(len(lengths)))
        for batch in batches:
            assert len(batch) <= 64 and (len(batch) == 1 or len(batch) * (lengths[batch].max() + 1) <= 1000)
    longest = next(b for b in epochs[0] if lengths.argmax() in b)
    assert max(len(b) for b in epochs[0]) == 64 and len(longest) <= 1000 // 120
    assert {frozenset(b) for b in epochs[0]} != {frozenset(b) for b in epochs[1]}
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # deterministic for the seed and epoch
