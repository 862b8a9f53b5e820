"""rcutune's own tables (SQLAlchemy 2.0 ORM), beside Optuna's in the same database.

A campaign is what one `rcutune study --hardware H` defines: the hardware profile's exact text,
the kernel release, the simulator version, the search space, the objective, the seed list and the
fidelity settings. Each of its studies adds one workload profile's exact text and names the Optuna
study that holds its trials. Surrogates and recommendations are filled by later stages.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 2
"""Bumped whenever a table or column changes; a database with a newer version is refused.

2: `rcutune_answers` (version 1 databases are upgraded in place by the next command that writes).
"""


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """One row: the version of rcutune's tables in this database."""

    __tablename__ = "rcutune_schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    """The studies of one `rcutune study --hardware H` run, and everything that defines them."""

    __tablename__ = "rcutune_campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    hardware_name: Mapped[str] = mapped_column(String(64))
    hardware_profile: Mapped[str] = mapped_column(Text)  # sim.profile_text(): the exact contents used
    hardware_sha256: Mapped[str] = mapped_column(String(64))
    kernel: Mapped[str] = mapped_column(String(16))
    simulator_version: Mapped[str] = mapped_column(String(32))
    search_space: Mapped[dict] = mapped_column(JSON)
    search_space_sha256: Mapped[str] = mapped_column(String(64))
    objective: Mapped[str] = mapped_column(String(16))  # "multi" or "scalar"
    seeds: Mapped[list] = mapped_column(JSON)  # the replication seeds, base then racing
    settings: Mapped[dict] = mapped_column(JSON)  # fidelity, replications, racing, pruning
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    owner: Mapped[str | None] = mapped_column(String(256), default=None)  # "host:pid" while a run holds it
    owner_heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    studies: Mapped[list[StudyRecord]] = relationship(
        back_populates="campaign", order_by="StudyRecord.id", cascade="all, delete-orphan"
    )
    recommendations: Mapped[list[RecommendationRecord]] = relationship(
        back_populates="campaign", cascade="all, delete-orphan"
    )
    answers: Mapped[list[AnswerRecord]] = relationship(back_populates="campaign", cascade="all, delete-orphan")


class StudyRecord(Base):
    """One (hardware, workload) study of a campaign; its trials live in Optuna's tables."""

    __tablename__ = "rcutune_studies"
    __table_args__ = (UniqueConstraint("campaign_id", "workload_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("rcutune_campaigns.id"))
    workload_name: Mapped[str] = mapped_column(String(64))
    workload_profile: Mapped[str] = mapped_column(Text)
    workload_sha256: Mapped[str] = mapped_column(String(64))
    optuna_study_name: Mapped[str] = mapped_column(String(512), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="studies")
    surrogates: Mapped[list[SurrogateRecord]] = relationship(back_populates="study", cascade="all, delete-orphan")


class SurrogateRecord(Base):
    """A fitted surrogate of one metric of one study, with its measured accuracy (DESIGN §5)."""

    __tablename__ = "rcutune_surrogates"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("rcutune_studies.id"))
    metric: Mapped[str] = mapped_column(String(64))
    estimator: Mapped[str] = mapped_column(String(128))
    estimator_params: Mapped[dict] = mapped_column(JSON, default=dict)
    n_trials: Mapped[int] = mapped_column(Integer)
    cv_r2: Mapped[float | None] = mapped_column(default=None)
    rank_correlation: Mapped[float | None] = mapped_column(default=None)
    interval_coverage: Mapped[float | None] = mapped_column(default=None)
    passed: Mapped[bool] = mapped_column(default=False)
    model: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[StudyRecord] = relationship(back_populates="surrogates")


class RecommendationRecord(Base):
    """A recommended policy for one workload (or, with no workload, the whole hardware profile)."""

    __tablename__ = "rcutune_recommendations"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("rcutune_campaigns.id"))
    workload_name: Mapped[str | None] = mapped_column(String(64), default=None)
    policy: Mapped[dict] = mapped_column(JSON)
    kernel_cmdline: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column()
    p_meet_slos: Mapped[float | None] = mapped_column(default=None)
    source: Mapped[str] = mapped_column(String(32))  # "replicated" or "surrogate"
    what_if: Mapped[bool] = mapped_column(default=False)
    extrapolated: Mapped[bool] = mapped_column(default=False)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="recommendations")


class AnswerRecord(Base):
    """The whole recommendation last computed for a campaign with some options, and what it was computed from.

    `recommend` reads it instead of refitting while `trials_sha256` (the campaign's told trials) and
    `rcutune_version` still match; a refit replaces it.
    """

    __tablename__ = "rcutune_answers"
    __table_args__ = (UniqueConstraint("campaign_id", "options_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("rcutune_campaigns.id"))
    options: Mapped[dict] = mapped_column(JSON)
    options_sha256: Mapped[str] = mapped_column(String(64))
    trials_sha256: Mapped[str] = mapped_column(String(64))
    rcutune_version: Mapped[str] = mapped_column(String(64))
    document: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    campaign: Mapped[Campaign] = relationship(back_populates="answers")
