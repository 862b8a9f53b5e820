"""Calibration: fit the unknowns of the `qemu-<accel>-<cpus>` guests on the training half.

Nothing here is tuned by hand. Each guest (one per CPU count, since single-threaded TCG runs all
vCPUs on one host thread and every cost per vCPU grows with their number) is fitted on its own
training points by minimising

    J = mean (ln sim/measured time)^2 + mean (ln sim/measured batches)^2
        + 1/4 mean (ln (sim+8)/(measured+8) footprint MB)^2 [pressure points]
        + mean (simulated OOM probability - measured OOM fraction)^2 [pressure points]
        + mean (ln sim/measured ratio of N to the lowest N)^2 [time and GPs within training groups]

over point medians (a point the model ends in OOM on every seed, where the kernel finished at
least once, costs ln 2 in time and batches). Time and batches count only points whose medians come
from boots on a quiet host (`Point.quiet_host`): a TCG guest sharing its host core runs fewer
instructions per jiffy, which changes the loop time and the work per GP, not what the model is to
learn; footprint and OOM count every training point (the pressure and OOM blocks ran on a loaded
host only). The footprint counts a quarter: the model's footprint in the pressure block is about
twice the kernel's whatever the parameters (README, "Validation against a real kernel"), and at
full weight that error would pull the memory parameters away from the OOM boundary, which is a
target. The last part is what rcutune tunes: in each training configuration group (quiet host, no
OOM), the loop time and the GPs at each N relative to the group's lowest N (`n_curve_pairs`). The
per-point parts alone let a few percent of error in every point hide N's effect, which is a
difference between two points of similar size; the fit then traded the one cost that sets that
effect (the `rcu_head` list's per-object free) against context-switch and timer costs that set the
absolute times.

The search runs in stages, each over the parameters that drive one part of J most, then over all of
them together: CPU costs (time: the call, and the allocator's fast and slow frees), the loops'
jitter, context switches and callback invocation (time, batches), memory (all of J), each over
the PREEMPT_NONE points the profile describes. The refill kick's latency (`hrtimer_latency_us`)
acts only where a preemptible loop switches to the refill between two calls, so J over those points
cannot see it (a fit left it at its range's end): a last stage fits it, with the context switch the
kick costs twice, on the PREEMPT_VOLUNTARY build's training points (`Stage.preempt_model`), by their
loop times and N curve; their GP counts' own part stays out (the model's are a known 1.3-3.7x off).
Grace-period durations are not fitted: every guest CPU runs a kfree thread, so every quiescent state
comes from the model's mechanism (the profile's GP distribution only speaks for CPUs no loop holds).
A stage first scans each of its parameters over five points of its range (the OOM part is a step
function of the memory parameters, flat between steps, where a line search finds nothing), then
runs scipy's bounded Powell method from the best point. Every evaluation uses the
same seeds, so J is a deterministic function of the parameters and the whole fit is repeatable.

Fixed from the guest's build and boot, not fitted: HZ=1000 (CONFIG_HZ_1000), CONFIG_PREEMPT_NONE
(each point's own build's model: the voluntary block's is PREEMPT_VOLUNTARY), 4 KiB pages, no
offloaded CPUs (each point's own rcu_nocbs=), no page cache (initramfs only), no boot reserve
beyond what the guest's `Memory:` line reports (the comparison sets each point's memory in use),
grace periods bounded below by one jiffy and above by the 21 s RCU CPU stall timeout
(CONFIG_RCU_CPU_STALL_TIMEOUT=21).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from rcutune import sim

from ._data import Point
from ._run import GuestModel, Runner, SimPoint, profile_name

FIXED_KEYS: dict[str, object] = {
    "page_size": 4096,
    "hz": 1000,
    "nocb_cpus": 0,
    "file_cache_fraction": 0.0,
    "gp_min_ms": 1.0,
    "gp_max_ms": 21_000.0,
    "preempt": "none",
    "boot_reserved_mib": 0.0,
}
MISSING_PENALTY = math.log(2.0)
SCAN_POSITIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
FOOTPRINT_OFFSET_MB = 8.0
FOOTPRINT_WEIGHT = 0.25
BOOT_EXTRA = "boot_extra_mib"


@dataclass(frozen=True)
class FitParameter:
    """One unknown: a hardware key (or `boot_extra_mib`), its search range and scale."""

    name: str
    low: float
    high: float
    log: bool = True
    integer: bool = False

    def value(self, u: float) -> float:
        """The parameter at position u in [0, 1] of its range."""
        u = min(1.0, max(0.0, u))
        v = self.low * (self.high / self.low) ** u if self.log else self.low + (self.high - self.low) * u
        return float(round(v)) if self.integer else v

    def position(self, value: float) -> float:
        value = min(self.high, max(self.low, value))
        if self.log:
            return math.log(value / self.low) / math.log(self.high / self.low)
        return (value - self.low) / (self.high - self.low)


PARAMETERS: dict[str, FitParameter] = {
    p.name: p
    for p in (
        FitParameter("kfree_call_ns", 100.0, 10_000.0),
        FitParameter("kmalloc_ns_per_kib", 1.0, 10_000.0),
        FitParameter("kfree_slow_ns", 5.0, 20_000.0),
        FitParameter("kfree_fast_ns", 1.0, 5_000.0),
        FitParameter("loop_jitter", 0.01, 1.0),
        FitParameter("context_switch_us", 0.1, 1000.0),
        FitParameter("hrtimer_latency_us", 0.05, 1000.0),
        FitParameter("cb_invoke_us", 1.0, 100_000.0),
        FitParameter("alloc_fast_us", 0.05, 200.0),
        FitParameter("direct_reclaim_ms", 0.01, 200.0),
        FitParameter("alloc_fail_softness", 0.01, 5.0),
        FitParameter("watermark_scale_factor", 1.0, 1000.0, integer=True),
        FitParameter(BOOT_EXTRA, 0.0, 200.0, log=False),
    )
}


@dataclass(frozen=True)
class Stage:
    """A step of the search: which parameters move, which parts of J it minimises, at most how many
    evaluations, and the build whose training points J is taken over (its preemption model)."""

    name: str
    parameters: tuple[str, ...]
    parts: tuple[str, ...]
    max_evaluations: int
    preempt_model: str = "none"


ALL_PARTS = ("time", "batches", "footprint", "oom", "n_effect")
STAGES = (
    Stage(
        "cpu costs",
        ("kfree_call_ns", "kmalloc_ns_per_kib", "kfree_slow_ns", "kfree_fast_ns"),
        ("time", "n_effect"),
        80,
    ),
    Stage(
        "grace periods and deferred work",
        ("loop_jitter", "context_switch_us", "cb_invoke_us"),
        ("time", "batches", "n_effect"),
        80,
    ),
    Stage(
        "memory",
        (BOOT_EXTRA, "alloc_fail_softness", "watermark_scale_factor", "direct_reclaim_ms", "alloc_fast_us"),
        ALL_PARTS,
        100,
    ),
    Stage("all together", tuple(p for p in PARAMETERS if p != "hrtimer_latency_us"), ALL_PARTS, 160),
    # The refill kick's cost shows only where a preemptible loop switches to the refill between two
    # calls: at N=0 on PREEMPT_VOLUNTARY every miss kicks it again (6.1 arms the hrtimer for a work
    # that fills nothing). Not the batches part: that build's GP counts are a known disagreement.
    Stage(
        "refill kick (PREEMPT_VOLUNTARY build)",
        ("hrtimer_latency_us", "context_switch_us"),
        ("time", "n_effect"),
        60,
        preempt_model="voluntary",
    ),
)


@dataclass(frozen=True)
class Loss:
    """J and its parts for one parameter set."""

    total: float
    time: float
    batches: float
    footprint: float  # already weighted
    oom: float
    n_effect: float = 0.0


def loss(points: list[Point], simulated: dict[str, SimPoint]) -> Loss:
    """The objective of the module docstring over `points`."""
    t_err, b_err, f_err, o_err = [], [], [], []
    for p in points:
        s = simulated[p.point_id]
        if p.time_ms is not None and p.quiet_host:
            t_err.append(math.log(s.time_ms / p.time_ms) if s.time_ms else MISSING_PENALTY)
        if p.batches is not None and p.quiet_host:
            b_err.append(
                math.log(max(s.batches, 1.0) / max(p.batches, 1.0)) if s.batches is not None else MISSING_PENALTY
            )
        if p.pressure:
            if p.footprint_mb is not None and s.footprint_mb is not None:
                f_err.append(
                    math.log(
                        max(s.footprint_mb + FOOTPRINT_OFFSET_MB, 1.0) / max(p.footprint_mb + FOOTPRINT_OFFSET_MB, 1.0)
                    )
                )
            o_err.append(s.oom_probability - p.oom_fraction)

    n_err = []
    for low, high in n_curve_pairs(points):
        s_low, s_high = simulated[low.point_id], simulated[high.point_id]
        for measured_low, measured_high, sim_low, sim_high in (
            (low.time_ms, high.time_ms, s_low.time_ms, s_high.time_ms),
            (low.batches, high.batches, s_low.batches, s_high.batches),
        ):
            if sim_low and sim_high:
                n_err.append(math.log((sim_high / sim_low) / (measured_high / measured_low)))
            else:
                n_err.append(MISSING_PENALTY)

    def ms(errors: list[float]) -> float:
        return float(np.mean(np.square(errors))) if errors else 0.0

    parts = (ms(t_err), ms(b_err), FOOTPRINT_WEIGHT * ms(f_err), ms(o_err), ms(n_err))
    return Loss(sum(parts), *parts)


def n_curve_pairs(points: list[Point]) -> list[tuple[Point, Point]]:
    """The N curve inside each configuration group of `points`: (the lowest N, each higher N), for
    points measured on a quiet host without an OOM. On the training half a group rarely has both
    N=0 and N=64 (the split is by point), so the fit learns N's effect from whatever N it has."""
    groups: dict[tuple, list[Point]] = {}
    for p in points:
        if p.time_ms and p.batches and p.quiet_host and not p.oom:
            groups.setdefault(p.group, []).append(p)
    pairs = []
    for _, members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        members.sort(key=lambda p: p.params.rcu_min_cached_objs)
        base = members[0]
        pairs += [(base, p) for p in members[1:] if p.params.rcu_min_cached_objs > base.params.rcu_min_cached_objs]
    return pairs


