"""What defines a campaign, and the check that refuses to resume one whose definition changed."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rcutune import sim, storage

from .._errors import UserError
from ._space import SearchSpace, build_search_space

OBJECTIVE_KINDS = ("multi", "scalar")


@dataclass(frozen=True)
class Settings:
    """Fidelity, replication, racing and pruning settings; part of a campaign's definition.

    Attributes:
        max_seconds: high-fidelity simulated seconds per replication (at most the workload's duration).
        low_fidelity_fraction: the low fidelity simulates this fraction of it, on the first seed.
        replications: base seeds every trial runs (common random numbers: the same for every trial).
        race_replications: extra seeds a contender runs before it can be called best.
        race_top_k: a trial races when its base scalar value ranks among this many complete feasible trials.
        prune_ratio: at low fidelity, a trial is hopeless when an earlier feasible one beats it by this factor.
        prune_slack: ...plus this much (fallback-cost units, ms/s), so noise near zero prunes nothing.
        batch_size: trials planned together; a batch is planned from the trials of earlier batches
            only, so the stored trials do not depend on how many processes run them.
    """

    max_seconds: float = 2.0
    low_fidelity_fraction: float = 0.2
    replications: int = 3
    race_replications: int = 3
    race_top_k: int = 3
    prune_ratio: float = 2.0
    prune_slack: float = 0.05
    batch_size: int = 4

    def seconds_for(self, workload: sim.WorkloadProfile) -> float:
        """Simulated seconds of one high-fidelity replication of this workload."""
        return float(min(workload.duration_s, self.max_seconds))

    def low_seconds_for(self, workload: sim.WorkloadProfile) -> float:
        return self.seconds_for(workload) * self.low_fidelity_fraction

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_SETTINGS = Settings()
QUICK_SETTINGS = Settings(
    max_seconds=1.0, low_fidelity_fraction=0.25, replications=2, race_replications=2, race_top_k=2
)
DEFAULT_TRIALS = 30
QUICK_TRIALS = 48  # ten design points and 38 searched: enough for accurate surrogates on every shipped profile


def make_seeds(base_seed: int, count: int) -> tuple[int, ...]:
    """The replication seeds of a campaign: derived from `base_seed`, never from a trial number."""
    return tuple(int(s) for s in np.random.SeedSequence(base_seed).generate_state(count))


@dataclass(frozen=True)
class CampaignDefinition:
    """Everything whose change makes stored trials incomparable with new ones."""

    hardware: sim.HardwareProfile
    workloads: tuple[sim.WorkloadProfile, ...]
    kernel: str
    space: SearchSpace
    objective: str
    seeds: tuple[int, ...]
    settings: Settings
    simulator_version: str = sim.SIMULATOR_VERSION

    @property
    def base_seeds(self) -> tuple[int, ...]:
        return self.seeds[: self.settings.replications]

    def hardware_text(self) -> str:
        return sim.profile_text(self.hardware)

    def new_campaign(self, name: str) -> storage.Campaign:
        """The campaign row for this definition (its studies are added separately)."""
        text = self.hardware_text()
        return storage.Campaign(
            name=name,
            hardware_name=self.hardware.name,
            hardware_profile=text,
            hardware_sha256=_sha(text),
            kernel=self.kernel,
            simulator_version=self.simulator_version,
            search_space=self.space.to_json(),
            search_space_sha256=self.space.sha256(),
            objective=self.objective,
            seeds=list(self.seeds),
            settings=self.settings.as_dict(),
        )

    def new_study(self, campaign_name: str, workload: sim.WorkloadProfile) -> storage.StudyRecord:
        text = sim.profile_text(workload)
        return storage.StudyRecord(
            workload_name=workload.name,
            workload_profile=text,
            workload_sha256=_sha(text),
            optuna_study_name=study_name(campaign_name, workload.name),
        )

    def difference(self, campaign: storage.Campaign) -> str | None:
        """What differs between this definition and a stored campaign, in a few words; None if nothing."""
        text = self.hardware_text()
        if campaign.hardware_profile != text:
            return f"hardware profile {campaign.hardware_name} ({_first_change(campaign.hardware_profile, text)})"
        if campaign.kernel != self.kernel:
            return f"kernel version ({campaign.kernel} -> {self.kernel})"
        if campaign.simulator_version != self.simulator_version:
            return f"simulator version ({campaign.simulator_version} -> {self.simulator_version})"
        if campaign.search_space_sha256 != self.space.sha256():
            return f"search space ({_first_json_change(campaign.search_space, self.space.to_json())})"
        if campaign.objective != self.objective:
            return f"objective ({campaign.objective} -> {self.objective})"
        if list(campaign.seeds) != list(self.seeds):
            return "seed list (--seed or replications)"
        if campaign.settings != self.settings.as_dict():
            return f"settings ({_first_json_change(campaign.settings, self.settings.as_dict())})"
        stored = {s.workload_name: s for s in campaign.studies}
        for workload in self.workloads:
            record = stored.get(workload.name)
            if record is not None and record.workload_profile != sim.profile_text(workload):
                change = _first_change(record.workload_profile, sim.profile_text(workload))
                return f"workload profile {workload.name} ({change})"
        return None


def stored_profile(campaign: storage.Campaign, kind: str, text: str) -> sim.HardwareProfile | sim.WorkloadProfile:
    """A profile a campaign stored, or a UserError saying the campaign is from another simulator version."""
    try:
        return sim.profile_from_text(kind, text)
    except sim.ProfileError:
        raise UserError(
            f"campaign '{campaign.name}' was made by simulator {campaign.simulator_version} (this rcutune "
            f"has {sim.SIMULATOR_VERSION}) and its {kind} profile no longer loads; study it again with "
            "--new, or use the rcutune that made it"
        ) from None


def stored_definition(campaign: storage.Campaign) -> CampaignDefinition:
    """The definition a stored campaign was created with, rebuilt from its stored text.

    Raises:
        UserError: the campaign was stored by another simulator version, or its profiles or search
            space no longer load the same (another rcutune release).
    """
    if campaign.simulator_version != sim.SIMULATOR_VERSION:
        raise UserError(
            f"campaign '{campaign.name}' was created with simulator {campaign.simulator_version}, this "
            f"rcutune has {sim.SIMULATOR_VERSION}; run it with the rcutune version that created it"
        )
    hardware = stored_profile(campaign, "hardware", campaign.hardware_profile)
    workloads = tuple(stored_profile(campaign, "workload", s.workload_profile) for s in campaign.studies)
    stored = campaign.search_space
    space = build_search_space(
        campaign.kernel, int(stored["cpus"]), fixed=dict(stored["fixed"]), faithful=bool(stored["faithful"])
    )
    definition = CampaignDefinition(
        hardware=hardware,
        workloads=workloads,
        kernel=campaign.kernel,
        space=space,
        objective=campaign.objective,
        seeds=tuple(int(s) for s in campaign.seeds),
        settings=Settings(**campaign.settings),
    )
    change = definition.difference(campaign)
    if change is not None:
        raise UserError(
            f"campaign '{campaign.name}' cannot be rebuilt by this rcutune (different {change}); "
            "run it with the rcutune version that created it"
        )
    return definition


def study_name(campaign_name: str, workload_name: str) -> str:
    """The Optuna study name: the campaign name first, so studies list grouped by campaign."""
    return f"{campaign_name}/{workload_name}"


def check_resumable(definition: CampaignDefinition, campaign: storage.Campaign) -> None:
    """Refuse (UserError, one line) to resume a campaign whose definition changed."""
    change = definition.difference(campaign)
    if change is not None:
        raise UserError(
            f"campaign '{campaign.name}' was stored with a different {change}; run it with its "
            f"stored definition, or pass --new to start a fresh campaign"
        )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _first_change(old: str, new: str) -> str:
    a, b = _lines(old), _lines(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key, 'unset')} -> {b.get(key, 'unset')}"
    return "contents differ"


def _first_json_change(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                return _first_json_change(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            if a != b:
                label = a.get("name", i) if isinstance(a, Mapping) else i
                return _first_json_change(a, b, f"{path}[{label}]")
    return f"{path or 'value'}: {json.dumps(old, sort_keys=True)} -> {json.dumps(new, sort_keys=True)}"
