"""A campaign's answer in its database: which campaign answers for a profile, its answer stored after
every refit and read while nothing has changed.

The stored answer carries a key: a digest of the campaign's told trials, the rcutune version and the
options it was computed with. `stored_answer` returns it only while all three match, reading alone
(the database is byte-identical afterwards); `store` replaces what a refit supersedes (the answer
for the same options, the surrogates and recommendation rows of the campaign) instead of adding.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from rcutune import sim, storage

from .._errors import UserError
from ..search._campaign import stored_profile
from ._types import Recommendation, json_default

if TYPE_CHECKING:
    from ._data import CampaignData


ANSWER_RULE_VERSION = 3
"""Bumped whenever the recommendation rule or the surrogates' accuracy check changes what a campaign
answers: a stored answer computed by another rule is stale even if the release number did not move.
2: the R² check judges the variance beyond replication noise (`surrogate.explainable_r2`); 3: each
policy's own replication noise in the intervals (`surrogate.ReplicationNoise`), and the fallback cost
decides by the spread of its means (`surrogate.MetricSurrogate.mean_interval`)."""


def rcutune_version() -> str:
    """The installed rcutune release, the simulator and the answer rule: any of them changing
    invalidates a stored answer."""
    try:
        release = metadata.version("rcutune")
    except metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        release = "unknown"
    return f"{release}+sim{sim.SIMULATOR_VERSION}+rule{ANSWER_RULE_VERSION}"


def options_key(options: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(options), sort_keys=True).encode()).hexdigest()


def trials_digest(engine: sa.Engine, optuna_study_names: list[str]) -> str:
    """A digest of every finished trial of these studies: number, state and when it finished.

    One query on Optuna's tables; any trial told, failed or retried since changes it.
    """
    query = sa.text(
        "SELECT s.study_name, t.number, t.state, t.datetime_complete FROM trials t "
        "JOIN studies s ON s.study_id = t.study_id WHERE s.study_name IN :names "
        "ORDER BY s.study_name, t.number"
    ).bindparams(sa.bindparam("names", expanding=True))
    with engine.connect() as conn:
        rows = conn.execute(query, {"names": list(optuna_study_names)}).all() if optuna_study_names else []
    text = "\n".join(f"{name}|{number}|{state}|{done}" for name, number, state, done in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def campaign_for(url: str, target: sim.HardwareProfile) -> tuple[str, bool]:
    """The campaign to recommend from for a hardware profile, and whether that is an extrapolation.

    The newest campaign studied on exactly this profile; failing that, the one of the same family
    (same profile name) whose CPU count and memory are nearest (see `nearest_profile`).

    Raises:
        UserError: no database, or no campaign of this family.
    """
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study --hardware {target.name} first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            rows = [
                (c.updated_at, c.name, c.hardware_profile)
                for c in storage.list_campaigns(session)
                if c.hardware_name == target.name
            ]
    finally:
        db.close()
    if not rows:
        raise UserError(
            f"no campaign for hardware '{target.name}' in {url}; run rcutune study --hardware {target.name}"
        )
    exact = [r for r in rows if r[2] == sim.profile_text(target)]
    if exact:
        return max(exact)[1], False
    newest = {}
    for updated, name, text in sorted(rows):
        newest[text] = (updated, name)
    family = []
    for text, (_, name) in newest.items():
        try:
            family.append((name, sim.profile_from_text("hardware", text)))
        except sim.ProfileError:
            continue  # a campaign of another simulator version is no neighbour
    if not family:
        raise UserError(
            f"no campaign for hardware '{target.name}' in {url} that this rcutune can read; "
            f"run rcutune study --hardware {target.name}"
        )
    best = min(
        family,
        key=lambda f: (abs(math.log(f[1].cpus / target.cpus)), abs(math.log(f[1].memory_mib / target.memory_mib))),
    )
    return best[0], True


@contextmanager
def campaign_row(url: str, name: str) -> Iterator[tuple[sa.Engine, storage.Campaign]]:
    """The campaign `name` (studies loaded) in an open read session, or a UserError naming those there are."""
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            c = storage.find_campaign(session, name)
            if c is None:
                known = ", ".join(x.name for x in storage.list_campaigns(session)) or "none"
                raise UserError(f"no campaign named '{name}' in {url} (campaigns: {known})")
            yield db.engine, c
    finally:
        db.close()


def campaign_hardware(url: str, name: str | None) -> tuple[str, sim.HardwareProfile]:
    """The campaign `name`, else the newest in the database, with the hardware profile it was studied on.

    Raises:
        UserError: no database, no such campaign, no campaign at all.
    """
    if name is not None:
        with campaign_row(url, name) as (_, c):
            return c.name, stored_profile(c, "hardware", c.hardware_profile)
    if not storage.database_exists(url):
        raise UserError(f"{url} does not exist (run rcutune study first)")
    db = storage.open_database(url, create=False)
    try:
        with db.session() as session:
            campaigns = storage.list_campaigns(session)
            if not campaigns:
                raise UserError(f"no campaign in {url}; run rcutune study --hardware <profile> first")
            newest = max(campaigns, key=lambda c: c.updated_at)
            return newest.name, stored_profile(newest, "hardware", newest.hardware_profile)
    finally:
        db.close()


def stored_answer(url: str, campaign: str, options: Mapping[str, Any]) -> Recommendation | None:
    """The campaign's stored answer for these options if it is current, else None; reads only."""
    db = storage.open_database(url, create=False)
    try:
        if not sa.inspect(db.engine).has_table(storage.AnswerRecord.__tablename__):
            return None  # tables of an older rcutune: nothing stored yet
        with db.session() as session:
            c = storage.find_campaign(session, campaign)
            if c is None:
                return None
            row = session.scalars(
                sa.select(storage.AnswerRecord).where(
                    storage.AnswerRecord.campaign_id == c.id,
                    storage.AnswerRecord.options_sha256 == options_key(options),
                )
            ).one_or_none()
            if row is None or row.rcutune_version != rcutune_version():
                return None
            names = [s.optuna_study_name for s in c.studies]
            document, trials = row.document, row.trials_sha256
        if trials != trials_digest(db.engine, names):
            return None
        return Recommendation.from_json(document)
    finally:
        db.close()


