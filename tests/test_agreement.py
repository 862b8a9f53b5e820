"""Agreement between the model and a real Linux 6.1 kernel: parsing, split, calibration, figures.

The last tests run the comparison on the committed CSVs (no kernel is built or booted) and fail if
any figure is worse than validation/README.md states (the one place the thresholds are written
down), or if the recorded output (validation/results/compare-6.1.txt, written by --record) is not
what the command prints now.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.cli import app
from rcutune.validation.compare import (
    CALIBRATION_FILE,
    DATA_DIR,
    DataError,
    GuestModel,
    Point,
    SimPoint,
    Stage,
    agreement,
    anon_fraction,
    calibrate,
    compare,
    fit_guest,
    load_calibration,
    load_measured,
    load_points,
    oom_side,
    points_from_boots,
    read_boots,
    spearman,
    split_points,
)

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "sim" / "profiles" / "hardware"
MAIN_CSV = DATA_DIR / "rcuscale-6.1-main.csv"
PRESSURE_CSV = DATA_DIR / "rcuscale-6.1-pressure.csv"
OOM_CSV = DATA_DIR / "rcuscale-6.1-oom.csv"
VOLUNTARY_CSV = DATA_DIR / "rcuscale-6.1-voluntary.csv"
THRESHOLDS = ROOT / "validation" / "README.md"
RECORD = ROOT / "validation" / "results" / "compare-6.1.txt"
N_EFFECT_LINE = re.compile(r"^n_effect_time_abs_err=(?P<time>[\d.]+|nan) n_effect_gp_abs_err=(?P<gp>[\d.]+|nan)$")
LAST_LINE = re.compile(
    r"^rows=(?P<rows>\d+) time_spearman=(?P<time_spearman>-?[\d.]+|nan) "
    r"batches_spearman=(?P<batches_spearman>-?[\d.]+|nan) "
    r"footprint_spearman=(?P<footprint_spearman>-?[\d.]+|nan) oom_accuracy=(?P<oom_accuracy>[\d.]+|nan) "
    r"time_median_rel_err=(?P<time_median_rel_err>[\d.]+|nan)$"
)


@pytest.fixture(scope="module")
def points():
    """The first two blocks (main and pressure): the counts below are theirs; later blocks have their tests."""
    return load_points([MAIN_CSV, PRESSURE_CSV], pressure=[PRESSURE_CSV])


# Parsing -------------------------------------------------------------------------------------


def test_every_committed_row_is_read_with_its_status():
    main, pressure = read_boots(MAIN_CSV), read_boots(PRESSURE_CSV)
    assert len(main) == 480 and {b.status for b in main} == {"ok"}
    assert len(pressure) == 198
    assert sum(b.status == "oom" for b in pressure) == 30
    assert all(b.total_time_ns is None for b in pressure if b.status == "oom")


def test_point_medians_are_those_of_the_boots_on_a_quiet_host(points):
    by_id = {p.point_id: p for p in points}
    p = by_id["c2-m512-n0-d5000-t-1-a8000-l200-x1-double"]
    assert (p.boots, p.ok) == (16, 16)
    assert p.quiet_host and len(p.times_ms) == 16  # the main block ran on an idle host
    assert round(p.time_ms) == 1733 and p.batches == 186
    assert by_id["c2-m160-n5-d5000-t-1-a8000-l50-x64-mixed"].oom_fraction == 0.125
    assert by_id["c2-m160-n5-d5000-t-1-a8000-l50-x128-mixed"].time_ms is None
    # Every committed block was measured on an idle host: no point is marked as slowed.
    every = load_measured([MAIN_CSV]).points
    assert {p.block for p in every} == {"main", "nocb", "oom", "pressure", "voluntary"}
    assert all(p.quiet_host for p in every)


def test_points_of_the_pressure_sweep_form_the_oom_block(points):
    assert len(points) == 79
    assert sum(p.pressure for p in points) == 23
    assert all(p.params.kfree_mult > 1 for p in points if p.pressure)


def test_a_file_given_as_pressure_joins_the_oom_block():
    pts = load_points([MAIN_CSV], pressure=[MAIN_CSV])
    assert pts and all(p.pressure for p in pts)


def test_a_csv_without_a_needed_column_is_refused_by_name(tmp_path):
    bad = tmp_path / "bad.csv"
    with MAIN_CSV.open() as src, bad.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        fields = [f for f in reader.fieldnames if f != "batches"]
        writer = csv.DictWriter(dst, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerow(next(reader))
    with pytest.raises(DataError, match=r"bad\.csv.*batches"):
        read_boots(bad)


def test_a_value_that_does_not_parse_names_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    lines = MAIN_CSV.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("guest_cpus")] = "two"
    bad.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: column guest_cpus='two'"):
        read_boots(bad)


def test_a_directory_stands_for_its_csv_files_and_a_missing_path_is_an_error(tmp_path):
    shutil.copy(MAIN_CSV, tmp_path / "a.csv")
    assert len(load_points([tmp_path])) == 56
    with pytest.raises(DataError, match="no such file"):
        load_points([tmp_path / "missing.csv"])


def test_the_main_csv_alone_brings_every_block_measured_with_it():
    measured = load_measured([MAIN_CSV])
    assert {PRESSURE_CSV, OOM_CSV, VOLUNTARY_CSV} <= set(measured.found_pressure)
    blocks = {p.block for p in measured.points}
    assert {"main", "pressure", "oom", "voluntary"} <= blocks
    # The OOM block: the pressure sweep and the OOM boundary; the voluntary build's points keep their model.
    assert all(p.pressure == (p.block in ("pressure", "oom")) for p in measured.points)
    assert {p.params.preempt_model for p in measured.points if p.block == "voluntary"} == {"voluntary"}
    assert all(p.params.preempt_model == "none" for p in measured.points if p.block == "main")


def test_only_the_pressure_rows_of_a_sibling_are_added(tmp_path):
    main = tmp_path / "rcuscale-6.1-main.csv"
    shutil.copy(MAIN_CSV, main)
    with PRESSURE_CSV.open(newline="") as src, (tmp_path / "rcuscale-6.1-probe.csv").open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, reader.fieldnames)
        writer.writeheader()
        for i, row in enumerate(reader):
            writer.writerow(row if i < 3 else dict(row, sweep="probe"))
    (tmp_path / "unrelated.csv").write_text("not,a,validation,csv\n")
    measured = load_measured([main])
    assert [f.name for f in measured.found_pressure] == ["rcuscale-6.1-probe.csv"]
    assert sum(p.boots for p in measured.points if p.pressure) == 3


def test_siblings_add_only_the_blocks_not_given_and_none_when_the_oom_block_is_named():
    found = load_measured([MAIN_CSV, PRESSURE_CSV]).found_pressure
    assert PRESSURE_CSV not in found and OOM_CSV in found
    assert load_measured([MAIN_CSV], pressure=[PRESSURE_CSV]).found_pressure == []


def test_the_same_boots_in_two_files_are_counted_once_per_file(tmp_path):
    boots = read_boots(MAIN_CSV)
    assert sum(p.boots for p in points_from_boots(boots + boots)) == 480


def _point_with_loads(loads: list[float | None], times_ms: list[int]) -> Point:
    """One point of the main CSV's first row, its boots given these host loads and loop times."""
    first = read_boots(MAIN_CSV)[0]
    boots = [
        replace(first, rep=i, host_load1=load, total_time_ns=t * 1_000_000, batches=t // 10)
        for i, (load, t) in enumerate(zip(loads, times_ms, strict=True))
    ]
    (point,) = points_from_boots(boots)
    return point


def test_figures_are_of_the_boots_on_a_quiet_host_when_there_are_enough():
    # Three boots with a core to spare, two slowed by other work on the 2-core host.
    p = _point_with_loads([1.0, 1.9, 2.0, 3.5, 6.0], [1000, 1100, 1200, 2500, 3000])
    assert p.quiet_host and p.time_ms == 1100 and p.batches == 110
    assert p.times_ms == (1000, 1100, 1200) and p.boots == 5 and p.ok == 5


def test_too_few_quiet_boots_keep_every_boot_and_mark_the_point():
    p = _point_with_loads([1.0, 1.5, 3.5, 6.0, 7.0], [1000, 1100, 2500, 3000, 3200])
    assert not p.quiet_host and p.time_ms == 2500 and len(p.times_ms) == 5


def test_a_boot_without_a_recorded_load_counts_as_quiet():
    p = _point_with_loads([None, None], [1000, 3000])
    assert p.quiet_host and p.time_ms == 2000


def test_host_load_columns_are_read_and_a_bad_one_is_named(tmp_path):
    boots = read_boots(MAIN_CSV)
    assert all(b.host_load1 is not None and b.host_cores == 2 for b in boots)
    bad = tmp_path / "bad.csv"
    lines = MAIN_CSV.read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    row[header.index("host_load1")] = "high"
    bad.write_text("\n".join([lines[0], ",".join(row)]) + "\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: column host_load1='high' is not a number"):
        read_boots(bad)


# Split ---------------------------------------------------------------------------------------


def test_split_is_deterministic_and_independent_of_input_order(points):
    a = split_points(points)
    b = split_points(list(reversed(points)))
    assert [p.point_id for p in a[0]] == [p.point_id for p in b[0]]
    assert [p.point_id for p in a[1]] == [p.point_id for p in b[1]]


def test_every_point_is_wholly_in_one_half(points):
    training, held_out = split_points(points)
    ids_t, ids_h = {p.point_id for p in training}, {p.point_id for p in held_out}
    assert not ids_t & ids_h
    assert ids_t | ids_h == {p.point_id for p in points}


def test_both_halves_cover_every_stratum_and_both_ends_of_n(points):
    training, held_out = split_points(points)
    strata = {}
    for p in points:
        strata.setdefault(p.stratum, []).append(p)
    for key, members in strata.items():
        if len(members) < 2:
            continue
        for half in (training, held_out):
            ns = [p.params.rcu_min_cached_objs for p in half if p.stratum == key]
            assert ns, f"stratum {key} missing from a half"
    for half in (training, held_out):
        double = [p.params.rcu_min_cached_objs for p in half if p.stratum == ("main", 2, "double", 50, 1, "none", 0)]
        assert min(double) <= 1 and max(double) >= 16


def test_points_added_in_another_stratum_do_not_move_existing_ones(points):
    main_only = [p for p in points if not p.pressure]
    held_main = {p.point_id for p in split_points(main_only)[1]}
    held_all = {p.point_id for p in split_points(points)[1] if not p.pressure}
    assert held_main == held_all


# Figures -------------------------------------------------------------------------------------


def test_spearman_is_one_for_the_same_order_and_nan_without_spread():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 90]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))


