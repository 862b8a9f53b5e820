"""The simulator's fingerprint: the metrics of fixed inputs, hashed, stored with SIMULATOR_VERSION.

The inputs are written out here (not read from the shipped profiles, which calibration and edits
move), so the fingerprint changes only when the simulator does. `python -m tests.support.fingerprint
--write` stores the current fingerprint under the current SIMULATOR_VERSION; do that together with
the version bump, never instead of it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from dataclasses import asdict
from pathlib import Path

from rcutune import sim

STORE = Path(__file__).resolve().parent.parent / "data" / "fingerprint.json"

SERVER = """
cpus = 16
memory_mib = 65536
hz = 1000
preempt = "voluntary"
preempt_dynamic = true
boot_reserved_mib = 512.0
gp_median_ms = 37.0
gp_sigma = 0.35
gp_min_ms = 8.0
gp_max_ms = 64.0
kfree_call_ns = 110.0
file_cache_fraction = 0.3
"""
NOCB = """
cpus = 32
memory_mib = 131072
hz = 250
nocb_cpus = 24
preempt = "none"
gp_median_ms = 20.0
gp_sigma = 0.4
gp_min_ms = 4.0
gp_max_ms = 60.0
rcu_lazy = true
"""
GUEST = """
cpus = 2
memory_mib = 256
hz = 1000
preempt = "none"
gp_min_ms = 1.0
gp_max_ms = 21000.0
kfree_call_ns = 1200.0
kfree_slow_ns = 300.0
kfree_fast_ns = 120.0
loop_jitter = 0.3
file_cache_fraction = 0.0
"""
STEADY = """
shape = "open"
duration_s = 1.0
calls_per_s_per_cpu = 20000.0
headless_fraction = 0.05
slab_locality = 0.3
object_bytes = 192
pressure = "steady"
anon_fraction = 0.3
"""
FLOOD = """
shape = "open"
duration_s = 0.5
calls_per_s_per_cpu = 30000.0
headless_fraction = 0.15
slab_locality = 0.5
object_bytes = 256
skew = 0.5
pressure = "steady"
anon_fraction = 0.4
"""
RCUSCALE = """
shape = "rcuscale"
duration_s = 60.0
kfree_nthreads = -1
kfree_alloc_num = 8000
kfree_loops = 8
kfree_mult = 1
kfree_rcu_test_single = false
kfree_rcu_test_double = true
anon_fraction = 0.05
"""

CASES: tuple[tuple[str, str, str, str, int, str], ...] = (
    # (name, hardware, workload, kernel, N, preemption model override or "")
    ("server steady 6.18", SERVER, STEADY, "6.18", 5, ""),
    ("server steady 5.11", SERVER, STEADY, "5.11", 2, ""),
    ("nocb flood 6.1", NOCB, FLOOD, "6.1", 64, ""),
    ("nocb flood 6.12", NOCB, FLOOD, "6.12", 0, ""),
    ("guest rcuscale 6.1 none N=0", GUEST, RCUSCALE, "6.1", 0, ""),
    ("guest rcuscale 6.1 voluntary N=1", GUEST, RCUSCALE, "6.1", 1, "voluntary"),
    ("guest rcuscale 5.6", GUEST, RCUSCALE, "5.6", 0, ""),
    ("guest rcuscale 6.1 every CPU offloaded N=0", GUEST + "nocb_cpus = 2\n", RCUSCALE, "6.1", 0, ""),
)


def _round(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.9g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_round(v) for v in value]
    return value


def metrics() -> dict[str, dict]:
    """Every case's metrics (floats to 9 significant digits; wall-clock figures left out)."""
    out = {}
    for name, hw_text, wl_text, kernel, n, preempt in CASES:
        hw = sim.HardwareProfile.model_validate({"name": "fp-hw", **tomllib.loads(hw_text)})
        if preempt:
            hw = hw.model_copy(update={"preempt": preempt})
        wl = sim.WorkloadProfile.model_validate({"name": "fp-wl", **tomllib.loads(wl_text)})
        m = sim.simulate(hw, wl, sim.Policy(n_per_cpu=n), seed=7, kernel=kernel)
        values = {k: v for k, v in asdict(m).items() if not k.startswith("wall_")}
        out[name] = _round(values)
    return out


def fingerprint() -> str:
    return hashlib.sha256(json.dumps(metrics(), sort_keys=True).encode()).hexdigest()


def stored() -> dict[str, str]:
    return json.loads(STORE.read_text(encoding="utf-8")) if STORE.exists() else {}


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write"]:
        STORE.write_text(
            json.dumps({"simulator_version": sim.SIMULATOR_VERSION, "fingerprint": fingerprint()}, indent=2) + "\n",
            encoding="utf-8",
        )
        print(f"{STORE.name}: {sim.SIMULATOR_VERSION}")
        return 0
    print(json.dumps({"simulator_version": sim.SIMULATOR_VERSION, "fingerprint": fingerprint()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
