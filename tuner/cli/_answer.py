"""`rcutune report` and `rcutune recommend`: the answer, its risk, and where to read why."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from rcutune import storage

from .._errors import UserError
from ._common import EXIT_FAILURE, QuietOpt, SetOpt, StorageOpt, load_profiles, user_errors

if TYPE_CHECKING:
    from ..recommend import Recommendation

ConfidenceOpt = Annotated[
    float, typer.Option(metavar="P", help="Required probability of meeting every SLO, in [0.5, 1).")
]
ConfirmOpt = Annotated[int, typer.Option(min=0, max=32, metavar="K", help="Fresh seeds confirming the recommendation.")]


class FormatChoice(str, Enum):
    cmdline = "cmdline"
    grub = "grub"
    grubby = "grubby"
    tuned = "tuned"
    json = "json"


def register(app: typer.Typer) -> None:
    app.command()(report)
    app.command()(recommend)


def report(
    name: Annotated[str, typer.Argument(help="Campaign name (see rcutune studies).")],
    storage_url: StorageOpt = None,
    out: Annotated[
        Optional[str],
        typer.Option(
            "--out", metavar="DIR", help="Directory under which <hardware>/<campaign>/ goes (default: reports)."
        ),
    ] = None,
    confidence: ConfidenceOpt = 0.95,
    confirm_seeds: ConfirmOpt = 4,
    quiet: QuietOpt = False,
) -> None:
    """Write a campaign's report (report.md, report.html, recommendation.json, plots) and print the answer.

    Prints the kernel command line, the risk line and the report's path. When no recommendation can
    be made the report is still written, but the command exits 1 and says on stderr why and which
    `rcutune study ... --trials K` to run."""
    from ..report import write_report

    with user_errors():
        if not 0.5 <= confidence < 1.0:
            raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
        if out and Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"--out {out}: not a directory; name a directory (it is created if missing)")
        url = storage.resolve_url(storage_url)
        written = write_report(
            url, name, Path(out) if out else None, confidence=confidence, confirm_seeds=confirm_seeds
        )
    rec = written.recommendation
    if rec.kernel_cmdline is not None:
        typer.echo(rec.kernel_cmdline)
        typer.echo(risk_line(rec))
    typer.echo(f"report: {written.directory / 'report.md'}")
    if rec.kernel_cmdline is None:
        typer.echo(no_answer_line(rec), err=True)
        raise typer.Exit(EXIT_FAILURE)
    if not quiet:
        for line in detail_lines(rec):
            typer.echo(f"  {line}")
        typer.echo(
            f"  apply: rcutune recommend --study {rec.campaign} --format grub{storage.storage_option(url)} "
            "(or cmdline, grubby, tuned)"
        )


def recommend(
    hardware: Annotated[
        Optional[str],
        typer.Option(
            "--hardware",
            "-H",
            metavar="NAME|FILE",
            help="Hardware profile name or path to a .toml file (default: the "
            "one --study was studied on; without either, the newest campaign's).",
        ),
    ] = None,
    workload: Annotated[
        Optional[str], typer.Option("--workload", "-W", metavar="NAME", help="Only this workload's recommendation.")
    ] = None,
    storage_url: StorageOpt = None,
    campaign: Annotated[
        Optional[str], typer.Option("--study", metavar="NAME", help="Campaign (default: the newest for this hardware).")
    ] = None,
    confidence: ConfidenceOpt = 0.95,
    confirm_seeds: ConfirmOpt = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print recommendation.json's document.")] = False,
    fmt: Annotated[
        Optional[FormatChoice],
        typer.Option(
            "--format",
            metavar="cmdline|grub|grubby|tuned|json",
            help="cmdline: the arguments; grub: a line for /etc/default/grub; grubby: the command; "
            "tuned: a tuned profile; json: the document.",
        ),
    ] = None,
    settings: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Print the recommendation for a hardware profile (or a campaign): the kernel command line first.

    Reads the answer the last `report` or `recommend` stored while the campaign's trials are
    unchanged; refits otherwise. With --set hardware.<key>=<value> (e.g. hardware.cpus=96) the profile
    may have no study of its own: the answer is then extrapolated from the nearest studied profile
    of the family, with intervals twice as wide, and flagged as extrapolated."""
    from ..apply import boot_config
    from ..recommend import answer

    with user_errors():
        if json_out and fmt not in (None, FormatChoice.json):
            raise UserError(f"--json and --format {fmt.value} contradict each other; give one of them")
        if hardware is None and settings:
            raise UserError("--set changes a hardware profile: give --hardware too")
        url = storage.resolve_url(storage_url)
        target = load_profiles(hardware, None, settings)[0] if hardware is not None else None
        got = answer(
            url, target, campaign=campaign, workload=workload, confidence=confidence, confirm_seeds=confirm_seeds
        )
    rec = got.recommendation
    chosen = FormatChoice.json if json_out else fmt
    if chosen == FormatChoice.json:
        typer.echo(boot_config(rec, "json"))
        return
    choice = rec.overall if workload is None else (rec.workload(workload).faithful if rec.workload(workload) else None)
    if choice is None:
        typer.echo(f"no recommendation for {rec.hardware} (campaign {got.campaign}): {_why_none(rec, workload)}")
        if rec.fix_command:
            typer.echo(f"run: {rec.fix_command}")
        raise typer.Exit(EXIT_FAILURE)
    if chosen is not None:
        if workload is not None and chosen != FormatChoice.cmdline:
            raise typer.BadParameter(
                "a boot configuration applies the overall answer; drop --workload", param_hint="--format"
            )
        typer.echo(choice.kernel_cmdline if workload is not None else boot_config(rec, chosen.value))
        return
    typer.echo(choice.kernel_cmdline)
    typer.echo(
        f"  kernel {rec.kernel}, layout {choice.policy.layout}, N={choice.policy.n_per_cpu}, "
        f"P(every SLO met)={choice.p_meet:.3f} (confidence {rec.confidence:g}), campaign {got.campaign}"
        + (", EXTRAPOLATED" if rec.extrapolated else "")
    )
    if quiet:
        return
    if workload is None:
        for line in detail_lines(rec):
            typer.echo(f"  {line}")
    typer.echo(f"  revert to the default: {rec.revert_cmdline}")


