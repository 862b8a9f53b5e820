"""Simulation worker processes: J processes run `sim.simulate`, the main process owns every write.

Workers never touch the database: they receive one simulation at a time over a pipe and send its
`Metrics` back. A simulation that runs past its wall-clock limit (or a worker that dies) is
reported as failed and the worker replaced, so one stuck run cannot stall a campaign.
"""

from __future__ import annotations

import heapq
import multiprocessing
import signal
import time
from collections.abc import Hashable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from rcutune import sim


@dataclass(frozen=True)
class SimTask:
    """One `sim.simulate` call; `key` tells the caller which trial and replication it was for."""

    key: Hashable
    hardware: sim.HardwareProfile
    workload: sim.WorkloadProfile
    policy: sim.Policy
    seconds: float
    seed: int
    kernel: str

    def run(self) -> sim.Metrics:
        return sim.simulate(
            self.hardware, self.workload, self.policy, seconds=self.seconds, seed=self.seed, kernel=self.kernel
        )


@dataclass(frozen=True)
class SimResult:
    """A finished task: `metrics`, or `error` (one line) when the simulation failed or timed out."""

    key: Hashable
    metrics: sim.Metrics | None
    error: str | None = None


def _worker_main(conn: Connection) -> None:
    # The main process decides what an interrupt means: Ctrl-C reaches the whole process group, and
    # a service manager stops a worker with SIGTERM to all its processes at once; these wait to be closed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            result = SimResult(task.key, task.run())
        except Exception as err:  # noqa: BLE001 - any failure of one simulation fails its trial, not the run
            result = SimResult(task.key, None, f"{type(err).__name__}: {' '.join(str(err).split())}")
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True)
        self.process.start()
        child.close()
        self.task: SimTask | None = None
        self.deadline = 0.0

    def stop(self, *, force: bool = False) -> None:
        if not force:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


class SimulationPool:
    """`jobs` worker processes fed from a priority queue (lowest `priority` first).

    Args:
        jobs: worker processes.
        timeout_s: wall-clock limit of one simulation.
    """

    def __init__(self, jobs: int, timeout_s: float) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self.timeout_s = timeout_s
        self._workers = [_Worker(self._ctx) for _ in range(jobs)]
        self._queue: list[tuple[tuple, int, SimTask]] = []
        self._counter = 0

    def submit(self, task: SimTask, priority: tuple = ()) -> None:
        heapq.heappush(self._queue, (priority, self._counter, task))
        self._counter += 1

    @property
    def jobs(self) -> int:
        return len(self._workers)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or any(w.task is not None for w in self._workers)

    def _dispatch(self) -> None:
        for w in self._workers:
            if w.task is None and self._queue:
                _, _, task = heapq.heappop(self._queue)
                w.task, w.deadline = task, time.monotonic() + self.timeout_s
                w.conn.send(task)

    def collect(self, timeout: float) -> list[SimResult]:
        """Start queued tasks on idle workers and return those that finish within `timeout` seconds."""
        self._dispatch()
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return []
        now = time.monotonic()
        wait_for = max(0.0, min(timeout, min(w.deadline for w in busy) - now))
        ready = set(wait([w.conn for w in busy], timeout=wait_for))
        results = []
        for i, w in enumerate(self._workers):
            if w.task is None:
                continue
            if w.conn in ready:
                try:
                    result = w.conn.recv()
                except (EOFError, OSError):
                    result = SimResult(w.task.key, None, "the simulation worker died")
                    self._workers[i] = self._replace(w)
                else:
                    w.task = None
                results.append(result)
            elif time.monotonic() > w.deadline:
                results.append(
                    SimResult(
                        w.task.key,
                        None,
                        f"simulation exceeded the {self.timeout_s:g} s wall-clock "
                        f"limit (seed {w.task.seed}, {w.task.seconds:g} simulated s)",
                    )
                )
                self._workers[i] = self._replace(w)
        self._dispatch()
        return results

    def cancel_all(self) -> None:
        """Drop every queued task and stop every running one (their results never arrive)."""
        self._queue = []
        for i, w in enumerate(self._workers):
            if w.task is not None:
                self._workers[i] = self._replace(w)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(force=True)
        return _Worker(self._ctx)

    def close(self) -> None:
        for w in self._workers:
            w.stop(force=w.task is not None)
        self._workers = []
        self._queue = []

    def __enter__(self) -> SimulationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
