"""A behaviour change must come with a SIMULATOR_VERSION bump (studies store the version they ran on).

The fingerprint is the hash of fixed inputs' metrics (tests/support/fingerprint.py). It is stored
with the version it belongs to; after a bump, `python -m tests.support.fingerprint --write`.
"""

from __future__ import annotations

from rcutune import sim
from tests.support import fingerprint


def test_the_stored_fingerprint_belongs_to_this_simulator_version():
    stored = fingerprint.stored()
    assert stored.get("simulator_version") == sim.SIMULATOR_VERSION, (
        f"SIMULATOR_VERSION is {sim.SIMULATOR_VERSION} but the fingerprint was stored for "
        f"{stored.get('simulator_version')}: run `python -m tests.support.fingerprint --write`"
    )


def test_the_metrics_of_fixed_inputs_are_those_of_this_version():
    stored = fingerprint.stored()
    if stored.get("simulator_version") != sim.SIMULATOR_VERSION:
        return  # the test above says what to do
    assert fingerprint.fingerprint() == stored["fingerprint"], (
        "the simulator's metrics for fixed inputs changed: bump SIMULATOR_VERSION (sim/__init__.py), "
        "then `python -m tests.support.fingerprint --write`"
    )


def test_the_fingerprint_sees_a_one_nanosecond_change():
    """It would catch a behaviour change: the cases are sensitive to a per-call cost's last digit."""
    name, hw_text, wl_text, kernel, n, _ = fingerprint.CASES[4]
    base = fingerprint.metrics()[name]
    moved = hw_text.replace("kfree_call_ns = 1200.0", "kfree_call_ns = 1201.0")
    assert moved != hw_text
    original = fingerprint.CASES
    try:
        fingerprint.CASES = ((name, moved, wl_text, kernel, n, ""),)
        assert fingerprint.metrics()[name] != base
    finally:
        fingerprint.CASES = original
