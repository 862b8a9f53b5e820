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
