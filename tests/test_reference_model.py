"""The aggregated model agrees with the per-call reference model on small cases.

Both run the same kernel mechanisms; the reference books every call as its own event. Over a
fixed set of seeds the means must agree: within `rel` of the reference mean, or within three
standard errors of the difference when the metric is too noisy for that (rare fallbacks).
"""

from __future__ import annotations

import numpy as np
import pytest

from rcutune import sim
from tests.support.reference_model import simulate_per_call
from tests.support.sim_checks import assert_invariants, load

pytestmark = [pytest.mark.slow]

SEEDS = range(8)

CASES = {
    "steady-N1": ("vm-2", "steady", sim.Policy(n_per_cpu=1), 2.0, {}),
    "pressure-N0": (
        "vm-2",
        "memory-pressure",
        sim.Policy(n_per_cpu=0),
        3.0,
        {"workload.anon_fraction": 0.9, "workload.anon_fraction_end": 0.999, "hardware.file_cache_fraction": 0.02},
    ),
}

TOLERANCE = {  # metric: relative tolerance
    "calls": 0.02,
    "bytes_pending_mean": 0.05,
    "grace_periods": 0.05,
    "head_fallbacks": 0.25,
    "sync_fallbacks": 0.25,
    "page_alloc_attempts": 0.15,
}


@pytest.fixture(scope="module", params=list(CASES))
def paired_runs(request):
    hardware, workload, policy, seconds, overrides = CASES[request.param]
    hw, wl = load(hardware, workload, **overrides)
    aggregated = [sim.simulate(hw, wl, policy, seconds=seconds, seed=s) for s in SEEDS]
    reference = [simulate_per_call(hw, wl, policy, seconds=seconds, seed=s) for s in SEEDS]
    for m in aggregated + reference:
        assert_invariants(m, policy)
    return request.param, aggregated, reference


@pytest.mark.parametrize("metric", list(TOLERANCE))
def test_aggregated_model_matches_per_call_reference(paired_runs, metric):
    case, aggregated, reference = paired_runs
    a = np.array([getattr(m, metric) for m in aggregated], dtype=float)
    r = np.array([getattr(m, metric) for m in reference], dtype=float)
    diff = abs(a.mean() - r.mean())
    noise = 3.0 * np.sqrt(a.var(ddof=1) / len(a) + r.var(ddof=1) / len(r))
    allowed = max(TOLERANCE[metric] * abs(r.mean()), noise, 1.0)
    assert diff <= allowed, f"{case} {metric}: aggregated {a.mean():.1f} vs reference {r.mean():.1f}"


def test_reference_cases_exercise_the_fallbacks(paired_runs):
    case, aggregated, reference = paired_runs
    assert sum(m.head_fallbacks for m in reference) > 50
    if case == "pressure-N0":
        assert sum(m.sync_fallbacks for m in reference) > 20
