"""`rcutune worker` processes on PostgreSQL for the tests and benches, and what they left in the database.

`check_campaign` is the one definition of a campaign left whole, used by the fault tests and by
`bench/soak.py`:

- lost: a trial a worker reported complete or pruned (its own line on stdout, printed after the
  tell) that is not stored in that state;
- duplicated: complete or pruned trials beyond the first of one (batch, slot) of a study (every
  slot of a batch is one planned point; its retries keep the slot, so it may end complete or
  pruned once);
- stuck_running: trials left RUNNING once every worker is gone;
- integrity: every study's complete plus pruned trials equal its budget, nothing is left WAITING,
  trial numbers are 0..n-1 without a gap or a repeat, no row of Optuna's trial tables points at a
  trial or study that does not exist, every complete trial has a value per objective and its
  replications, every pruned one the trial that pruned it, and every study of the campaign exists
  in Optuna's tables.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]
SPENT = ("COMPLETE", "PRUNED")
_REPORTED = re.compile(r"^(?P<workload>\S+) #(?P<number>\d+) (?P<state>complete|pruned)\b")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rcutune.tuner.cli", *args]


def start_worker(url: str, campaign: str, out: Path, *args: str, err: Path | None = None) -> subprocess.Popen:
    """A `rcutune worker` process in its own process group; stdout to `out`, stderr to `err` (else `out`)."""
    argv = cli("worker", "--study", campaign, "--storage", url, *args)
    with out.open("w") as sink:
        if err is None:
            return subprocess.Popen(argv, env=env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        with err.open("w") as errors:
            return subprocess.Popen(argv, env=env(), stdout=sink, stderr=errors, start_new_session=True)


def stop_all(procs: Iterable[subprocess.Popen]) -> None:
    """Kill -9 whatever is still running (the process group: the worker and its simulation processes)."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def wait_all(procs: Sequence[subprocess.Popen], timeout: float) -> bool:
    """Wait until every process exits; False (and all killed) when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_all(procs)
            return False
    return True


def reported(campaign: str, outputs: Iterable[str]) -> set[tuple[str, str, int, str]]:
    """(campaign, workload, trial number, state) of every trial the workers said they finished."""
    found = set()
    for text in outputs:
        for line in text.splitlines():
            m = _REPORTED.match(line)
            if m:
                found.add((campaign, m["workload"], int(m["number"]), m["state"].upper()))
    return found


@dataclass
class CampaignCheck:
    """What `check_campaign` found (see the module docstring for the definitions)."""

    trials: int = 0  # complete and pruned
    lost: int = 0
    duplicated: int = 0
    stuck_running: int = 0
    problems: list[str] = field(default_factory=list)  # integrity failures, one line each

    @property
    def integrity(self) -> str:
        return "ok" if not self.problems else "bad"

    def add(self, other: CampaignCheck) -> None:
        self.trials += other.trials
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.stuck_running += other.stuck_running
        self.problems += other.problems


_ORPHANS = {
    "trials": ("study_id", "studies", "study_id"),
    "trial_params": ("trial_id", "trials", "trial_id"),
    "trial_values": ("trial_id", "trials", "trial_id"),
    "trial_user_attributes": ("trial_id", "trials", "trial_id"),
    "trial_system_attributes": ("trial_id", "trials", "trial_id"),
    "trial_intermediate_values": ("trial_id", "trials", "trial_id"),
    "trial_heartbeats": ("trial_id", "trials", "trial_id"),
    "study_directions": ("study_id", "studies", "study_id"),
    "study_user_attributes": ("study_id", "studies", "study_id"),
}


def check_campaign(url: str, campaign: str, finished: Iterable[tuple[str, str, int, str]] = ()) -> CampaignCheck:
    """Check one campaign's studies against the definitions of the module docstring.

    `finished`: what the workers reported (see `reported`); only this campaign's entries count.
    """
    check = CampaignCheck()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":  # one snapshot for every query below
                conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            studies = conn.execute(
                sa.text(
                    "SELECT s.workload_name, s.optuna_study_name FROM rcutune_studies s JOIN rcutune_campaigns c "
                    "ON c.id = s.campaign_id WHERE c.name = :name ORDER BY s.id"
                ),
                {"name": campaign},
            ).all()
            if not studies:
                check.problems.append(f"{campaign}: no studies")
            for table, (column, parent, key) in _ORPHANS.items():
                orphans = conn.execute(
                    sa.text(
                        f"SELECT count(*) FROM {table} x LEFT JOIN {parent} p ON p.{key} = x.{column} "
                        f"WHERE p.{key} IS NULL"
                    )
                ).scalar()
                if orphans:
                    check.problems.append(f"{table}: {orphans} rows point at no {parent} row")
            states: dict[tuple[str, int], str] = {}
            for workload, optuna_name in studies:
                one = _check_study(conn, campaign, workload, optuna_name, states)
                check.add(one)
    finally:
        engine.dispose()
    for c, workload, number, state in finished:
        if c == campaign and states.get((workload, number)) != state:
            check.lost += 1
    return check


def _check_study(
    conn: sa.Connection, campaign: str, workload: str, optuna_name: str, states: dict[tuple[str, int], str]
) -> CampaignCheck:
    check = CampaignCheck()
    where = f"{campaign}/{workload}"
    study_id = conn.execute(sa.text("SELECT study_id FROM studies WHERE study_name = :n"), {"n": optuna_name}).scalar()
    if study_id is None:
        check.problems.append(f"{where}: no Optuna study {optuna_name}")
        return check
    budget = conn.execute(
        sa.text("SELECT value_json FROM study_user_attributes WHERE study_id = :s AND key = 'budget'"), {"s": study_id}
    ).scalar()
    objectives = conn.execute(
        sa.text("SELECT count(*) FROM study_directions WHERE study_id = :s"), {"s": study_id}
    ).scalar()
    rows = conn.execute(
        sa.text("SELECT trial_id, number, state FROM trials WHERE study_id = :s ORDER BY number"), {"s": study_id}
    ).all()
    attrs: dict[int, dict[str, object]] = {tid: {} for tid, _, _ in rows}
    for tid, key, value in conn.execute(
        sa.text(
            "SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a "
            "JOIN trials t ON t.trial_id = a.trial_id "
            "WHERE t.study_id = :s AND a.key IN ('batch', 'slot', 'replications', 'pruned_by')"
        ),
        {"s": study_id},
    ):
        attrs[tid][key] = json.loads(value)
    values = Counter(
        conn.execute(
            sa.text(
                "SELECT v.trial_id FROM trial_values v JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = :s"
            ),
            {"s": study_id},
        ).scalars()
    )
    numbers = [number for _, number, _ in rows]
    if numbers != list(range(len(numbers))):
        check.problems.append(f"{where}: trial numbers are not 0..{len(numbers) - 1} (repeats or gaps)")
    by_state = Counter(state for _, _, state in rows)
    check.trials = by_state["COMPLETE"] + by_state["PRUNED"]
    check.stuck_running = by_state["RUNNING"]
    if budget is None or check.trials != int(json.loads(budget)):
        check.problems.append(f"{where}: {check.trials} complete and pruned trials, budget {budget}")
    if by_state["WAITING"]:
        check.problems.append(f"{where}: {by_state['WAITING']} trials left waiting")
    slots: Counter[tuple[object, object]] = Counter()
    for tid, number, state in rows:
        states[(workload, number)] = state
        a = attrs[tid]
        if state == "COMPLETE" and (values[tid] != objectives or "replications" not in a):
            check.problems.append(f"{where} #{number}: complete without its {objectives} values or replications")
        if state == "PRUNED" and "pruned_by" not in a:
            check.problems.append(f"{where} #{number}: pruned without the trial that pruned it")
        if state in SPENT:
            slots[(a.get("batch"), a.get("slot", f"#{number}"))] += 1
    check.duplicated = sum(n - 1 for n in slots.values() if n > 1)
    return check
