"""The recommendation stage: from a campaign's trials to the policy to boot with, and its risk (DESIGN.md §5).

By concern: what a campaign holds (`_data`), the surrogates of its metrics (`_models`), the rule
(`_rule`), the check on fresh seeds (`_confirm`), extrapolation to unstudied hardware
(`_transfer`), the stored answer (`_store`), and the answer as typed objects (`_types`).
`answer` is the one call the CLI makes.
"""

from ._answer import Answer, answer
from ._confirm import CONFIRM_SEEDS, FreshRuns, fresh_seeds, minimal_change
from ._data import COMPARED, METRIC_NAMES, METRICS, UNITS, CampaignData, TrialPoint, WorkloadData, load_campaign
from ._data import reserved_mib, run_metrics, study_command
from ._models import fit_surrogates, unattainable, unhealthy
from ._rule import (
    DEFAULT_CONFIDENCE,
    N_GRID,
    PRACTICAL_FRACTION,
    candidate_policies,
    practical_thresholds,
    rank,
    recommend,
    settle_decisive,
)
from ._store import stored_answer, store, trials_digest
from ._transfer import (
    EXTRAPOLATION_WIDEN,
    TransferError,
    campaign_for,
    leave_one_profile_out,
    nearest_profile,
    transfer,
    transfer_error,
)
from ._types import (
    Choice,
    Confirmation,
    Interval,
    KnobChange,
    NExplanation,
    Recommendation,
    Stat,
    SurrogateFigures,
    WorkloadRecommendation,
)

__all__ = [
    "COMPARED", "CONFIRM_SEEDS", "DEFAULT_CONFIDENCE", "EXTRAPOLATION_WIDEN", "METRICS", "METRIC_NAMES", "N_GRID",
    "PRACTICAL_FRACTION", "UNITS", "Answer", "CampaignData", "Choice", "Confirmation", "FreshRuns", "Interval",
    "KnobChange", "NExplanation", "Recommendation", "Stat", "SurrogateFigures", "TransferError", "TrialPoint",
    "WorkloadData", "WorkloadRecommendation", "answer", "campaign_for", "candidate_policies", "fit_surrogates",
    "fresh_seeds", "leave_one_profile_out", "load_campaign", "minimal_change", "nearest_profile",
    "practical_thresholds", "rank", "recommend", "reserved_mib", "run_metrics", "settle_decisive", "store",
    "stored_answer", "study_command", "transfer", "transfer_error", "trials_digest", "unattainable", "unhealthy",
]
