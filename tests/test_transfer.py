"""Transfer to an unstudied hardware profile: the leave-one-profile-out error and the extrapolated flag."""

from __future__ import annotations

import numpy as np
import pytest

from rcutune.tuner.recommend import leave_one_profile_out, load_campaign, nearest_profile
from tests.support.study import run_study, url

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """Two studied members of the vm-2 family, 2 and 4 vCPUs, in one database."""
    db = tmp_path_factory.mktemp("transfer") / "rcutune.db"
    for cpus in (2, 4):
        result = run_study(
            db, "--trials", "8", "--study", f"vm-{cpus}cpu", "--set", f"hardware.cpus={cpus}", workloads=("nocb-flood",)
        )
        assert result.exit_code == 0, result.output
    return [load_campaign(url(db), f"vm-{cpus}cpu") for cpus in (2, 4)]


def test_the_nearest_studied_profile_is_chosen_by_cpu_count(family):
    from rcutune import sim

    target = sim.load_hardware("vm-2", {"cpus": "3"})
    assert nearest_profile(target, family).hardware.cpus in (2, 4)
    assert nearest_profile(sim.load_hardware("vm-2", {"cpus": "16"}), family).hardware.cpus == 4


def test_leave_one_profile_out_measures_the_error_of_extrapolating(family):
    errors = leave_one_profile_out(family)
    assert {(e.source, e.target) for e in errors} == {("vm-4cpu", "vm-2cpu"), ("vm-2cpu", "vm-4cpu")}
    by_metric = {}
    for e in errors:
        assert 0.0 <= e.coverage <= e.coverage_widened <= 1.0, "widening never loses coverage"
        by_metric.setdefault(e.metric, []).append(e)
    # Reserved memory is N x CPUs pages: exact on the held-out profile, whatever the CPU count.
    assert all(e.r2 is None or e.r2 == pytest.approx(1.0) for e in by_metric["reserved_mib"])
    assert all(e.coverage == 1.0 for e in by_metric["reserved_mib"])
    # Fallback cost is summed over the CPUs and transferred in proportion to their count: on a flood of
    # frees, halving or doubling the CPUs keeps the trials' ranking and level (printed with -s).
    for e in by_metric["fallback_cost"]:
        print(
            f"{e.source} -> {e.target}: fallback_cost R² {e.r2:.3f}, coverage {e.coverage:.2f}, "
            f"widened {e.coverage_widened:.2f}"
        )
        assert e.r2 is not None and np.isfinite(e.r2) and e.r2 >= 0.8
        assert e.coverage_widened >= 0.8
