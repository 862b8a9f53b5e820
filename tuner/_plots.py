"""The report's PNG plots (matplotlib, Agg backend); each function returns PNG bytes."""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rcutune import sim  # noqa: E402

from ._recommend import METRICS, N_GRID, CampaignData, Recommendation, WorkloadData  # noqa: E402
from ._surrogate import FEATURES, ForestSurrogate, policy_features  # noqa: E402

PLOTTED = ("fallback_cost", "call_latency_p99_us", "sync_fallbacks_per_s", "pending_peak_mib")
LABELS = {name: (label, unit, slo) for name, label, unit, slo in METRICS}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _recommended_n(rec: Recommendation, workload: str) -> int | None:
    for w in rec.workloads:
        if w.workload == workload and w.faithful is not None:
            return int(w.faithful.policy["n_per_cpu"])
    return None


def metric_vs_n(data: CampaignData, w: WorkloadData, rec: Recommendation) -> bytes:
    """Each constrained metric against N (faithful per-CPU policy): surrogate median, 90% band, trials, SLO."""
    default = asdict(sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel)))
    grid = [dict(default, n_per_cpu=n) for n in N_GRID]
    xs = np.array(N_GRID)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    chosen = _recommended_n(rec, w.name)
    for ax, name in zip(axes.flat, PLOTTED):
        label, unit, slo = LABELS[name]
        s = w.surrogates[name]
        mid, lo, hi = s.interval(grid)
        ax.fill_between(xs, np.maximum(lo, 0), hi, alpha=0.25, color="tab:blue", label="90% interval")
        ax.plot(xs, mid, color="tab:blue", label="surrogate")
        pts = [t for t in w.trials if t.policy["layout"] == "per-cpu"]
        stock = [t for t in pts if not t.what_if]
        other = [t for t in pts if t.what_if]
        ax.scatter([t.policy["n_per_cpu"] for t in stock], [t.metrics[name] for t in stock], s=18, color="black",
                   zorder=3, label="stock-kernel trials (mean)")
        if other:  # per-CPU what-ifs (watermark, emergency reserve): not on the curve's slice of the space
            ax.scatter([t.policy["n_per_cpu"] for t in other], [t.metrics[name] for t in other], s=22,
                       facecolors="none", edgecolors="tab:orange", zorder=3, label="per-CPU what-if trials (mean)")
        if slo is not None:
            ax.axhline(getattr(data.hardware, slo), color="tab:red", ls="--", label="SLO")
        ax.axvline(default["n_per_cpu"], color="grey", ls=":", label=f"default N={default['n_per_cpu']}")
        if chosen is not None:
            ax.axvline(chosen, color="tab:green", ls="-", lw=1.5, label=f"recommended N={chosen}")
        ax.set_xscale("symlog", linthresh=1)
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100) if t <= xs.max()]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("N (rcu_min_cached_objs)")
        ax.set_title(f"{label}" + (f" ({unit})" if unit else ""), fontsize=10)
        ax.grid(alpha=0.3)
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.suptitle(f"{data.hardware.name} / {w.name}: metrics against N (per-CPU layout, other knobs at kernel defaults)",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(4, len(handles)), fontsize=8,
               frameon=False)
    return _png(fig)


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    front, best = [], math.inf
    for x, y in sorted(points):
        if y < best:
            front.append((x, y))
            best = y
    return front


