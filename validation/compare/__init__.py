"""Agreement between rcutune's model and a real Linux 6.1 kernel (issue 7, the agreement half).

Public surface, used by `rcutune validate kernel` and the tests:

    load_points(paths, pressure=None) -> list[Point]        the measured CSVs, one Point per parameter point
    split_points(points) -> (training, held_out)            deterministic, stratified, by point
    calibrate(paths, pressure=None, ...) -> Calibration     fit the qemu guests on the training half; write them
    compare(paths, pressure=None, ...) -> Comparison        simulate the held-out half; agreement figures
    load_guests(calibration_file) -> {profile: GuestModel}  the calibrated guests

Everything else in this package is private.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sim

from ._agreement import Agreement, FigureAgreement, agreement, oom_side, point_table, spearman, summary_lines
from ._data import Boot, DataError, Point, PointParams, csv_files, load_points, points_from_boots, read_boots
from ._fit import GuestFit, Loss, calibration_text, fit_guest, profile_text, write_atomic
from ._run import GuestModel, Runner, SimPoint, anon_fraction, point_inputs, profile_name
from ._split import SPLIT_SALT, split_points

VALIDATION_DIR = Path(__file__).resolve().parent.parent
CALIBRATION_FILE = VALIDATION_DIR / "calibration-6.1.toml"
DATA_DIR = VALIDATION_DIR / "data"
PROFILES_DIR = Path(sim.__file__).resolve().parent / "profiles" / "hardware"
DEFAULT_SEEDS = 4
DEFAULT_OOM_SEEDS = 16

__all__ = [
    "Agreement", "Boot", "CALIBRATION_FILE", "Calibration", "Comparison", "DATA_DIR", "DEFAULT_OOM_SEEDS",
    "DEFAULT_SEEDS", "DataError", "FigureAgreement", "GuestFit", "GuestModel", "Loss", "Point", "PointParams",
    "SimPoint", "agreement", "anon_fraction", "calibrate", "compare", "csv_files", "load_guests", "load_points",
    "oom_side", "point_inputs", "point_table", "points_from_boots", "profile_name", "read_boots", "spearman",
    "split_points", "summary_lines",
]


@dataclass(frozen=True)
class Comparison:
    """The result of `compare`: the points compared, their simulated counterparts, the figures."""

    points: list[Point]
    simulated: dict[str, SimPoint]
    agreement: Agreement
    seconds: float


@dataclass(frozen=True)
class Calibration:
    """The result of `calibrate`: one fit per guest and the files written."""

    fits: list[GuestFit]
    written: list[Path]
    seconds: float


def load_guests(calibration_file: Path | str = CALIBRATION_FILE) -> dict[str, GuestModel]:
    """The calibrated guest models: hardware profiles by name plus the memory in use at the test's start.

    Raises:
        DataError: a missing or malformed calibration file, or a profile it names that cannot be loaded.
    """
    path = Path(calibration_file)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"{path}: cannot read the calibration ({err.strerror}); run "
                        "`rcutune validate kernel --calibrate ...` first") from None
    except tomllib.TOMLDecodeError as err:
        raise DataError(f"{path}: malformed TOML: {err}") from None
    guests = {}
    for name, entry in (data.get("guest") or {}).items():
        try:
            hardware = sim.load_hardware(entry.get("hardware", name))
            guests[name] = GuestModel(hardware, float(entry["boot_extra_mib"]))
        except (sim.ProfileError, KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: guest {name}: {err}") from None
    if not guests:
        raise DataError(f"{path}: no [guest.<profile>] tables")
    return guests


def _check_guests(points: list[Point], guests: dict[str, GuestModel], calibration_file: Path | str) -> None:
    missing = sorted({profile_name(p.params.accelerator, p.params.guest_cpus) for p in points} - set(guests))
    if missing:
        raise DataError(f"{calibration_file}: no calibrated guest for {', '.join(missing)}; "
                        "calibrate on data that has such guests")


def compare(paths: list[Path | str], pressure: list[Path | str] | None = None, *, held_out_only: bool = True,
            seeds: int = DEFAULT_SEEDS, oom_seeds: int = DEFAULT_OOM_SEEDS, jobs: int = 1,
            calibration_file: Path | str = CALIBRATION_FILE) -> Comparison:
    """Simulate every held-out point (kernel 6.1, same parameters) and compare with the measured medians.

    Args:
        paths: measured CSVs or directories of them.
        pressure: CSVs whose points form the OOM block (besides sweeps named "pressure").
        held_out_only: compare only the held-out half (the training half was used by the fit).
        seeds, oom_seeds: simulated runs per point, per pressure point (seeds 0, 1, ...).
        jobs: worker processes.
        calibration_file: the calibration to use (see `load_guests`).
    """
    t0 = time.monotonic()
    points = load_points(list(paths), pressure)
    if held_out_only:
        points = split_points(points)[1]
    guests = load_guests(calibration_file)
    _check_guests(points, guests, calibration_file)
    with Runner(jobs) as runner:
        simulated = runner.simulate(points, guests, seeds=seeds, oom_seeds=oom_seeds)
    return Comparison(points, simulated, agreement(points, simulated), time.monotonic() - t0)


def calibrate(paths: list[Path | str], pressure: list[Path | str] | None = None, *, seeds: int = 2,
              oom_seeds: int = 8, jobs: int = 1, start_profile: str = "vm-2",
              profiles_dir: Path | str = PROFILES_DIR, calibration_file: Path | str = CALIBRATION_FILE,
              command: str = "rcutune validate kernel --calibrate ...", write: bool = True,
              progress: Callable[[str], None] = lambda s: None) -> Calibration:
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
        progress: called with one line per improvement of the objective.
    """
    t0 = time.monotonic()
    files = csv_files(list(paths)) + (csv_files(list(pressure)) if pressure else [])
    points = load_points(list(paths), pressure)
    training, _ = split_points(points)
    start = sim.load_hardware(start_profile)
    guests = sorted({(p.params.accelerator, p.params.guest_cpus) for p in training})
    fits = []
    with Runner(jobs) as runner:
        for accelerator, cpus in guests:
            fits.append(fit_guest(training, accelerator, cpus, runner, seeds=seeds, oom_seeds=oom_seeds,
                                  start=start, progress=progress))
    written: list[Path] = []
    if write:
        sources = [_relative(f) for f in dict.fromkeys(files)]
        for fit in fits:
            path = Path(profiles_dir) / f"{fit.name}.toml"
            write_atomic(path, profile_text(fit, command, sources))
            written.append(path)
        cal = Path(calibration_file)
        write_atomic(cal, calibration_text(fits, command, sources, SPLIT_SALT, seeds, oom_seeds))
        written.append(cal)
    return Calibration(fits, written, time.monotonic() - t0)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(VALIDATION_DIR.parent))
    except ValueError:
        return str(path)
