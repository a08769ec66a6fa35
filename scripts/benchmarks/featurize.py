"""Benchmark: churnformer's sequence builder against a bare numpy reference, side by side in one run.

Usage::

    python -m scripts.benchmarks.featurize [--events 10000000] [--customers 500000] [--max-len 128]
                                      [--repeat 1] [--record PATH] [--profile] [--check]
                                      [--warm-mb 6144] [--keep-heap]

For a steady ratio on a small or virtual machine use ``--repeat 3 --keep-heap`` (timings), and a plain
run for the per-step peak RSS.

A standard event frame is generated directly with numpy (deterministic, seed 0): arbitrary int64
customer ids (sparse, not 0..N-1) with a skewed, lognormal events-per-customer distribution,
datetime64[ns] timestamps over two years, amounts (mostly 0 or positive, some negative), an
``event_type`` column of pandas category dtype (5 values) and one numeric attribute with NaN.
Rows are in random order. The cutoff is the last day of the log, so every event is a feature.

Rows timed (wall clock; with --repeat N the steps run in N interleaved rounds, each round running every
step once, so that drifting machine conditions hit all rows alike; the fastest run of each is shown):

* ``load_events``: validation of the already-standard frame (its own row, not part of the comparison).
* ``fit_featurizer``: vocabularies and scalers.
* ``numpy reference``: window mask, ``pd.factorize(sort=True)`` of the int64 ids (the ids are arbitrary
  int64, so the reference has to factorize too), one stable ``np.argsort`` on the combined int64 key
  ``code << 32 | seconds since min``, group offsets by bincount/cumsum, position within group,
  truncation to the latest ``max_len``, and a scatter of amount and timestamp into padded float32
  ``[n_customers, max_len]`` arrays.
* ``(info) numpy reference, pad ...``: the reference writing as many padded columns as ``pad()`` does
  (same bytes out); informational, not the comparison.
* ``build_sequences``: churnformer's ragged sequences.
* ``build_sequences + pad()``: the full padded structure for all customers; this is the row compared
  with the reference (target: ratio <= 1.5).

Before timing, ``--warm-mb`` of memory is touched and freed (on a VM the first touch of memory the
host has not yet backed costs about a second per GB and otherwise lands on whichever step grows the
heap first). Peak RSS is measured per step by ``scripts.common.measure`` (the kernel's high-water mark, reset
before each step).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnformer.data.events import load_events
from churnformer.data.featurizer import FeaturizerConfig, fit_featurizer
from churnformer.data.sequences import Sequences, build_sequences
from churnformer.data.window import Window
from churnformer.schema import EVENT_CAT, EVENT_NUM
from scripts.common import record
from scripts.common.logs import SPAN_SECONDS, START, generate_events
from scripts.common.measure import measured

RATIO_TARGET = 1.5
KEEP_HEAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


# ----------------------------------------------------------------------------------------- reference


def numpy_reference(
    events: pd.DataFrame, feature_end_ns: int, max_len: int, wide: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Bare numpy: the same grouping, ordering and truncation, scattering two padded float32 arrays.

    With ``wide=(n_cat, n_num)`` it also fills padded int32 [n, width, n_cat] and float32
    [n, width, n_num] arrays (copies of the same two values), i.e. the bytes ``Sequences.pad()`` writes;
    that variant is informational only.
    """
    stamps = events["timestamp"].to_numpy(dtype="datetime64[ns]").view(np.int64)
    kept = np.flatnonzero(stamps < feature_end_ns)
    codes, uniques = pd.factorize(events["customer_id"].to_numpy()[kept], sort=True)
    codes = codes.astype(np.int64)
    seconds = stamps[kept] // 10**9
    relative = seconds - seconds.min(initial=0)
    order = np.argsort((codes << 32) | relative, kind="stable")
    codes = codes[order]
    n = len(uniques)
    counts = np.bincount(codes, minlength=n)
    starts = np.cumsum(counts) - counts
    position = np.arange(len(codes)) - starts[codes]
    first_kept = np.maximum(counts - max_len, 0)
    keep = position >= first_kept[codes]
    rows = kept[order[keep]]
    row_of, slot = codes[keep], position[keep] - first_kept[codes[keep]]
    width = max(int(min(counts.max(initial=0), max_len)), 1)
    amount = np.zeros((n, width), dtype=np.float32)
    timestamp = np.zeros((n, width), dtype=np.float32)
    amount[row_of, slot] = events["amount"].to_numpy(dtype=np.float64)[rows]
    timestamp[row_of, slot] = relative[order[keep]]
    if wide is not None:
        n_cat, n_num = wide
        flat = row_of * width + slot
        ragged_num = np.empty((len(rows), n_num), dtype=np.float32)
        ragged_num[:] = amount[row_of, slot][:, None]
        ragged_cat = np.empty((len(rows), n_cat), dtype=np.int32)
        ragged_cat[:] = (codes[keep] % 1000)[:, None]
        event_num = np.zeros((n, width, n_num), dtype=np.float32)
        event_cat = np.zeros((n, width, n_cat), dtype=np.int32)
        event_num.reshape(-1, n_num)[flat] = ragged_num
        event_cat.reshape(-1, n_cat)[flat] = ragged_cat
        return {"event_num": event_num, "event_cat": event_cat}
    return {
        "customer_ids": np.asarray(uniques),
        "lengths": np.minimum(counts, max_len),
        "amount": amount,
        "timestamp": timestamp,
    }