def initial_values(points: list[Point], start: sim.HardwareProfile) -> dict[str, float]:
    """Where the search starts: moments of the training data where one exists, else `start`'s values.

    kfree_call_ns: median time per call of the 24-byte points; kmalloc_ns_per_kib: median extra
    time per call and KiB of the larger objects.
    """
    values = {name: float(getattr(start, name)) for name in PARAMETERS if name != BOOT_EXTRA}
    values[BOOT_EXTRA] = 0.0
    small = [p for p in points if p.time_ms and p.quiet_host and p.params.kfree_mult == 1]
    if small:
        values["kfree_call_ns"] = statistics.median(
            p.time_ms * 1e6 / (p.params.kfree_loops * p.params.kfree_alloc_num) for p in small
        )
    large = [p for p in points if p.time_ms and p.quiet_host and p.params.kfree_mult > 1]
    if small and large:
        values["kmalloc_ns_per_kib"] = statistics.median(
            (p.time_ms * 1e6 / (p.params.kfree_loops * p.params.kfree_alloc_num) - values["kfree_call_ns"])
            / (_slab_kib(p.params.kfree_mult))
            for p in large
        )
    return {k: min(PARAMETERS[k].high, max(PARAMETERS[k].low, v)) for k, v in values.items()}


def _slab_kib(kfree_mult: int) -> float:
    """KiB of the kmalloc size class an rcuscale object of this multiple lands in."""
    return sim.load_workload("rcuscale", {"kfree_mult": str(kfree_mult)}).rcuscale_slab_bytes / 1024


