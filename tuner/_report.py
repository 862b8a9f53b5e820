"""`rcutune report`: report.md, a self-contained report.html, recommendation.json and PNG plots (DESIGN.md §6).

A report is replaced whole: its files are written into a hidden sibling directory, which then
takes the report directory's place in one rename, so a reader (or a run killed at any moment)
sees the previous complete report or the new complete one, never a mix.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import html
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcutune import sim

from . import _plots
from ._recommend import (
    COMPARED,
    METRICS,
    CampaignData,
    Choice,
    Recommendation,
    fit_surrogates,
    load_campaign,
    recommend,
    store,
)

UNITS = {"reserved_mib": "MiB", "fallback_cost": "ms/s", "sync_stall_ms_per_s": "ms/s", "pending_peak_mib": "MiB",
         "sync_fallbacks_per_s": "/s", "call_latency_p99_us": "us", "oom_events": ""}


def write_atomic(path: Path, content: bytes | str) -> None:
    """Write `content` to `path` through a temporary file and a rename: readers see all or nothing."""
    data = content.encode() if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes it private; a report is not
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_directory(staged: Path, target: Path) -> None:
    """Put the directory `staged` at `target` in one step; the old `target`, if any, is removed.

    Linux swaps the two in one `renameat2(RENAME_EXCHANGE)`; elsewhere the old directory is renamed
    away first, so for an instant `target` is missing (but never partial).
    """
    if not target.exists():
        os.rename(staged, target)
        return
    if not _exchange(staged, target):
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
        os.rename(target, aside / target.name)
        os.rename(staged, target)
        staged = aside
    shutil.rmtree(staged)  # the previous report


def _exchange(a: Path, b: Path) -> bool:
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EPERM):  # no such call, or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _staging_directory(target: Path) -> Path:
    """A fresh hidden sibling of `target`; leftovers of killed runs of this report are removed first."""
    target.parent.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"\.{re.escape(target.name)}\.(\d+)\.[A-Za-z0-9_]+")  # what mkdtemp below makes
    for leftover in target.parent.glob(f".{target.name}.*"):
        match = ours.fullmatch(leftover.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _choice_json(c: Choice | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"kernel_cmdline": c.kernel_cmdline, "policy": c.policy, "n_per_cpu": c.policy["n_per_cpu"],
            "layout": c.policy["layout"], "what_if_reasons": list(c.what_if_reasons),
            "slo_met_probability": c.p_meet, "cost": c.cost, "predicted": c.predicted, "gain": c.gain}


def recommendation_json(rec: Recommendation, data: CampaignData) -> dict[str, Any]:
    """The recommendation.json document (keys listed in issue 5)."""
    overall = rec.overall
    workloads = {}
    for w in rec.workloads:
        f = w.faithful
        workloads[w.workload] = {
            "n_per_cpu": None if f is None else f.policy["n_per_cpu"],
            "layout": None if f is None else f.policy["layout"],
            "kernel_cmdline": None if f is None else f.kernel_cmdline,
            "policy": None if f is None else f.policy,
            "slo_met_probability": None if f is None else f.p_meet,
            "predicted": None if f is None else f.predicted,
            "confirmed": w.confirmed,
            "confirmation": w.confirmation,
            "what_if": None if w.what_if is None else {**_choice_json(w.what_if), "gain": w.gain},  # type: ignore[dict-item]
            "default_comparison": w.default_comparison,
            "unhealthy": w.problems,
            "unattainable": w.unattainable,
        }
    surrogate = _surrogate_summary(rec.surrogate)
    return {
        "hardware": rec.hardware, "campaign": rec.campaign, "kernel": rec.kernel,
        "kernel_cmdline": None if overall is None else overall.kernel_cmdline,
        "revert_cmdline": sim.Policy.kernel_default(sim.kernel_behaviour(rec.kernel)).kernel_cmdline(sim.kernel_behaviour(rec.kernel)),
        "confidence": rec.confidence,
        "overall": None if overall is None else {**_choice_json(overall),  # type: ignore[dict-item]
                                                 "confirmed": all(c["feasible"] for c in rec.overall_confirmation.values())
                                                 if rec.overall_confirmation else None,
                                                 "confirmation": rec.overall_confirmation},
        "overall_what_if": _choice_json(rec.overall_what_if),
        "workloads": workloads,
        "surrogate": surrogate,
        "extrapolated": rec.extrapolated,
        "served": rec.served,
        "unhealthy": rec.unhealthy,
        "fix_command": rec.fix_command,
        "simulator_version": rec.simulator_version,
        "seeds": list(rec.seeds), "fresh_seeds": list(rec.fresh_seeds),
        "profiles": {"hardware": sim.profile_text(data.hardware),
                     "workloads": {w.name: sim.profile_text(w.profile) for w in data.workloads}},
    }


def _surrogate_summary(table: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Per metric: the worst CV R² and the coverage farthest from 90% over the workloads whose model of
    it decides something (the per-workload figures beside them)."""
    out = {}
    for name, _, _, _ in METRICS:
        per = {w: table[w][name] for w in table if name in table[w]}
        deciding = [p for p in per.values() if p.get("decisive", True)]
        r2 = [p["cv_r2"] for p in deciding if p["cv_r2"] is not None]
        cov = [p["coverage"] for p in deciding if p["coverage"] is not None]
        out[name] = {"cv_r2": min(r2) if r2 else None,
                     "coverage": max(cov, key=lambda c: abs(c - 0.9)) if cov else None,
                     "per_workload": per}
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}g}"


