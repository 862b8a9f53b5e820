"""Small profiles and the checker for the invariants every run must satisfy."""

from __future__ import annotations

from rcutune import sim


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
