"""Shared helpers: small profiles and a checker for the invariants every run must satisfy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import sim

sys.path.insert(0, str(Path(__file__).parent))

import postgres_server  # noqa: E402 - from the tests directory, just added to the path


def load(hardware: str, workload: str, **overrides: object) -> tuple[sim.HardwareProfile, sim.WorkloadProfile]:
    """Shipped profiles with `section.key` overrides, e.g. load("vm-2", "steady", **{"hardware.cpus": 4})."""
    split = sim.split_overrides([f"{k}={v}" for k, v in overrides.items()])
    return sim.load_hardware(hardware, split["hardware"]), sim.load_workload(workload, split["workload"])


def assert_invariants(m: sim.Metrics, policy: sim.Policy) -> None:
    """DESIGN.md §2.4: conservation of objects and pages, safety, the cache cap, two batches."""
    assert m.calls == m.objects_freed + m.objects_pending_end, "objects are conserved"
    assert m.calls == m.calls_two_arg + m.calls_headless
    assert m.safety_violations == 0, "no object is freed before a GP that began after its call"
    assert m.cache_pages_peak_per_cpu <= policy.n_per_cpu, "cached pages per CPU never exceed N"
    assert m.pages_allocated == m.pages_freed + m.pages_held_end, "block pages are conserved"
    assert m.batches_in_flight_peak <= 2, "at most KFREE_N_BATCHES batches wait per CPU"
    assert m.monitor_timer_lengthened == 0
    assert m.page_alloc_failures <= m.page_alloc_attempts
    assert m.bytes_pending_peak >= m.bytes_pending_mean >= 0
    assert m.free_pages_min >= 0


@pytest.fixture
def invariants():
    return assert_invariants


@pytest.fixture(scope="session")
def postgres_server_url():
    """A PostgreSQL server: $RCUTUNE_TEST_POSTGRES, else a throwaway cluster (skipped without initdb; failed on CI)."""
    server = postgres_server.server()
    try:
        import psycopg  # noqa: F401 - the driver of postgresql+psycopg:// URLs

        url = server.__enter__()
    except (postgres_server.NoPostgres, OSError, ImportError) as err:
        message = f"PostgreSQL tests need a server: {err}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server_url):
    """A fresh, empty database on the PostgreSQL server, dropped after the test."""
    with postgres_server.fresh_database(postgres_server_url) as url:
        yield url
