"""Agreement figures between measured points and their simulated counterparts.

Per figure (total time, batches, footprint): Spearman's rank correlation over the points where
both sides have a median, and the median relative error |sim - measured| / |measured| (for the
footprint, whose medians are near 0 MB with small objects, the denominator is at least 1 MB).
OOM: over the pressure block's points, how often the simulated OOM probability lies on the same
side of 0.5 as the measured fraction, "OOM side" meaning at least half of the runs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from ._data import MIN_QUIET_BOOTS, Point
from ._run import SimPoint

FOOTPRINT_FLOOR_MB = 1.0


@dataclass(frozen=True)
class FigureAgreement:
    """One figure over the compared points."""

    name: str
    points: int
    spearman: float
    median_rel_err: float


@dataclass(frozen=True)
class Agreement:
    """The whole comparison of one set of points."""

    rows: int  # CSV rows (boots) of the compared points
    points: int
    time: FigureAgreement
    batches: FigureAgreement
    footprint: FigureAgreement
    footprint_pressure: FigureAgreement  # the pressure block only: footprints of 24-byte objects are ~0 MB
    oom_points: int
    oom_accuracy: float

    def last_line(self) -> str:
        """The summary line, in the fixed form scripts and the README rely on."""
        return (
            f"rows={self.rows} time_spearman={self.time.spearman:.3f} "
            f"batches_spearman={self.batches.spearman:.3f} footprint_spearman={self.footprint.spearman:.3f} "
            f"oom_accuracy={self.oom_accuracy:.3f} time_median_rel_err={self.time.median_rel_err:.3f}"
        )


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho (ties take average ranks); nan with fewer than 3 pairs or a constant side."""
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return math.nan
    return float(spearmanr(xs, ys).statistic)


def figure_agreement(name: str, pairs: list[tuple[float, float]], floor: float = 0.0) -> FigureAgreement:
    """Rank correlation and median relative error of (measured, simulated) pairs."""
    if not pairs:
        return FigureAgreement(name, 0, math.nan, math.nan)
    measured = [m for m, _ in pairs]
    simulated = [s for _, s in pairs]
    errors = [abs(s - m) / max(abs(m), floor) for m, s in pairs]
    return FigureAgreement(name, len(pairs), spearman(measured, simulated), float(statistics.median(errors)))


def oom_side(probability: float) -> bool:
    """True on the OOM side of 0.5: at least half of the runs ended in an OOM."""
    return probability >= 0.5


def agreement(points: list[Point], simulated: dict[str, SimPoint]) -> Agreement:
    """Compare measured points with their simulated medians (see the module docstring)."""

    def pairs_of(subset: list[Point], measured_of, simulated_of) -> list[tuple[float, float]]:
        return [
            (float(m), float(s))
            for p in subset
            if (m := measured_of(p)) is not None and (s := simulated_of(simulated[p.point_id])) is not None
        ]

    pressure = [p for p in points if p.pressure]
    hits = [oom_side(p.oom_fraction) == oom_side(simulated[p.point_id].oom_probability) for p in pressure]
    return Agreement(
        rows=sum(p.boots for p in points),
        points=len(points),
        time=figure_agreement("time", pairs_of(points, lambda p: p.time_ms, lambda s: s.time_ms)),
        batches=figure_agreement("batches", pairs_of(points, lambda p: p.batches, lambda s: s.batches)),
        footprint=figure_agreement(
            "footprint", pairs_of(points, lambda p: p.footprint_mb, lambda s: s.footprint_mb), floor=FOOTPRINT_FLOOR_MB
        ),
        footprint_pressure=figure_agreement(
            "footprint (pressure points)",
            pairs_of(pressure, lambda p: p.footprint_mb, lambda s: s.footprint_mb),
            floor=FOOTPRINT_FLOOR_MB,
        ),
        oom_points=len(pressure),
        oom_accuracy=sum(hits) / len(hits) if hits else math.nan,
    )


def _fmt(value: float | None, spec: str) -> str:
    """The value in `spec`'s width, or "-" right-aligned in it (no median: every boot or run failed)."""
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def point_table(points: list[Point], simulated: dict[str, SimPoint]) -> list[str]:
    """One line per point: measured and simulated medians side by side (time ms, batches, footprint MB, OOM)."""
    head = (
        f"{'point':<44} {'boots':>5} {'time_ms':>8} {'sim':>8} {'batches':>7} {'sim':>6} "
        f"{'fp_MB':>6} {'sim':>6} {'oom':>5} {'sim':>5}"
    )
    lines = [head]
    for p in points:
        s = simulated[p.point_id]
        boots = f"{p.boots}{'' if p.quiet_host else '~'}"
        lines.append(
            f"{p.point_id:<44} {boots:>5} {_fmt(p.time_ms, '8.0f')} {_fmt(s.time_ms, '8.0f')} "
            f"{_fmt(p.batches, '7.1f')} {_fmt(s.batches, '6.1f')} {_fmt(p.footprint_mb, '6.1f')} "
            f"{_fmt(s.footprint_mb, '6.1f')} {p.oom_fraction:5.2f} {s.oom_probability:5.2f}"
        )
    return lines


