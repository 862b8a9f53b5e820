"""`rcutune validate kernel`: measure a real Linux 6.1 kernel under qemu, calibrate the guest profiles,
and compare the model with the measurements (validation/README.md, README "Validation
against a real kernel")."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from .._errors import UserError
from ._common import EXIT_FAILURE, user_errors

validate_app = typer.Typer(
    name="validate",
    help="Check the model against measurements of a real kernel.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PathList = Optional[list[Path]]


@validate_app.command("kernel")
def kernel(
    build: Annotated[
        bool, typer.Option("--build", help="Install what is missing and build the 6.1 kernel + initramfs (cached).")
    ] = False,
    sweep: Annotated[
        Optional[Path],
        typer.Option(
            "--sweep",
            metavar="FILE",
            help="Boot every point of a sweep file (validation/sweeps/*.toml), appending to a CSV.",
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            metavar="CSV",
            help="--sweep: the CSV to append to (default validation/data/rcuscale-6.1-<sweep>.csv).",
        ),
    ] = None,
    calibrate: Annotated[
        PathList,
        typer.Option(
            "--calibrate",
            metavar="CSV|DIR",
            help="Fit the qemu-<accel>-<cpus> profiles on the training half of these CSVs and write them. Repeatable.",
        ),
    ] = None,
    compare: Annotated[
        PathList,
        typer.Option(
            "--compare",
            metavar="CSV|DIR",
            help="Simulate the held-out half of these CSVs and print the agreement. Repeatable.",
        ),
    ] = None,
    pressure: Annotated[
        PathList,
        typer.Option(
            "--pressure",
            metavar="CSV",
            help="CSVs whose points form the OOM block (sweeps named 'pressure' always do, "
            "and are found next to the CSV given). Repeatable.",
        ),
    ] = None,
    seeds: Annotated[
        Optional[int],
        typer.Option(min=1, max=1000, help="Simulated runs per point (default 4 to compare, 2 to calibrate)."),
    ] = None,
    oom_seeds: Annotated[
        Optional[int],
        typer.Option(
            min=1, max=1000, help="Simulated runs per pressure point (default 16 to compare, 8 to calibrate)."
        ),
    ] = None,
    jobs: Annotated[int, typer.Option(min=1, max=256, help="Worker processes for the simulations.")] = 2,
    all_points: Annotated[
        bool,
        typer.Option("--all-points", help="--compare: every point, training half included (not a test of the fit)."),
    ] = False,
    calibration: Annotated[
        Optional[Path], typer.Option(metavar="FILE", help="Calibration file (default validation/calibration-6.1.toml).")
    ] = None,
    record: Annotated[
        Optional[Path],
        typer.Option(
            "--record",
            metavar="FILE",
            help="--compare: also write the output to FILE (e.g. validation/results/compare-6.1.txt).",
        ),
    ] = None,
) -> None:
    """Measure a real kernel (--build, --sweep), calibrate the guest profiles (--calibrate) or compare (--compare).

    --compare prints a per-point table, the figures per block and overall (Spearman rank
    correlation, median relative error over the held-out points), per configuration group the
    measured N=64/N=0 ratios of loop time and of GPs (with bootstrap 90% intervals) and the
    simulated ones, the line n_effect_time_abs_err=<f> n_effect_gp_abs_err=<f> (median absolute
    error of those ratios over the held-out groups whose boots all finished), and last the line:
    rows=<int> time_spearman=<f> batches_spearman=<f> footprint_spearman=<f> oom_accuracy=<f>
    time_median_rel_err=<f>
    """
    with user_errors():
        chosen = [
            name
            for name, on in (
                ("--build/--sweep", build or sweep is not None),
                ("--calibrate", bool(calibrate)),
                ("--compare", bool(compare)),
            )
            if on
        ]
        if len(chosen) != 1:
            raise UserError(
                "choose one of --build/--sweep FILE, --calibrate CSV, --compare CSV "
                f"(got {', '.join(chosen) or 'none'})"
            )
        if out is not None and sweep is None:
            raise UserError("--out goes with --sweep FILE")
        if pressure and not (calibrate or compare):
            raise UserError("--pressure goes with --calibrate or --compare")
        if record is not None and not compare:
            raise UserError("--record goes with --compare")
        if build or sweep is not None:
            _measure(build, sweep, out)
        elif calibrate:
            _calibrate(calibrate, pressure, seeds, oom_seeds, jobs, calibration)
        else:
            _compare(compare or [], pressure, seeds, oom_seeds, jobs, all_points, calibration, record)


def _measure(build: bool, sweep: Path | None, out: Path | None) -> None:
    from rcutune.validation.kernel import harness

    try:
        kernel = harness.build() if build else None
        if kernel is not None:
            typer.echo(
                f"kernel: Linux {kernel.kernel_version}, build {kernel.build_key}, "
                f"{kernel.build_seconds:.0f} s to build{' (cached)' if kernel.cached else ''}"
            )
        if sweep is not None:
            loaded = harness.load_sweep(sweep)
            target = out or Path(harness.HERE.parent / "data" / f"rcuscale-6.1-{loaded.name}.csv")
            summary = harness.run_sweep(sweep, target, kernel=kernel)
            typer.echo(
                f"sweep {loaded.name}: {summary.ran} boots in {summary.seconds:.0f} s, "
                f"{summary.skipped} already in {target}"
            )
    except (harness.SweepError, harness.CsvMismatchError) as err:
        raise UserError(str(err)) from None
    except RuntimeError as err:
        typer.echo(f"error: {' '.join(str(err).split())}", err=True)
        raise typer.Exit(EXIT_FAILURE) from None


def _calibrate(
    paths: list[Path],
    pressure: list[Path] | None,
    seeds: int | None,
    oom_seeds: int | None,
    jobs: int,
    calibration: Path | None,
) -> None:
    from rcutune.validation import compare as agreement

    # The command as the files will record it: what to run to get them again (jobs change nothing).
    words = [
        "rcutune",
        "validate",
        "kernel",
        *(w for p in paths for w in ("--calibrate", str(p))),
        *(w for p in pressure or [] for w in ("--pressure", str(p))),
        *(["--seeds", str(seeds)] if seeds else []),
        *(["--oom-seeds", str(oom_seeds)] if oom_seeds else []),
        *(["--calibration", str(calibration)] if calibration else []),
    ]
    kwargs = {} if calibration is None else {"calibration_file": calibration}
    try:
        result = agreement.calibrate(
            paths,
            pressure,
            seeds=seeds or agreement.CALIBRATION_SEEDS,
            oom_seeds=oom_seeds or agreement.CALIBRATION_OOM_SEEDS,
            jobs=jobs,
            command=shlex.join(words),
            progress=typer.echo,
            **kwargs,
        )
    except agreement.DataError as err:
        raise UserError(str(err)) from None
    for fit in result.fits:
        typer.echo(
            f"{fit.name}: J {fit.start_loss.total:.4f} -> {fit.loss.total:.4f} "
            f"({fit.evaluations} evaluations, {fit.seconds:.0f} s)"
        )
        typer.echo("  " + " ".join(f"{k}={v:.4g}" for k, v in fit.values.items()))
    for path in result.written:
        typer.echo(f"wrote {path}")


def _compare(
    paths: list[Path],
    pressure: list[Path] | None,
    seeds: int | None,
    oom_seeds: int | None,
    jobs: int,
    all_points: bool,
    calibration: Path | None,
    record: Path | None,
) -> None:
    from rcutune.validation import compare as agreement

    kwargs = {} if calibration is None else {"calibration_file": calibration}
    if record is not None and not record.parent.is_dir():
        raise UserError(f"--record {record}: no directory {record.parent}")
    try:
        result = agreement.compare(
            paths,
            pressure,
            held_out_only=not all_points,
            seeds=seeds or agreement.DEFAULT_SEEDS,
            oom_seeds=oom_seeds or agreement.DEFAULT_OOM_SEEDS,
            jobs=jobs,
            **kwargs,
        )
    except agreement.DataError as err:
        raise UserError(str(err)) from None
    lines = agreement.report_lines(result)
    for line in lines:
        typer.echo(line)
    if record is not None:
        from rcutune.validation.compare import write_atomic

        words = [
            "rcutune",
            "validate",
            "kernel",
            *(w for p in paths for w in ("--compare", str(p))),
            *(w for p in pressure or [] for w in ("--pressure", str(p))),
            *(["--seeds", str(seeds)] if seeds else []),
            *(["--oom-seeds", str(oom_seeds)] if oom_seeds else []),
            *(["--all-points"] if all_points else []),
            *(["--calibration", str(calibration)] if calibration else []),
            "--record",
            str(record),
        ]
        write_atomic(record, "\n".join([f"# {shlex.join(words)}", *lines]) + "\n")
