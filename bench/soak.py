"""A soak: `rcutune worker` processes on PostgreSQL for `--minutes` while workers are killed and the server restarts.

It starts its own throwaway PostgreSQL cluster (it stops and restarts the server, so a server it
is given cannot serve; without an `initdb` it cannot run). Campaigns run one after another
(`soak-1`, `soak-2`, ...: vm-2, the steady and bursty workloads, 16 trials each, 0.3 simulated
seconds per replication), each created with `rcutune study --no-run` and run by `--workers`
`rcutune worker` processes (`--heartbeat-interval 1 --grace-period 5 --db-timeout 60`); when one
is done the next starts.

Faults come at seeded random moments (`--seed`), 3 to 12 s apart, in shuffled rounds of five kinds
so each kind comes once per round:

- `kill-9`: SIGKILL to a random worker's process group (the worker and its simulation processes);
- `term`: SIGTERM to a random worker's process group, as a service manager stops it;
- `restart`: `pg_ctl restart -m fast` (sessions ended, clean shutdown, start);
- `crash`: `pg_ctl restart -m immediate` (the server dies and recovers on start);
- `stop`: `pg_ctl stop -m fast`, 2 to 20 s without a server, then start.

A worker that ends is replaced (once the server is up). After `--minutes`, faults stop and the
last campaign runs to its end. Then every campaign is checked (`tests.support.workers`):

- lost: a trial a worker reported complete or pruned (its line on stdout, printed after the tell)
  that is not stored in that state;
- duplicated: complete or pruned trials beyond the first of one (batch, slot) of a study; a slot
  is one planned point, its retries keep the slot, so it may end complete or pruned once;
- stuck_running: trials left RUNNING once every worker is gone;
- integrity: every study's complete plus pruned trials equal its budget, nothing is left WAITING,
  trial numbers are 0..n-1 with no gap or repeat, no row of Optuna's trial tables points at a
  missing trial or study, every complete trial has its values and replications, every pruned one
  the trial that pruned it.

Workers must end in one of the expected ways: exit 0 (budget spent), 130 or -15 (SIGTERM), -9
(SIGKILL), or exit 2 with one line when the server was away as it started (from the start-up check,
or from the first session when the server went away right after that check), and say nothing on
stderr but one line per outage ("worker: lost the database ...") and "interrupted"; anything else
(a traceback, a warning, exit 1) counts as `unexpected`. peak_rss_mib is the largest resident memory of one
worker with its simulation processes, summed, sampled every 0.25 s; the largest high-water mark
of any one process is printed on the line before.

The last line is
`minutes=<f> trials=<int> lost=<int> duplicated=<int> stuck_running=<int> integrity=<ok|bad> peak_rss_mib=<f>`;
the exit code is 0 when lost, duplicated and stuck_running are 0, integrity is ok and nothing
unexpected happened. `--record` writes the `soak` section of bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import record  # noqa: E402
from tests.support import postgres_server  # noqa: E402
from tests.support.memory import PeakRSS  # noqa: E402
from tests.support.study import TINY  # noqa: E402
from tests.support.workers import CampaignCheck, check_campaign, cli, env, reported, start_worker  # noqa: E402

WORKLOADS = ("steady", "bursty")
TRIALS = 16
WORKER_ARGS = ("--heartbeat-interval", "1", "--grace-period", "5", "--db-timeout", "60")
FAULTS = ("kill-9", "term", "restart", "crash", "stop")
DRAIN_TIMEOUT_S = 600.0


@dataclass
class Worker:
    proc: subprocess.Popen
    campaign: str
    out: Path
    err: Path
    signalled: str | None = None  # the fault sent to it, if any
    code: int | None = None


@dataclass
class Soak:
    cluster: postgres_server.Cluster
    url: str
    workdir: Path
    rng: random.Random
    workers: int
    memory: PeakRSS
    live: list[Worker] = field(default_factory=list)
    ended: list[Worker] = field(default_factory=list)
    campaigns: list[str] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in FAULTS})
    server_back_at: float | None = None
    done: bool = False  # the current campaign's budget is spent (a worker exited 0)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- campaigns and workers ---------------------------------------------------------------------
    def new_campaign(self) -> None:
        name = f"soak-{len(self.campaigns) + 1}"
        argv = cli("study", *TINY, "--storage", self.url, "--study", name, "--trials", str(TRIALS), "--no-run")
        for w in WORKLOADS:
            argv += ["--workload", w]
        subprocess.run(argv, env=env(), check=True, stdout=subprocess.DEVNULL)
        self.campaigns.append(name)
        self.done = False
        self.log(f"campaign {name}: {len(WORKLOADS)} studies of {TRIALS} trials")

    def start_worker(self) -> None:
        k = len(self.live) + len(self.ended)
        out, err = self.workdir / f"worker-{k}.out", self.workdir / f"worker-{k}.err"
        proc = start_worker(self.url, self.campaigns[-1], out, *WORKER_ARGS, err=err)
        self.memory.watch(proc.pid, f"worker-{k}")
        self.live.append(Worker(proc, self.campaigns[-1], out, err))

    def reap(self) -> None:
        for w in list(self.live):
            code = w.proc.poll()
            if code is None:
                continue
            w.code = code
            self.live.remove(w)
            self.ended.append(w)
            if w.signalled:
                self.log(f"worker pid {w.proc.pid} ({w.signalled}) ended: exit {code}")
            elif code != 0:
                self.log(f"worker pid {w.proc.pid} ended: exit {code}")
            if code == 0:
                self.done = True

    @property
    def server_up(self) -> bool:
        return self.server_back_at is None

    def keep_staffed(self) -> None:
        """Replace workers that ended, while the campaign still has work and the server is up."""
        if self.server_up and not self.done:
            while len(self.live) < self.workers:
                self.start_worker()

    # -- faults ------------------------------------------------------------------------------------
    def inject(self, kind: str) -> None:
        self.faults[kind] += 1
        if kind in ("kill-9", "term"):
            victims = [w for w in self.live if w.proc.poll() is None]
            if not victims:
                self.faults[kind] -= 1
                return
            w = self.rng.choice(victims)
            w.signalled = kind
            try:
                os.killpg(w.proc.pid, signal.SIGKILL if kind == "kill-9" else signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.log(f"{kind} worker pid {w.proc.pid}")
        elif kind == "restart":
            self.cluster.restart("fast")
            self.log("server restarted (fast)")
        elif kind == "crash":
            self.cluster.restart("immediate")
            self.log("server crashed and restarted (immediate)")
        else:
            away = self.rng.uniform(2.0, 20.0)
            self.cluster.stop("fast")
            self.server_back_at = time.monotonic() + away
            self.log(f"server stopped for {away:.1f} s")

    def tick(self) -> None:
        self.reap()
        if self.server_back_at is not None and time.monotonic() >= self.server_back_at:
            self.cluster.start()
            self.server_back_at = None
            self.log("server started")

    # -- the run -----------------------------------------------------------------------------------
    def run(self, seconds: float) -> None:
        start = time.monotonic()
        self.new_campaign()
        self.keep_staffed()
        order: list[str] = []
        next_fault = start + self.rng.uniform(3.0, 12.0)
        while time.monotonic() - start < seconds:
            self.tick()
            if self.done and not self.live and self.server_up:
                self.log(f"campaign {self.campaigns[-1]} done")
                self.new_campaign()
            self.keep_staffed()
            if time.monotonic() >= next_fault and self.server_up:
                if not order:
                    order = list(FAULTS)
                    self.rng.shuffle(order)
                self.inject(order.pop())
                next_fault = time.monotonic() + self.rng.uniform(3.0, 12.0)
            time.sleep(0.1)
        self.log("faults stop; the last campaign runs to its end")
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not (self.done and not self.live):
            if time.monotonic() > deadline:
                raise SystemExit(f"the last campaign did not finish within {DRAIN_TIMEOUT_S:g} s")
            self.tick()
            self.keep_staffed()
            time.sleep(0.1)

    def stop_all(self) -> None:
        for w in self.live:
            try:
                os.killpg(w.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            w.proc.wait()


def expected(w: Worker) -> bool:
    """Whether a worker ended in one of the ways the soak allows (see the module docstring)."""
    err = w.err.read_text()
    said = [line for line in err.splitlines() if not line.startswith(("worker: lost the database", "interrupted"))]
    if said and not (w.code == 2 and len(said) == 1 and _refused(said[0])):
        return False  # a traceback, a warning, an error: anything but an outage line or the refusal at its start
    if w.signalled == "kill-9":
        # 0: the worker finished between the soak's look (poll) and the signal, which then met a zombie.
        return w.code in (-signal.SIGKILL, 0)
    if w.signalled == "term":
        return w.code in (0, 130, -signal.SIGTERM)
    if w.code == 2:  # refused at its start: the server was away (its one line is checked above)
        return len(said) == 1
    return w.code == 0


def _refused(line: str) -> bool:
    """The one line of a worker that found no server as it started: from its start-up check ("cannot
    connect to ..."), or, when the server went away between that check and the worker's first
    session, from the session ("storage '...': connection failed: ... shutting down")."""
    return line.startswith("error: cannot connect") or (
        line.startswith("error: storage '") and "connection failed" in line
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long faults are injected")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault moments and kinds")
    parser.add_argument("--workers", type=int, default=4, help="worker processes at a time")
    parser.add_argument("--record", action="store_true", help="write the soak section of bench/README.md")
    parser.add_argument("--logs", type=Path, help="keep every worker's stdout and stderr in this directory")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        cluster_context = postgres_server.throwaway_cluster()
        cluster = cluster_context.__enter__()
    except postgres_server.NoPostgres as err:
        raise SystemExit(f"soak: {err} (the soak restarts its own server)") from None
    memory = PeakRSS().start()
    totals = CampaignCheck()
    try:
        with (
            postgres_server.fresh_database(cluster.url, prefix="rcutune_soak") as url,
            tempfile.TemporaryDirectory(prefix="rcutune-soak-") as workdir,
        ):
            logs = args.logs or Path(workdir)
            logs.mkdir(parents=True, exist_ok=True)
            soak = Soak(cluster, url, logs, random.Random(args.seed), args.workers, memory)
            try:
                soak.run(args.minutes * 60)
            finally:
                soak.stop_all()
                memory.stop()
            outputs = {name: [w.out.read_text() for w in soak.ended if w.campaign == name] for name in soak.campaigns}
            for name in soak.campaigns:
                check = check_campaign(url, name, reported(name, outputs[name]))
                for problem in check.problems:
                    print(f"{name}: {problem}")
                totals.add(check)
            unexpected = [w for w in soak.ended if not expected(w)]
            for w in unexpected:
                print(
                    f"unexpected end of worker pid {w.proc.pid} ({w.signalled or 'no fault'}): exit {w.code}\n"
                    f"{w.err.read_text()[-2000:]}"
                )
            outages = sum(
                line.startswith("worker: lost the database")
                for w in soak.ended
                for line in w.err.read_text().splitlines()
            )
            refused = sum(w.code == 2 for w in soak.ended)
    finally:
        cluster_context.__exit__(None, None, None)
    wall = (time.monotonic() - started) / 60
    faults = " ".join(f"{kind}={n}" for kind, n in soak.faults.items())
    summary = (
        f"campaigns={len(soak.campaigns)} workers={len(soak.ended)} refused_at_start={refused} "
        f"outage_lines={outages} unexpected={len(unexpected)} faults: {faults}"
    )
    memory_line = (
        f"peak resident memory: one worker with its simulation processes {memory.peak_tree_mib:.1f} MiB, "
        f"largest single process {memory.peak_process_mib:.1f} MiB"
    )
    last = (
        f"minutes={args.minutes:g} trials={totals.trials} lost={totals.lost} duplicated={totals.duplicated} "
        f"stuck_running={totals.stuck_running} integrity={totals.integrity} "
        f"peak_rss_mib={memory.peak_tree_mib:.1f}"
    )
    print(summary)
    print(memory_line)
    print(last, flush=True)
    if args.record:
        record(
            "soak",
            [summary, memory_line, last],
            intro=f"{args.workers} `rcutune worker` processes on a throwaway PostgreSQL server for "
            f"{args.minutes:g} minutes of faults ({wall:.1f} minutes in all, the last campaign run to its end). "
            "What each figure means is in the docstring of `bench/soak.py`.",
        )
    ok = totals.lost == totals.duplicated == totals.stuck_running == 0 and totals.integrity == "ok"
    sys.exit(0 if ok and not unexpected else 1)


if __name__ == "__main__":
    main()