def guest_from(values: dict[str, float], name: str, cpus: int, memory_mib: int) -> GuestModel:
    """A guest model from fitted values plus the fixed keys."""
    data: dict[str, object] = {"name": name, "cpus": cpus, "memory_mib": memory_mib, **FIXED_KEYS}
    for key, v in values.items():
        if key == BOOT_EXTRA:
            continue
        data[key] = int(v) if PARAMETERS[key].integer else float(v)
    return GuestModel(sim.HardwareProfile.model_validate(data), float(values[BOOT_EXTRA]))


@dataclass
class GuestFit:
    """The result of fitting one guest."""

    name: str
    cpus: int
    values: dict[str, float]
    loss: Loss
    start_loss: Loss
    evaluations: int
    seconds: float
    training_points: list[str] = field(default_factory=list)

    def guest(self, memory_mib: int = 512) -> GuestModel:
        return guest_from(self.values, self.name, self.cpus, memory_mib)


def fit_guest(
    points: list[Point],
    accelerator: str,
    cpus: int,
    runner: Runner,
    *,
    seeds: int,
    oom_seeds: int,
    start: sim.HardwareProfile,
    stages: tuple[Stage, ...] = STAGES,
    progress: Callable[[str], None] = lambda s: None,
) -> GuestFit:
    """Fit one guest (`qemu-<accelerator>-<cpus>`) on its training points.

    Args:
        points: the training points of this guest (others are ignored).
        runner: runs the simulations (its jobs decide the parallelism).
        seeds, oom_seeds: runs per point, per pressure point.
        start: the profile whose values start the parameters no data moment gives.
        stages: the search steps (see STAGES).
        progress: called with one line per improvement and per stage.
    """
    t0 = time.monotonic()
    name = profile_name(accelerator, cpus)
    mine = [p for p in points if p.params.guest_cpus == cpus and p.params.accelerator == accelerator]
    if not mine:
        raise ValueError(f"no training points for guest {name}")
    by_build: dict[str, list[Point]] = {}
    for p in mine:
        by_build.setdefault(p.params.preempt_model, []).append(p)
    by_build["none"] = by_build.get("none") or mine  # the profile's own build (every point if none is)
    values = initial_values(by_build["none"], start)
    evaluations = 0
    cache: dict[tuple, Loss] = {}

    def evaluate(vals: dict[str, float], build: str = "none") -> Loss:
        """J over this guest's training points of one build (the profile's own: PREEMPT_NONE)."""
        nonlocal evaluations
        key = (build, *(round(vals[k], 9) for k in sorted(vals)))
        if key not in cache:
            evaluations += 1
            guest = guest_from(vals, name, cpus, 512)
            subset = by_build[build]
            cache[key] = loss(subset, runner.simulate(subset, {name: guest}, seeds=seeds, oom_seeds=oom_seeds))
        return cache[key]

    start_loss = evaluate(values)
    progress(f"[fit {name}] {len(mine)} training points, start J={start_loss.total:.4f}")
    for stage in stages:
        params = [PARAMETERS[n] for n in stage.parameters]
        if stage.preempt_model not in by_build:
            continue  # no training points of that build: its parameters keep their start values

        def stage_loss(vals: dict[str, float], stage=stage) -> Loss:
            return evaluate(vals, stage.preempt_model)

        def part(result: Loss, stage=stage) -> float:
            return sum(getattr(result, p) for p in stage.parts)

        def report(result: Loss, stage=stage) -> None:
            progress(
                f"[fit {name}] {stage.name}: J={result.total:.4f} (time {result.time:.4f}, batches "
                f"{result.batches:.4f}, footprint {result.footprint:.4f}, oom {result.oom:.4f}, "
                f"N effect {result.n_effect:.4f}) "
                f"after {evaluations} evaluations"
            )

        best = part(stage_loss(values))
        # A coarse scan of each parameter's whole range first: the OOM part is a step function of
        # the memory parameters, flat between steps, where a line search alone finds nothing.
        for prm in params:
            for u in SCAN_POSITIONS:
                trial = dict(values, **{prm.name: prm.value(u)})
                result = stage_loss(trial)
                if part(result) < best:
                    best, values = part(result), trial
                    report(result)
        base = dict(values)

        def objective(
            u: np.ndarray, params=params, base=base, part=part, report=report, stage_loss=stage_loss
        ) -> float:
            nonlocal best, values
            trial = dict(base)
            for prm, x in zip(params, u):
                trial[prm.name] = prm.value(float(x))
            result = stage_loss(trial)
            if part(result) < best:
                best, values = part(result), trial
                report(result)
            return part(result)

        u0 = np.array([prm.position(base[prm.name]) for prm in params])
        minimize(
            objective,
            u0,
            method="Powell",
            bounds=[(0.0, 1.0)] * len(params),
            options={"maxfev": stage.max_evaluations, "xtol": 1e-3, "ftol": 1e-4},
        )
        progress(
            f"[fit {name}] stage '{stage.name}' done: J={stage_loss(values).total:.4f}, {evaluations} "
            f"evaluations, {time.monotonic() - t0:.0f} s"
        )
    return GuestFit(
        name, cpus, values, evaluate(values), start_loss, evaluations, time.monotonic() - t0, [p.point_id for p in mine]
    )


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(float(f"{v:.6g}"))
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def profile_text(fit: GuestFit, command: str, sources: list[str]) -> str:
    """The hardware profile file of a fitted guest, with a header saying where it comes from."""
    hw = fit.guest().hardware
    lines: list[str] = [
        f"# {fit.name}: a Linux 6.1 guest under qemu TCG (single-threaded) with {fit.cpus} vCPUs.",
        "# Generated; do not edit by hand. Calibrated on the training half of",
        *(f"#   {s}" for s in sources),
        f"# by `{command}`",
        f"# ({len(fit.training_points)} training points, {fit.evaluations} evaluations, "
        f"J {fit.start_loss.total:.4f} -> {fit.loss.total:.4f}; see validation/compare/_fit.py).",
        "# Timings are the emulator's: per vCPU, with all vCPUs sharing one host thread.",
        "# memory_mib is a placeholder (512 MiB, the main block's guests); the comparison sets each point's own.",
        "# The guest's memory in use besides the test (boot_extra_mib) is in the calibration file.",
    ]
    keys = ["cpus", "memory_mib", *FIXED_KEYS, *[k for k in PARAMETERS if k != BOOT_EXTRA]]
    for key in dict.fromkeys(keys):
        lines.append(f"{key} = {_toml_value(getattr(hw, key))}")
    return "\n".join(lines) + "\n"


