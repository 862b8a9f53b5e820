"""The measured CSVs as the comparison sees them: boots, grouped into parameter points.

Reads only the columns the harness documents (validation/README.md, "CSV columns"); a file that
lacks one of them, or holds a value that does not parse, raises `DataError` naming the file, the
line and the column.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..kernel.harness import PARAM_FIELDS

# The columns the comparison reads; PARAM_FIELDS (the boot's integer knobs) as the harness writes them.
REQUIRED_COLUMNS = (
    "point_id",
    "rep",
    *PARAM_FIELDS,
    "mode",
    "status",
    "total_time_ns",
    "batches",
    "footprint_mb",
    "guest_mem_available_kib",
    "guest_mem_total_kib",
    "accelerator",
    "sweep",
)
PRESSURE_SWEEP = "pressure"
"""Points of a sweep with this name (or of a file given with --pressure) make up the OOM block."""
OOM_SWEEPS = (PRESSURE_SWEEP, "oom")
"""Sweeps whose points are judged by their OOM fraction (the pressure block and the OOM boundary)."""
SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
OPTIONAL_COLUMNS = {
    "config_variant": "base",
    "preempt_model": "none",
    "rcu_nocbs": "",
    "nocb_offloaded_cpus": "",
    "host_load1": "",
    "host_cores": "",
}
"""Columns the harness added later (or that a hand-made file may lack); files without them read with these values."""
MIN_QUIET_BOOTS = 3
"""A point's figures are those of its boots on a quiet host when it has at least this many."""


class DataError(ValueError):
    """A measured CSV that cannot be used; the message is one line naming file, line and column."""


@dataclass(frozen=True)
class PointParams:
    """What a boot was asked to do: the guest and the rcuscale/rcutree parameters."""

    guest_cpus: int
    guest_mem_mib: int
    rcu_min_cached_objs: int
    rcu_delay_page_cache_fill_msec: int
    kfree_nthreads: int
    kfree_alloc_num: int
    kfree_loops: int
    kfree_mult: int
    kfree_rcu_test_single: int
    kfree_rcu_test_double: int
    mode: str
    accelerator: str
    preempt_model: str = "none"  # the guest build's preemption model (PREEMPT_NONE for the base build)
    nocb_cpus: int = 0  # guest CPUs whose callbacks were offloaded (rcu_nocbs=)
    config_variant: str = "base"


@dataclass(frozen=True)
class Boot:
    """One CSV row: one boot of the guest and what it printed (figures are None unless status is ok)."""

    point_id: str
    rep: int
    params: PointParams
    sweep: str
    status: str
    total_time_ns: int | None
    batches: int | None
    footprint_mb: int | None
    guest_mem_available_kib: int | None
    guest_mem_total_kib: int | None
    source: str
    host_load1: float | None = None  # the host's 1-minute load average when the boot started
    host_cores: int | None = None

    @property
    def quiet(self) -> bool:
        """The host had a core for the guest besides everything else it ran.

        A single-threaded TCG guest keeps one host core busy; its clock is the host's wall clock.
        Whatever else runs takes the guest's core part of the time: its instructions slow down while
        its jiffies do not, so a loaded host changes the ratios (work per GP, per monitor period),
        not only the times (in the main block, boots at load 3-4 took 1.36x their point's median).
        A load above the host's cores means other work competed for the guest's core. A file
        without the load columns counts as quiet (nothing says otherwise).
        """
        if self.host_load1 is None or not self.host_cores:
            return True
        return self.host_load1 <= self.host_cores