def store(url: str, rec: Recommendation, data: CampaignData, options: Mapping[str, Any]) -> None:
    """Record the answer (replacing the one for the same options), the surrogates with their fitted
    estimators, and the recommended policies (replacing the campaign's earlier ones).

    The answer is keyed by the trials it was computed from (`data.trials_sha256`, read with them).
    Two reports storing at once are serialised by the campaign's row (the second replaces the
    first's rows whole); the deletes are by condition, so rows another one removed first are no error.
    """
    fitted = {w.name: w.surrogates for w in data.workloads}
    db = storage.open_database(url)  # a database of an older rcutune gains the answers table here
    try:
        with db.session() as session:
            campaign = session.scalars(
                sa.select(storage.Campaign).where(storage.Campaign.name == rec.campaign).with_for_update()
            ).one_or_none()
            if campaign is None:
                return
            studies = {
                s.workload_name: s
                for s in session.scalars(
                    sa.select(storage.StudyRecord).where(storage.StudyRecord.campaign_id == campaign.id)
                )
            }
            key = options_key(options)
            session.execute(
                sa.delete(storage.SurrogateRecord).where(
                    storage.SurrogateRecord.study_id.in_([s.id for s in studies.values()])
                )
            )
            session.execute(
                sa.delete(storage.RecommendationRecord).where(storage.RecommendationRecord.campaign_id == campaign.id)
            )
            session.execute(
                sa.delete(storage.AnswerRecord).where(
                    storage.AnswerRecord.campaign_id == campaign.id, storage.AnswerRecord.options_sha256 == key
                )
            )
            for workload, metrics in rec.surrogate.items():
                study = studies.get(workload)
                if study is None:
                    continue
                for metric, a in metrics.items():
                    estimator = getattr(fitted.get(workload, {}).get(metric), "estimator", None)
                    session.add(
                        storage.SurrogateRecord(
                            study_id=study.id,
                            metric=metric,
                            estimator=a.estimator,
                            estimator_params=a.model,
                            n_trials=a.n_trials,
                            cv_r2=a.cv_r2,
                            rank_correlation=a.rank_correlation,
                            interval_coverage=a.coverage,
                            passed=a.healthy,
                            model=None if estimator is None else pickle.dumps(estimator),
                        )
                    )
            figures = {
                w: {m: {"cv_r2": a.cv_r2, "coverage": a.coverage} for m, a in ms.items()}
                for w, ms in rec.surrogate.items()
            }
            rows = [(None, rec.overall, {})] + [
                (w.workload, w.faithful, {"confirmed": w.confirmed}) for w in rec.workloads
            ]
            for workload, choice, extra in rows:
                if choice is None:
                    continue
                session.add(
                    storage.RecommendationRecord(
                        campaign_id=campaign.id,
                        workload_name=workload,
                        policy=_policy_json(choice.policy),
                        kernel_cmdline=choice.kernel_cmdline,
                        confidence=rec.confidence,
                        p_meet_slos=choice.p_meet,
                        source="surrogate",
                        what_if=choice.what_if,
                        extrapolated=rec.extrapolated,
                        details={
                            "surrogate": figures if workload is None else figures.get(workload),
                            "fresh_seeds": list(rec.fresh_seeds),
                            **extra,
                        },
                    )
                )
            digest = data.trials_sha256 or trials_digest(db.engine, [s.optuna_study_name for s in studies.values()])
            session.add(
                storage.AnswerRecord(
                    campaign_id=campaign.id,
                    options=dict(options),
                    options_sha256=key,
                    rcutune_version=rcutune_version(),
                    trials_sha256=digest,
                    document=json.loads(json.dumps(rec.to_json(), default=json_default)),
                )
            )
    finally:
        db.close()


def _policy_json(policy: sim.Policy) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(policy)
