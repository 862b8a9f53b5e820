"""report.md, written from the typed recommendation: the answer first, then the evidence behind it."""

from __future__ import annotations

from collections.abc import Mapping

from rcutune import storage

from ..recommend import COMPARED, UNITS, Choice, Recommendation, Stat, SurrogateFigures, WorkloadRecommendation
from ..surrogate import intervals_wide

METRIC_LABELS = {
    "reserved_mib": "reserved memory",
    "fallback_cost": "fallback cost",
    "call_latency_p99_us": "p99 call latency",
    "sync_fallbacks_per_s": "synchronize_rcu() fallbacks",
    "pending_peak_mib": "pending-memory peak",
    "oom_events": "OOM events",
    "sync_stall_ms_per_s": "synchronize_rcu() stall",
}


def fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _stat(s: Stat | None) -> str:
    if s is None:
        return "-"
    return f"{fmt(s.mean)} ± {fmt(s.ci95, 2)}" if s.ci95 is not None else fmt(s.mean)


def _signed(s: Stat) -> str:
    sign = "+" if s.mean > 0 else ""
    return f"{sign}{fmt(s.mean)}" + (f" ± {fmt(s.ci95, 2)}" if s.ci95 is not None else "")


def rule_text(rec: Recommendation) -> str:
    """The rule that picked the overall policy, in one paragraph."""
    t = rec.thresholds
    slos = ", ".join(
        f"{METRIC_LABELS[m]} {fmt(v)} {UNITS[m]}".rstrip()
        for m, v in t.items()
        if m not in ("fallback_cost", "oom_events")
    )
    return (
        f"Among the policies whose predicted probability of meeting every SLO (and never running out of "
        f"memory) is at least {rec.confidence:g} in every served workload, the one with the lowest predicted "
        f"cost averaged over those workloads, the cost being the fallback cost plus 1 ms/s per MiB reserved "
        f"per GiB of RAM. Costs within the practical threshold of {fmt(t['fallback_cost'])} ms/s of each "
        f"other are ties, which go to the stock kernel, then to the fewest knobs changed from the kernel "
        f"default, then to the smaller N; a knob other than N stays changed only if fresh seeds show it "
        f"saves more than that threshold. A metric whose whole predicted range stays below its practical "
        f"threshold (half its SLO: {slos}; fallback cost: its means spread under {fmt(t['fallback_cost'])} ms/s) "
        f"can neither decide nor block the answer, so its surrogate's accuracy is not required."
    )


def render_markdown(rec: Recommendation, images: Mapping[str, str], *, url: str, study_command: str) -> str:
    """report.md; `images` maps a caption to its PNG file name."""
    lines = [f"# rcutune report: {rec.hardware}, campaign {rec.campaign}", ""]
    lines += _answer(rec, url) if rec.overall is not None else _no_answer(rec, url)
    lines += ["", f"To revert to the kernel default: `{rec.revert_cmdline}`", ""]
    if rec.overall_what_if is not None:
        wi = rec.overall_what_if
        lines += [
            "## What-if (needs a kernel patch)",
            "",
            f"`{wi.kernel_cmdline}` with layout `{wi.policy.layout}` needs: {'; '.join(wi.what_if_reasons)}. "
            f"Predicted cost lower by {fmt(wi.gain)} ms/s (averaged over the served workloads) than the "
            f"stock-kernel policy above.",
            "",
        ]
    lines += _per_workload(rec)
    lines += _comparisons(rec)
    lines += _accuracy(rec)
    lines += ["## Plots", ""]
    for caption, file in images.items():
        lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    lines += [
        "## Reproduce",
        "",
        f"- Simulator version {rec.simulator_version}, kernel {rec.kernel}.",
        f"- Search seeds: {', '.join(map(str, rec.seeds))}; confirmation seeds: "
        f"{', '.join(map(str, rec.fresh_seeds)) or 'none'}.",
        "- The study that made this campaign, then this report:",
        "",
        "```",
        study_command,
        f"rcutune report {rec.campaign}{storage.storage_option(url)}",
        "```",
        "",
        "<details><summary>Hardware profile</summary>",
        "",
        "```",
        rec.profiles.get("hardware", ""),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines) + "\n"


