"""Benchmark: batch scoring at scale, side by side with a plain torch-eager scorer and the machine's peak.

Usage::

    python -m scripts.benchmarks.score [--events 10000000] [--customers 500000]
                                       [--budget-mb 1024] [--eager-sample 20000] [--record PATH] [--workdir DIR]
                                       [--int8] [--sweep-session N] [--explain]
                                       [--text] [--text-share 0.05] [--text-distinct 20000]

One run measures, on the same machine and the same model:

* ``churnformer-predict`` end to end (the real CLI in a subprocess: Parquet in, Parquet out), with the
  default memory budget, and again with ``memory_budget_mb=--budget-mb`` (spilled partitions);
  wall clock includes interpreter start-up; peak RSS is the job's (``scripts.common.measure``).
* a plain torch-eager scorer of the same network: batches of 256 customers padded to ``max_len``
  (what a straightforward PyTorch job does), on ``--eager-sample`` random customers (rate extrapolated;
  featurization is not timed for it, which flatters it);
* a large float32 matmul (torch) for the machine's peak GFLOP/s;
* with ``--int8``, ``churnformer-predict`` again with the dynamic-int8 model (speed only: the benchmark
  model has random weights, so its accuracy change means nothing; training measures that);
* with ``--explain``, ``churnformer-predict explain=true explain.only=risk_decile<=1`` (occlusion drivers of
  the top risk decile) against the same job without explanations, on the benchmark model with reference
  percentiles added (from its own scores of the log's first million events: deciles need them);
* with ``--text``, the same log with a ``text`` column on ``--text-share`` of its events (``--text-distinct``
  distinct texts, built from the synthetic world's sentences with a ticket number), scored end to end by
  the same network reading it (``data.features.text``, the run's exported sentence encoder), against the
  text-free job above (first with ``text_cache`` empty, which writes it, then again reading it: a daily job
  over the same history); and the encoder's own rate (distinct texts embedded per second), from which the
  cost of any other number of distinct texts follows;
* with ``--sweep-session N``, the onnxruntime session settings scoring uses against alternatives, on
  the same batches of N customers (how ``churnformer.serving.predictor.session_options`` and
  ``stream_layout`` were chosen: one stream of single-threaded batches per core against one stream split
  between threads), and the model exported with ``fused_attention=false`` (standard ONNX ops) under them.

"Useful" FLOPs count real events only (no padding): per customer with n = events + 1 tokens (the
summary token), per layer 2·n·(4·d² + 2·d·ff) for the projections and MLP and 4·n²·d for attention.
``useful_gflops`` divides them by the inference time (``infer_s`` of the job summary: the wall time of
the batch loop, in which each stream pads its next batch while the others run in onnxruntime); the table
also shows them over the whole end-to-end wall time.

The log (``scripts.common.logs.generate_events``: skewed lognormal lengths, ~85% padding at max_len 128) and a
default-architecture model (``conf/model/small.yaml``, random weights: speed does not depend on them)
are created in ``--workdir`` on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from churnformer.data.sequences import build_sequences
from churnformer.data.window import Window
from churnformer.modeling.scoring_model import ScoringModel
from churnformer.schema import MODEL_INPUTS, RUN_TEXT_ENCODER
from churnformer.serving.predictor import Predictor
from churnformer.text.encoder import TextEncoder
from scripts.common import record
from scripts.common.measure import run_measured
from scripts.common.models import (
    HORIZONS,
    LOGS,
    cutoff_date,
    load_network,
    make_log,
    make_model,
    matmul_peak,
    portable_path,
    reference_model,
    small_network,
    useful_flops,
)

# Issue 21's targets: end to end per log, and useful FLOP/s against the matmul peak of the same run.
TARGETS = {"wall_s": {"int": 22.0, "crm": 30.0}, "peak_rss_mb": 3072.0, "useful_share_of_peak": 0.55}
EAGER_BATCH = 256


def make_text_log(workdir: Path, log: Path, share: float, distinct: int) -> Path:
    """``log`` with a ``text`` column on ``share`` of its events, drawn from ``distinct`` texts."""
    from churnformer.data.synthetic_text import CALM, MIDDLES, OPENINGS, UPSET

    path = log.with_name(f"{log.stem}-text-{share:g}-{distinct}.parquet")
    if not path.exists():
        rng = np.random.default_rng(1)
        openings, tones = [o for kind in OPENINGS.values() for o in kind], CALM + UPSET
        pool = [
            f"{openings[k % len(openings)]} {MIDDLES[k % len(MIDDLES)]} {tones[k % len(tones)]} Ticket {k}."
            for k in range(distinct)
        ]
        table = pq.read_table(log)
        chosen = rng.random(table.num_rows) < share
        texts = pa.array(pool).take(pa.array(rng.integers(0, distinct, table.num_rows), mask=~chosen))
        pq.write_table(table.append_column("text", texts), path.with_suffix(".partial"), row_group_size=1_000_000)
        os.replace(path.with_suffix(".partial"), path)
    return path


def encoder_rate(workdir: Path, log: Path, sample: int = 4000) -> float:
    """Distinct texts embedded per second by the sentence encoder (texts of the log, tokenizing included)."""
    texts = pq.read_table(log, columns=["text"])["text"].drop_null().unique()[:sample].to_pylist()
    encoder = TextEncoder(workdir / RUN_TEXT_ENCODER)
    started = time.perf_counter()
    encoder.embed(texts)
    return len(texts) / (time.perf_counter() - started)


def score_end_to_end(model: Path, log: Path, output: Path, extra: list[str]) -> dict[str, float]:
    binary = str(Path(sys.executable).parent / "churnformer-predict")
    args = [binary, f"model={model}", f"events={log}", f"cutoff={cutoff_date()}", f"output={output}", "progress=false"]
    usage, _ = run_measured(args + extra)
    measured = {"wall_s": usage.wall_s, "peak_rss_mb": usage.peak_rss_mb}
    summary = json.loads(output.with_name(output.name + ".summary.json").read_text())
    measured.update(
        customers=summary["customers_scored"],
        events=summary["rows_read"],
        infer_s=summary["infer_s"],
        featurize_s=summary["featurize_s"],
        read_s=summary["read_s"],
        spill_s=summary["spill_s"],
        partitions=summary["partitions"],
        explained=summary["customers_explained"],
        customers_per_s=summary["customers_scored"] / measured["wall_s"],
    )
    return measured


def session_sweep(model: Path, log: Path, customers: int, rounds: int = 3) -> list[tuple[str, float]]:
    """Seconds to run the same batches of ``customers`` random customers, per session setting, in interleaved
    rounds (fastest of each); the first row is what scoring uses: one single-threaded session per core, run
    side by side (``streams``), each variant changing one setting of it."""
    import onnxruntime as ort

    from churnformer.memory import reuse_freed_memory
    from churnformer.serving.batching import fill_rows, padded_width, token_budget_batches
    from churnformer.serving.predictor import available_cores, session_options

    reuse_freed_memory()  # as churnformer-predict does
    predictor = Predictor(model)
    frame = pd.read_parquet(log)
    chosen = np.random.default_rng(1).choice(pd.unique(frame["customer_id"]), size=customers, replace=False)
    window = predictor.window(cutoff_date())
    sequences = build_sequences(frame[frame["customer_id"].isin(chosen)], window, predictor.featurizer)
    del frame
    feeds = [
        sequences.pad(fill_rows(rows), width=int(padded_width(sequences.lengths[rows[:1]])[0]))
        for rows in token_budget_batches(sequences.lengths, predictor.batch_tokens, predictor.max_batch_size)
    ]
    cores = available_cores()

    def variant(change, path: Path = model, threads: int = 1) -> ort.InferenceSession:
        options = session_options(threads)
        change(options)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def optimization(level: ort.GraphOptimizationLevel):
        return lambda options: setattr(options, "graph_optimization_level", level)

    variants = {  # (session, streams)
        "scoring's settings": (variant(lambda o: None), cores),
        f"one stream of {cores} threads": (variant(lambda o: None, threads=cores), 1),
        "one stream of one thread": (variant(lambda o: None), 1),
        "graph optimization EXTENDED": (variant(optimization(ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)), cores),
        "graph optimization ALL": (variant(optimization(ort.GraphOptimizationLevel.ORT_ENABLE_ALL)), cores),
        "execution mode PARALLEL": (
            variant(lambda o: setattr(o, "execution_mode", ort.ExecutionMode.ORT_PARALLEL)),
            cores,
        ),
        "CPU memory arena on": (variant(lambda o: setattr(o, "enable_cpu_mem_arena", True)), cores),
        f"one stream of {cores} spinning threads": (
            variant(lambda o: o.add_session_config_entry("session.intra_op.allow_spinning", "1"), threads=cores),
            1,
        ),
        "portable attention (standard ops)": (variant(lambda o: None, portable_path(model)), cores),
    }
    times: dict[str, float] = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, (session, streams) in variants.items():
            run = partial(run_feed, session, [i.name for i in session.get_inputs()])
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=streams) as runners:
                list(runners.map(run, feeds))
            times[name] = min(times[name], time.perf_counter() - started)
    return list(times.items())


def run_feed(session, names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session.run(None, {name: feed[name] for name in names})


def torch_eager(model: Path, log: Path, sample: int, max_len: int) -> tuple[float, np.ndarray]:
    """Customers/s of the same network in torch eager, batches of 256 padded to max_len; and the
    real (truncated) lengths of every customer for the FLOP count."""
    predictor = Predictor(model)
    frame = pd.read_parquet(log)
    window = Window.from_cutoff(cutoff_date(), 90)
    ids = pd.unique(frame["customer_id"].to_numpy())
    lengths = np.minimum(frame.groupby("customer_id", sort=False).size().to_numpy(), max_len)
    chosen = np.random.default_rng(0).choice(ids, size=min(sample, len(ids)), replace=False)
    sequences = build_sequences(frame[frame["customer_id"].isin(chosen)], window, predictor.featurizer)
    del frame
    network = load_network(model)
    scorer = ScoringModel(network, list(MODEL_INPUTS), HORIZONS.index(90)).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(sequences), EAGER_BATCH):
            rows = np.arange(start, min(start + EAGER_BATCH, len(sequences)))
            batch = sequences.pad(rows, width=max_len)
            scorer(*(torch.from_numpy(batch[name]) for name in MODEL_INPUTS))
    return len(sequences) / (time.perf_counter() - started), lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--log",
        choices=tuple(LOGS),
        default="int",
        help="int: int64 ids, categorical event type; crm: string ids and categories, heavy-tailed lengths",
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--budget-mb", type=float, default=1024)
    parser.add_argument("--eager-sample", type=int, default=20_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench-score"))
    parser.add_argument("--int8", action="store_true", help="also score end to end with the int8 model")
    parser.add_argument(
        "--sweep-session", type=int, default=0, metavar="N", help="time onnxruntime settings on N customers"
    )
    parser.add_argument("--explain", action="store_true", help="also time explaining the top risk decile")
    parser.add_argument("--text", action="store_true", help="also score the log with a text column (README)")
    parser.add_argument("--text-share", type=float, default=0.05, help="share of events with a text")
    parser.add_argument("--text-distinct", type=int, default=20_000, help="distinct texts among them")
    record.add_argument(parser)
    args = parser.parse_args()
    with record.recorded("benchmarks.score", args) as run:
        run.figures, run.tables = measure(args)


def measure(args: argparse.Namespace) -> tuple[dict, dict]:
    """Every measurement of one run: the figures and the tables of its record."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)

    log = make_log(args.workdir, args.events, args.customers, args.log)
    model = make_model(args.workdir, log)
    network = small_network()
    e2e = score_end_to_end(model, log, args.workdir / "predictions.parquet", [])
    budget = score_end_to_end(
        model, log, args.workdir / "predictions-budget.parquet", [f"memory_budget_mb={args.budget_mb:g}"]
    )
    identical = pd.read_parquet(args.workdir / "predictions.parquet").equals(
        pd.read_parquet(args.workdir / "predictions-budget.parquet")
    )
    if args.int8:
        from churnformer.artifacts.quantize import int8_path, quantize_model

        int8 = int8_path(model) if int8_path(model).exists() else quantize_model(model, int8_path(model))
        quantized = score_end_to_end(int8, log, args.workdir / "predictions-int8.parquet", [])
    if args.explain:
        with_reference = reference_model(model, log)
        plain = score_end_to_end(with_reference, log, args.workdir / "predictions-reference.parquet", [])
        explained = score_end_to_end(
            with_reference,
            log,
            args.workdir / "predictions-explained.parquet",
            ["explain=true", "explain.only=risk_decile<=1"],
        )
    if args.text:
        text_log = make_text_log(args.workdir, log, args.text_share, args.text_distinct)
        text_model = make_model(args.workdir, text_log, text=True)
        cache = args.workdir / "text-cache.npz"
        cache.unlink(missing_ok=True)
        with_text = score_end_to_end(
            text_model, text_log, args.workdir / "predictions-text.parquet", [f"text_cache={cache}"]
        )
        texts = json.loads((args.workdir / "predictions-text.parquet.summary.json").read_text())["texts"]
        repeated = score_end_to_end(
            text_model, text_log, args.workdir / "predictions-text-cached.parquet", [f"text_cache={cache}"]
        )
        cached = json.loads((args.workdir / "predictions-text-cached.parquet.summary.json").read_text())["texts"]
        rate = encoder_rate(args.workdir, text_log)
    eager_rate, lengths = torch_eager(model, log, args.eager_sample, 128)
    peak = matmul_peak()
    d_model, layers = network["d_model"], network["n_layers"]
    flops = useful_flops(lengths, d_model, d_model * network["ff_multiplier"], layers)
    result = {
        "log": args.log,
        "events": e2e["events"],
        "customers": e2e["customers"],
        "wall_s": e2e["wall_s"],
        "customers_per_s": e2e["customers_per_s"],
        "peak_rss_mb": e2e["peak_rss_mb"],
        "read_s": e2e["read_s"],
        "spill_s": e2e["spill_s"],
        "featurize_s": e2e["featurize_s"],
        "infer_s": e2e["infer_s"],
        # Interpreter start-up, imports, loading the model, combining the parts, writing the output.
        "rest_s": e2e["wall_s"] - e2e["read_s"] - e2e["spill_s"] - e2e["featurize_s"] - e2e["infer_s"],
        "useful_gflop": flops / 1e9,
        "useful_gflops": flops / e2e["infer_s"] / 1e9,
        "useful_gflops_end_to_end": flops / e2e["wall_s"] / 1e9,
        "peak_matmul_gflops": peak,
        "torch_eager_customers_per_s": eager_rate,
        "speedup_vs_torch_eager": e2e["customers_per_s"] / eager_rate,
        "budget_mb": args.budget_mb,
        "budget_wall_s": budget["wall_s"],
        "budget_peak_rss_mb": budget["peak_rss_mb"],
        "budget_partitions": budget["partitions"],
        "budget_output_identical": identical,
    }
    share = result["useful_gflops"] / peak
    rows = [
        ("end-to-end wall (s)", f"{result['wall_s']:.1f}", f"<= {TARGETS['wall_s'][args.log]:g}"),
        (
            "  read / hash+spill / featurize / inference / rest (s)",
            " / ".join(f"{result[k]:.1f}" for k in ("read_s", "spill_s", "featurize_s", "infer_s", "rest_s")),
            "",
        ),
        ("customers/s", f"{result['customers_per_s']:,.0f}", ""),
        ("peak RSS (MB)", f"{result['peak_rss_mb']:,.0f}", f"<= {TARGETS['peak_rss_mb']:g}"),
        ("torch eager padded, customers/s", f"{eager_rate:,.0f}", ""),
        ("speedup vs torch eager", f"{result['speedup_vs_torch_eager']:.1f}x", ">= 3x"),
        (
            "useful GFLOP/s (inference)",
            f"{result['useful_gflops']:.0f} ({share:.0%} of peak)",
            f">= {TARGETS['useful_share_of_peak']:.0%} of peak",
        ),
        ("useful GFLOP/s (end to end)", f"{result['useful_gflops_end_to_end']:.0f}", ""),
        ("fp32 matmul peak GFLOP/s", f"{peak:.0f}", ""),
        (
            f"budget {args.budget_mb:g} MB: wall (s) / peak RSS (MB)",
            f"{budget['wall_s']:.1f} / {budget['peak_rss_mb']:,.0f} ({budget['partitions']} partitions)",
            f"RSS <= {args.budget_mb:g}",
        ),
        ("budget run output identical", str(identical), "True"),
    ]
    if args.int8:
        result.update(int8_wall_s=quantized["wall_s"], int8_infer_s=quantized["infer_s"])
        rows.append(("int8 model: wall / inference (s)", f"{quantized['wall_s']:.1f} / {quantized['infer_s']:.1f}", ""))
    if args.explain:
        added = explained["wall_s"] / plain["wall_s"] - 1
        result.update(
            explain_plain_wall_s=plain["wall_s"],
            explain_wall_s=explained["wall_s"],
            explain_customers=explained["explained"],
            explain_added_share=added,
            explain_peak_rss_mb=explained["peak_rss_mb"],
        )
        rows += [
            (
                f"explain top risk decile ({explained['explained']:,} customers): wall (s)",
                f"{explained['wall_s']:.1f} vs {plain['wall_s']:.1f} plain (+{added:.0%})",
                "added <= 100%",
            ),
            ("explain: peak RSS (MB)", f"{explained['peak_rss_mb']:,.0f}", f"<= {TARGETS['peak_rss_mb']:g}"),
        ]
    if args.text:
        ratio = with_text["wall_s"] / e2e["wall_s"]
        repeated_ratio = repeated["wall_s"] / e2e["wall_s"]
        result.update(
            text_share=args.text_share,
            text_distinct=texts["distinct"],
            text_wall_s=with_text["wall_s"],
            text_featurize_s=with_text["featurize_s"],
            text_infer_s=with_text["infer_s"],
            text_peak_rss_mb=with_text["peak_rss_mb"],
            text_wall_ratio=ratio,
            text_cached_wall_s=repeated["wall_s"],
            text_cached_peak_rss_mb=repeated["peak_rss_mb"],
            text_cached_wall_ratio=repeated_ratio,
            encoder_texts_per_s=rate,
        )
        rows += [
            (
                f"text on {args.text_share:.0%} of events ({texts['distinct']:,} distinct): wall (s)",
                f"{with_text['wall_s']:.1f} vs {e2e['wall_s']:.1f} (x{ratio:.2f})",
                "<= x1.5",
            ),
            (
                "  featurize (texts embedded) / inference (s)",
                f"{with_text['featurize_s']:.1f} / {with_text['infer_s']:.1f}",
                "",
            ),
            ("  peak RSS (MB)", f"{with_text['peak_rss_mb']:,.0f}", f"<= {TARGETS['peak_rss_mb']:g}"),
            (
                f"  again with text_cache ({cached['cached']:,} of {cached['distinct']:,} cached): wall (s)",
                f"{repeated['wall_s']:.1f} (x{repeated_ratio:.2f})",
                "<= x1.5",
            ),
            ("  peak RSS with text_cache (MB)", f"{repeated['peak_rss_mb']:,.0f}", f"<= {TARGETS['peak_rss_mb']:g}"),
            ("sentence encoder, distinct texts/s", f"{rate:,.0f}", ""),
        ]
    print(f"{args.log} log: {result['events']:,} events, {result['customers']:,} customers; {cores} cores")
    width = max(len(r[0]) for r in rows)
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>28}  {target}")
    tables = {"measures": record.table(["measure", "value", "target"], rows)}
    if args.sweep_session:
        sweep = session_sweep(model, log, args.sweep_session)
        result["session_sweep_s"] = dict(sweep)
        print(f"\nonnxruntime settings, {args.sweep_session:,} customers (seconds for the batches, fastest of 3):")
        for name, seconds in sweep:
            print(f"  {name:<34} {seconds:6.2f}  x{seconds / sweep[0][1]:.2f}")
        sweep_rows = [(name, f"{seconds:.2f}", f"x{seconds / sweep[0][1]:.2f}") for name, seconds in sweep]
        tables["session_sweep"] = record.table(["onnxruntime setting", "seconds", "against scoring's"], sweep_rows)
    return result, tables


if __name__ == "__main__":
    main()