@dataclass(frozen=True)
class Point:
    """All boots of one parameter point, with the medians the comparison uses.

    Medians are over the boots that printed a result (`ok`), and of those, the ones on a quiet host
    (`Boot.quiet`) when there are at least MIN_QUIET_BOOTS of them (`quiet_host`); `oom_fraction` is
    over the boots that either printed a result or ended in an OOM (other failures count in neither).
    """

    point_id: str
    params: PointParams
    pressure: bool
    boots: int
    ok: int
    oom: int
    time_ms: float | None
    batches: float | None
    footprint_mb: float | None
    guest_mem_available_kib: int
    guest_mem_total_kib: int

    @property
    def oom_fraction(self) -> float:
        decided = self.ok + self.oom
        return self.oom / decided if decided else 0.0

    block: str = "main"  # the sweep the point was measured in
    times_ms: tuple[float, ...] = ()  # each ok boot's loop time (for intervals of ratios)
    batches_each: tuple[float, ...] = ()  # each ok boot's GPs
    quiet_host: bool = True  # the figures are of boots on a quiet host (else of all, some on a loaded one)

    @property
    def stratum(self) -> tuple:
        """What the split keeps balanced: block, CPUs, mode, loops, object size (and the build and
        offloading, which differ only between blocks)."""
        p = self.params
        return (self.block, p.guest_cpus, p.mode, p.kfree_loops, p.kfree_mult, p.preempt_model, p.nocb_cpus)

    @property
    def group(self) -> tuple:
        """The configuration group an N effect is measured in: the stratum at one memory size and
        refill delay (N is what varies)."""
        p = self.params
        return (*self.stratum, p.guest_mem_mib, p.rcu_delay_page_cache_fill_msec, p.kfree_alloc_num, p.kfree_nthreads)

    @property
    def order_key(self) -> tuple:
        """Position inside the stratum: the parameters that vary within one."""
        p = self.params
        return (
            p.rcu_min_cached_objs,
            p.rcu_delay_page_cache_fill_msec,
            p.guest_mem_mib,
            p.kfree_alloc_num,
            p.kfree_nthreads,
            self.point_id,
        )


