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

from tests.support import postgres_server  # noqa: E402

HARDWARE = "server-64"
WORKLOADS = ("nocb-flood", "memory-pressure")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rcutune.tuner.cli", *args]


def _campaign_args(args: argparse.Namespace, storage: str) -> list[str]:
    out = ["study", "--hardware", HARDWARE, "--seconds", str(args.seconds), "--replications", "2",
           "--race-replications", "0", "--trials", str(args.trials), "--storage", storage]
    for w in WORKLOADS:
        out += ["--workload", w]
    return out


def _total(storage: str) -> int:
    """Complete and pruned trials stored (what both paths count against --trials)."""
    import optuna
    from optuna.trial import TrialState

    rdb = optuna.storages.RDBStorage(storage)
    try:
        return sum(len(optuna.load_study(study_name=f"{HARDWARE}/{w}", storage=rdb).get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))) for w in WORKLOADS)
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def workers(args: argparse.Namespace, server: str, count: int) -> float:
    with postgres_server.fresh_database(server, prefix="rcutune_bench") as url:
        subprocess.run(_cli(*_campaign_args(args, url), "--no-run"), env=_env(), check=True,
                       stdout=subprocess.DEVNULL)
        start = time.monotonic()
        procs = [subprocess.Popen(_cli("worker", "--study", HARDWARE, "--storage", url), env=_env(),
                                  stdout=subprocess.DEVNULL) for _ in range(count)]
        codes = [p.wait() for p in procs]
        elapsed = time.monotonic() - start
        if any(codes):
            raise SystemExit(f"a worker failed: exit codes {codes}")
        trials = _total(url)
    rate = trials / elapsed * 60
    print(f"PostgreSQL, {count} worker{'s' if count > 1 else ''}: {trials} trials in {elapsed:.1f} s "
          f"({rate:.1f} trials/min)", flush=True)
    return rate


def sqlite(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        start = time.monotonic()
        subprocess.run(_cli(*_campaign_args(args, url), "--jobs", "2"), env=_env(), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elapsed = time.monotonic() - start
        trials = _total(url)
    rate = trials / elapsed * 60
    print(f"SQLite, one writer, --jobs 2: {trials} trials in {elapsed:.1f} s ({rate:.1f} trials/min)", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10, help="trials per study (2 studies)")
    parser.add_argument("--seconds", type=float, default=2.0, help="simulated seconds per replication")
    args = parser.parse_args()
    rates = {}
    with postgres_server.server() as server:
        for count in (1, 2, 4):
            rates[f"workers_{count}"] = workers(args, server, count)
    rates["sqlite_jobs_2"] = sqlite(args)
    print(" ".join(f"{k}={v:.1f}" for k, v in rates.items()))


if __name__ == "__main__":
    main()
