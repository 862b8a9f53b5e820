"""How fast `rcutune recommend` answers from a campaign's stored answer, against a refit in the same run.

Builds a small quick campaign (vm-2, steady and rcuscale, 12 trials each) in a temporary SQLite
file, writes its report (which fits, confirms and stores the answer), then times whole `rcutune`
processes: `recommend` reading the stored answer (median of 5 runs, wall and CPU seconds including
Python's start-up) and `recommend --confidence 0.9`, which must refit. CPU seconds are the child
processes' own, so other load on the machine moves them less than wall time.

The last line is `stored_seconds=<f> stored_cpu_seconds=<f> refit_seconds=<f> speedup=<f>`
(speedup = refit wall / stored wall). Target: stored_seconds <= 2.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Printer, record  # noqa: E402


def rcutune(*args: str, cwd: Path) -> tuple[float, float, str]:
    """Run `rcutune ARGS`; returns (wall seconds, CPU seconds, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rcutune.tuner.cli", *args], cwd=cwd, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"rcutune {' '.join(args)} failed: {done.stderr.strip()}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help="also write the figures into bench/README.md")
    args = ap.parse_args()
    out = Printer()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        db = cwd / "rcutune.db"
        storage = ["--storage", f"sqlite:///{db}"]
        setup = rcutune(
            "study",
            "--hardware",
            "vm-2",
            "--workload",
            "steady",
            "--workload",
            "rcuscale",
            "--quick",
            "--trials",
            "12",
            "--quiet",
            *storage,
            cwd=cwd,
        )
        out(f"set-up: quick study of vm-2 (steady, rcuscale, 12 trials each) in {setup[0]:.1f} s")
        report = rcutune("report", "vm-2-quick", "--quiet", *storage, cwd=cwd)
        out(f"rcutune report (fits, confirms, stores): {report[0]:.1f} s wall, {report[1]:.1f} s CPU")
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        stored = [rcutune("recommend", "--hardware", "vm-2", *storage, cwd=cwd) for _ in range(5)]
        unchanged = hashlib.sha256(db.read_bytes()).hexdigest() == digest
        refit = rcutune("recommend", "--hardware", "vm-2", "--confidence", "0.9", *storage, cwd=cwd)
    wall = statistics.median(s[0] for s in stored)
    cpu = statistics.median(s[1] for s in stored)
    out(
        f"rcutune recommend, stored answer: median {wall:.2f} s wall, {cpu:.2f} s CPU over 5 runs; "
        f"database byte-identical afterwards: {'yes' if unchanged else 'NO'}"
    )
    out(f"rcutune recommend --confidence 0.9 (a refit): {refit[0]:.1f} s wall, {refit[1]:.1f} s CPU")
    out(
        f"stored_seconds={wall:.3f} stored_cpu_seconds={cpu:.3f} refit_seconds={refit[0]:.3f} "
        f"speedup={refit[0] / wall:.1f}"
    )
    if args.record:
        record("answer_speed", out.lines)


if __name__ == "__main__":
    main()