def _int(value: str, where: str, column: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{where}: column {column}={value!r} is not an integer") from None


def _opt_int(value: str, where: str, column: str) -> int | None:
    return None if value == "" else _int(value, where, column)


def _opt_float(value: str, where: str, column: str) -> float | None:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: column {column}={value!r} is not a number") from None


def _nocb_count(cpulist: str, cpus: int, where: str) -> int:
    """How many guest CPUs a cpulist ('0-3', '1,3', 'all') offloads."""
    text = cpulist.strip().rstrip(".")
    if not text:
        return 0
    if text == "all":
        return cpus
    count = 0
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        try:
            count += (int(hi) - int(lo) + 1) if dash else 1
        except ValueError:
            raise DataError(f"{where}: cannot read the offloaded CPUs {cpulist!r}") from None
    return min(count, cpus)


def read_boots(path: Path | str, *, pressure: bool = False) -> list[Boot]:
    """Every row of one measured CSV.

    Args:
        path: a CSV written by `rcutune.validation.kernel` (sweep or measure).
        pressure: treat every row as part of the OOM block, whatever its sweep is called.

    Raises:
        DataError: a missing file or column, or a value that does not parse.
    """
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    boots = []
    with fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: not a validation CSV; missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            ints = {c: _int(row[c], where, c) for c in PARAM_FIELDS}
            extra = {c: (row.get(c) or default) for c, default in OPTIONAL_COLUMNS.items()}
            params = PointParams(
                **ints,
                mode=row["mode"],
                accelerator=row["accelerator"] or "tcg",
                preempt_model=extra["preempt_model"],
                nocb_cpus=_nocb_count(extra["nocb_offloaded_cpus"] or extra["rcu_nocbs"], ints["guest_cpus"], where),
                config_variant=extra["config_variant"],
            )
            sweep = PRESSURE_SWEEP if pressure else row["sweep"]
            boots.append(
                Boot(
                    point_id=row["point_id"],
                    rep=_int(row["rep"], where, "rep"),
                    params=params,
                    sweep=sweep,
                    status=row["status"],
                    total_time_ns=_opt_int(row["total_time_ns"], where, "total_time_ns"),
                    batches=_opt_int(row["batches"], where, "batches"),
                    footprint_mb=_opt_int(row["footprint_mb"], where, "footprint_mb"),
                    guest_mem_available_kib=_opt_int(row["guest_mem_available_kib"], where, "guest_mem_available_kib"),
                    guest_mem_total_kib=_opt_int(row["guest_mem_total_kib"], where, "guest_mem_total_kib"),
                    source=str(path),
                    host_load1=_opt_float(extra["host_load1"], where, "host_load1"),
                    host_cores=_opt_int(extra["host_cores"], where, "host_cores"),
                )
            )
    return boots


def csv_files(paths: list[Path | str]) -> list[Path]:
    """The CSVs named, a directory standing for its `*.csv` files (sorted); raises DataError if none."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.csv"))
            if not found:
                raise DataError(f"{p}: directory holds no .csv files")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or directory")
    return list(dict.fromkeys(files))


@dataclass(frozen=True)
class Measured:
    """The points of some measured CSVs, and which files they came from."""

    points: list[Point]
    files: list[Path]  # read whole, as given (directories expanded)
    pressure_files: list[Path]  # read whole, every row in the OOM block (--pressure)
    found_pressure: list[Path]  # found next to `files`: only their pressure-sweep rows were read

    @property
    def sources(self) -> list[Path]:
        return list(dict.fromkeys(self.files + self.pressure_files + self.found_pressure))


def pressure_siblings(files: list[Path]) -> list[Path]:
    """CSVs of the same measurement as `files`: same directory, same name up to the sweep.

    The harness writes one `rcuscale-<kernel>-<sweep>.csv` per sweep into one directory, so the
    main CSV's siblings are `rcuscale-<kernel>-*.csv` there.
    """
    siblings: list[Path] = []
    for f in files:
        prefix, dash, _ = f.stem.rpartition("-")
        if dash:
            siblings.extend(s for s in sorted(f.parent.glob(f"{prefix}-*.csv")) if s not in files)
    return list(dict.fromkeys(siblings))


def load_measured(paths: list[Path | str], pressure: list[Path | str] | None = None) -> Measured:
    """The parameter points of every boot in the CSVs, sorted by point id.

    Unless files are named as the OOM block, the rows of the other blocks of the same measurement
    (siblings, see `pressure_siblings`, whose sweep has a committed sweep file) are added, so that the
    main CSV alone gives the whole comparison.

    Args:
        paths: CSV files or directories of them.
        pressure: CSV files whose points form the OOM block (besides sweeps named "pressure").
    """
    files = csv_files(list(paths))
    marked = csv_files(list(pressure)) if pressure else []
    pressure_files = [f for f in marked if f not in files]
    boots: list[Boot] = []
    for f in files + pressure_files:
        boots.extend(read_boots(f, pressure=f in marked))
    found: list[Path] = []
    have = {b.sweep for b in boots}
    # Files named as the OOM block choose the blocks themselves; else bring the measurement's others.
    for f in [] if pressure_files or marked else pressure_siblings(files + pressure_files):
        # The other blocks of the same measurement: sweeps with a committed sweep file (so a
        # probe sweep's rows are not), and not already given.
        rows = [
            b
            for b in read_boots(f)
            if b.sweep not in have and (b.sweep == PRESSURE_SWEEP or (SWEEPS_DIR / f"{b.sweep}.toml").exists())
        ]
        if rows:
            boots.extend(rows)
            found.append(f)
    return Measured(points_from_boots(boots), files, pressure_files, found)


def load_points(paths: list[Path | str], pressure: list[Path | str] | None = None) -> list[Point]:
    """The points of `load_measured`."""
    return load_measured(paths, pressure).points


def points_from_boots(boots: list[Boot]) -> list[Point]:
    """Group boots by point id (the same point in two files is one point; its boots are pooled)."""
    groups: dict[str, list[Boot]] = {}
    seen: set[tuple[str, int, str]] = set()
    for b in boots:
        key = (b.point_id, b.rep, b.source)
        if key in seen:
            continue
        seen.add(key)
        groups.setdefault(b.point_id, []).append(b)
    points = []
    for pid, group in sorted(groups.items()):
        first = group[0]
        if any(b.params != first.params for b in group):
            raise DataError(f"{first.source}: point {pid} appears with different parameters")
        ok = [b for b in group if b.status == "ok"]
        quiet = [b for b in ok if b.quiet]
        quiet_host = len(quiet) >= MIN_QUIET_BOOTS or len(quiet) == len(ok)
        timed = quiet if quiet_host else ok
        times = tuple(b.total_time_ns / 1e6 for b in timed if b.total_time_ns is not None)
        gps = tuple(float(b.batches) for b in timed if b.batches is not None)
        avail = [b.guest_mem_available_kib for b in group if b.guest_mem_available_kib]
        total = [b.guest_mem_total_kib for b in group if b.guest_mem_total_kib]
        if not avail or not total:
            raise DataError(f"{first.source}: point {pid} has no guest_mem_available_kib/guest_mem_total_kib")
        points.append(
            Point(
                point_id=pid,
                params=first.params,
                pressure=any(b.sweep in OOM_SWEEPS for b in group),
                boots=len(group),
                ok=len(ok),
                oom=sum(b.status == "oom" for b in group),
                time_ms=_median(times),
                batches=_median(gps),
                footprint_mb=_median([b.footprint_mb for b in timed if b.footprint_mb is not None]),
                guest_mem_available_kib=int(statistics.median(avail)),
                guest_mem_total_kib=int(statistics.median(total)),
                block=PRESSURE_SWEEP if first.sweep == PRESSURE_SWEEP else first.sweep,
                times_ms=times,
                batches_each=gps,
                quiet_host=quiet_host,
            )
        )
    return points


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None
