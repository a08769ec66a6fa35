"""Wall time and peak memory, measured one way for every benchmark: the process tree that does the work.

Peak RSS is the largest sum of resident memory over this process and its descendants (a console script run as
a child, Spark's JVM and Python workers), sampled every few milliseconds by a background thread, and never
below this process's own kernel high-water mark (``VmHWM``, reset at the start where Linux allows it), so a
short spike of this process between two samples still counts. A step is measured by measuring the block that
runs it, in this process or in a child (then the child's tree alone).
"""

from __future__ import annotations

import gc
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil

MB = 2**20
# Names a process of a measured tree (``process``, ``root``) for the peak by role.
Role = Callable[[psutil.Process, psutil.Process], str]


@dataclass
class Usage:
    """What a measured block used: wall seconds, peak RSS of the process tree, and that peak by role."""

    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    start_rss_mb: float = 0.0
    peak_rss_mb_by_role: dict[str, float] = field(default_factory=dict)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:  # not Linux, or not allowed: the samples alone
        return False


def _high_water_mark() -> float:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


def _tree_rss(root: psutil.Process, role: Role | None) -> dict[str, int]:
    """Resident bytes of ``root`` and its descendants, summed by role (one role, ``all``, without ``role``)."""
    totals: dict[str, int] = {}
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return totals
    for process in processes:
        try:
            name = role(process, root) if role is not None else "all"
            totals[name] = totals.get(name, 0) + process.memory_info().rss
        except psutil.Error:  # it ended between listing and reading it
            continue
    return totals


class _Sampler:
    """A background thread keeping the peak of a process tree's resident memory, in total and by role."""

    def __init__(self, root: psutil.Process, interval_s: float, role: Role | None):
        self.root, self.interval_s, self.role = root, interval_s, role
        self.peak_total, self.peak_by_role = 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            totals = _tree_rss(self.root, self.role)
            self.peak_total = max(self.peak_total, sum(totals.values()))
            for name, value in totals.items():
                self.peak_by_role[name] = max(self.peak_by_role.get(name, 0), value)
            time.sleep(self.interval_s)

    def stop(self, usage: Usage, floor_mb: float) -> None:
        self._stop.set()
        self._thread.join()
        usage.peak_rss_mb = max(self.peak_total / MB, floor_mb)
        usage.peak_rss_mb_by_role = {name: value / MB for name, value in sorted(self.peak_by_role.items())}


@contextmanager
def measured(interval_s: float = 0.005, role: Role | None = None) -> Iterator[Usage]:
    """Measure the block in this process (and any children it starts): ``Usage`` is filled in when it ends.
    ``role(process, root)`` names a process of the tree (every one is ``all`` without it) for the peak by role."""
    usage = Usage()
    me = psutil.Process()
    gc.collect()
    usage.start_rss_mb = me.memory_info().rss / MB
    reset = _reset_high_water_mark()
    started = time.perf_counter()
    sampler = _Sampler(me, interval_s, role)
    try:
        yield usage
    finally:
        usage.wall_s = time.perf_counter() - started
        sampler.stop(usage, _high_water_mark() if reset else 0.0)


def run_measured(
    argv: Sequence[str], role: Role | None = None, interval_s: float = 0.005, **kwargs
) -> tuple[Usage, str]:
    """Run a command as a child and measure the child's process tree alone (this process's memory is not
    counted; nor is the kernel's peak of the child, which Linux seeds with this process's at the fork).
    Returns its usage and output; a failure ends the benchmark with the command's output."""
    usage = Usage()
    with tempfile.TemporaryFile("w+") as output:
        started = time.perf_counter()
        child = subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, text=True, **kwargs)
        sampler = _Sampler(psutil.Process(child.pid), interval_s, role)
        child.wait()
        usage.wall_s = time.perf_counter() - started
        sampler.stop(usage, 0.0)
        output.seek(0)
        text = output.read()
    if child.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({child.returncode}):\n{text[-6000:]}")
    return usage, text