def _signed(entry: dict[str, Any]) -> str:
    """A paired difference as '+0.12 ± 0.03'."""
    diff, half = entry["diff"], entry.get("ci95")
    sign = "+" if diff is not None and diff > 0 else ""
    return f"{sign}{_fmt(diff)}" + (f" ± {_fmt(half, 2)}" if half is not None else "")


def _ci(entry: dict[str, Any], key: str = "mean") -> str:
    half = entry.get("ci95")
    return f"{_fmt(entry[key])} ± {_fmt(half, 2)}" if half is not None else _fmt(entry[key])


def render_markdown(doc: dict[str, Any], images: dict[str, str], url: str) -> str:
    """report.md; `images` maps a caption to its PNG file name."""
    lines: list[str] = []
    hw, campaign = doc["hardware"], doc["campaign"]
    lines.append(f"# rcutune report: {hw}, campaign {campaign}")
    lines.append("")
    not_served = {name: _why_not(w, doc["confidence"]) for name, w in doc["workloads"].items() if name not in doc["served"]}
    if doc["kernel_cmdline"]:
        o = doc["overall"]
        reserved = o["predicted"][doc["served"][0]]["reserved_mib"]["mean"] if doc["served"] else None
        lines += ["**Kernel command line** (stock kernel, every workload below that a stock-kernel policy can serve):", "",
                  "```", doc["kernel_cmdline"], "```", "",
                  f"- Holds for kernel **{doc['kernel']}**; layout `{o['layout']}`, N = {o['n_per_cpu']} pages per CPU"
                  + (f" ({_fmt(reserved)} MiB reserved)." if reserved is not None else "."),
                  f"- Risk: probability that every SLO is met, in the worst served workload: "
                  f"**{o['slo_met_probability']:.3f}** (required {doc['confidence']}).",
                  f"- Serves: {', '.join(doc['served'])}.",
                  f"- Extrapolated: {'yes, intervals widened' if doc['extrapolated'] else 'no'}."]
        for name, why in not_served.items():
            lines.append(f"- Not served: **{name}**: {why}.")
        confirmation = o.get("confirmation") or {}
        if confirmation:
            default_n = sim.Policy.kernel_default(sim.kernel_behaviour(doc["kernel"])).n_per_cpu
            lines += ["", f"Against the kernel default (N={default_n}), on {len(doc['fresh_seeds'])} fresh seeds per "
                      "workload (the same seeds for both: paired differences, mean ± 95% CI half-width):", "",
                      "| workload | SLOs met on every fresh seed | reserved MiB | fallback cost ms/s | "
                      "synchronize_rcu() stall ms/s | pending-memory peak MiB |", "|---|---|---|---|---|---|"]
            for name, c in confirmation.items():
                cells = []
                for m in ("reserved_mib", "fallback_cost", "sync_stall_ms_per_s", "pending_peak_mib"):
                    cells.append(f"{_fmt(c['summary'][m]['mean'])} vs {_fmt(c['kernel_default'][m]['mean'])} "
                                 f"({_signed(c['minus_default'][m])})")
                lines.append(f"| {name} | {'yes' if c['feasible'] else 'NO'} | " + " | ".join(cells) + " |")
    else:
        if doc["unhealthy"]:
            lines += ["**No recommendation**: the surrogates of some workloads failed their accuracy check "
                      "(CV R² ≥ 0.8 and 90% interval coverage within 80-97% are required).", ""]
            for w, problems in doc["unhealthy"].items():
                lines.append(f"- {w}: " + "; ".join(problems))
        else:
            lines += ["**No recommendation**: no stock-kernel policy meets every SLO of any workload at the required "
                      "confidence.", ""]
            for name, why in not_served.items():
                lines.append(f"- {name}: {why}")
        if doc["fix_command"]:
            lines += ["", "To fix it, add trials and report again:", "", "```", doc["fix_command"],
                      f"rcutune report {campaign} --storage {url}", "```"]
    lines += ["", f"To revert to the kernel default: `{doc['revert_cmdline']}`", ""]
    if doc.get("overall_what_if"):
        wi = doc["overall_what_if"]
        lines += ["## What-if (needs a kernel patch)", "",
                  f"`{wi['kernel_cmdline']}` with layout `{wi['layout']}` — needs: {'; '.join(wi['what_if_reasons'])}. "
                  f"Predicted cost lower by {_fmt(wi['gain'])} ms/s-equivalent (summed over the served workloads) "
                  f"than the stock-kernel policy above.", ""]
    lines += ["## Per workload", "",
              "| workload | N | layout | P(SLOs met) | confirmed on fresh seeds | fallback cost ms/s (90% interval) | what-if gain |",
              "|---|---|---|---|---|---|---|"]
    for name, w in doc["workloads"].items():
        if w["n_per_cpu"] is None:
            lines.append(f"| {name} | - | - | - | - | {_why_not(w, doc['confidence'])} | - |")
            continue
        fc = w["predicted"]["fallback_cost"]
        wi = w["what_if"]
        gain = "-" if not wi else (f"{_fmt(wi['gain'])} ms/s with {wi['layout']}, N={wi['n_per_cpu']} "
                                   f"(needs: {'; '.join(wi['what_if_reasons'])})")
        lines.append(f"| {name} | {w['n_per_cpu']} | {w['layout']} | {w['slo_met_probability']:.3f} | "
                     f"{'yes' if w['confirmed'] else ('NO' if w['confirmed'] is False else '-')} | "
                     f"{_fmt(fc['mean'])} ({_fmt(fc['lo90'])}-{_fmt(fc['hi90'])}) | {gain} |")
    lines += ["", "## Comparison with the kernel default and N=0", "",
              "Fresh replications on seeds the search never used, common random numbers (the same seeds for "
              "every policy); mean ± 95% CI half-width; differences are paired.", ""]
    for name, w in doc["workloads"].items():
        comp = w["default_comparison"]
        if not comp:
            continue
        rec = w["confirmation"]["recommended"]
        lines += [f"### {name}", "",
                  "| metric | recommended | kernel default | N=0 | recommended − default | recommended − N=0 |",
                  "|---|---|---|---|---|---|"]
        for m in COMPARED:
            lines.append(f"| {m} ({UNITS.get(m, '')}) | {_ci(rec[m])} | {_ci(comp['kernel_default']['summary'][m])} | "
                         f"{_ci(comp['n_zero']['summary'][m])} | {_ci(comp['recommended_minus_default'][m], 'diff')} | "
                         f"{_ci(comp['recommended_minus_n_zero'][m], 'diff')} |")
        lines.append("")
    lines += ["## Surrogate accuracy", "",
              "One model per workload and metric, fitted on every complete trial and cross-validated by trial "
              "(10-fold GroupKFold): R² and Spearman rank correlation of trial means on the common seeds, "
              "empirical coverage of the nominal 90% interval by single replications. `decisive = no`: the "
              "metric cannot change the recommendation (every observation below half its SLO, a spread too "
              "small to matter, the same value under every policy seed by seed, or a workload no policy can "
              "serve); its accuracy is not required. `(flat)`: the trial means are indistinguishable within "
              "replication noise (randomised-block ANOVA over the common seeds, p > 0.05), so only the "
              "interval's coverage is required.", "",
              "Surrogates that decide the recommendation:", "",
              "| workload | metric | model | CV R² | 90% coverage | healthy |", "|---|---|---|---|---|---|"]
    for m, entry in doc["surrogate"].items():
        for w, a in sorted(entry["per_workload"].items()):
            if a.get("decisive", True) and a["cv_r2"] is not None and a["estimator"] != "exact":
                lines.append(f"| {w} | {m} | {a['estimator']} | {_fmt(a['cv_r2'], 2)}"
                             f"{' (flat)' if a.get('noise_limited') else ''} | {_fmt(a['coverage'], 2)} | "
                             f"{'yes' if a['healthy'] else 'NO'} |")
    lines += ["", "<details><summary>Every workload and metric</summary>", "",
              "| workload | metric | model | trials | CV R² | rank corr. | 90% coverage | decisive | healthy |",
              "|---|---|---|---|---|---|---|---|---|"]
    workloads = sorted({w for entry in doc["surrogate"].values() for w in entry["per_workload"]})
    for w in workloads:
        for m, entry in doc["surrogate"].items():
            a = entry["per_workload"].get(w)
            if a is None:
                continue
            flat = " (flat)" if a.get("noise_limited") else ""
            lines.append(f"| {w} | {m} | {a['estimator']} | {a['n_trials']} | {_fmt(a['cv_r2'], 2)}{flat} | "
                         f"{_fmt(a['rank_correlation'], 2)} | {_fmt(a['coverage'], 2)} | "
                         f"{'yes' if a.get('decisive', True) else 'no'} | {'yes' if a['healthy'] else 'NO'} |")
    lines += ["", "</details>"]
    lines += ["", "## Plots", ""]
    for caption, file in images.items():
        lines += [f"### {caption}", "", f"![{caption}]({file})", ""]
    lines += ["## Reproduce", "",
              f"- Simulator version {doc['simulator_version']}, kernel {doc['kernel']}.",
              f"- Search seeds: {', '.join(map(str, doc['seeds']))}; confirmation seeds: {', '.join(map(str, doc['fresh_seeds']))}.",
              f"- `rcutune report {campaign} --storage {url}`", "",
              "<details><summary>Hardware profile</summary>", "", "```", doc["profiles"]["hardware"], "```", "</details>", ""]
    return "\n".join(lines) + "\n"


