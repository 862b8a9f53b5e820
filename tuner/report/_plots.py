"""The report's PNG plots (matplotlib, Agg backend); each function returns PNG bytes.

Every plot marks the overall recommendation (the command line) beside each workload's own pick.
N=0 is drawn as a point of its own: no policy lies between N=0 and N=1, so no curve or band joins them.
Axes switch to a log scale where the values span more than two decades.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rcutune import sim  # noqa: E402

from ..recommend import METRICS, N_GRID, CampaignData, Recommendation, WorkloadData  # noqa: E402

PLOTTED = ("fallback_cost", "call_latency_p99_us", "sync_fallbacks_per_s", "pending_peak_mib")
LABELS = {name: (label, unit, slo) for name, label, unit, slo in METRICS}
OVERALL = dict(color="tab:purple", lw=2.0)
OWN = dict(color="tab:green", ls="--", lw=1.4)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def spans_decades(values: Sequence[float], decades: float = 2.0) -> bool:
    """Whether the values that matter (above a millionth of the largest) span more than `decades` powers of ten."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    top = max(finite, default=0.0)
    positive = [v for v in finite if v > top * 1e-6]
    return top > 0 and len(positive) >= 2 and math.log10(top / min(positive)) > decades


def _y_scale(ax, values: Sequence[float]) -> None:
    """A log axis where the values span decades; symlog (linear near zero) when some are zero."""
    if not spans_decades(values):
        return
    finite = [v for v in values if math.isfinite(v)]
    top = max(abs(v) for v in finite)
    if min(finite) <= 0:
        ax.set_yscale("symlog", linthresh=min(v for v in finite if v > top * 1e-6))
    else:
        ax.set_yscale("log")


def metric_vs_n(data: CampaignData, w: WorkloadData, rec: Recommendation) -> bytes:
    """Each constrained metric against N (per-CPU, other knobs at the kernel defaults): surrogate median
    and 90 % band for N >= 1, N = 0 as its own point, trial means, the SLO and the picks."""
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel)))
    ns = np.array([n for n in N_GRID if n >= 1])
    grid = [dict(default, n_per_cpu=int(n)) for n in ns]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    own = rec.workload(w.name)
    own_n = own.faithful.policy.n_per_cpu if own is not None and own.faithful is not None else None
    overall_n = rec.overall.policy.n_per_cpu if rec.overall is not None else None
    for ax, name in zip(axes.flat, PLOTTED):
        label, unit, slo = LABELS[name]
        s = w.surrogates[name]
        mid, lo, hi = s.interval(grid)
        lo = np.maximum(lo, 0)
        ax.fill_between(ns, lo, hi, alpha=0.25, color="tab:blue", label="90% interval")
        ax.plot(ns, mid, color="tab:blue", label="surrogate")
        zero_mid, zero_lo, zero_hi = (float(v[0]) for v in s.interval([dict(default, n_per_cpu=0)]))
        ax.errorbar(
            [0],
            [zero_mid],
            yerr=[[zero_mid - max(zero_lo, 0)], [zero_hi - zero_mid]],
            fmt="s",
            color="tab:blue",
            capsize=3,
            label="N=0 (its own regime)",
        )
        pts = [t for t in w.trials if t.policy["layout"] == "per-cpu"]
        stock = [t for t in pts if not t.what_if]
        other = [t for t in pts if t.what_if]
        ax.scatter(
            [t.policy["n_per_cpu"] for t in stock],
            [t.metrics[name] for t in stock],
            s=18,
            color="black",
            zorder=3,
            label="stock-kernel trials (mean)",
        )
        if other:  # per-CPU what-ifs (watermark, emergency reserve): not on the curve's slice of the space
            ax.scatter(
                [t.policy["n_per_cpu"] for t in other],
                [t.metrics[name] for t in other],
                s=22,
                facecolors="none",
                edgecolors="tab:orange",
                zorder=3,
                label="per-CPU what-if trials (mean)",
            )
        values = [*mid, *hi, *lo, zero_mid, zero_hi] + [t.metrics[name] for t in pts]
        if slo is not None:
            ax.axhline(getattr(data.hardware, slo), color="tab:red", ls="--", label="SLO")
            values.append(float(getattr(data.hardware, slo)))
        ax.axvline(default["n_per_cpu"], color="grey", ls=":", label=f"kernel default N={default['n_per_cpu']}")
        if own_n is not None and own_n != overall_n:
            ax.axvline(own_n, **OWN, label=f"{w.name}'s own pick N={own_n}")
        if overall_n is not None:
            ax.axvline(overall_n, **OVERALL, label=f"recommended N={overall_n} (command line)")
        ax.set_xscale("symlog", linthresh=1)
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100) if t <= ns.max()]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        _y_scale(ax, values)
        ax.set_xlabel("N (rcu_min_cached_objs)")
        ax.set_title(f"{label}" + (f" ({unit})" if unit else ""), fontsize=10)
        ax.grid(alpha=0.3)
    _legend_below(
        fig,
        axes.flat,
        f"{data.hardware.name} / {w.name}: metrics against N (per-CPU layout, other knobs at the kernel defaults)",
    )
    return _png(fig)


def _legend_below(fig, axes, title: str) -> None:
    """The figure's title above, one legend for every panel below."""
    handles: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    fig.legend(
        handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False
    )


