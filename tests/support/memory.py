"""Peak resident memory of process trees (a command and the simulation processes it starts), from /proc.

`PeakRSS` samples every `interval_s` seconds, for each process it was told to watch, the resident
set (VmRSS) of that process and all its descendants, summed: the tree's peak is the largest sum
seen. It also keeps the largest high-water mark (VmHWM, kept by the kernel) of any one process of
those trees, which no sampling can miss. Linux only.
"""

from __future__ import annotations

import threading
from pathlib import Path

_PROC = Path("/proc")


def _kib(status: str, field: str) -> int:
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    for task in (_PROC / str(pid) / "task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, as they are now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


class PeakRSS:
    """Peaks of the resident memory of watched process trees (see the module docstring)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.tree_peak_kib: dict[str, int] = {}  # label -> largest summed VmRSS of the tree
        self.process_peak_kib = 0  # largest VmHWM of any one process seen
        self._roots: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, pid: int, label: str) -> None:
        with self._lock:
            self._roots[pid] = label

    def start(self) -> PeakRSS:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def sample(self) -> None:
        with self._lock:
            roots = dict(self._roots)
        for root, label in roots.items():
            total = 0
            for pid in tree(root):
                try:
                    status = (_PROC / str(pid) / "status").read_text()
                except OSError:
                    continue
                total += _kib(status, "VmRSS")
                self.process_peak_kib = max(self.process_peak_kib, _kib(status, "VmHWM"))
            if total:
                self.tree_peak_kib[label] = max(self.tree_peak_kib.get(label, 0), total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    @property
    def peak_tree_mib(self) -> float:
        return max(self.tree_peak_kib.values(), default=0) / 1024

    @property
    def peak_process_mib(self) -> float:
        return self.process_peak_kib / 1024
