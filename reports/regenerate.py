"""Regenerate the example reports and reports/README.md, which this script alone writes.

For every shipped hardware profile (the calibrated qemu guests left out), in a fresh SQLite file:
`rcutune study --hardware H --quick` then `rcutune report H-quick`, each timed as a whole process.
The reports of the example profiles (`--keep`, default phone-8, server-64 and hpc-256-nocb) are
written into reports/<hardware>/<campaign>/; the others into a temporary directory. reports/README.md
gets, per profile, the wall time of each command, the report's exit code, the kernel command line,
the risk line and why N is what it is.

    python reports/regenerate.py                       # every profile (about half an hour on 2 cores)
    python reports/regenerate.py --hardware vm-2       # one profile
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEEP = ("phone-8", "server-64", "hpc-256-nocb")
SHIPPED = ("phone-8", "laptop-8", "server-64", "hpc-256-nocb", "rt-16-nocb", "vm-2", "arm64-16k-32")


def rcutune(*args: str, cwd: Path) -> tuple[float, int, str, str]:
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "rcutune.tuner.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env={**{k: v for k, v in os.environ.items() if k != "RCUTUNE_STORAGE"}, "COLUMNS": "200"})
    return time.monotonic() - start, done.returncode, done.stdout, done.stderr


def regenerate(hardware: str, keep: bool, jobs: int, workdir: Path) -> dict:
    # Each profile in a directory of its own with the default storage (rcutune.db there), as a user
    # runs it: the reports then name no path of this machine.
    workdir = workdir / hardware
    workdir.mkdir()
    out = HERE if keep else workdir / "reports"
    study = rcutune("study", "--hardware", hardware, "--quick", "--jobs", str(jobs), "--quiet", cwd=workdir)
    if study[1] not in (0, 1):
        raise SystemExit(f"{hardware}: rcutune study failed: {study[3].strip()}")
    if keep:
        shutil.rmtree(HERE / hardware, ignore_errors=True)
    report = rcutune("report", f"{hardware}-quick", "--out", str(out), cwd=workdir)
    doc = json.loads((out / hardware / f"{hardware}-quick" / "recommendation.json").read_text())
    lines = report[2].splitlines()
    return {"hardware": hardware, "study_s": study[0], "report_s": report[0], "exit": report[1],
            "cmdline": doc["kernel_cmdline"], "risk": next((x for x in lines if x.startswith("risk:")), ""),
            "why": next((x.strip() for x in lines if x.strip().startswith("why N=")), ""),
            "served": doc["served"], "not_served": sorted(set(doc["workloads"]) - set(doc["served"])),
            "error": report[3].strip(), "kept": keep}


def write_readme(rows: list[dict], command: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = ["# Example reports", "",
            "Written by `python reports/regenerate.py` (this file included; nothing here is edited by hand): for",
            "every shipped hardware profile, a quick study of every workload in a fresh database, then its report.",
            f"Last run: `{command}` on {stamp}, {os.cpu_count()} cores.", "",
            "| hardware | study (s) | report (s) | exit | kernel command line | served |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = f"[{r['hardware']}]({r['hardware']}/{r['hardware']}-quick/report.md)" if r["kept"] else r["hardware"]
        text.append(f"| {name} | {r['study_s']:.0f} | {r['report_s']:.0f} | {r['exit']} | "
                    f"`{r['cmdline'] or 'no recommendation'}` | {', '.join(r['served']) or '-'} |")
    text += ["", "Risk and the reason for N, per profile:", ""]
    for r in rows:
        text.append(f"- **{r['hardware']}**: {r['risk'] or r['error']}" + (f"; {r['why']}" if r["why"] else "")
                    + (f"; not served: {', '.join(r['not_served'])}" if r["not_served"] else "") + ".")
    text += ["", "Each row was made, in an empty directory of its own, with:", "", "```",
             "rcutune study --hardware H --quick", "rcutune report H-quick --out reports", "```", ""]
    (HERE / "README.md").write_text("\n".join(text))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hardware", action="append", help="only these profiles (repeatable)")
    ap.add_argument("--keep", action="append", help=f"profiles whose report is kept in reports/ (default {KEEP})")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    keep = set(args.keep or KEEP)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hardware in args.hardware or SHIPPED:
            row = regenerate(hardware, hardware in keep, args.jobs, Path(tmp))
            print(f"{hardware}: study {row['study_s']:.0f} s, report {row['report_s']:.0f} s, exit {row['exit']}: "
                  f"{row['cmdline'] or 'no recommendation'}", flush=True)
            rows.append(row)
    if not args.hardware:
        write_readme(rows, " ".join(["python reports/regenerate.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