# ------------------------------------------------------------------------------------------- runner


def warm_memory(megabytes: int) -> float:
    """Touch and free ``megabytes`` of memory, so that no timed step pays for the VM backing fresh pages."""
    started = time.perf_counter()
    if megabytes > 0:
        block = np.ones(megabytes * 2**20 // 8)
        del block
    return time.perf_counter() - started


@dataclass
class Row:
    step: str
    wall_s: float = float("inf")
    peak_rss_mb: float = 0.0
    rss_delta_mb: float = 0.0
    compared: bool = False
    info: bool = False
    all_wall_s: list[float] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)


@dataclass
class Step:
    row: Row
    run: Callable[[], object]
    keep: Callable[[object], None] | None = None  # receives the result of the first round


def measure(step: Step, first_round: bool) -> None:
    result: object = None
    with measured() as usage:
        result = step.run()
    row = step.row
    row.all_wall_s.append(usage.wall_s)
    if usage.wall_s < row.wall_s:  # report the fastest run, with that run's memory
        row.wall_s, row.peak_rss_mb = usage.wall_s, usage.peak_rss_mb
        row.rss_delta_mb = usage.peak_rss_mb - usage.start_rss_mb
    if first_round and step.keep is not None:
        step.keep(result)
    del result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; each round runs every step once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile one extra build_sequences run")
    parser.add_argument("--check", action="store_true", help=f"exit 1 if the ratio exceeds {RATIO_TARGET}")
    parser.add_argument(
        "--warm-mb",
        type=int,
        default=6144,
        help="touch and free this much memory before timing (0: off); on VMs the first touch of memory "
        "the host has not backed yet costs ~1 s/GB and would land on whichever step grows the heap first",
    )
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="re-run under glibc settings that never give freed memory back to the OS (MALLOC_MMAP_MAX_=0, "
        "huge MALLOC_TRIM_THRESHOLD_): steadier timings from the second round on, but the RSS columns then "
        "show the process heap, not per-step peaks",
    )
    record.add_argument(parser)
    args = parser.parse_args(argv)
    if args.keep_heap and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        env = {**os.environ, **KEEP_HEAP_ENV}
        script_args = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, "-m", __spec__.name, *script_args], env)
    with record.recorded("benchmarks.featurize", args) as run:
        run.figures, run.tables, ratio = measure_all(args)
    return 1 if args.check and ratio > RATIO_TARGET else 0


