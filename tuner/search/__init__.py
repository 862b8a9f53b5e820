"""The search stage: campaigns of Optuna studies over the simulation (DESIGN.md §4).

Public surface: the search space (`build_search_space`, `parse_fix`), what a run scores
(`objective_values`, `constraint_values`), running or resuming a campaign in this process
(`StudyRequest`, `run_campaign`) or as one of many workers on a database server (`WorkerRequest`,
`run_worker`), and what a database holds (`list_studies`). One trial protocol (`_protocol`) serves
both executors.
"""

from .._lazy import lazy_exports

# Names load on first use, so a simulation worker process importing `_pool` pays for `sim` alone,
# not for Optuna, SciPy and SQLAlchemy.
_EXPORTS = {
    "._campaign": (
        "DEFAULT_SETTINGS",
        "DEFAULT_TRIALS",
        "QUICK_SETTINGS",
        "QUICK_TRIALS",
        "CampaignDefinition",
        "Settings",
        "make_seeds",
        "stored_definition",
        "stored_profile",
        "study_name",
    ),
    "._listing": ("CampaignSummary", "StudySummary", "list_studies"),
    "._objective": (
        "CONSTRAINTS",
        "OBJECTIVES",
        "PENDING_PEAK_COST_MS",
        "MIB_PER_GIB_COST_MS",
        "constraint_values",
        "feasible",
        "mean_ci",
        "objective_values",
        "replication_table",
    ),
    "._pool": ("SimResult", "SimTask", "SimulationPool"),
    "._progress": ("PlainProgress", "ProgressSink", "RichProgress"),
    "._protocol": (
        "SAMPLERS",
        "Planned",
        "TrialRun",
        "plan_batch",
        "raced_best",
        "store_constraints",
        "trial_protocol",
    ),
    "._space": ("PARAM_NAMES", "Param", "SearchSpace", "build_search_space", "kernel_defaults", "parse_fix"),
    "._study": ("CampaignResult", "StudyRequest", "TrialOutcome", "build_definition", "run_campaign"),
    "._worker": ("WorkerRequest", "WorkerResult", "run_worker"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