def test_half_the_boots_is_the_oom_side():
    assert oom_side(0.5) and oom_side(1.0)
    assert not oom_side(0.49) and not oom_side(0.0)


def test_agreement_counts_rows_and_judges_oom_by_side(points):
    pressure = [p for p in points if p.pressure][:4]
    sims = {
        p.point_id: SimPoint(p.point_id, 10, round(10 * p.oom_fraction), p.time_ms, p.batches, p.footprint_mb)
        for p in pressure
    }
    result = agreement(pressure, sims)
    assert result.rows == sum(p.boots for p in pressure)
    assert result.oom_accuracy == 1.0
    flipped = {k: SimPoint(k, 10, 10 - s.oom, s.time_ms, s.batches, s.footprint_mb) for k, s in sims.items()}
    assert agreement(pressure, flipped).oom_accuracy < 1.0
    assert LAST_LINE.match(result.last_line())


def test_memory_in_use_at_start_comes_from_the_boot_line_plus_the_calibrated_extra(points):
    p = next(p for p in points if p.params.guest_mem_mib == 512)
    used = (512 * 1024 - p.guest_mem_available_kib) / (512 * 1024)
    assert anon_fraction(p, 0.0) == pytest.approx(used)
    assert anon_fraction(p, 51.2) == pytest.approx(used + 0.1)


