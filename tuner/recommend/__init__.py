"""The recommendation stage: from a campaign's trials to the policy to boot with, and its risk (DESIGN.md §5).

By concern: what a campaign holds (`_data`), the surrogates of its metrics (`_models`), the rule
(`_rule`), the check on fresh seeds (`_confirm`), extrapolation to unstudied hardware
(`_transfer`), the stored answer (`_store`), and the answer as typed objects (`_types`).
`answer` is the one call the CLI makes; reading a stored answer loads none of the model libraries.
"""

from .._lazy import lazy_exports

# Names load on first use: `rcutune recommend` reading a stored answer imports neither
# scikit-learn, SciPy nor Optuna.
_EXPORTS = {
    "._answer": ("Answer", "answer"),
    "._confirm": ("FreshRuns", "fresh_seeds", "minimal_change"),
    "._data": (
        "COMPARED",
        "METRICS",
        "METRIC_NAMES",
        "UNITS",
        "CampaignData",
        "TrialPoint",
        "WorkloadData",
        "load_campaign",
        "reserved_mib",
        "run_metrics",
        "study_command",
    ),
    "._models": ("fit_surrogates", "unattainable", "unhealthy"),
    "._rule": (
        "N_GRID",
        "PRACTICAL_FRACTION",
        "candidate_policies",
        "practical_thresholds",
        "rank",
        "recommend",
        "settle_decisive",
    ),
    "._store": ("campaign_for", "store", "stored_answer", "trials_digest"),
    "._transfer": (
        "EXTRAPOLATION_WIDEN",
        "TransferError",
        "leave_one_profile_out",
        "nearest_profile",
        "transfer",
        "transfer_error",
    ),
    "._types": (
        "CONFIRM_SEEDS",
        "DEFAULT_CONFIDENCE",
        "Choice",
        "Confirmation",
        "Interval",
        "KnobChange",
        "NExplanation",
        "Recommendation",
        "Stat",
        "SurrogateFigures",
        "WorkloadRecommendation",
        "json_default",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