def _answer(rec: Recommendation, url: str) -> list[str]:
    o = rec.overall
    assert o is not None
    reserved = next(iter(o.predicted.values()))["reserved_mib"].mean if o.predicted else None
    lines = [
        f"**Kernel command line** for Linux {rec.kernel} (a stock kernel; this release's parameter names):",
        "",
        "```",
        o.kernel_cmdline,
        "```",
        "",
        f"- Risk: probability that every SLO is met, in the worst served workload: **{o.p_meet:.3f}** "
        f"(required {rec.confidence:g})" + _confirmed_text(rec) + ".",
        f"- N = {o.policy.n_per_cpu} pages per CPU, layout `{o.policy.layout}`"
        + (f" ({fmt(reserved)} MiB reserved)." if reserved is not None else "."),
    ]
    if rec.n_explanation is not None:
        e = rec.n_explanation
        who = f"set by **{e.workload}**: " if e.workload else ""
        lines.append(f"- Why N = {e.n}: {who}{e.reason}.")
    kept = [k for k in rec.knob_changes if k.kept]
    reverted = [k for k in rec.knob_changes if not k.kept]
    for k in kept:
        lines.append(
            f"- `{k.knob}` = {k.value} (default {k.default}): saves {_stat(k.buys)} ms/s on fresh seeds, "
            f"more than the practical {fmt(rec.thresholds['fallback_cost'])} ms/s."
        )
    if reverted:
        lines.append(
            "- Left at the kernel default because the change saved no more than the practical threshold "
            "on fresh seeds: "
            + ", ".join(f"`{k.knob}` (the search's {k.value} saved {_stat(k.buys)} ms/s)" for k in reverted)
            + "."
        )
    if not rec.knob_changes:
        lines.append("- Every knob other than N is at the kernel default.")
    lines.append(f"- Serves: {', '.join(rec.served)}.")
    for name, why in rec.not_served().items():
        lines.append(f"- Not served: **{name}**: {why}.")
    lines.append(
        "- Extrapolated: "
        + ("yes, from a neighbouring studied profile, intervals widened." if rec.extrapolated else "no."),
    )
    lines += ["", f"How it was chosen: {rule_text(rec)}"]
    if rec.overall_confirmation:
        default_n = rec.default_policy.n_per_cpu
        lines += [
            "",
            f"Against the kernel default (N={default_n}), on {len(rec.fresh_seeds)} fresh seeds per workload "
            "(the same seeds for both: paired differences, mean ± 95% CI half-width):",
            "",
            "| workload | SLOs met on every fresh seed | reserved MiB | fallback cost ms/s | "
            "synchronize_rcu() stall ms/s | pending-memory peak MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in rec.overall_confirmation.items():
            cells = [
                f"{fmt(c.recommended[m].mean)} vs {fmt(c.kernel_default[m].mean)} ({_signed(c.minus_default[m])})"
                for m in ("reserved_mib", "fallback_cost", "sync_stall_ms_per_s", "pending_peak_mib")
            ]
            lines.append(f"| {name} | {'yes' if c.feasible else 'NO'} | " + " | ".join(cells) + " |")
    return lines


def _confirmed_text(rec: Recommendation) -> str:
    if not rec.overall_confirmation:
        return ""
    ok = all(c.feasible for c in rec.overall_confirmation.values())
    return f"; SLOs met on all {len(rec.fresh_seeds)} fresh seeds of every served workload: {'yes' if ok else 'NO'}"


def _no_answer(rec: Recommendation, url: str) -> list[str]:
    lines: list[str] = []
    if rec.unhealthy:
        lines += [
            "**No recommendation**: the surrogates of some workloads failed their accuracy check on a metric "
            "that can decide the answer (CV R² ≥ 0.8 and 90% interval coverage of at least 80% are required).",
            "",
        ]
        for w, problems in rec.unhealthy.items():
            lines.append(f"- {w}: " + "; ".join(problems))
    else:
        lines += [
            "**No recommendation**: no stock-kernel policy meets every SLO of any workload at the required confidence.",
            "",
        ]
        for name, why in rec.not_served().items():
            lines.append(f"- {name}: {why}")
    if rec.fix_command:
        lines += [
            "",
            "To fix it, add trials and report again:",
            "",
            "```",
            rec.fix_command,
            f"rcutune report {rec.campaign}{storage.storage_option(url)}",
            "```",
        ]
    return lines


def _why_not(w: WorkloadRecommendation, confidence: float) -> str:
    """Why a workload has no recommendation of its own, in a few words."""
    if w.unattainable:
        return f"no policy can meet its SLOs: {w.unattainable}"
    if w.problems:
        return f"unhealthy surrogate: {'; '.join(w.problems)}"
    what_if = (
        ""
        if w.what_if is None
        else (
            f" (what-if {w.what_if.policy.layout}, N={w.what_if.policy.n_per_cpu} "
            f"does: {'; '.join(w.what_if.what_if_reasons)})"
        )
    )
    return f"no stock-kernel policy reaches P(SLOs met) ≥ {confidence:g}{what_if}"


def _fallback(c: Choice, workload: str) -> str:
    i = c.predicted.get(workload, {}).get("fallback_cost")
    return "-" if i is None else f"{fmt(i.mean)} ({fmt(i.lo90)}-{fmt(i.hi90)})"


def _per_workload(rec: Recommendation) -> list[str]:
    lines = [
        "## Per workload",
        "",
        "Each workload's own best policy by the same rule (the overall answer above must serve them all).",
        "",
        "| workload | N | layout | P(SLOs met) | confirmed on fresh seeds | fallback cost ms/s (90% interval) "
        "| what-if gain |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in rec.workloads:
        f = w.faithful
        if f is None:
            lines.append(f"| {w.workload} | - | - | - | - | {_why_not(w, rec.confidence)} | - |")
            continue
        wi = w.what_if
        gain = (
            "-"
            if wi is None
            else (
                f"{fmt(wi.gain)} ms/s with {wi.policy.layout}, N={wi.policy.n_per_cpu} "
                f"(needs: {'; '.join(wi.what_if_reasons)})"
            )
        )
        confirmed = {True: "yes", False: "NO", None: "-"}[w.confirmed]
        lines.append(
            f"| {w.workload} | {f.policy.n_per_cpu} | {f.policy.layout} | {f.p_meet:.3f} | {confirmed} | "
            f"{_fallback(f, w.workload)} | {gain} |"
        )
    return lines + [""]


def _comparisons(rec: Recommendation) -> list[str]:
    lines = [
        "## Comparison with the kernel default and N=0",
        "",
        "Fresh replications on seeds the search never used, common random numbers (the same seeds for "
        "every policy); mean ± 95% CI half-width; differences are paired.",
        "",
    ]
    for w in rec.workloads:
        c = w.confirmation
        if c is None:
            continue
        lines += [
            f"### {w.workload}",
            "",
            "| metric | recommended | kernel default | N=0 | recommended − default | recommended − N=0 |",
            "|---|---|---|---|---|---|",
        ]
        for m in COMPARED:
            unit = UNITS.get(m, "")
            lines.append(
                f"| {METRIC_LABELS[m]}{f' ({unit})' if unit else ''} | {_stat(c.recommended.get(m))} | "
                f"{_stat(c.kernel_default.get(m))} | {_stat(c.n_zero.get(m))} | "
                f"{_stat(c.minus_default.get(m))} | {_stat(c.minus_n_zero.get(m))} |"
            )
        lines.append("")
    return lines


def _accuracy(rec: Recommendation) -> list[str]:
    lines = [
        "## Surrogate accuracy",
        "",
        "One model per workload and metric, fitted on every complete trial and cross-validated by trial "
        "(10-fold GroupKFold): R² and Spearman rank correlation of trial means on the common seeds, and the "
        "share of single replications inside the nominal 90% interval. A trial mean over a few seeds carries "
        "replication noise no model predicts (a workload whose runs either start a chain reaction or do not): "
        "`beyond noise` is the R² of the variance between trial means that the trial x seed interaction does not "
        "account for, and the check (R² >= 0.8) uses it where it is measured. Only metrics that can decide the "
        "answer (their predicted range reaches the practical threshold) must be accurate, and only where the "
        "model itself decides: a metric that reaches the threshold only through N=0, which is measured and not "
        "predicted, is marked `N=0 only` in the full table; `(flat)` marks "
        "trial means that replication noise cannot tell apart (randomised-block ANOVA over the common seeds, "
        "p > 0.05), where R² measures noise and only the interval's coverage is required; `(narrow)` a constraint "
        "whose predictions over the candidates span less than its practical threshold, where their order cannot "
        "matter and only the coverage is required.",
        "",
        "| workload | metric | model | CV R² | beyond noise | 90% coverage | healthy |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        (w, m, a)
        for w, per in rec.surrogate.items()
        for m, a in per.items()
        if a.decisive and a.estimator_decides and a.cv_r2 is not None and a.estimator != "exact"
    ]
    for w, m, a in rows:
        r2 = "(flat)" if a.noise_limited else "(narrow)" if a.narrow else fmt(a.cv_r2, 2)
        lines.append(
            f"| {w} | {METRIC_LABELS.get(m, m)} | {a.estimator} | {r2} | {fmt(a.explainable_r2, 2)} | "
            f"{_coverage(a)} | {'yes' if a.healthy else 'NO'} |"
        )
    if not rows:
        lines.append("| - | no fitted metric decides the answer | - | - | - | - | - |")
    lines += [
        "",
        "<details><summary>Every workload and metric</summary>",
        "",
        "| workload | metric | model | trials | CV R² | beyond noise | rank corr. | 90% coverage | decides | healthy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w, per in rec.surrogate.items():
        for m, a in per.items():
            r2 = fmt(a.cv_r2, 2) + (" (flat)" if a.noise_limited else " (narrow)" if a.narrow else "")
            lines.append(
                f"| {w} | {METRIC_LABELS.get(m, m)} | {a.estimator} | {a.n_trials} | {r2} | "
                f"{fmt(a.explainable_r2, 2)} | {fmt(a.rank_correlation, 2)} | {_coverage(a)} | {_decides(a)} | "
                f"{'yes' if a.healthy else 'NO'} |"
            )
    return lines + ["", "</details>", ""]


def _decides(a: SurrogateFigures) -> str:
    if not a.decisive:
        return "no"
    return "yes" if a.estimator_decides else "N=0 only"


def _coverage(a: SurrogateFigures) -> str:
    return fmt(a.coverage, 2) + (" (wide)" if intervals_wide(a.coverage) else "")