def pareto(data: CampaignData, rec: Recommendation) -> bytes:
    """Reserved memory against fallback cost per workload; feasible front; the recommendation marked."""
    n = len(data.workloads)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.5 * rows), squeeze=False)
    by_name = {w.workload: w for w in rec.workloads}
    for ax, w in zip(axes.flat, data.workloads):
        ok = [t for t in w.trials if t.feasible]
        bad = [t for t in w.trials if not t.feasible]
        ax.scatter([t.metrics["reserved_mib"] for t in bad], [t.metrics["fallback_cost"] for t in bad], marker="x",
                   color="tab:red", s=20, label="infeasible")
        ax.scatter([t.metrics["reserved_mib"] for t in ok], [t.metrics["fallback_cost"] for t in ok],
                   color="tab:blue", s=16, label="feasible")
        front = _front([(t.metrics["reserved_mib"], t.metrics["fallback_cost"]) for t in ok])
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", alpha=0.6,
                    label="Pareto front")
        r = by_name.get(w.name)
        if r is not None and r.faithful is not None:
            p = r.faithful.predicted
            ax.scatter([p["reserved_mib"]["mean"]], [p["fallback_cost"]["mean"]], marker="*", s=180,
                       color="tab:green", edgecolor="black", zorder=4, label="recommended")
        positive = [t.metrics["reserved_mib"] for t in w.trials if t.metrics["reserved_mib"] > 0]
        linthresh = min(positive) if positive else 0.1
        ax.set_xscale("symlog", linthresh=linthresh)
        top = max(positive) if positive else 1.0
        # 0, then whole decades above the linear zone (a decade inside it would crowd the 0 label)
        ax.set_xticks([0.0] + [10.0 ** k for k in range(math.ceil(math.log10(linthresh) + 0.3),
                                                         math.ceil(math.log10(top)) + 1)])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")  # fallback costs are positive (the pending-memory charge never vanishes)
        ax.set_title(w.name, fontsize=10)
        ax.set_xlabel("reserved MiB")
        ax.set_ylabel("fallback cost (ms/s)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{data.hardware.name}: trials, Pareto front and recommendation", fontsize=11)
    fig.tight_layout()
    return _png(fig)


def importances(data: CampaignData) -> bytes:
    """Permutation-free impurity importances of a forest fitted to log fallback cost, per workload."""
    matrix = []
    for w in data.workloads:
        rows = [(t.policy, r["fallback_cost"]) for t in w.trials for r in t.runs]
        X = policy_features([p for p, _ in rows])
        y = np.log1p(np.maximum([v for _, v in rows], 0.0))
        if np.ptp(y) == 0:
            matrix.append(np.zeros(len(FEATURES)))
            continue
        matrix.append(ForestSurrogate(n_estimators=100).fit(X, y).feature_importances_)
    m = np.array(matrix)
    keep = np.flatnonzero(m.max(axis=0) > 0) if m.size else np.arange(len(FEATURES))
    if keep.size == 0:
        keep = np.arange(len(FEATURES))
    fig, ax = plt.subplots(figsize=(1.3 * len(keep) + 2.5, 0.45 * len(data.workloads) + 1.8))
    im = ax.imshow(m[:, keep], cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(keep)), [FEATURES[i] for i in keep], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(data.workloads)), [w.name for w in data.workloads], fontsize=8)
    for i in range(m.shape[0]):
        for j, k in enumerate(keep):
            ax.text(j, i, f"{m[i, k]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if m[i, k] < 0.6 else "black")
    fig.colorbar(im, ax=ax, label="importance")
    ax.set_title(f"{data.hardware.name}: what drives the fallback cost (forest importances)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def time_series(data: CampaignData, w: WorkloadData, policy: dict[str, Any], seed: int) -> bytes:
    """Pending memory and cumulative fallbacks over time: recommended vs kernel default, same seed."""
    default = sim.Policy.kernel_default(sim.kernel_behaviour(data.kernel))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    peak = 0.0
    for label, p, color in ((f"recommended N={policy['n_per_cpu']}", sim.Policy(**policy), "tab:green"),
                            (f"kernel default N={default.n_per_cpu}", default, "tab:grey")):
        _, trace = sim.simulate_with_trace(data.hardware, w.profile, p, seconds=w.seconds, seed=seed,
                                           kernel=data.kernel)
        t = np.asarray(trace.t)
        marker = "o" if len(t) < 30 else None  # a short run (rcuscale) has few samples: show them
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
    fig.suptitle(f"{data.hardware.name} / {w.name}: recommended vs default (seed {seed}, not used by the search)",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)
