"""Agreement between rcutune's model and a real Linux 6.1 kernel: calibration of the qemu guests, comparison.

Public surface, used by `rcutune validate kernel` and the tests:

    load_measured(paths, pressure=None) -> Measured         the measured CSVs, one Point per parameter point
    split_points(points) -> (training, held_out)            deterministic, stratified, by point
    calibrate(paths, pressure=None, ...) -> Calibration     fit the qemu guests on the training half; write them
    compare(paths, pressure=None, ...) -> Comparison        simulate the held-out half; agreement figures
    load_calibration(calibration_file) -> Calibrated        the calibrated guests and the points they saw

Everything else in this package is private.
"""

from __future__ import annotations

import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rcutune import sim

from ._agreement import (
    Agreement,
    FigureAgreement,
    NEffect,
    agreement,
    block_lines,
    n_effect_line,
    n_effect_pairs,
    n_effect_table,
    n_effects,
    oom_side,
    point_table,
    spearman,
    summary_lines,
)
from ._data import (
    OOM_SWEEPS,
    Boot,
    DataError,
    Measured,
    Point,
    PointParams,
    csv_files,
    load_measured,
    load_points,
    points_from_boots,
    pressure_siblings,
    read_boots,
)
from ._fit import STAGES, GuestFit, Loss, Stage, calibration_text, fit_guest, profile_text, write_atomic
from ._run import GuestModel, Runner, SimPoint, anon_fraction, point_inputs, profile_name
from ._split import SPLIT_SALT, split_points

VALIDATION_DIR = Path(__file__).resolve().parent.parent
CALIBRATION_FILE = VALIDATION_DIR / "calibration-6.1.toml"
DATA_DIR = VALIDATION_DIR / "data"
PROFILES_DIR = Path(sim.__file__).resolve().parent / "profiles" / "hardware"
DEFAULT_SEEDS = 4  # simulated runs per point when comparing
DEFAULT_OOM_SEEDS = 16  # per pressure point when comparing: its OOM probability is estimated from them
CALIBRATION_SEEDS = 2  # per point in every evaluation of the fit (hundreds of them)
CALIBRATION_OOM_SEEDS = 8

__all__ = [
    "Agreement",
    "Boot",
    "CALIBRATION_FILE",
    "CALIBRATION_OOM_SEEDS",
    "CALIBRATION_SEEDS",
    "Calibrated",
    "Calibration",
    "Comparison",
    "DATA_DIR",
    "DEFAULT_OOM_SEEDS",
    "DEFAULT_SEEDS",
    "DataError",
    "FigureAgreement",
    "GuestFit",
    "GuestModel",
    "Loss",
    "Measured",
    "NEffect",
    "OOM_SWEEPS",
    "Point",
    "PointParams",
    "STAGES",
    "SimPoint",
    "Stage",
    "agreement",
    "anon_fraction",
    "block_lines",
    "calibrate",
    "compare",
    "csv_files",
    "fit_guest",
    "load_calibration",
    "load_measured",
    "load_points",
    "n_effect_line",
    "n_effect_pairs",
    "n_effect_table",
    "n_effects",
    "oom_side",
    "point_inputs",
    "point_table",
    "points_from_boots",
    "pressure_siblings",
    "profile_name",
    "read_boots",
    "report_lines",
    "spearman",
    "split_points",
    "summary_lines",
]


@dataclass(frozen=True)
class Comparison:
    """The result of `compare`: the points compared, their simulated counterparts, the figures."""

    measured: Measured
    points: list[Point]  # the compared ones
    simulated: dict[str, SimPoint]  # the compared points and the other ends of their N-effect groups
    agreement: Agreement
    seconds: float
    n_effects: list[NEffect]
    seeds: int
    oom_seeds: int
    held_out_only: bool


@dataclass(frozen=True)
class Calibration:
    """The result of `calibrate`: one fit per guest and the files written."""

    fits: list[GuestFit]
    written: list[Path]
    seconds: float


