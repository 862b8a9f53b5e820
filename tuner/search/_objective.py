"""What a study minimises and which policies it may call feasible.

Objectives, per replication, then averaged over the study's seed list:

* ``reserved_mib`` — memory the page cache reserves: ``Metrics.cache_bytes_reserved / 2**20``
  (N x CPUs pages per-CPU, the pool for ``global``, plus the shared reserve for ``hybrid``).
* ``fallback_cost`` — milliseconds of work lost to fallbacks per simulated second, plus a charge
  for memory left waiting::

      fallback_cost = 1000 * (sync_stall_seconds + lock_wait_seconds
                              + head_extra_cpu_seconds)
                      / sim_seconds
                      + PENDING_PEAK_COST_MS * bytes_pending_peak / (slo_pending_peak_mib * 2**20)

  i.e. callers blocked in synchronize_rcu(), spinning on a shared pool lock, and the extra CPU
  objects freed from the rcu_head list cost over a bulk free (the model's per-object costs by
  allocator and by where the free runs); a pending-memory peak equal to the
  hardware profile's SLO costs as much as 1 ms of stall per second.
* ``scalar`` (``--objective scalar``) — ``fallback_cost + MIB_PER_GIB_COST_MS * reserved_mib /
  (memory_mib / 1024)``: reserving 1 MiB per GiB of the machine's memory (0.1 %) weighs as much as
  1 ms of stall per simulated second (0.1 % of one CPU), so the trade-off scales with the machine.

Constraints (``trial.set_constraint``; feasible when <= 0): ``oom`` = OOM events in the worst
replication; ``p99_latency`` = mean p99 call latency / SLO - 1; ``sync_fallbacks`` = mean
synchronize_rcu() fallbacks per second / SLO - 1 (the rate itself when the SLO is 0);
``pending_peak`` = mean pending-memory peak / SLO - 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import fields

import numpy as np
from scipy import stats

from rcutune import sim

PENDING_PEAK_COST_MS = 1.0
MIB_PER_GIB_COST_MS = 1.0
OBJECTIVES = ("reserved_mib", "fallback_cost")
CONSTRAINTS = ("oom", "p99_latency", "sync_fallbacks", "pending_peak")
NUMERIC_METRICS = tuple(f.name for f in fields(sim.Metrics) if f.name not in ("what_if", "what_if_reasons"))


def objective_values(m: sim.Metrics, hw: sim.HardwareProfile) -> dict[str, float]:
    """`reserved_mib`, `fallback_cost` and `scalar` of one replication (see the module docstring)."""
    reserved_mib = m.cache_bytes_reserved / 2**20
    seconds = max(m.sim_seconds, 1e-9)
    stall_ms_per_s = 1000.0 * (m.sync_stall_seconds + m.lock_wait_seconds + m.head_extra_cpu_seconds) / seconds
    pending = PENDING_PEAK_COST_MS * m.bytes_pending_peak / (hw.slo_pending_peak_mib * 2**20)
    fallback_cost = stall_ms_per_s + pending
    return {
        "reserved_mib": reserved_mib,
        "fallback_cost": fallback_cost,
        "scalar": fallback_cost + MIB_PER_GIB_COST_MS * reserved_mib / (hw.memory_mib / 1024),
    }


def constraint_values(runs: Sequence[sim.Metrics], hw: sim.HardwareProfile) -> dict[str, float]:
    """The constraints of a policy over its replications (feasible when every value is <= 0)."""

    def mean(get) -> float:
        return float(np.mean([get(m) for m in runs]))

    rate = mean(lambda m: m.sync_fallbacks / max(m.sim_seconds, 1e-9))
    slo_rate = hw.slo_sync_fallbacks_per_s
    return {
        "oom": float(max(m.oom_events for m in runs)),
        "p99_latency": mean(lambda m: m.call_latency_p99_us) / hw.slo_p99_call_latency_us - 1.0,
        "sync_fallbacks": rate / slo_rate - 1.0 if slo_rate > 0 else rate,
        "pending_peak": mean(lambda m: m.bytes_pending_peak) / (hw.slo_pending_peak_mib * 2**20) - 1.0,
    }


def feasible(constraints: Mapping[str, float]) -> bool:
    return all(v <= 0 for v in constraints.values())


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of its Student-t confidence interval (None with one value)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * sd / math.sqrt(len(x)))
    return mean, half


def replication_table(runs: Sequence[sim.Metrics], hw: sim.HardwareProfile) -> dict[str, list[float | None]]:
    """Every numeric metric and objective, one value per replication (the order of the seed list)."""
    table: dict[str, list[float | None]] = {}
    for name in NUMERIC_METRICS:
        column = [getattr(m, name) for m in runs]
        table[name] = [None if v is None else float(v) for v in column]
    per_run = [objective_values(m, hw) for m in runs]
    for name in ("reserved_mib", "fallback_cost", "scalar"):
        table[name] = [o[name] for o in per_run]
    return table


def summary_table(table: Mapping[str, Sequence[float | None]]) -> dict[str, dict[str, float | None]]:
    """{name: {"mean", "ci95"}} for every column of a replication table that has values."""
    out = {}
    for name, column in table.items():
        present = [v for v in column if v is not None]
        if present:
            mean, half = mean_ci(present)
            out[name] = {"mean": mean, "ci95": half}
    return out