def _why_not(w: dict[str, Any], confidence: float) -> str:
    """Why a workload has no recommendation (or is left out of the overall one), in a few words."""
    if w["unattainable"]:
        return f"no policy can meet its SLOs: {w['unattainable']}"
    if w["unhealthy"]:
        return f"unhealthy surrogate: {'; '.join(w['unhealthy'])}"
    if w["n_per_cpu"] is None:
        what_if = "" if not w.get("what_if") else (
            f" (what-if {w['what_if']['layout']}, N={w['what_if']['n_per_cpu']} does: "
            f"{'; '.join(w['what_if']['what_if_reasons'])})")
        return f"no stock-kernel policy reaches P(SLOs met) ≥ {confidence}{what_if}"
    return f"its own best N={w['n_per_cpu']} is not safe for the others"


def render_html(markdown: str, images: dict[str, bytes]) -> str:
    """A self-contained HTML page from report.md: images inline as data URIs, no external resources."""
    body: list[str] = []
    in_code = in_table = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            body.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            body.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-") for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                body.append("<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells) + "</tr>")
            else:
                body.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        image = re.match(r"!\[(.*)\]\((.*)\)", line)
        if image:
            data = base64.b64encode(images[image.group(2)]).decode()
            body.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<p class='item'>• {_inline(line[2:])}</p>")
        elif line.startswith("<details") or line.startswith("</details"):
            body.append(line)
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "pre{background:#f4f4f4;padding:.8em;font-size:15px;white-space:pre-wrap;overflow-wrap:anywhere}"
             "table{border-collapse:collapse;margin:.5em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px}"
             "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}code{background:#f4f4f4}")
    title = html.escape(markdown.splitlines()[0].lstrip("# "))
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _inline(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]*)\*\*", r"<strong>\1</strong>", out)


