"""Wall time and peak memory, measured one way for every benchmark: the kernel's high-water mark of resident
memory (``VmHWM``) of the process that does the work.

In this process, the mark is reset when a block starts (``/proc/self/clear_refs``) and read when it ends: the
exact peak of the block, with nothing running beside it. A child (a console script, Spark's driver with its JVM
and Python workers) is measured as its process tree: each process's own mark is read every
:data:`POLL_S` seconds while it runs (a mark only grows, so the last reading is its peak but for the final
``POLL_S``), and the tree's peak is the sum of its processes' marks, by role if asked: exact for one process,
an upper bound for several (they need not peak together). Nothing samples resident memory in a loop, which on 2
cores took CPU from the job it measured.

Resident memory counts the page-cache pages a process maps from files (a training set's memory-mapped shards) as
well as its own: a child's private (anonymous) memory at the same readings gives ``peak_anon_mb``, the memory it
needs for itself (sampled, so a peak shorter than ``POLL_S`` can be missed).
"""

from __future__ import annotations

import gc
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MB = 2**20
POLL_S = 0.1
# Names a process of a measured tree (``process``, ``root``) for the peak by role.
Role = Callable[[psutil.Process, psutil.Process], str]


@dataclass
class Usage:
    """What a measured block used: wall seconds, peak resident memory, and that peak by role."""

    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    peak_rss_mb_by_role: dict[str, float] = field(default_factory=dict)
    peak_anon_mb: float = 0.0


def anonymous_mb(pid: int) -> float:
    """The process's private resident memory now (``RssAnon``), in MB; 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


def high_water_mark_mb(pid: int | str = "self") -> float:
    """The process's peak resident memory so far (``VmHWM``), in MB; 0 when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
    except OSError:  # not Linux, or the process has ended
        pass
    return 0.0


def _reset_high_water_mark() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux, or not allowed: the mark then covers the process's whole life
        pass


@contextmanager
def measured() -> Iterator[Usage]:
    """Measure the block in this process (children it starts are not counted: measure them with
    :func:`run_measured`): ``Usage`` is filled in when it ends."""
    usage = Usage()
    gc.collect()
    usage.start_rss_mb = psutil.Process().memory_info().rss / MB
    _reset_high_water_mark()
    started = time.perf_counter()
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - started
        usage.peak_rss_mb = max(high_water_mark_mb(), usage.start_rss_mb)


def run_measured(argv: Sequence[str], role: Role | None = None, **kwargs) -> tuple[Usage, str]:
    """Run a command as a child and measure its process tree (this process is not counted). Returns its usage
    and output; a failure ends the benchmark with the command's output."""
    usage = Usage()
    marks: dict[int, tuple[str, float]] = {}  # pid: (role, its high-water mark)
    anonymous: dict[int, float] = {}  # pid: its largest private memory read
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, text=True, **kwargs)
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:  # the job ended
                break
            for process in processes:
                mark = high_water_mark_mb(process.pid)
                if mark:
                    try:
                        name = role(process, root) if role is not None else "all"
                    except psutil.Error:
                        continue
                    marks[process.pid] = (name, max(mark, marks.get(process.pid, (name, 0.0))[1]))
                    anonymous[process.pid] = max(anonymous_mb(process.pid), anonymous.get(process.pid, 0.0))
            time.sleep(POLL_S)
        child.wait()
        usage.wall_s = time.perf_counter() - started
        output.seek(0)
        text = output.read()
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({child.returncode}):\n{text[-6000:]}")
    for name, mark in marks.values():
        usage.peak_rss_mb_by_role[name] = usage.peak_rss_mb_by_role.get(name, 0.0) + mark
    usage.peak_rss_mb = sum(usage.peak_rss_mb_by_role.values())
    usage.peak_anon_mb = sum(anonymous.values())
    return usage, text
