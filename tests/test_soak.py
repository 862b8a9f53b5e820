"""The soak, short: workers on PostgreSQL while workers are killed and the server restarts (bench/soak.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import postgres_server

ROOT = Path(__file__).resolve().parents[1]
LAST_LINE = re.compile(
    r"^minutes=(?P<minutes>[\d.]+) trials=(?P<trials>\d+) lost=(?P<lost>\d+) "
    r"duplicated=(?P<duplicated>\d+) stuck_running=(?P<stuck>\d+) "
    r"integrity=(?P<integrity>ok|bad) peak_rss_mib=(?P<rss>[\d.]+)$"
)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_short_soak_loses_duplicates_and_strands_nothing():
    if postgres_server.find_initdb() is None:
        message = "the soak restarts its own PostgreSQL server: install the postgresql package (initdb)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    soak = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.75", "--seed", "1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = soak.stdout.strip().splitlines()
    last = LAST_LINE.match(lines[-1]) if lines else None
    assert last is not None, soak.stdout[-3000:] + soak.stderr[-3000:]
    assert (last["lost"], last["duplicated"], last["stuck"], last["integrity"]) == ("0", "0", "0", "ok"), soak.stdout[
        -3000:
    ]
    assert int(last["trials"]) >= 32  # at least one whole campaign
    assert float(last["rss"]) < 1024  # one worker with its simulation processes, in MiB
    assert "unexpected=0" in lines[-3] and soak.returncode == 0, soak.stdout[-3000:]


@pytest.mark.parametrize(
    "line, allowed",
    [
        ("error: cannot connect to postgresql://x/db (connection refused); check the host", True),
        ("error: storage 'postgresql://x/db': connection failed: FATAL: the database system is shutting down", True),
        ("error: storage 'postgresql://x/db': relation \"trials\" does not exist", False),
        ("Traceback (most recent call last):", False),
    ],
)
def test_a_worker_refused_at_its_start_is_expected_only_for_a_connection_failure(tmp_path, line, allowed):
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak
    spec.loader.exec_module(soak)
    err = tmp_path / "w.err"
    err.write_text(line + "\n")
    worker = soak.Worker(proc=None, campaign="c", out=tmp_path / "w.out", err=err, code=2)
    assert soak.expected(worker) is allowed