@dataclass(frozen=True)
class PreparedReport:
    """A report computed but not yet written: its directory, its files' contents, its recommendation."""

    url: str
    directory: Path
    files: dict[str, bytes | str]
    recommendation: Recommendation
    data: CampaignData | None = None  # the fitted campaign, whose estimators are stored with the figures


def write_report(url: str, name: str, out: Path | None = None, *, confidence: float = 0.95,
                 confirm_seeds: int = 4) -> Path:
    """Fit, recommend and write `reports/<hardware>/<campaign>/`; returns that directory.

    Raises:
        UserError: unknown campaign, no complete trials, bad confidence.
    """
    return publish_report(prepare_report(url, name, out, confidence=confidence, confirm_seeds=confirm_seeds))


def prepare_report(url: str, name: str, out: Path | None = None, *, confidence: float = 0.95,
                   confirm_seeds: int = 4) -> PreparedReport:
    """Everything `write_report` computes (surrogates, recommendation, plots, text); writes nothing."""
    data = load_campaign(url, name)
    if not 0.5 <= confidence < 1.0:
        from ._errors import UserError
        raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
    fit_surrogates(data)
    rec = recommend(data, confidence=confidence, confirm_seeds=confirm_seeds)
    directory = (out or Path("reports")) / data.hardware.name / data.name
    pngs: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    pngs["pareto.png"] = _plots.pareto(data, rec)
    captions["Pareto front (recommendation starred)"] = "pareto.png"
    pngs["importances.png"] = _plots.importances(data)
    captions["Parameter importances"] = "importances.png"
    seed = rec.fresh_seeds[0] if rec.fresh_seeds else 0
    for w in data.workloads:
        pngs[f"metrics-vs-n-{w.name}.png"] = _plots.metric_vs_n(data, w, rec)
        captions[f"{w.name}: metrics against N"] = f"metrics-vs-n-{w.name}.png"
        chosen = next((r.faithful for r in rec.workloads if r.workload == w.name and r.faithful), None)
        if chosen is not None:
            pngs[f"timeseries-{w.name}.png"] = _plots.time_series(data, w, chosen.policy, seed)
            captions[f"{w.name}: pending memory and fallbacks, recommended vs default"] = f"timeseries-{w.name}.png"
    doc = recommendation_json(rec, data)
    markdown = render_markdown(doc, captions, url)
    files = {**pngs, "recommendation.json": json.dumps(doc, indent=2, default=_json_default) + "\n",
             "report.md": markdown, "report.html": render_html(markdown, pngs)}
    return PreparedReport(url, directory, files, rec, data)


def publish_report(report: PreparedReport) -> Path:
    """Write a prepared report: replace its directory whole, then store its recommendation; returns the directory."""
    staged = _staging_directory(report.directory)
    try:
        for file, content in report.files.items():
            write_atomic(staged / file, content)
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes it private; a report is not
        replace_directory(staged, report.directory)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    store(report.url, report.recommendation, report.data)
    return report.directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