def calibration_text(
    fits: list[GuestFit],
    hardware: dict[str, str],
    command: str,
    sources: list[str],
    split: str,
    seeds: int,
    oom_seeds: int,
) -> str:
    """validation/calibration-6.1.toml: what the profiles cannot hold, and how the fit went.

    `hardware` maps each guest to its profile: a shipped name, or a file relative to the calibration.
    The training points are listed so that a comparison can prove it never tests the fit on them.
    """
    lines = [
        "# Written by the calibration; do not edit by hand. Rerun:",
        f"#   {command}",
        'kernel = "6.1"',
        f'split = "{split}"',
        f"seeds = {seeds}",
        f"oom_seeds = {oom_seeds}",
        "sources = [" + ", ".join(_toml_value(s) for s in sources) + "]",
    ]
    for fit in fits:
        lines += [
            "",
            f'[guest."{fit.name}"]',
            f"hardware = {_toml_value(hardware[fit.name])}",
            "# Memory the boot allocated after its 'Memory:' line, in use when the test starts.",
            f"{BOOT_EXTRA} = {_toml_value(fit.values[BOOT_EXTRA])}",
            f"evaluations = {fit.evaluations}",
            f"fit_seconds = {round(fit.seconds)}",
            f"loss_start = {_toml_value(fit.start_loss.total)}",
            f"loss = {_toml_value(fit.loss.total)}",
            f"loss_time = {_toml_value(fit.loss.time)}",
            f"loss_batches = {_toml_value(fit.loss.batches)}",
            f"loss_footprint = {_toml_value(fit.loss.footprint)}",
            f"loss_oom = {_toml_value(fit.loss.oom)}",
            f"loss_n_effect = {_toml_value(fit.loss.n_effect)}",
            "training_points = [",
            *(f"    {_toml_value(pid)}," for pid in fit.training_points),
            "]",
        ]
    return "\n".join(lines) + "\n"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