def summary_lines(result: Agreement) -> list[str]:
    """Per figure: points compared, Spearman, median relative error; then OOM agreement."""
    lines = []
    for f in (result.time, result.batches, result.footprint, result.footprint_pressure):
        lines.append(
            f"{f.name:<10} points={f.points:<3} spearman={f.spearman:.3f} median_rel_err={f.median_rel_err:.3f}"
        )
    lines.append(
        f"{'oom':<10} points={result.oom_points:<3} accuracy={result.oom_accuracy:.3f} "
        "(simulated OOM probability on the same side of 0.5 as the measured fraction)"
    )
    return lines


# The effect of N, per configuration group ---------------------------------------------------

N_LOW, N_HIGH = 0, 64  # the ends of N every block measured


BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 20240611
INTERVAL = 0.90


@dataclass(frozen=True)
class NEffect:
    """In one configuration group: loop time and GPs at N=64 over N=0, measured and simulated."""

    label: str
    held_out: bool  # both points are in the held-out half
    time_measured: float
    gp_measured: float
    time_simulated: float | None
    gp_simulated: float | None
    # Boots of either point ended in an OOM: its medians are of the boots that survived, a biased
    # sample, so the group is shown but not counted in the N-effect line.
    survivors_only: bool = False
    # A point of the group has too few boots on a quiet host (see Boot.quiet): its medians include
    # boots the host slowed down, at another load than the other point's, so the ratio is not counted.
    loaded: bool = False
    time_interval: tuple[float, float] | None = None  # bootstrap interval of the measured ratio
    gp_interval: tuple[float, float] | None = None

    @property
    def counted(self) -> bool:
        """Counted in the N-effect line: held out, simulated, measured on every boot, on a quiet host."""
        return self.held_out and not self.survivors_only and not self.loaded and self.time_simulated is not None

    @property
    def gp_sign_right(self) -> bool | None:
        """Whether the model moves GPs in the kernel's direction (fewer, or not fewer, at N=64)."""
        if self.gp_simulated is None:
            return None
        return (self.gp_measured < 1.0) == (self.gp_simulated < 1.0)


def group_label(point: Point) -> str:
    p = point.params
    label = f"{point.block} c{p.guest_cpus} {p.mode} l{p.kfree_loops} x{p.kfree_mult} m{p.guest_mem_mib}"
    if p.preempt_model != "none":
        label += f" {p.preempt_model}"
    if p.nocb_cpus:
        label += f" nocb{p.nocb_cpus}"
    return label


def n_effect_pairs(points: list[Point]) -> list[tuple[Point, Point]]:
    """Per configuration group, its (N=0, N=64) points where the kernel printed both medians."""
    by_group: dict[tuple, dict[int, Point]] = {}
    for p in points:
        if p.params.rcu_min_cached_objs in (N_LOW, N_HIGH) and p.time_ms and p.batches:
            by_group.setdefault(p.group, {})[p.params.rcu_min_cached_objs] = p
    return [
        (g[N_LOW], g[N_HIGH])
        for _, g in sorted(by_group.items(), key=lambda kv: str(kv[0]))
        if N_LOW in g and N_HIGH in g
    ]


def ratio_interval(
    low: tuple[float, ...], high: tuple[float, ...], rng: np.random.Generator
) -> tuple[float, float] | None:
    """Bootstrap interval (INTERVAL, percentile) of median(high)/median(low), boots resampled within each point:
    how far the measured ratio itself is known."""
    if len(low) < 2 or len(high) < 2:
        return None
    lo = np.median(rng.choice(np.asarray(low), size=(BOOTSTRAP_DRAWS, len(low))), axis=1)
    hi = np.median(rng.choice(np.asarray(high), size=(BOOTSTRAP_DRAWS, len(high))), axis=1)
    ratios = hi / np.maximum(lo, 1e-12)
    tail = (1.0 - INTERVAL) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1.0 - tail))


