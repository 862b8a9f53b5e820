"""The report stage: `reports/<hardware>/<campaign>/` with report.md, report.html, recommendation.json and plots.

`prepare_report` computes everything and writes nothing; `publish_report` replaces the report
directory whole (a reader never sees a mix) and stores the answer in the campaign's database.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from ..recommend import (
    CampaignData,
    Recommendation,
    fit_surrogates,
    json_default,
    load_campaign,
    recommend,
    store,
    study_command,
)
from . import _plots
from ._files import publish_directory, replace_directory, write_atomic
from ._html import render_html
from ._markdown import render_markdown

__all__ = [
    "PreparedReport",
    "prepare_report",
    "publish_report",
    "render_html",
    "render_markdown",
    "replace_directory",
    "write_atomic",
    "write_report",
]


@dataclass(frozen=True)
class PreparedReport:
    """A report computed but not yet written: its directory, its files' contents, its recommendation."""

    url: str
    directory: Path
    files: dict[str, bytes | str]
    recommendation: Recommendation
    data: CampaignData
    options: dict[str, Any]


def write_report(
    url: str, name: str, out: Path | None = None, *, confidence: float = 0.95, confirm_seeds: int = 4
) -> PreparedReport:
    """Fit, recommend and write `reports/<hardware>/<campaign>/`; returns what was written.

    Raises:
        UserError: unknown campaign, no complete trials, bad confidence.
    """
    report = prepare_report(url, name, out, confidence=confidence, confirm_seeds=confirm_seeds)
    publish_report(report)
    return report


def prepare_report(
    url: str, name: str, out: Path | None = None, *, confidence: float = 0.95, confirm_seeds: int = 4
) -> PreparedReport:
    """Everything `write_report` computes (surrogates, recommendation, plots, text); writes nothing."""
    data = load_campaign(url, name)
    fit_surrogates(data)
    rec = recommend(data, confidence=confidence, confirm_seeds=confirm_seeds)
    directory = (out or Path("reports")) / data.hardware.name / data.name
    fronts, importances = _from_optuna(data)
    pngs: dict[str, bytes] = {}
    captions: dict[str, str] = {}
    pngs["pareto.png"] = _plots.pareto(data, rec, fronts)
    captions["Pareto front (the recommendation is the diamond)"] = "pareto.png"
    pngs["importances.png"] = _plots.importances(data, importances)
    captions["Parameter importances"] = "importances.png"
    seed = rec.fresh_seeds[0] if rec.fresh_seeds else 0
    default = rec.default_policy
    for w in data.workloads:
        pngs[f"metrics-vs-n-{w.name}.png"] = _plots.metric_vs_n(data, w, rec)
        captions[f"{w.name}: metrics against N"] = f"metrics-vs-n-{w.name}.png"
        own = rec.workload(w.name)
        lines = {}
        if rec.overall is not None and w.name in rec.served:
            lines[f"recommended N={rec.overall.policy.n_per_cpu}"] = rec.overall.policy
        if own is not None and own.faithful is not None and own.faithful.policy not in lines.values():
            lines[f"{w.name}'s own pick N={own.faithful.policy.n_per_cpu}"] = own.faithful.policy
        if lines and default not in lines.values():
            lines[f"kernel default N={default.n_per_cpu}"] = default
        if lines:
            pngs[f"timeseries-{w.name}.png"] = _plots.time_series(data, w, lines, seed)
            captions[f"{w.name}: pending memory and fallbacks, recommended vs default"] = f"timeseries-{w.name}.png"
    trials = max((len(w.trials) for w in data.workloads), default=0)
    markdown = render_markdown(
        rec, captions, url=url, study_command=study_command(data, [w.name for w in data.workloads], trials)
    )
    files = {
        **pngs,
        "recommendation.json": json.dumps(rec.to_json(), indent=2, default=json_default) + "\n",
        "report.md": markdown,
        "report.html": render_html(markdown, pngs),
    }
    options = {"workload": None, "confidence": confidence, "confirm_seeds": confirm_seeds}
    return PreparedReport(url, directory, files, rec, data, options)


def publish_report(report: PreparedReport) -> Path:
    """Write a prepared report: replace its directory whole, then store its answer; returns the directory."""
    publish_directory(report.files, report.directory)
    store(report.url, report.recommendation, report.data, report.options)
    return report.directory


def _from_optuna(data: CampaignData) -> tuple[dict[str, set[int]], dict[str, dict[str, float]]]:
    """Per workload: the numbers of Optuna's feasible Pareto-optimal trials (`study.best_trials`) and the
    parameter importances of the fallback cost (fANOVA on its logarithm).

    Computed on an in-memory study of the complete trials `load_campaign` read, so they describe
    the same trials as the rest of the report, whatever was told since.
    """
    fronts: dict[str, set[int]] = {}
    importances: dict[str, dict[str, float]] = {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        for w in data.workloads:
            study = optuna.create_study(directions=w.directions)
            study.add_trials(w.optuna_trials)
            stored_number = [t.number for t in w.optuna_trials]  # the copy numbers them 0, 1, ... in this order
            best = study.best_trials if len(study.directions) > 1 else [_best_or_none(study)]
            fronts[w.name] = {stored_number[t.number] for t in best if t is not None}
            importances[w.name] = _importances(study)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return fronts, importances


def _best_or_none(study: optuna.Study):
    try:
        return study.best_trial
    except ValueError:
        return None


def _importances(study: optuna.Study) -> dict[str, float]:
    def log_fallback_cost(t: optuna.trial.FrozenTrial) -> float:
        value = t.user_attrs.get("summary", {}).get("fallback_cost", {}).get("mean", 0.0)
        return math.log(max(value, 0.0) + 1e-3)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(
                optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), target=log_fallback_cost
                )
            )
    except (ValueError, RuntimeError):  # fewer than two complete trials, or no parameter varied
        return {}
