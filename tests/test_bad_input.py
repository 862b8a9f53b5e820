"""The bad-input catalogue: every case exits 2 with a short message on stderr and leaves stored data alone.

Each case runs through the command line against a database that holds a studied campaign (`vm-2`)
and one with no complete trials (`empty`). Errors in files and values are one line,
`error: <problem>; <mend>`; malformed flags get the CLI library's usual usage error. Afterwards the
database (and its -wal, if any) is byte-identical.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.cli import app
from rcutune.tuner.search import StudyRequest, run_campaign
from tests.support.study import TINY, run_study, url

UNREACHABLE_PG = "postgresql+psycopg://rcutune@127.0.0.1:1/rcutune"


@dataclass(frozen=True)
class Case:
    """One bad command line: `{db}` stands for the database URL, `{dir}` for a folder of bad files."""

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]  # fragments the message must contain (the problem, and the mend where there is one)
    usage: bool = False  # a malformed flag: the CLI library's usage error instead of one line


def study(*args: str) -> tuple[str, ...]:
    return ("study", *TINY, "--workload", "steady", "--trials", "1", "--storage", "{db}", *args)


# -- profile keys out of range, generated from the models' declared bounds ---------------------------
def _bounds(field) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    return lo, hi


def _toml(value: float | int, annotation) -> str:
    return str(int(value)) if annotation is int else repr(float(value))


def _profile_cases() -> list[Case]:
    cases = []
    for kind, model in (("hardware", sim.HardwareProfile), ("workload", sim.WorkloadProfile)):
        for key, field in model.model_fields.items():
            annotation = field.annotation
            lo, hi = _bounds(field)
            bad: list[str] = []
            if annotation in (int, float) and lo is not None and hi is not None:
                step = 1 if annotation is int else max(1.0, abs(hi))
                bad = [
                    _toml(lo - (1 if annotation is int else max(1.0, abs(lo))), annotation),
                    _toml(hi + step, annotation),
                ]
            elif get_origin(annotation) is Literal:
                choices = get_args(annotation)
                bad = ["12345" if isinstance(choices[0], int) else '"no-such-choice"']
            elif annotation is bool:
                bad = ["3"]
            elif key == "name":
                bad = ['""']
            for value in bad:
                cases.append(
                    Case(f"{kind}.{key}={value}", study("--set", f"{kind}.{key}={value}"), (f"{key}=", "allowed"))
                )
    return cases


HARDWARE = sim.list_profiles("hardware")
WORKLOADS = sim.list_profiles("workload")

CASES = [
    # unknown profile names: the message lists the valid ones
    Case("unknown-hardware", ("study", "--hardware", "vm-3", "--storage", "{db}"), ("'vm-3'", *HARDWARE)),
    Case("unknown-workload", study("--workload", "steadyy"), ("'steadyy'", *WORKLOADS)),
    Case("recommend-unknown-hardware", ("recommend", "--hardware", "vm-3", "--storage", "{db}"), ("'vm-3'", *HARDWARE)),
    Case("simulate-unknown-workload", ("simulate", "-H", "vm-2", "-W", "nope"), ("'nope'", *WORKLOADS)),
    Case(
        "missing-profile-file",
        ("study", "--hardware", "{dir}/absent.toml", "--storage", "{db}"),
        ("absent.toml", "cannot read"),
    ),
    # NaN and infinities
    Case("set-nan", study("--set", "hardware.gp_sigma=nan"), ("gp_sigma=nan", "not a finite number", "allowed")),
    Case("set-inf", study("--set", "workload.burst_ms=inf"), ("burst_ms=inf", "not a finite number", "allowed")),
    Case("set-minus-inf", study("--set", "hardware.kfree_call_ns=-inf"), ("kfree_call_ns=-inf", "not a finite number")),
    Case("file-nan", ("study", "--hardware", "{dir}/nan.toml", "--storage", "{db}"), ("nan.toml:4", "gp_sigma=nan")),
    Case(
        "fix-nan", study("--fix", "emergency_reserve_fraction=nan"), ("emergency_reserve_fraction=nan", "finite number")
    ),
    Case(
        "fix-inf", study("--fix", "refill_low_watermark_fraction=inf"), ("refill_low_watermark_fraction=inf", "finite")
    ),
    Case(
        "report-confidence-nan",
        ("report", "vm-2", "--storage", "{db}", "--confidence", "nan"),
        ("--confidence nan", "0.5"),
    ),
    Case(
        "recommend-confidence-inf",
        ("recommend", "-H", "vm-2", "--storage", "{db}", "--confidence", "inf"),
        ("--confidence inf", "0.5"),
    ),
    Case("seconds-nan", study("--seconds", "nan"), ("--seconds",), usage=True),
    # wrong types
    Case("set-string-for-int", study("--set", 'hardware.cpus="two"'), ("cpus='two'", "valid integer", "allowed")),
    Case("set-int-for-bool", study("--set", "hardware.rcu_expedited=3"), ("rcu_expedited=3", "allowed: bool")),
    Case("set-float-for-int", study("--set", "hardware.cpus=2.5"), ("cpus=2.5", "allowed")),
    Case("file-wrong-type", ("study", "--hardware", "{dir}/type.toml", "--storage", "{db}"), ("type.toml:3", "cpus=")),
    Case("file-table", ("study", "--hardware", "{dir}/table.toml", "--storage", "{db}"), ("table.toml", "flat table")),
    Case("fix-word-for-bool", study("--fix", "prealloc_at_boot=maybe"), ("prealloc_at_boot=maybe", "true or false")),
    Case("fix-word-for-int", study("--fix", "n_per_cpu=many"), ("n_per_cpu=many", "whole number")),
    # unknown keys
    Case("set-unknown-hardware-key", study("--set", "hardware.colour=1"), ("hardware.colour", "known keys")),
    Case("set-unknown-workload-key", study("--set", "workload.colour=1"), ("workload.colour", "known keys")),
    Case("set-misspelt-key", study("--set", "hardware.cpu=4"), ("hardware.cpu", "did you mean 'cpus'")),
    Case("set-unknown-section", study("--set", "kernel.hz=100"), ("unknown section 'kernel'", "hardware.<key>")),
    Case("set-without-value", study("--set", "hardware.cpus"), ("expected section.key=value",)),
    Case(
        "file-unknown-key",
        ("study", "--hardware", "{dir}/unknown.toml", "--storage", "{db}"),
        ("unknown.toml:4", "'colour'", "known keys"),
    ),
    # malformed files
    Case(
        "malformed-toml",
        ("study", "--hardware", "{dir}/malformed.toml", "--storage", "{db}"),
        ("malformed.toml", "malformed TOML", "line 1"),
    ),
    Case("binary-profile", ("study", "--hardware", "{dir}/binary.toml", "--storage", "{db}"), ("binary.toml", "UTF-8")),
    # N and the other pinned parameters
    Case("fix-n-negative", study("--fix", "n_per_cpu=-1"), ("n_per_cpu=-1", "0 to 128")),
    Case("fix-n-fraction", study("--fix", "n_per_cpu=2.5"), ("n_per_cpu=2.5", "whole number")),
    Case("fix-n-too-large", study("--fix", "n_per_cpu=500"), ("n_per_cpu=500", "0 to 128")),
    Case(
        "simulate-n-negative",
        ("simulate", "-H", "vm-2", "-W", "steady", "--n-per-cpu", "-1"),
        ("--n-per-cpu",),
        usage=True,
    ),
    Case(
        "simulate-n-fraction",
        ("simulate", "-H", "vm-2", "-W", "steady", "--n-per-cpu", "2.5"),
        ("--n-per-cpu",),
        usage=True,
    ),
    Case("fix-unknown-parameter", study("--fix", "colour=blue"), ("--fix colour", "choose one of", "n_per_cpu")),
    Case("fix-without-value", study("--fix", "layout"), ("expected key=value",)),
    Case("fix-unknown-layout", study("--fix", "layout=ring"), ("layout=ring", "per-cpu, global, hybrid")),
    Case(
        "fix-reserve-fraction-too-large",
        study("--fix", "emergency_reserve_fraction=0.9"),
        ("emergency_reserve_fraction=0.9", "0 to 0.5"),
    ),
    Case("fix-negative-delay", study("--fix", "refill_delay_ms=-5"), ("refill_delay_ms=-5", "0 to 100000")),
    Case(
        "fix-watermark-above-one",
        study("--fix", "refill_low_watermark_fraction=2"),
        ("refill_low_watermark_fraction=2", "0 to 1"),
    ),
    # storage URLs
    Case("unknown-scheme", study("--storage", "foo://bar"), ("foo://bar", "unknown database scheme", "sqlite:///")),
    Case("unknown-scheme-studies", ("studies", "--storage", "nosql://x/y"), ("unknown database scheme 'nosql'",)),
    Case("missing-driver", ("studies", "--storage", "mysql://u@h/d"), ("driver", "not installed")),
    Case("not-a-url", ("studies", "--storage", "just words"), ("not a database URL", "sqlite:///")),
    Case("sqlite-directory-missing", study("--storage", "sqlite:///{dir}/no/such/dir.db"), ("does not exist",)),
    Case(
        "unreachable-postgresql-study",
        study("--storage", UNREACHABLE_PG),
        ("cannot connect to postgresql+psycopg://rcutune@127.0.0.1:1/rcutune", "check the host, port"),
    ),
    Case(
        "unreachable-postgresql-studies",
        ("studies", "--storage", UNREACHABLE_PG),
        ("cannot connect", "server is running"),
    ),
    Case("unreachable-postgresql-report", ("report", "vm-2", "--storage", UNREACHABLE_PG), ("cannot connect",)),
    # campaign names
    Case("study-name-with-slash", study("--study", "a/b"), ("--study 'a/b'", "letters, digits")),
    Case("study-name-with-dots-up", study("--study", "../x"), ("--study '../x'", "letters, digits")),
    Case("study-name-with-space", study("--study", "bad name!"), ("--study 'bad name!'", "letters, digits")),
    Case("study-name-too-long", study("--study", "x" * 101), ("at most 100",)),
    Case(
        "report-unknown-campaign",
        ("report", "nosuch", "--storage", "{db}"),
        ("no campaign named 'nosuch'", "campaigns: vm-2"),
    ),
    Case(
        "recommend-unknown-campaign",
        ("recommend", "-H", "vm-2", "--study", "nosuch", "--storage", "{db}"),
        ("no campaign named 'nosuch'",),
    ),
    Case(
        "recommend-unstudied-hardware",
        ("recommend", "-H", "phone-8", "--storage", "{db}"),
        ("no campaign for hardware 'phone-8'", "run rcutune study --hardware phone-8"),
    ),
    Case(
        "recommend-unstudied-workload",
        ("recommend", "-H", "vm-2", "--study", "vm-2", "--workload", "bursty", "--storage", "{db}"),
        ("workload 'bursty' has no study", "studied: steady"),
    ),
    # resuming with a changed definition
    Case(
        "resume-changed-kernel", study("--kernel", "6.1"), ("campaign 'vm-2'", "kernel version (6.18 -> 6.1)", "--new")
    ),
    Case("resume-changed-hardware", study("--set", "hardware.memory_mib=2048"), ("memory_mib: 1024 -> 2048", "--new")),
    Case("resume-changed-objective", study("--objective", "scalar"), ("objective (multi -> scalar)", "--new")),
    Case("resume-changed-seed", study("--seed", "7"), ("seed list", "--new")),
    # a campaign with nothing to report
    Case(
        "report-no-complete-trials",
        ("report", "empty", "--storage", "{db}", "--out", "{dir}/reports"),
        ("no complete trials", "rcutune study --hardware vm-2 --study empty"),
    ),
    Case(
        "recommend-no-complete-trials",
        ("recommend", "-H", "vm-2", "--study", "empty", "--storage", "{db}"),
        ("no complete trials",),
    ),
    Case(
        "report-out-is-a-file",
        ("report", "vm-2", "--storage", "{db}", "--out", "{dir}/unknown.toml"),
        ("--out", "not a directory"),
    ),
    # counts
    Case("trials-zero", study("--trials", "0"), ("--trials",), usage=True),
    Case("trials-negative", study("--trials", "-3"), ("--trials",), usage=True),
    Case("jobs-zero", study("--jobs", "0"), ("--jobs",), usage=True),
    Case("replications-zero", study("--replications", "0"), ("--replications",), usage=True),
    Case(
        "confirm-seeds-too-many",
        ("report", "vm-2", "--storage", "{db}", "--confirm-seeds", "99"),
        ("--confirm-seeds",),
        usage=True,
    ),
    Case(
        "confidence-out-of-range",
        ("report", "vm-2", "--storage", "{db}", "--confidence", "1.5"),
        ("--confidence 1.5", "at least 0.5 and below 1"),
    ),
    # contradictory flags
    Case("faithful-with-global-layout", study("--faithful", "--fix", "layout=global"), ("contradicts --faithful",)),
    Case(
        "faithful-with-emergency-reserve",
        study("--faithful", "--fix", "emergency_reserve_fraction=0.1"),
        ("contradicts --faithful",),
    ),
    Case(
        "faithful-with-refill-watermark",
        study("--faithful", "--fix", "refill_low_watermark_fraction=0.5"),
        ("contradicts --faithful",),
    ),
    Case(
        "fix-n-on-a-release-without-it",
        study("--kernel", "5.7", "--fix", "n_per_cpu=3", "--new"),
        ("n_per_cpu=3", "not a parameter on this release"),
    ),
    Case("nothing-to-search", study("--kernel", "5.5", "--new"), ("nothing to search on kernel 5.5",)),
    Case(
        "recommend-workload-override-without-workload",
        ("recommend", "-H", "vm-2", "--set", "workload.skew=1", "--storage", "{db}"),
        ("--set workload.* needs --workload",),
    ),
    Case(
        "simulate-reserve-without-hybrid",
        ("simulate", "-H", "vm-2", "-W", "steady", "--shared-reserve-pages", "4"),
        ("shared_reserve_pages", "layout=hybrid"),
    ),
    Case(
        "simulate-watermark-above-n",
        ("simulate", "-H", "vm-2", "-W", "steady", "--n-per-cpu", "0", "--refill-low-watermark", "3"),
        ("refill_low_watermark=3", "n_per_cpu"),
    ),
    Case("unknown-kernel", study("--kernel", "4.19"), ("--kernel",), usage=True),
    *_profile_cases(),
]


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[Path, Path]:
    """A database with a studied campaign `vm-2` and a campaign `empty` with no trials; a folder of bad files."""
    root = tmp_path_factory.mktemp("bad-input")
    db = root / "rcutune.db"
    result = run_study(db, "--trials", "2")
    assert result.exit_code == 0, result.output
    run_campaign(
        StudyRequest(
            hardware="vm-2",
            workloads=("steady",),
            campaign="empty",
            trials=0,
            storage_url=url(db),
            max_seconds=0.3,
            replications=2,
            race_replications=1,
        )
    )
    files = root / "files"
    files.mkdir()
    (files / "malformed.toml").write_text("cpus = = 2\n")
    (files / "unknown.toml").write_text('name = "box"\ncpus = 2\nmemory_mib = 1024\ncolour = "blue"\n')
    (files / "nan.toml").write_text('name = "box"\ncpus = 2\nmemory_mib = 1024\ngp_sigma = nan\n')
    (files / "type.toml").write_text('name = "box"\nmemory_mib = 1024\ncpus = "2"\n')
    (files / "table.toml").write_text("cpus = 2\nmemory_mib = 1024\n[grace_periods]\nmedian_ms = 3\n")
    (files / "binary.toml").write_bytes(b"\xff\xfe\x00cpus = 2\n")
    return db, files


def digest(db: Path) -> tuple[str, str | None]:
    """The database file's hash and its -wal's (None when there is none)."""
    wal = db.with_name(db.name + "-wal")
    return (
        hashlib.sha256(db.read_bytes()).hexdigest(),
        hashlib.sha256(wal.read_bytes()).hexdigest() if wal.exists() else None,
    )


def test_the_catalogue_is_large_and_its_ids_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_a_short_message_and_leaves_the_database_byte_identical(stored, case):
    db, files = stored
    argv = [a.replace("{db}", url(db)).replace("{dir}", str(files)) for a in case.argv]
    before = digest(db)
    result = CliRunner().invoke(app, argv, env={"COLUMNS": "100", "RCUTUNE_STORAGE": url(db)})
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.stdout, err)
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception), err
    if case.usage:
        assert err.startswith("Usage: rcutune"), err
        assert "Invalid value" in err or "Error" in err
    else:
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert result.stdout == ""
        assert len(err) <= 700, "short: the problem and the mend, not a dump"
    for fragment in case.says:
        assert fragment in err, (fragment, err)
    assert digest(db) == before


def test_generated_profile_cases_cover_every_bounded_key():
    named = {c.id.split("=")[0] for c in CASES}
    for kind, model in (("hardware", sim.HardwareProfile), ("workload", sim.WorkloadProfile)):
        for key in model.model_fields:
            if key != "description":
                assert f"{kind}.{key}" in named
