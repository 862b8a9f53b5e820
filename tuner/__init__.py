"""Tuning over the simulation: search space, objectives, studies and campaigns (DESIGN.md §4).

Public surface: build a campaign's search space (`build_search_space`, `parse_fix`), score a run
(`objective_values`, `constraint_values`), run or resume a campaign (`StudyRequest`,
`run_campaign`), and list what a database holds (`list_studies`). Everything else is private.
"""

from ._campaign import (
    DEFAULT_SETTINGS,
    DEFAULT_TRIALS,
    QUICK_SETTINGS,
    QUICK_TRIALS,
    CampaignDefinition,
    Settings,
    make_seeds,
    study_name,
)
from ._errors import UserError
from ._listing import CampaignSummary, StudySummary, list_studies
from ._objective import CONSTRAINTS, OBJECTIVES, constraint_values, feasible, mean_ci, objective_values
from ._progress import PlainProgress, ProgressSink, RichProgress
from ._runner import (
    CampaignResult,
    StudyRequest,
    build_definition,
    enqueue_design,
    run_campaign,
    sweep_stale_trials,
)
from ._space import PARAM_NAMES, Param, SearchSpace, build_search_space, kernel_defaults, parse_fix
from ._study import raced_best

__all__ = [
    "CONSTRAINTS", "DEFAULT_SETTINGS", "DEFAULT_TRIALS", "OBJECTIVES", "PARAM_NAMES", "QUICK_SETTINGS",
    "QUICK_TRIALS", "CampaignDefinition", "CampaignResult", "CampaignSummary", "Param", "PlainProgress",
    "ProgressSink", "RichProgress", "SearchSpace", "Settings", "StudyRequest", "StudySummary", "UserError",
    "build_definition", "build_search_space", "constraint_values", "enqueue_design", "feasible",
    "kernel_defaults", "list_studies", "make_seeds", "mean_ci", "objective_values", "parse_fix", "raced_best",
    "run_campaign", "study_name", "sweep_stale_trials",
]