# The PREEMPT_NONE mechanism the qemu guests use ------------------------------------------------


def _rcuscale(preempt_none: bool, loops: int = 8, **hw: object) -> sim.Metrics:
    hardware = sim.HardwareProfile.model_validate(
        dict(
            name="t",
            cpus=2,
            memory_mib=512,
            hz=1000,
            file_cache_fraction=0.0,
            gp_min_ms=1.0,
            gp_median_ms=2.0,
            gp_max_ms=50.0,
            kfree_call_ns=1000.0,
            preempt="none" if preempt_none else "full",
            **hw,
        )
    )
    workload = sim.load_workload("rcuscale", {"kfree_loops": str(loops), "kfree_rcu_test_double": "true"})
    return sim.simulate(hardware, workload, sim.Policy(n_per_cpu=5), seconds=60, seed=1, kernel="6.1")


def test_preempt_none_grace_periods_wait_for_every_busy_cpu_to_end_a_loop():
    # A loop is 8000 calls x 1 us = 8 ms; GPs alone would take ~2 ms. With PREEMPT_NONE each GP
    # needs a loop end on every CPU after it noticed the GP, and one on the GP kthread's CPU to end
    # it: at most one GP per loop, and about one per two loops when the loops run in step.
    loops = 40
    m = _rcuscale(True, loops=loops)
    assert loops / 3 <= m.rcuscale_batches <= loops
    assert _rcuscale(False, loops=loops).rcuscale_batches > 3 * loops  # preemptible RCU: ~2 ms GPs