def risk_line(rec: Recommendation) -> str:
    o = rec.overall
    assert o is not None
    text = f"risk: P(every SLO met) = {o.p_meet:.3f} (>= {rec.confidence:g}) in the worst workload"
    if rec.overall_confirmation:
        seeds = len(rec.fresh_seeds)
        held = all(c.feasible for c in rec.overall_confirmation.values())
        text += f"; held on {seeds}/{seeds} fresh seeds" if held else "; NOT held on every fresh seed"
    return text + (" (extrapolated)" if rec.extrapolated else "")


def detail_lines(rec: Recommendation) -> list[str]:
    """What a reader needs next to the command line: why this N, the knobs, what it serves and what not."""
    lines = []
    if rec.n_explanation is not None:
        e = rec.n_explanation
        lines.append(f"why N={e.n}: " + (f"set by {e.workload}: " if e.workload else "") + e.reason)
    for k in rec.knob_changes:
        if k.kept:
            lines.append(f"{k.knob}={k.value} (default {k.default}) saves {k.buys.mean:.3g} ms/s on fresh seeds")
        else:
            lines.append(
                f"{k.knob} left at the default {k.default} (the search's {k.value} saved only {k.buys.mean:.3g} ms/s)"
            )
    lines.append(f"serves: {', '.join(rec.served)}")
    for name, why in rec.not_served().items():
        lines.append(f"not served: {name}: {why}")
    for w in rec.workloads:
        wi = w.what_if
        if wi is not None:
            gain = "" if wi.gain is None else f", cost lower by {wi.gain:.3g} ms/s"
            lines.append(
                f"what-if for {w.workload} (needs a kernel patch: {'; '.join(wi.what_if_reasons)}): "
                f"layout {wi.policy.layout}, N={wi.policy.n_per_cpu}{gain}"
            )
    return lines


def no_answer_line(rec: Recommendation) -> str:
    why = (
        "unhealthy surrogates: " + "; ".join(f"{w} ({', '.join(p)})" for w, p in rec.unhealthy.items())
        if rec.unhealthy
        else "no stock-kernel policy meets the SLOs of any workload at the required confidence"
    )
    return f"no recommendation: {why}" + (f"; run: {rec.fix_command}" if rec.fix_command else "")


def _why_none(rec: Recommendation, workload: str | None) -> str:
    if workload is not None:
        w = rec.workload(workload)
        if w is not None and w.unattainable:
            return w.unattainable
        if w is not None and w.problems:
            return "unhealthy surrogates: " + "; ".join(w.problems)
    if rec.unhealthy:
        return "unhealthy surrogates: " + "; ".join(f"{w} ({', '.join(p)})" for w, p in rec.unhealthy.items())
    return "no stock-kernel policy meets the SLOs at the required confidence"
