"""`answer`: the recommendation for a hardware profile, read from the database when it is current."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rcutune import sim

from .._errors import UserError
from ._store import campaign_for, campaign_hardware, campaign_row, stored_answer
from ._types import CONFIRM_SEEDS, DEFAULT_CONFIDENCE, Recommendation

if TYPE_CHECKING:
    from ._data import CampaignData


@dataclass(frozen=True)
class Answer:
    """A recommendation, the campaign it came from, and whether it was read (not recomputed)."""

    recommendation: Recommendation
    campaign: str
    stored: bool
    data: CampaignData | None = None  # the fitted campaign, when it was recomputed


def answer(
    url: str,
    target: sim.HardwareProfile | None,
    *,
    campaign: str | None = None,
    workload: str | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
    confirm_seeds: int = CONFIRM_SEEDS,
) -> Answer:
    """The recommendation for `target` from the campaign given (default: the newest for its profile).

    Without a target: for the hardware the campaign was studied on (default: the newest campaign).

    While the campaign's stored answer for the same options is current (same told trials, same
    rcutune version) it is read and nothing is written. Otherwise the surrogates are fitted and the
    answer computed and stored, replacing what it supersedes. A profile nobody studied (other
    CPU count or memory, `--set`) is extrapolated from the nearest studied one and never stored.

    Raises:
        UserError: no such campaign or workload, no complete trials, a bad confidence level.
    """
    if not 0.5 <= confidence < 1.0:
        raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
    if target is None:
        campaign, target = campaign_hardware(url, campaign)
    name, extrapolated = (campaign, _differs(url, campaign, target)) if campaign else campaign_for(url, target)
    options = {"workload": workload, "confidence": confidence, "confirm_seeds": confirm_seeds}
    if not extrapolated:
        stored = stored_answer(url, name, options)
        if stored is not None:
            return Answer(stored, name, True)
    # Only a refit needs the models (scikit-learn, SciPy, Optuna): a stored answer is read without them.
    from ._data import load_campaign
    from ._models import fit_surrogates
    from ._rule import recommend
    from ._store import store
    from ._transfer import EXTRAPOLATION_WIDEN, transfer

    data = load_campaign(url, name)
    if workload is not None:
        known = [w.name for w in data.workloads]
        if workload not in known:
            raise UserError(f"workload '{workload}' has no study in campaign '{name}' (studied: {', '.join(known)})")
        data.workloads = [w for w in data.workloads if w.name == workload]
    fit_surrogates(data)
    if extrapolated:
        transfer(data, target)
    rec = recommend(
        data,
        confidence=confidence,
        confirm_seeds=confirm_seeds,
        widen=EXTRAPOLATION_WIDEN if extrapolated else 1.0,
        extrapolated=extrapolated,
    )
    if not extrapolated:
        store(url, rec, data, options)
    return Answer(rec, name, False, data)


def _differs(url: str, name: str, target: sim.HardwareProfile) -> bool:
    """Whether `target` differs from the hardware profile campaign `name` was studied on."""
    with campaign_row(url, name) as (_, c):
        return c.hardware_profile != sim.profile_text(target)