def measure_all(args: argparse.Namespace) -> tuple[dict, dict, float]:
    """Every step, timed and measured: the record's figures and tables, and the compared ratio."""

    started = time.perf_counter()
    raw = generate_events(args.events, args.customers, args.seed)
    generate_s = time.perf_counter() - started
    last_day = (START + np.timedelta64(SPAN_SECONDS - 1, "s")).astype("datetime64[D]")
    window = Window.from_cutoff(str(last_day), horizon_days=90)
    config = FeaturizerConfig.with_defaults(max_len=args.max_len)
    print(
        f"generated {len(raw):,} events / {raw['customer_id'].nunique():,} customers in {generate_s:.1f} s; "
        f"cutoff {last_day}, max_len {args.max_len}, repeat {args.repeat}, keep_heap {args.keep_heap}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, {os.cpu_count()} CPU(s)",
        flush=True,
    )

    warm_s = warm_memory(args.warm_mb)
    if args.warm_mb:
        print(f"warmed {args.warm_mb} MB of memory in {warm_s:.1f} s", flush=True)

    state: dict[str, object] = {"raw": raw}
    del raw
    pad_seconds: list[float] = []

    def build_and_pad() -> object:
        built = build_sequences(state["events"], window, state["featurizer"])
        pad_started = time.perf_counter()
        batch = built.pad()
        pad_seconds.append(time.perf_counter() - pad_started)
        return batch

    def keep_reference(result: dict[str, np.ndarray]) -> None:
        state["reference_ids"], state["reference_lengths"] = result["customer_ids"], result["lengths"]

    def keep_sequences(result: Sequences) -> None:
        ok = np.array_equal(result.customer_ids, state["reference_ids"]) and np.array_equal(
            result.lengths, state["reference_lengths"]
        )
        if not ok:
            print("WARNING: churnformer and the reference disagree on customers or lengths", file=sys.stderr)
        event_cat, event_num = result.events[EVENT_CAT], result.events[EVENT_NUM]
        state["shapes"] = (len(event_num), event_cat.shape[1], event_num.shape[1])

    def keep_batch(result: dict[str, np.ndarray]) -> None:
        state["padded_shape"] = result[EVENT_NUM].shape

    def wide() -> tuple[int, int]:
        featurizer = state["featurizer"]
        return len(featurizer.event_categorical_names), len(featurizer.event_numeric_names)

    steps = [
        Step(
            Row("load_events (standard frame in)"),
            lambda: load_events(state["raw"]),
            lambda result: state.__setitem__("events", result),
        ),
        Step(
            Row("fit_featurizer"),
            lambda: fit_featurizer(state["events"], config=config),
            lambda result: state.__setitem__("featurizer", result),
        ),
        Step(
            Row("numpy reference (factorize + argsort + pad 2 cols)"),
            lambda: numpy_reference(state["events"], window.feature_end_ns, args.max_len),
            keep_reference,
        ),
        Step(
            Row("(info) numpy reference, pad all pad() columns", info=True),
            lambda: numpy_reference(state["events"], window.feature_end_ns, args.max_len, wide=wide()),
        ),
        Step(
            Row("build_sequences (ragged)"),
            lambda: build_sequences(state["events"], window, state["featurizer"]),
            keep_sequences,
        ),
        Step(Row("build_sequences + pad() all", compared=True), build_and_pad, keep_batch),
    ]
    for round_number in range(args.repeat):
        for step in steps:
            measure(step, first_round=round_number == 0)
    state.pop("raw")
    events, featurizer = state["events"], state["featurizer"]
    rows = [step.row for step in steps]
    reference_row = rows[2]
    rows[3].step = f"(info) numpy reference, pad {wide()[0]}+{wide()[1]} cols like pad()"
    rows[-1].extra["pad_s"] = min(pad_seconds)
    rows[-1].extra["all_pad_s"] = pad_seconds
    n_kept_events, *shapes = state["shapes"]
    padded_shape = state["padded_shape"]

    header = f"{'step':<52} {'wall s':>8} {'ratio':>7} {'peak RSS MB':>12} {'Δ RSS MB':>9}"
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = r.wall_s / reference_row.wall_s
        mark = "  <- compared" if r.compared else ""
        runs = "" if args.repeat == 1 else "  runs " + " ".join(f"{w:.2f}" for w in r.all_wall_s)
        print(f"{r.step:<52} {r.wall_s:>8.2f} {ratio:>7.2f} {r.peak_rss_mb:>12.0f} {r.rss_delta_mb:>9.0f}{mark}{runs}")
    compared = next(r for r in rows if r.compared)
    ratio = compared.wall_s / reference_row.wall_s
    verdict = "OK" if ratio <= RATIO_TARGET else "OVER TARGET"
    print(
        f"\nratio (build_sequences + pad) / reference = {ratio:.2f} (target <= {RATIO_TARGET}): {verdict}; "
        f"pad() alone {compared.extra['pad_s']:.2f} s"
    )
    print(
        f"kept events {n_kept_events:,}; ragged event_cat x{shapes[0]}, event_num x{shapes[1]}; "
        f"padded event_num {padded_shape}"
    )
    method = "scripts.common.measure (the kernel's high-water mark, reset before each step)"
    if args.keep_heap:
        method += " (--keep-heap: freed memory stays in the heap, so RSS is the process high-water, not per step)"
    print(f"peak RSS: {method}; Δ = peak minus RSS at step start")

    profile_text = None
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        build_sequences(events, window, featurizer)
        profiler.disable()
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer).strip_dirs()
        stats.sort_stats("tottime").print_stats(20)
        stats.sort_stats("cumulative").print_stats(25)
        profile_text = buffer.getvalue()
        print("\ncProfile of one build_sequences run:\n" + profile_text)

    figures = {
        "generate_s": generate_s,
        "warm_s": warm_s,
        "rss_method": method,
        "ratio": ratio,
        "ratio_target": RATIO_TARGET,
        "rows": [
            {
                "step": r.step,
                "wall_s": r.wall_s,
                "ratio_vs_reference": r.wall_s / reference_row.wall_s,
                "peak_rss_mb": r.peak_rss_mb,
                "rss_delta_mb": r.rss_delta_mb,
                "compared": r.compared,
                "info": r.info,
                "all_wall_s": r.all_wall_s,
                **r.extra,
            }
            for r in rows
        ],
        "profile": profile_text,
    }
    steps_table = record.table(
        ["step", "wall s", "against the reference", "peak RSS MB"],
        [(r.step, f"{r.wall_s:.2f}", f"{r.wall_s / reference_row.wall_s:.2f}", f"{r.peak_rss_mb:,.0f}") for r in rows],
    )
    return figures, {"steps": steps_table}, ratio


if __name__ == "__main__":
    sys.exit(main())
