"""Benchmark: training throughput, side by side with the bare step it is built from, and the machine's peak.

Usage::

    python -m scripts.benchmarks.train [--device cpu|cuda] [--record PATH] [--workdir DIR]
                                  [--large-events 10000000] [--large-customers 500000] [--no-large]
                                  [--override KEY=VALUE ...]

For each log, in a child process of its own (so peak RSS is that log's alone), with the default training
config (``churnformer-train``'s, plus ``--override``; ``trainer=gpu`` with ``--device cuda``):

* ``featurize_s``: reading the log and building the training set (every rolling cutoff);
* ``loop_seq_per_s``: sequences per second of the real training loop: Lightning's ``fit`` for one epoch with
  the configured callbacks, logger and progress bar, real length-bucketed batches collated as training does;
  the first :data:`WARMUP_BATCHES` batches are not counted;
* ``step_seq_per_s``: the ceiling: the same network, loss, augmentation, gradient clipping and AdamW step,
  outside Lightning and with no metrics or logging, on the very batches the loop just trained on (already
  collated and on the device). It runs interleaved with the loop, right after its step on the same batch
  (on every batch, or on an evenly spaced :data:`MAX_STEP_BATCHES` of a big epoch), so a noisy machine that
  speeds up or slows down during the run moves both numbers alike; its time is taken out of the loop's;
* ``loop_to_step_ratio``: the share of the ceiling the loop reaches;
* ``useful_gflops``: the loop's useful (non-padding) FLOPs per second, three times the forward FLOPs of
  ``scripts.common.models.useful_flops`` (forward plus a backward of twice its cost); ``peak_matmul_gflops``: a large
  matmul on the same device (fp32 on CPU, bf16 on CUDA: what the mixed-precision step multiplies in);
* ``epoch_s``: the first epoch's wall time, training and the validation that ends it (the bare steps' time
  taken out);
* ``peak_rss_mb`` (the child's, by ``scripts.common.measure``) and ``peak_gpu_mb`` (torch's peak allocation; null on
  CPU).

Logs: ``default``, the built-in synthetic world (20,000 customers; ``data=synthetic``), and ``large``, the
scoring benchmark's generated log (``scripts.common.logs.generate_events``: 500,000 customers and 10 M events over two
years, in ``--workdir``), read from Parquet through ``data=csv`` with the cutoff one year in.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from churnformer.console import silence_known_noise
from churnformer.schema import LABELS_BY_HORIZON, OBSERVED_BY_HORIZON, by_horizon
from churnformer.training.augment import hide_static_attributes
from churnformer.training.datamodule import ChurnDataModule
from churnformer.training.job import build_datamodule, build_module, build_trainer
from scripts.common import record
from scripts.common.measure import run_measured
from scripts.common.models import make_log, matmul_peak, useful_flops
from scripts.common.tables import render

WARMUP_BATCHES = 5
MAX_STEP_BATCHES = 400
LARGE_CUTOFF = "2023-12-31"  # one year into the generated log: the 365-day horizon is observed
TARGET_RATIO = 0.85
KEYS = (
    "device",
    "loop_seq_per_s",
    "step_seq_per_s",
    "loop_to_step_ratio",
    "useful_gflops",
    "peak_matmul_gflops",
    "epoch_s",
    "featurize_s",
    "peak_rss_mb",
    "peak_gpu_mb",
)


class BareStep:
    """The loop's computation alone: augmentation, forward, loss, backward, gradient clipping and the AdamW
    step of a network of the same config, on a batch already collated and on the device."""

    def __init__(self, cfg: DictConfig, datamodule: ChurnDataModule, device: str) -> None:
        module = build_module(cfg, datamodule).to(device)
        self.network = module.network.train()
        self.n_static_numeric = module.n_static_numeric
        self.optimizer = hydra.utils.instantiate(cfg.model.optimizer)(self.network.parameters())
        self.static_dropout = cfg.model.static_dropout
        self.clip = cfg.trainer.gradient_clip_val
        self.device = device

    @torch.enable_grad()
    def __call__(self, batch: dict[str, torch.Tensor]) -> None:
        batch = hide_static_attributes(batch, self.static_dropout, self.n_static_numeric)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device == "cuda"):
            labels = {label: batch[by_horizon(label)] for label in LABELS_BY_HORIZON}
            loss = self.network.heads.loss(self.network(batch), labels)["joint"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class LoopTimer(pl.Callback):
    """Times the first training epoch batch by batch and, right after every ``stride``-th batch, the bare step
    on that same batch (interleaved, so a machine that speeds up or slows down during the run moves both
    alike); the bare steps' time is taken out of the loop's. Batches before :data:`WARMUP_BATCHES` are not
    counted."""

    def __init__(self, bare: BareStep, stride: int) -> None:
        self.bare = bare
        self.stride = stride
        self.loop_s = self.step_s = self.bare_total_s = 0.0
        self.loop_sequences = self.step_sequences = 0
        self.epoch_started = self.epoch_ended = self._since = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_started = self._since = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        synchronize(self.bare.device)
        ended = time.perf_counter()
        if batch_idx >= WARMUP_BATCHES:
            self.loop_s += ended - self._since
            self.loop_sequences += len(batch[OBSERVED_BY_HORIZON])
        if batch_idx % self.stride == 0:
            self.bare(batch)
            synchronize(self.bare.device)
            self.bare_total_s += time.perf_counter() - ended
            if batch_idx >= WARMUP_BATCHES:
                self.step_s += time.perf_counter() - ended
                self.step_sequences += len(batch[OBSERVED_BY_HORIZON])
        self._since = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_ended = time.perf_counter()


def compose_config(
    large_log: Path | None, workdir: Path, device: str, overrides: list[str], output_dir: Path
) -> DictConfig:
    """``churnformer-train``'s config for the synthetic world (or ``large_log``), one epoch, in ``output_dir``."""
    if large_log is None:
        source = [f"paths.data_dir={workdir / 'data'}"]
    else:
        source = ["data=csv", f"data.events={large_log}", f"data.cutoff={LARGE_CUTOFF}"]
    with initialize_config_module("churnformer.conf", version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *source,
                *(["trainer=gpu"] if device == "cuda" else []),
                "trainer.max_epochs=1",
                f"paths.output_dir={output_dir}",
                *overrides,
            ],
        )


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(large_log: Path | None, workdir: Path, device: str, overrides: list[str]) -> dict[str, Any]:
    """One log's numbers (runs in its own process)."""
    silence_known_noise()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as output_dir:
        cfg = compose_config(large_log, workdir, device, overrides, Path(output_dir))
        pl.seed_everything(cfg.seed, workers=True)
        started = time.perf_counter()
        datamodule = build_datamodule(cfg, None, None)
        featurize_s = time.perf_counter() - started
        module = build_module(cfg, datamodule)
        batches = -(-len(datamodule.data.train_rows) // cfg.data.batch_size)
        timer = LoopTimer(BareStep(cfg, datamodule, device), stride=max(1, batches // MAX_STEP_BATCHES))
        callbacks = [hydra.utils.instantiate(c) for c in cfg.callbacks.values() if c]
        trainer = build_trainer(cfg, [*callbacks, timer])
        trainer.fit(module, datamodule=datamodule)
    loop, step = timer.loop_sequences / timer.loop_s, timer.step_sequences / timer.step_s
    lengths = np.minimum(datamodule.data.sequences.lengths[datamodule.data.train_rows], cfg.data.features.max_len)
    network = cfg.model.network
    flops = 3 * useful_flops(lengths, network.d_model, network.d_model * network.ff_multiplier, network.n_layers)
    epoch_flops_per_s = flops / (len(lengths) / loop)
    on_cuda = device == "cuda"
    return {
        "device": torch.cuda.get_device_name() if on_cuda else f"cpu ({torch.get_num_threads()} threads)",
        "loop_seq_per_s": loop,
        "step_seq_per_s": step,
        "loop_to_step_ratio": loop / step,
        "useful_gflops": epoch_flops_per_s / 1e9,
        "peak_matmul_gflops": matmul_peak(device=device, dtype=torch.bfloat16 if on_cuda else torch.float32),
        "epoch_s": timer.epoch_ended - timer.epoch_started - timer.bare_total_s,
        "featurize_s": featurize_s,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
        "sequences": len(lengths),
        "events": int(lengths.sum()),
    }


def measure_in_child(large_log: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        log = ["--child-large", str(large_log)] if large_log else ["--child-default"]
        command = [sys.executable, "-m", __spec__.name, *log, "--device", args.device, "--workdir", str(args.workdir)]
        command += [f"--override={o}" for o in args.override] + ["--child-output", out.name]
        usage, output = run_measured(command)
        print(output, end="")
        return json.loads(Path(out.name).read_text()) | {"peak_rss_mb": usage.peak_rss_mb}


def table(results: dict[str, dict[str, Any]]) -> dict[str, list]:
    rows = [
        ("sequences / events per epoch", lambda r: f"{r['sequences']:,} / {r['events']:,}"),
        ("training loop, sequences/s", lambda r: f"{r['loop_seq_per_s']:,.0f}"),
        ("bare step (ceiling), sequences/s", lambda r: f"{r['step_seq_per_s']:,.0f}"),
        (f"loop / ceiling (target >= {TARGET_RATIO:.0%})", lambda r: f"{r['loop_to_step_ratio']:.0%}"),
        (
            "useful GFLOP/s (share of matmul peak)",
            lambda r: f"{r['useful_gflops']:.1f} ({r['useful_gflops'] / r['peak_matmul_gflops']:.0%})",
        ),
        ("matmul peak GFLOP/s", lambda r: f"{r['peak_matmul_gflops']:.0f}"),
        ("epoch (training + validation), s", lambda r: f"{r['epoch_s']:.1f}"),
        ("featurization, s", lambda r: f"{r['featurize_s']:.1f}"),
        ("peak RSS, MB", lambda r: f"{r['peak_rss_mb']:,.0f}"),
        ("peak GPU memory, MB", lambda r: "n/a" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:,.0f}"),
    ]
    names = list(results)
    return record.table(["", *names], [[label, *(cell(results[n]) for n in names)] for label, cell in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path("bench-train"))
    parser.add_argument("--large-events", type=int, default=10_000_000)
    parser.add_argument("--large-customers", type=int, default=500_000)
    parser.add_argument("--no-large", action="store_true", help="the default world only")
    parser.add_argument("--override", action="append", default=[], help="a churnformer-train override")
    parser.add_argument("--child-default", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-large", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    record.add_argument(parser)
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child_default or args.child_large:
        measured = measure(args.child_large, args.workdir, args.device, args.override)
        args.child_output.write_text(json.dumps(measured))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    with record.recorded("benchmarks.train", args) as run:
        results = {"default": measure_in_child(None, args)}
        if not args.no_large:
            results["large"] = measure_in_child(make_log(args.workdir, args.large_events, args.large_customers), args)
        run.tables["throughput"] = table(results)
        run.figures = {name: {key: measured[key] for key in KEYS} for name, measured in results.items()}
        print(render(run.tables["throughput"]))


if __name__ == "__main__":
    main()
