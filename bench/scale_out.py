"""Trials per minute with 1, 2 and 4 `rcutune worker` processes on PostgreSQL, against the SQLite single writer.

Each configuration runs the same campaign from scratch in a fresh database: server-64, the nocb-flood
and memory-pressure workloads, 10 trials each (the initial design: the same 20 policies every time,
never pruned), 2 simulated seconds per replication, 2 seeds and no racing, so that every
configuration does exactly the same simulations (racing and pruning decisions otherwise depend on
which trials have finished, hence on the number of workers). Each is timed end to end, from starting
the processes to the last one exiting (process start-up included, as a user would see it):

- `workers_K`: `rcutune study ... --no-run` creates the campaign on PostgreSQL, then K
  `rcutune worker` processes (one simulation at a time each) run it until the budgets are spent;
- `sqlite_jobs_2`: one `rcutune study ... --jobs 2` process (2 simulation workers, one writer) into
  a SQLite file.

The PostgreSQL server is `$RCUTUNE_TEST_POSTGRES` if set, else a throwaway cluster started from the
distribution's `initdb` and removed afterwards. The last line is
`workers_1=<float> workers_2=<float> workers_4=<float> sqlite_jobs_2=<float>` (trials per minute).

Memory: every configuration's processes are sampled every 0.25 s (`tests.support.memory`); the
peak resident memory of one worker with its simulation process, and of the `rcutune study`
process with its two, is printed. Then (unless `--hpc-trials 0`) the peak of `rcutune study
--hardware hpc-256-nocb --quick --jobs 2 --trials N` into a fresh SQLite file, the heaviest preset
a user runs (N = 40, the preset's own, by default). `--record` writes the `scale_out` section of
bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._record import record  # noqa: E402
from rcutune.tuner.search import QUICK_TRIALS  # noqa: E402
from tests.support import postgres_server  # noqa: E402
from tests.support.memory import PeakRSS  # noqa: E402

HARDWARE = "server-64"
WORKLOADS = ("nocb-flood", "memory-pressure")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rcutune.tuner.cli", *args]


def _campaign_args(args: argparse.Namespace, storage: str) -> list[str]:
    out = [
        "study",
        "--hardware",
        HARDWARE,
        "--seconds",
        str(args.seconds),
        "--replications",
        "2",
        "--race-replications",
        "0",
        "--trials",
        str(args.trials),
        "--storage",
        storage,
    ]
    for w in WORKLOADS:
        out += ["--workload", w]
    return out


def _total(storage: str) -> int:
    """Complete and pruned trials stored (what both paths count against --trials)."""
    import optuna
    from optuna.trial import TrialState

    rdb = optuna.storages.RDBStorage(storage)
    try:
        return sum(
            len(
                optuna.load_study(study_name=f"{HARDWARE}/{w}", storage=rdb).get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
                )
            )
            for w in WORKLOADS
        )
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


_SAID: list[str] = []


def say(line: str) -> None:
    """Print a figure and keep it for --record."""
    print(line, flush=True)
    _SAID.append(line)


def workers(args: argparse.Namespace, server: str, count: int, memory: dict[str, float]) -> float:
    with postgres_server.fresh_database(server, prefix="rcutune_bench") as url:
        subprocess.run(_cli(*_campaign_args(args, url), "--no-run"), env=_env(), check=True, stdout=subprocess.DEVNULL)
        sampler = PeakRSS().start()
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                _cli("worker", "--study", HARDWARE, "--storage", url), env=_env(), stdout=subprocess.DEVNULL
            )
            for _ in range(count)
        ]
        for i, p in enumerate(procs):
            sampler.watch(p.pid, f"worker-{i}")
        codes = [p.wait() for p in procs]
        elapsed = time.monotonic() - start
        sampler.stop()
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        trials = _total(url)
    rate = trials / elapsed * 60
    memory[f"workers_{count}"] = sampler.peak_tree_mib
    say(
        f"PostgreSQL, {count} worker{'s' if count > 1 else ''}: {trials} trials in {elapsed:.1f} s "
        f"({rate:.1f} trials/min); peak memory of one worker with its simulation process "
        f"{sampler.peak_tree_mib:.0f} MiB"
    )
    return rate


def sqlite(args: argparse.Namespace, memory: dict[str, float]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        sampler = PeakRSS().start()
        start = time.monotonic()
        proc = subprocess.Popen(
            _cli(*_campaign_args(args, url), "--jobs", "2"),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sampler.watch(proc.pid, "study")
        if proc.wait():
            raise SystemExit(f"rcutune study failed: exit {proc.returncode}")
        elapsed = time.monotonic() - start
        sampler.stop()
        trials = _total(url)
    rate = trials / elapsed * 60
    memory["sqlite_jobs_2"] = sampler.peak_tree_mib
    say(
        f"SQLite, one writer, --jobs 2: {trials} trials in {elapsed:.1f} s ({rate:.1f} trials/min); peak memory "
        f"of the study with its simulation processes {sampler.peak_tree_mib:.0f} MiB"
    )
    return rate


def hpc_study_memory(trials: int) -> str:
    """Peak resident memory of the heaviest preset: rcutune study --hardware hpc-256-nocb --quick."""
    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "study",
            "--hardware",
            "hpc-256-nocb",
            "--quick",
            "--jobs",
            "2",
            "--trials",
            str(trials),
            "--storage",
            f"sqlite:///{Path(tmp) / 'hpc.db'}",
            "--quiet",
        ]
        sampler = PeakRSS().start()
        start = time.monotonic()
        proc = subprocess.Popen(_cli(*argv), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler.watch(proc.pid, "study")
        if proc.wait():
            raise SystemExit(f"rcutune {' '.join(argv[:-2])} failed: exit {proc.returncode}")
        elapsed = time.monotonic() - start
        sampler.stop()
    line = (
        f"rcutune study --hardware hpc-256-nocb --quick --jobs 2 --trials {trials} (7 workloads, "
        f"{7 * trials} trials, {elapsed / 60:.1f} min): peak memory {sampler.peak_tree_mib:.0f} MiB with its two "
        f"simulation processes, largest single process {sampler.peak_process_mib:.0f} MiB"
    )
    say(line)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per study (2 studies)")
    parser.add_argument("--seconds", type=float, default=2.0, help="simulated seconds per replication")
    parser.add_argument(
        "--hpc-trials",
        type=int,
        default=QUICK_TRIALS,
        help=f"trials per workload of the hpc-256-nocb --quick memory measurement (default {QUICK_TRIALS}, "
        "the preset's; 0: skip it)",
    )
    parser.add_argument("--record", action="store_true", help="write the scale_out section of bench/README.md")
    args = parser.parse_args()
    rates: dict[str, float] = {}
    memory: dict[str, float] = {}
    with postgres_server.server() as server:
        for count in (1, 2, 4):
            rates[f"workers_{count}"] = workers(args, server, count, memory)
    rates["sqlite_jobs_2"] = sqlite(args, memory)
    if args.hpc_trials:
        hpc_study_memory(args.hpc_trials)
    peak = (
        f"peak memory (MiB): one worker {max(memory[k] for k in memory if k.startswith('workers')):.0f}, "
        f"rcutune study --jobs 2 {memory['sqlite_jobs_2']:.0f}"
    )
    last = " ".join(f"{k}={v:.1f}" for k, v in rates.items())
    say(peak)
    say(last)
    if args.record:
        record(
            "scale_out",
            list(_SAID),
            intro=f"Trials per minute with 1, 2 and 4 `rcutune worker` processes on PostgreSQL against one "
            f"`rcutune study --jobs 2` on SQLite ({HARDWARE}, {' and '.join(WORKLOADS)}, {args.trials} trials each, "
            f"{args.seconds:g} simulated s per replication), and peak resident memory (a process with the "
            "simulation processes it started, summed, sampled every 0.25 s).",
        )


if __name__ == "__main__":
    main()