def pareto(data: CampaignData, rec: Recommendation, fronts: Mapping[str, set[int]]) -> bytes:
    """Reserved memory against fallback cost per workload: trials, the feasible Pareto front (Optuna's
    `best_trials`), each workload's own pick and the overall recommendation at their predicted values."""
    n = len(data.workloads)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, w in zip(axes.flat, data.workloads):
        ok = [t for t in w.trials if t.feasible]
        bad = [t for t in w.trials if not t.feasible]
        ax.scatter(
            [t.metrics["reserved_mib"] for t in bad],
            [t.metrics["fallback_cost"] for t in bad],
            marker="x",
            color="tab:red",
            s=20,
            label="infeasible",
        )
        ax.scatter(
            [t.metrics["reserved_mib"] for t in ok],
            [t.metrics["fallback_cost"] for t in ok],
            color="tab:blue",
            s=16,
            label="feasible",
        )
        front = sorted(
            (t.metrics["reserved_mib"], t.metrics["fallback_cost"])
            for t in w.trials
            if t.number in fronts.get(w.name, set())
        )
        if front:
            ax.step(
                [p[0] for p in front],
                [p[1] for p in front],
                where="post",
                color="tab:blue",
                alpha=0.6,
                label="Pareto front (feasible)",
            )
        own = rec.workload(w.name)
        if own is not None and own.faithful is not None:
            p = own.faithful.predicted[w.name]
            ax.scatter(
                [p["reserved_mib"].mean],
                [p["fallback_cost"].mean],
                marker="*",
                s=160,
                color="tab:green",
                edgecolor="black",
                zorder=4,
                label="workload's own pick",
            )
        if rec.overall is not None and w.name in rec.overall.predicted:
            p = rec.overall.predicted[w.name]
            ax.scatter(
                [p["reserved_mib"].mean],
                [p["fallback_cost"].mean],
                marker="D",
                s=70,
                color=OVERALL["color"],
                edgecolor="black",
                zorder=5,
                label="recommended (command line)",
            )
        positive = [t.metrics["reserved_mib"] for t in w.trials if t.metrics["reserved_mib"] > 0]
        linthresh = min(positive) if positive else 0.1
        ax.set_xscale("symlog", linthresh=linthresh)
        top = max(positive) if positive else 1.0
        # 0, then whole decades above the linear zone (a decade inside it would crowd the 0 label)
        ax.set_xticks(
            [0.0] + [10.0**k for k in range(math.ceil(math.log10(linthresh) + 0.3), math.ceil(math.log10(top)) + 1)]
        )
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        costs = [t.metrics["fallback_cost"] for t in w.trials]
        if min(costs, default=1.0) > 0:
            ax.set_yscale("log")  # the pending-memory charge keeps fallback costs positive
        else:
            _y_scale(ax, costs)
        ax.set_title(w.name, fontsize=10)
        ax.set_xlabel("reserved MiB")
        ax.set_ylabel("fallback cost (ms/s)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    _legend_below(fig, axes.flat[:n], f"{data.hardware.name}: trials, Pareto front and recommendation")
    return _png(fig)


def importances(data: CampaignData, table: Mapping[str, Mapping[str, float]]) -> bytes:
    """Parameter importances for the fallback cost, per workload (Optuna's fANOVA evaluator)."""
    params = sorted({p for per in table.values() for p in per})
    names = [w.name for w in data.workloads]
    m = (
        np.array([[table.get(w, {}).get(p, 0.0) for p in params] for w in names])
        if params
        else np.zeros((len(names), 1))
    )
    labels = params or ["(no parameter varied)"]
    fig, ax = plt.subplots(figsize=(1.3 * len(labels) + 2.5, 0.45 * len(names) + 1.8))
    im = ax.imshow(m, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j,
                i,
                f"{m[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if m[i, j] < 0.6 else "black",
            )
    fig.colorbar(im, ax=ax, label="importance")
    ax.set_title(f"{data.hardware.name}: what drives the fallback cost (fANOVA importances)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def time_series(data: CampaignData, w: WorkloadData, policies: Mapping[str, sim.Policy], seed: int) -> bytes:
    """Pending memory and cumulative fallbacks over time, one line per policy (the same seed)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    peak = 0.0
    colors = iter(("tab:purple", "tab:green", "tab:grey", "tab:orange"))
    for label, policy in policies.items():
        color = next(colors)
        _, trace = sim.simulate_with_trace(
            data.hardware, w.profile, policy, seconds=w.seconds, seed=seed, kernel=data.kernel
        )
        t = np.asarray(trace.t)
        marker = "o" if len(t) < 30 else None  # a short run has few samples: show them
        pending = np.asarray(trace.bytes_pending) / 2**20
        peak = max(peak, float(pending.max()) if len(pending) else 0.0)
        top.plot(t, pending, color=color, marker=marker, label=label)
        bottom.plot(t, trace.sync_fallbacks, color=color, marker=marker, label=f"{label}: synchronize_rcu()")
        bottom.plot(t, trace.head_fallbacks, color=color, ls="--", marker=marker, label=f"{label}: rcu_head")
    slo = data.hardware.slo_pending_peak_mib
    if peak > 0.3 * slo:  # otherwise the SLO line would flatten the curves
        top.axhline(slo, color="tab:red", ls="--", label="pending-peak SLO")
    top.set_title(f"pending-memory peak SLO: {slo:g} MiB", fontsize=9)
    top.set_ylim(bottom=0)
    top.set_ylabel("memory waiting (MiB)")
    bottom.set_ylabel("fallbacks (cumulative)")
    bottom.set_xlabel("simulated seconds")
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    fig.suptitle(
        f"{data.hardware.name} / {w.name}: recommended vs default (seed {seed}, not used by the search)", fontsize=10
    )
    fig.tight_layout()
    return _png(fig)
