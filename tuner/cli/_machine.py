"""`rcutune profile capture`, `rcutune workload capture` and `rcutune check`: this machine, in and out."""

from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path
from typing import Annotated, Optional

import typer

from rcutune import sim, storage

from .._errors import UserError
from ._common import EXIT_FAILURE, StorageOpt, user_errors

profile_app = typer.Typer(help="Hardware profiles of real machines.", no_args_is_help=True, rich_markup_mode=None)
workload_app = typer.Typer(help="Workload profiles from real kernels.", no_args_is_help=True, rich_markup_mode=None)

RootOpt = Annotated[
    Optional[Path],
    typer.Option("--root", help="Read the machine from this directory laid out like / (default: this machine)."),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Write the profile here (default: standard output).")]


def register(app: typer.Typer) -> None:
    app.add_typer(profile_app, name="profile")
    app.add_typer(workload_app, name="workload")
    app.command()(check)


def _write(out: Path, text: str) -> None:
    """Write `text` to `out` whole or not at all (temporary file in the same directory, then rename)."""
    if out.is_dir():
        raise UserError(f"--out {out}: a directory; name the .toml file to write")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: no directory {out.parent}; create it or write elsewhere")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@profile_app.command("capture")
def profile_capture(root: RootOpt = None, out: OutOpt = None) -> None:
    """Write a hardware profile of this machine (or of --root).

    CPUs, memory, page size, HZ and preemption model, offloaded CPUs and the kernel release are read
    from procfs, sysfs and the kernel's configuration (/proc/config.gz or /boot/config-<release>);
    grace periods, costs and SLOs, which a running system does not show, come from the nearest
    shipped profile, and the file's comments say which. The file's name (without .toml) is the
    profile's name in studies."""
    from ..capture import capture_hardware

    with user_errors():
        captured = capture_hardware(root or Path("/"))
        shown = str(out) if out else "mine.toml"
        text = captured.toml(shown)
        if out:
            _write(out, text)
    for warning in captured.warnings:
        typer.echo(f"warning: {warning}", err=True)
    m, keys = captured.machine, captured.keys
    summary = [
        f"Linux {m.release}, modelled as {m.kernel}",
        f"{keys['cpus']} CPUs, {keys['memory_mib']} MiB, {keys.get('page_size', 4096)}-byte pages, "
        f"HZ={keys.get('hz')}, preemption {m.preempt or 'unknown'}, {keys.get('nocb_cpus', 0)} offloaded",
        f"{len(captured.borrowed)} keys from shipped '{captured.nearest.name}' (named in the file)",
    ]
    if out is None:
        typer.echo(text, nl=False)
        for line in summary:
            typer.echo(line, err=True)
        typer.echo(f"next: save it as {shown}, then {captured.study_command(shown)}", err=True)
        return
    typer.echo(f"wrote {out}: {summary[0]}")
    for line in summary[1:]:
        typer.echo(f"  {line}")
    typer.echo(f"next: {captured.study_command(str(out))}")


@workload_app.command("capture")
def workload_capture(
    from_trace: Annotated[
        Path,
        typer.Option(
            "--from-trace",
            help="A trace of the kvfree_rcu() events (trace-cmd report, or tracefs's trace or trace_pipe).",
        ),
    ],
    out: OutOpt = None,
    cpus: Annotated[
        Optional[int],
        typer.Option(
            "--cpus", min=1, max=4096, help="Online CPUs of the traced machine (default: the trace's header)."
        ),
    ] = None,
    kernel: Annotated[
        Optional[str],
        typer.Option(
            "--kernel",
            help="Modelled release that recorded the trace, e.g. 6.1 (decides whether a reclaim's "
            "CPU is the caller's).",
        ),
    ] = None,
    duration: Annotated[
        Optional[float],
        typer.Option("--duration", min=0.000001, help="Seconds the trace recorded (default: first to last event)."),
    ] = None,
) -> None:
    """Write a workload profile estimated from a trace of the kernel's kvfree_rcu() events.

    Reads rcu:rcu_invoke_kfree_bulk_callback, rcu:rcu_invoke_kvfree_callback and
    rcu:rcu_kvfree_callback lines (docs/apply.md has the command that records them). Per-CPU rates,
    bursts and object sizes come from the trace where it shows them; what it cannot show is assumed,
    said on standard error and in the file's comments."""
    from ..capture import capture_workload

    with user_errors():
        captured = capture_workload(from_trace, cpus=cpus, kernel=kernel, duration_s=duration)
        text = captured.toml()
        if out:
            _write(out, text)
    for item in captured.assumed:
        for line in textwrap.wrap(
            f"assumed: {item}", 79, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False
        ):
            typer.echo(line, err=True)
    if out is None:
        typer.echo(text, nl=False)
        return
    keys = captured.keys
    bursts = f"x{keys['burst_multiplier']:g} every {keys['burst_every_s']:g} s" if keys["burst_every_s"] else "none"
    typer.echo(
        f"wrote {out}: {keys['calls_per_s_per_cpu']:g} calls/s per CPU, objects {keys['object_bytes']} B, "
        f"bursts {bursts}"
    )
    typer.echo(f"next: rcutune study --hardware <profile> --workload {out}")


def check(
    root: RootOpt = None,
    hardware: Annotated[
        Optional[str],
        typer.Option(
            "--hardware", "-H", help="Check the newest campaign of this hardware profile (name or .toml file)."
        ),
    ] = None,
    campaign: Annotated[
        Optional[str],
        typer.Option("--study", help="Check this campaign (default: the newest of --hardware, else of the database)."),
    ] = None,
    storage_url: StorageOpt = None,
) -> None:
    """Is the recommendation applied? Compare the running kernel with a campaign's answer.

    One line per cache parameter: the value the running kernel uses (its module's parameter file
    in /sys/module, else /proc/cmdline, else the release's default) against the recommended one,
    under the running release's names. Exit 0 when every value is applied, 1 when not, 2 on bad input."""
    from ..apply import check as check_applied
    from ..capture import read_machine
    from ..recommend import answer

    with user_errors():
        machine = read_machine(root or Path("/"))
        target = sim.load_hardware(hardware) if hardware else None
        rec = answer(storage.resolve_url(storage_url), target, campaign=campaign).recommendation
        result = check_applied(machine, rec)
    for line in result.lines():
        typer.echo(line)
    if not result.applied:
        raise typer.Exit(EXIT_FAILURE)