def n_effects(pairs: list[tuple[Point, Point]], simulated: dict[str, SimPoint], held_out: set[str]) -> list[NEffect]:
    out = []
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    for low, high in pairs:
        s_low, s_high = simulated.get(low.point_id), simulated.get(high.point_id)
        t_sim = g_sim = None
        if s_low and s_high and s_low.time_ms and s_high.time_ms and s_low.batches and s_high.batches:
            t_sim = s_high.time_ms / s_low.time_ms
            g_sim = s_high.batches / s_low.batches
        out.append(
            NEffect(
                group_label(low),
                low.point_id in held_out and high.point_id in held_out,
                high.time_ms / low.time_ms,
                high.batches / low.batches,
                t_sim,
                g_sim,
                survivors_only=low.oom > 0 or high.oom > 0,
                loaded=not (low.quiet_host and high.quiet_host),
                time_interval=ratio_interval(low.times_ms, high.times_ms, rng),
                gp_interval=ratio_interval(low.batches_each, high.batches_each, rng),
            )
        )
    return out


def n_effect_line(effects: list[NEffect]) -> str:
    """Median absolute error of the N=64/N=0 ratios over the held-out groups measured on every boot."""
    counted = [e for e in effects if e.counted]

    def med(values: list[float]) -> float:
        return float(statistics.median(values)) if values else math.nan

    t = med([abs(e.time_simulated - e.time_measured) for e in counted])
    g = med([abs(e.gp_simulated - e.gp_measured) for e in counted])
    return f"n_effect_time_abs_err={t:.3f} n_effect_gp_abs_err={g:.3f}"


def n_effect_table(effects: list[NEffect]) -> list[str]:
    """One line per group: measured N=64/N=0 ratios of loop time and of GPs with their bootstrap
    intervals, and the simulated ones; then how many held-out groups have the kernel's GP sign and
    how many simulated ratios fall inside the measured interval."""
    pct = int(round(INTERVAL * 100))
    lines = [
        f"{'N=64 / N=0, group':<44} {'half':<10} {'time':>6} {f'[{pct}% interval]':>15} {'sim':>6} "
        f"{'GPs':>6} {f'[{pct}% interval]':>15} {'sim':>6} {'GP sign':>7}"
    ]
    for e in effects:
        sign = {None: "-", True: "right", False: "WRONG"}[e.gp_sign_right]
        half = (
            ("held-out" if e.held_out else "training") + ("*" if e.survivors_only else "") + ("~" if e.loaded else "")
        )
        lines.append(
            f"{e.label:<44} {half:<10} {e.time_measured:6.3f} {_interval(e.time_interval):>15} "
            f"{_fmt(e.time_simulated, '6.3f')} {e.gp_measured:6.3f} {_interval(e.gp_interval):>15} "
            f"{_fmt(e.gp_simulated, '6.3f')} {sign:>7}"
        )
    lines.append("* boots of the group ended in an OOM: its medians are the survivors', not counted below")
    lines.append(
        f"~ a point of the group has under {MIN_QUIET_BOOTS} boots on a quiet host: its medians include "
        "slowed boots, not counted below"
    )
    counted = [e for e in effects if e.counted]
    signed = [e for e in counted if e.gp_sign_right is not None]
    lines.append(
        f"GP effects with the kernel's sign (held-out groups): {sum(e.gp_sign_right for e in signed)}/{len(signed)}"
    )
    inside_t = sum(_inside(e.time_simulated, e.time_interval) for e in counted)
    inside_g = sum(_inside(e.gp_simulated, e.gp_interval) for e in counted)
    lines.append(
        f"simulated ratios inside the measured {pct}% interval (held-out groups): "
        f"time {inside_t}/{len(counted)}, GPs {inside_g}/{len(counted)}"
    )
    return lines


def _interval(iv: tuple[float, float] | None) -> str:
    return "-" if iv is None else f"[{iv[0]:.2f}-{iv[1]:.2f}]"


def _inside(value: float | None, iv: tuple[float, float] | None) -> bool:
    return value is not None and iv is not None and iv[0] <= value <= iv[1]


def block_lines(points: list[Point], simulated: dict[str, SimPoint]) -> list[str]:
    """Per block (sweep) of the compared points: its own agreement figures."""
    blocks: dict[str, list[Point]] = {}
    for p in points:
        blocks.setdefault(p.block, []).append(p)
    lines = []
    for name, members in sorted(blocks.items()):
        a = agreement(members, simulated)
        line = (
            f"block {name:<10} points={a.points:<3} boots={a.rows:<4} time_spearman={a.time.spearman:.3f} "
            f"batches_spearman={a.batches.spearman:.3f} footprint_spearman={a.footprint.spearman:.3f} "
            f"time_median_rel_err={a.time.median_rel_err:.3f} footprint_median_rel_err={a.footprint.median_rel_err:.3f}"
        )
        if a.oom_points:
            line += f" oom_accuracy={a.oom_accuracy:.3f}"
        lines.append(line)
    return lines