@dataclass(frozen=True)
class Calibrated:
    """A calibration file, read: the guest models and the points their fit was trained on."""

    path: Path
    guests: dict[str, GuestModel]
    training_points: frozenset[str]


def load_calibration(calibration_file: Path | str = CALIBRATION_FILE) -> Calibrated:
    """The calibrated guests: hardware profiles plus the memory in use at the test's start.

    A guest's `hardware` is a shipped profile's name, or a profile file relative to the calibration.

    Raises:
        DataError: a missing or malformed calibration file, or a profile it names that cannot be loaded.
    """
    path = Path(calibration_file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(
            f"{path}: cannot read the calibration ({err.strerror}); run `rcutune validate kernel --calibrate ...` first"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{path}: malformed TOML: {err}") from None
    guests = {}
    training: set[str] = set()
    for name, entry in (data.get("guest") or {}).items():
        try:
            hardware = str(entry.get("hardware", name))
            if hardware.endswith(".toml"):
                hardware = str(path.parent / hardware)
            guests[name] = GuestModel(sim.load_hardware(hardware), float(entry["boot_extra_mib"]))
            training.update(str(pid) for pid in entry["training_points"])
        except (sim.ProfileError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: guest {name}: {err}") from None
    if not guests:
        raise DataError(f"{path}: no [guest.<profile>] tables")
    return Calibrated(path, guests, frozenset(training))


def _check(points: list[Point], calibrated: Calibrated, held_out_only: bool) -> None:
    """Every point has a calibrated guest; a held-out point was never seen by the fit."""
    missing = sorted({profile_name(p.params.accelerator, p.params.guest_cpus) for p in points} - set(calibrated.guests))
    if missing:
        raise DataError(
            f"{calibrated.path}: no calibrated guest for {', '.join(missing)}; calibrate on data that has such guests"
        )
    seen = sorted(p.point_id for p in points if p.point_id in calibrated.training_points)
    if held_out_only and seen:
        raise DataError(
            f"{calibrated.path}: {len(seen)} held-out point(s) were in the calibration's training "
            f"half (first: {seen[0]}); the data changed since the fit: rerun --calibrate"
        )


def compare(
    paths: list[Path | str],
    pressure: list[Path | str] | None = None,
    *,
    held_out_only: bool = True,
    seeds: int = DEFAULT_SEEDS,
    oom_seeds: int = DEFAULT_OOM_SEEDS,
    jobs: int = 1,
    calibration_file: Path | str = CALIBRATION_FILE,
) -> Comparison:
    """Simulate every held-out point (kernel 6.1, same parameters) and compare with the measured medians.

    Args:
        paths: measured CSVs or directories of them.
        pressure: CSVs whose points form the OOM block (besides sweeps named "pressure").
        held_out_only: compare only the held-out half (the training half was used by the fit).
        seeds, oom_seeds: simulated runs per point, per pressure point (seeds 0, 1, ...).
        jobs: worker processes.
        calibration_file: the calibration to use (see `load_calibration`).

    Raises:
        DataError: unreadable data or calibration, a guest without a calibration, or (held-out
            only) a point the calibration was trained on.
    """
    t0 = time.monotonic()
    measured = load_measured(list(paths), pressure)
    held_out = split_points(measured.points)[1]
    points = held_out if held_out_only else measured.points
    calibrated = load_calibration(calibration_file)
    _check(points, calibrated, held_out_only)
    # The N effect needs both ends of a group: simulate the end the comparison does not (such a
    # group is marked "training" and does not count in the N-effect line).
    pairs = n_effect_pairs(measured.points)
    compared = {p.point_id for p in points}
    extra = [p for pair in pairs for p in pair if p.point_id not in compared]
    _check(extra, calibrated, held_out_only=False)
    with Runner(jobs) as runner:
        simulated = runner.simulate(points + extra, calibrated.guests, seeds=seeds, oom_seeds=oom_seeds)
    effects = n_effects(pairs, simulated, {p.point_id for p in held_out})
    return Comparison(
        measured,
        points,
        simulated,
        agreement(points, simulated),
        time.monotonic() - t0,
        effects,
        seeds,
        oom_seeds,
        held_out_only,
    )


def report_lines(result: Comparison) -> list[str]:
    """What `rcutune validate kernel --compare` prints: the blocks found, per-point table, the figures
    overall and per block, the N effect per group, the N-effect line, and last the agreement line."""
    lines = [f"block found with the CSVs given: {_relative(found)}" for found in result.measured.found_pressure]
    half = "held-out half" if result.held_out_only else "all points"
    lines.append(
        f"{half}: {len(result.points)} points, {result.agreement.rows} boots; kernel 6.1; "
        f"{result.seeds} runs per point, {result.oom_seeds} per OOM-block point"
    )
    lines += point_table(result.points, result.simulated)
    lines += block_lines(result.points, result.simulated)
    lines += summary_lines(result.agreement)
    lines += n_effect_table(result.n_effects)
    lines.append(n_effect_line(result.n_effects))
    lines.append(result.agreement.last_line())
    return lines


def calibrate(
    paths: list[Path | str],
    pressure: list[Path | str] | None = None,
    *,
    seeds: int = CALIBRATION_SEEDS,
    oom_seeds: int = CALIBRATION_OOM_SEEDS,
    jobs: int = 1,
    start_profile: str = "vm-2",
    profiles_dir: Path | str = PROFILES_DIR,
    calibration_file: Path | str = CALIBRATION_FILE,
    command: str = "rcutune validate kernel --calibrate ...",
    write: bool = True,
    stages: tuple[Stage, ...] = STAGES,
    progress: Callable[[str], None] = lambda s: None,
) -> Calibration:
    """Fit every guest found in the data on the training half only, and write its profile.

    Args:
        paths, pressure: as for `compare`.
        seeds, oom_seeds: simulated runs per training point, per pressure point, in every evaluation.
        jobs: worker processes.
        start_profile: the shipped profile whose values start the parameters no data moment gives.
        profiles_dir: where `qemu-<accel>-<cpus>.toml` go.
        calibration_file: where the guests' memory at start and the fit's record go.
        command: the command line, recorded in the files written.
        write: False to fit without writing anything.
        stages: the search (see `validation.compare._fit.STAGES`); shorter ones for tests.
        progress: called with one line per improvement of the objective.
    """
    t0 = time.monotonic()
    measured = load_measured(list(paths), pressure)
    training, _ = split_points(measured.points)
    start = sim.load_hardware(start_profile)
    guests = sorted({(p.params.accelerator, p.params.guest_cpus) for p in training})
    fits = []
    with Runner(jobs) as runner:
        for accelerator, cpus in guests:
            fits.append(
                fit_guest(
                    training,
                    accelerator,
                    cpus,
                    runner,
                    seeds=seeds,
                    oom_seeds=oom_seeds,
                    start=start,
                    stages=stages,
                    progress=progress,
                )
            )
    written: list[Path] = []
    if write:
        sources = [_relative(f) for f in measured.sources]
        cal = Path(calibration_file)
        hardware = {}
        for fit in fits:
            path = Path(profiles_dir) / f"{fit.name}.toml"
            write_atomic(path, profile_text(fit, command, sources))
            written.append(path)
            shipped = path.resolve().parent == PROFILES_DIR
            hardware[fit.name] = fit.name if shipped else os.path.relpath(path.resolve(), cal.resolve().parent)
        write_atomic(cal, calibration_text(fits, hardware, command, sources, SPLIT_SALT, seeds, oom_seeds))
        written.append(cal)
    return Calibration(fits, written, time.monotonic() - t0)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(VALIDATION_DIR.parent))
    except ValueError:
        return str(path)
