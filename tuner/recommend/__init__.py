"""The recommendation stage: from a campaign's trials to the policy to boot with, and its risk (DESIGN.md §5).

By concern: what a campaign holds (`_data`), the surrogates of its metrics (`_models`), the rule
(`_rule`), the check on fresh seeds (`_confirm`), extrapolation to unstudied hardware
(`_transfer`), the stored answer (`_store`), and the answer as typed objects (`_types`).
`answer` is the one call the CLI makes; reading a stored answer loads none of the model libraries.
"""

from importlib import import_module
from typing import Any

# Names load on first use: `rcutune recommend` reading a stored answer imports neither
# scikit-learn, SciPy nor Optuna.
_EXPORTS = {
    "._answer": ("Answer", "answer"),
    "._confirm": ("FreshRuns", "fresh_seeds", "minimal_change"),
    "._data": ("COMPARED", "METRICS", "METRIC_NAMES", "UNITS", "CampaignData", "TrialPoint", "WorkloadData",
               "load_campaign", "reserved_mib", "run_metrics", "study_command"),
    "._models": ("fit_surrogates", "unattainable", "unhealthy"),
    "._rule": ("N_GRID", "PRACTICAL_FRACTION", "candidate_policies", "practical_thresholds", "rank", "recommend",
               "settle_decisive"),
    "._store": ("campaign_for", "store", "stored_answer", "trials_digest"),
    "._transfer": ("EXTRAPOLATION_WIDEN", "TransferError", "leave_one_profile_out", "nearest_profile", "transfer",
                   "transfer_error"),
    "._types": ("CONFIRM_SEEDS", "DEFAULT_CONFIDENCE", "Choice", "Confirmation", "Interval", "KnobChange",
                "NExplanation", "Recommendation", "Stat", "SurrogateFigures", "WorkloadRecommendation"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
