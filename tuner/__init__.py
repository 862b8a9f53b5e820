"""Tuning over the simulation: search space, objectives, studies and campaigns (DESIGN.md §4).

Public surface: build a campaign's search space (`build_search_space`, `parse_fix`), score a run
(`objective_values`, `constraint_values`), run or resume a campaign (`StudyRequest`,
`run_campaign`), join a campaign on a database server as one of many workers (`WorkerRequest`,
`run_worker`), and list what a database holds (`list_studies`). Everything else is private.
"""

from importlib import import_module
from typing import Any

# Names load on first use, so a simulation worker importing `tuner._workers` pays for `sim`
# alone, not for Optuna, SciPy and SQLAlchemy.
_EXPORTS = {
    "._campaign": ("DEFAULT_SETTINGS", "DEFAULT_TRIALS", "QUICK_SETTINGS", "QUICK_TRIALS", "CampaignDefinition",
                   "Settings", "make_seeds", "study_name"),
    "._errors": ("UserError",),
    "._fleet": ("WorkerRequest", "WorkerResult", "run_worker"),
    "._listing": ("CampaignSummary", "StudySummary", "list_studies"),
    "._objective": ("CONSTRAINTS", "OBJECTIVES", "constraint_values", "feasible", "mean_ci", "objective_values"),
    "._progress": ("PlainProgress", "ProgressSink", "RichProgress"),
    "._runner": ("CampaignResult", "StudyRequest", "build_definition", "enqueue_design", "run_campaign",
                 "sweep_stale_trials"),
    "._space": ("PARAM_NAMES", "Param", "SearchSpace", "build_search_space", "kernel_defaults", "parse_fix"),
    "._study": ("raced_best",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