def test_preempt_none_refills_the_page_cache_only_between_loops():
    held = _rcuscale(True, loops=20)
    free = _rcuscale(False, loops=20)
    # At most N pages per loop per CPU come from a refill (plus pages returned by reclaim).
    assert held.refill_allocations <= 5 * 20 * 2
    assert held.head_fallbacks > free.head_fallbacks


def test_preempt_none_keeps_the_invariants(invariants):
    m = _rcuscale(True, loops=12)
    invariants(m, sim.Policy(n_per_cpu=5))


# The command line --------------------------------------------------------------------------------


def test_validate_kernel_needs_exactly_one_action():
    runner = CliRunner()
    result = runner.invoke(app, ["validate", "kernel"])
    assert result.exit_code == 2 and "choose one of" in result.output
    result = runner.invoke(app, ["validate", "kernel", "--build", "--compare", str(DATA_DIR)])
    assert result.exit_code == 2


def test_validate_kernel_compare_names_a_missing_file():
    result = CliRunner().invoke(app, ["validate", "kernel", "--compare", "no/such.csv"])
    assert result.exit_code == 2
    assert "no/such.csv" in result.output and "Traceback" not in result.output


def test_validate_kernel_compare_refuses_a_malformed_csv_in_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("point_id,rep\nx,0\n")
    result = CliRunner().invoke(app, ["validate", "kernel", "--compare", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv" in result.output and "missing column" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_validate_kernel_sweep_reaches_the_harness_and_its_errors(tmp_path, monkeypatch):
    sweep = tmp_path / "s.toml"
    sweep.write_text("[sweep]\nname = 's'\n\n[[grid]]\nguest_cpus = [2]\nkfree_loops = 2\n")
    result = CliRunner().invoke(app, ["validate", "kernel", "--sweep", str(sweep), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2 and "kfree_loops" in result.output and "Traceback" not in result.output
    sweep.write_text("[sweep]\nname = 's'\n\n[[grid]]\nguest_cpus = [2]\n")
    monkeypatch.setenv("RCUTUNE_KERNEL_CACHE", str(tmp_path / "empty-cache"))
    result = CliRunner().invoke(app, ["validate", "kernel", "--sweep", str(sweep), "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 1 and "no kernel built" in result.output
    assert not (tmp_path / "o.csv").exists()


# Calibration ---------------------------------------------------------------------------------


def test_the_committed_calibration_covers_the_measured_guests(points):
    guests = load_calibration().guests
    assert set(guests) == {"qemu-tcg-2", "qemu-tcg-4"}
    assert all(isinstance(g, GuestModel) and g.hardware.preempt == "none" for g in guests.values())


def test_the_calibration_was_trained_on_the_training_half_and_never_on_a_held_out_point():
    """Points measured after the calibration join the halves without moving earlier ones (see the split
    tests above): its training points stay training points, and none of them is ever held out."""
    training, held_out = split_points(load_points([MAIN_CSV]))  # the main CSV and its measurement's blocks
    trained = load_calibration().training_points
    assert trained and trained <= {p.point_id for p in training}
    assert not trained & {p.point_id for p in held_out}


def test_the_qemu_profiles_are_written_by_the_calibration_command():
    command = CALIBRATION_FILE.read_text().splitlines()[1].strip("# ")
    assert command.startswith("rcutune validate kernel --calibrate ")
    for name in ("qemu-tcg-2", "qemu-tcg-4"):
        header = (PROFILES / f"{name}.toml").read_text()
        assert "Generated; do not edit by hand" in header and f"by `{command}`" in header


def _subset(tmp_path: Path) -> Path:
    """The main CSV's rows of its six quickest points (2 CPUs, 50 loops, headless), as a CSV of its own."""
    lines = MAIN_CSV.read_text().splitlines()
    out = tmp_path / "subset.csv"
    quick = re.compile(r"^c2-m512-n\d+-d5000-t-1-a8000-l50-x1-single,")
    out.write_text("\n".join([lines[0], *(line for line in lines[1:] if quick.match(line))]) + "\n")
    return out


def test_the_fit_on_a_tiny_subset_writes_a_profile_and_calibration_that_load(tmp_path):
    data = _subset(tmp_path)
    quick = (Stage("cpu costs", ("kfree_call_ns", "kfree_slow_ns"), ("time", "batches"), 8),)
    result = calibrate(
        [data],
        seeds=1,
        oom_seeds=1,
        profiles_dir=tmp_path,
        calibration_file=tmp_path / "cal.toml",
        stages=quick,
        command="rcutune validate kernel --calibrate subset.csv",
    )
    (fit,) = result.fits
    assert fit.name == "qemu-tcg-2" and fit.loss.total <= fit.start_loss.total
    profile = sim.load_hardware(tmp_path / "qemu-tcg-2.toml")
    assert profile.kfree_call_ns == pytest.approx(fit.values["kfree_call_ns"], rel=1e-5)
    assert profile.preempt == "none" and profile.hz == 1000
    assert "by `rcutune validate kernel --calibrate subset.csv`" in (tmp_path / "qemu-tcg-2.toml").read_text()
    calibrated = load_calibration(tmp_path / "cal.toml")
    assert calibrated.guests["qemu-tcg-2"].hardware == profile
    assert calibrated.training_points == set(fit.training_points)


class _ScaledRunner:
    """Simulates a point as its measurement times a factor the guest sets: on the voluntary build,
    hrtimer_latency_us / 2 (so the fit's answer is 2); on the base build, kfree_call_ns / 700."""

    def __init__(self) -> None:
        self.calls: list[set[str]] = []

    def simulate(self, points, guests, *, seeds, oom_seeds):
        self.calls.append({p.params.preempt_model for p in points})
        (guest,) = guests.values()
        hw = guest.hardware
        out = {}
        for p in points:
            f = hw.hrtimer_latency_us / 2.0 if p.params.preempt_model == "voluntary" else hw.kfree_call_ns / 700.0
            out[p.point_id] = SimPoint(p.point_id, 1, 0, p.time_ms * f, p.batches, p.footprint_mb)
        return out


def test_a_stage_of_the_voluntary_build_fits_its_parameters_on_that_builds_points_only():
    points = [p for p in load_points([MAIN_CSV, VOLUNTARY_CSV]) if p.params.guest_cpus == 2 and p.time_ms]
    stages = (
        Stage("cpu costs", ("kfree_call_ns",), ("time",), 30),
        Stage("refill kick", ("hrtimer_latency_us",), ("time",), 30, preempt_model="voluntary"),
    )
    start = sim.load_hardware("qemu-tcg-2")
    runner = _ScaledRunner()
    fit = fit_guest(points, "tcg", 2, runner, seeds=1, oom_seeds=1, start=start, stages=stages)
    assert fit.values["hrtimer_latency_us"] == pytest.approx(2.0, rel=0.02)
    assert fit.values["kfree_call_ns"] == pytest.approx(700.0, rel=0.02)
    assert {"none"} in runner.calls and {"voluntary"} in runner.calls
    assert all(len(builds) == 1 for builds in runner.calls)  # never one build's points in another's J
    # Without points of that build the stage is skipped and its parameter keeps the start value.
    base = [p for p in points if p.params.preempt_model == "none"]
    fit = fit_guest(base, "tcg", 2, _ScaledRunner(), seeds=1, oom_seeds=1, start=start, stages=stages)
    assert fit.values["hrtimer_latency_us"] == start.hrtimer_latency_us


def test_compare_refuses_to_test_the_fit_on_its_own_training_points(tmp_path):
    data = _subset(tmp_path)
    calibrate([data], seeds=1, oom_seeds=1, profiles_dir=tmp_path, calibration_file=tmp_path / "cal.toml", stages=())
    text = (tmp_path / "cal.toml").read_text()
    held_out = split_points(load_points([data]))[1][0].point_id
    (tmp_path / "cal.toml").write_text(text.replace("training_points = [", f'training_points = [\n    "{held_out}",'))
    with pytest.raises(DataError, match=f"training half.*{held_out}"):
        compare([data], calibration_file=tmp_path / "cal.toml", seeds=1)


def _threshold_section() -> list[str]:
    """validation/README.md, "Agreement with the model": the lines the comparison must match or beat."""
    text = THRESHOLDS.read_text(encoding="utf-8")
    section = text.split("## Agreement with the model", 1)[1].split("\n## ", 1)[0]
    return [line for block in section.split("```")[1::2] for line in block.splitlines()]  # the code blocks


def _stated_figures() -> dict[str, float]:
    for line in _threshold_section():
        found = LAST_LINE.match(line.strip())
        if found:
            return {k: float(v) for k, v in found.groupdict().items()}
    raise AssertionError("validation/README.md states no comparison line")


FIGURE_LINE = re.compile(
    r"^(?P<name>\S.*?)\s+points=(?P<points>\d+)\s+spearman=(?P<spearman>-?[\d.]+|nan) "
    r"median_rel_err=(?P<err>[\d.]+|nan)$"
)


def _figure_lines(lines: list[str]) -> dict[str, tuple[int, float, float]]:
    found = (FIGURE_LINE.match(line.strip()) for line in lines)
    return {m["name"]: (int(m["points"]), float(m["spearman"]), float(m["err"])) for m in found if m}


@pytest.fixture(scope="module")
def compare_output() -> list[str]:
    """`rcutune validate kernel --compare validation/data/rcuscale-6.1-main.csv`, as the docs give it."""
    result = CliRunner().invoke(app, ["validate", "kernel", "--compare", str(MAIN_CSV)])
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()


@pytest.mark.slow
def test_the_main_csv_alone_gives_the_whole_last_line(compare_output):
    found = LAST_LINE.match(compare_output[-1])
    assert found, compare_output[-1]
    assert not math.isnan(float(found["oom_accuracy"]))
    assert any(line.startswith("block found with the CSVs given: ") for line in compare_output)
    assert N_EFFECT_LINE.match(compare_output[-2]), compare_output[-2]
    assert any(line.startswith("block voluntary ") for line in compare_output)


@pytest.mark.slow
def test_agreement_on_the_held_out_half_is_at_least_what_the_thresholds_state(compare_output):
    """Deterministic, so the figures are exact; an improvement passes (the thresholds then understate it)."""
    got = {k: float(v) for k, v in LAST_LINE.match(compare_output[-1]).groupdict().items()}
    stated = _stated_figures()
    assert got["rows"] == stated["rows"]
    for key in ("time_spearman", "batches_spearman", "footprint_spearman", "oom_accuracy"):
        assert got[key] >= stated[key] - 5e-4, f"{key}: {got[key]} < validation/README.md's {stated[key]}"
    assert got["time_median_rel_err"] <= stated["time_median_rel_err"] + 5e-4


@pytest.mark.slow
def test_the_n_effect_is_at_least_as_close_as_the_thresholds_state(compare_output):
    got = N_EFFECT_LINE.match(compare_output[-2])
    stated = next(
        N_EFFECT_LINE.match(line.strip()) for line in _threshold_section() if N_EFFECT_LINE.match(line.strip())
    )
    assert float(got["time"]) <= float(stated["time"]) + 5e-4
    assert float(got["gp"]) <= float(stated["gp"]) + 5e-4


@pytest.mark.slow
def test_every_figure_is_at_least_as_good_as_the_thresholds_state(compare_output):
    stated = _figure_lines(_threshold_section())
    got = _figure_lines(compare_output)
    assert set(stated) == set(got) and len(stated) == 4
    for name, (points, rho, err) in stated.items():
        assert got[name][0] == points, name
        assert got[name][1] >= rho - 5e-4, f"{name}: spearman {got[name][1]} < validation/README.md's {rho}"
        assert got[name][2] <= err + 5e-4, f"{name}: median_rel_err {got[name][2]} > validation/README.md's {err}"


@pytest.mark.slow
def test_the_recorded_comparison_is_what_the_command_prints(compare_output):
    """Figures quoted in the docs come from validation/results/compare-6.1.txt, written by --record."""
    recorded = RECORD.read_text(encoding="utf-8").splitlines()
    assert recorded[0].startswith("# rcutune validate kernel --compare ") and "--record" in recorded[0]
    assert recorded[1:] == compare_output


def test_record_writes_the_output_to_a_file(tmp_path):
    data = _subset(tmp_path)
    calibrate([data], seeds=1, oom_seeds=1, profiles_dir=tmp_path, calibration_file=tmp_path / "cal.toml", stages=())
    out = tmp_path / "compare.txt"
    result = CliRunner().invoke(
        app,
        [
            "validate",
            "kernel",
            "--compare",
            str(data),
            "--seeds",
            "1",
            "--calibration",
            str(tmp_path / "cal.toml"),
            "--record",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[1:] == result.output.strip().splitlines()
    assert LAST_LINE.match(lines[-1]) and N_EFFECT_LINE.match(lines[-2])


def test_the_fit_sees_ns_effect_within_each_training_group(points):
    # The calibration's last part: at each N of a group, loop time and GPs relative to its lowest N.
    from rcutune.validation.compare._fit import loss, n_curve_pairs

    group = [
        p
        for p in points
        if p.params.guest_cpus == 2
        and p.params.kfree_loops == 200
        and p.params.mode == "double"
        and p.params.rcu_delay_page_cache_fill_msec == 5000
    ]
    pairs = n_curve_pairs(group)
    assert {low.params.rcu_min_cached_objs for low, _ in pairs} == {0}
    assert sorted(high.params.rcu_min_cached_objs for _, high in pairs) == [1, 2, 5, 16, 64]

    def sim_of(p: Point, time_ms: float, batches: float) -> SimPoint:
        return SimPoint(p.point_id, 2, 0, time_ms, batches, p.footprint_mb)

    # Every point 10 % slow: the per-point parts see it, the N curve does not.
    slow = {p.point_id: sim_of(p, 1.1 * p.time_ms, p.batches) for p in group}
    assert loss(group, slow).time > 0.009 and loss(group, slow).n_effect == pytest.approx(0.0, abs=1e-12)
    # N does nothing in the model: the N curve part sees what the per-point parts blur.
    flat = {p.point_id: sim_of(p, 1500.0, 180.0) for p in group}
    n0, n64 = (next(p for p in group if p.params.rcu_min_cached_objs == n) for n in (0, 64))
    expected = (math.log(n0.time_ms / n64.time_ms) ** 2 + math.log(n0.batches / n64.batches) ** 2) / 2
    assert loss([n0, n64], flat).n_effect == pytest.approx(expected)
    # A group point that ended in an OOM, or was timed on a loaded host, is not on the curve.
    assert n_curve_pairs([replace(n0, oom=1), n64]) == [] and n_curve_pairs([n0, replace(n64, quiet_host=False)]) == []
