"""`rcutune study`, `rcutune worker`, `rcutune studies`: run campaigns and see what a database holds."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import asdict
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Optional

import typer

from rcutune import sim, storage

from .._errors import UserError
from ._common import (
    EXIT_FAILURE,
    HardwareOpt,
    QuietOpt,
    SetOpt,
    StorageOpt,
    interrupt_on_sigterm,
    is_terminal,
    user_errors,
)
from ._simulate import KernelVersion


class ObjectiveChoice(str, Enum):
    multi = "multi"
    scalar = "scalar"


class SamplerChoice(str, Enum):
    tpe = "tpe"
    random = "random"


def register(app: typer.Typer) -> None:
    app.command()(study)
    app.command()(worker)
    app.command()(studies)


def study(
    hardware: HardwareOpt,
    workload: Annotated[
        Optional[list[str]],
        typer.Option(
            "--workload", "-W", metavar="NAME|FILE", help="Workload profile (repeatable; default: all shipped)."
        ),
    ] = None,
    trials: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="T", help="New trials this run adds to each study (default: 30; --quick: 48)."),
    ] = None,
    study_name: Annotated[
        Optional[str],
        typer.Option(
            "--study", metavar="NAME", help="Campaign name (default: the hardware profile's, with -quick for --quick)."
        ),
    ] = None,
    storage_url: StorageOpt = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1,
            max=256,
            metavar="J",
            help="Processes running simulations (this one owns all writes); results do not depend on it.",
        ),
    ] = max(1, min(os.cpu_count() or 1, 8)),
    seed: Annotated[
        int, typer.Option(min=0, max=2**32 - 1, metavar="K", help="Seed of the seed list and the sampler.")
    ] = 0,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small preset: 1 simulated s, 2+2 seeds, 48 trials per workload.")
    ] = False,
    new: Annotated[
        bool, typer.Option("--new", help="Start a fresh campaign (name-2, name-3, ...) instead of resuming.")
    ] = False,
    kernel: Annotated[KernelVersion, typer.Option(help="Kernel release to model.")] = KernelVersion(sim.DEFAULT_KERNEL),  # type: ignore[call-arg]
    fix: Annotated[
        Optional[list[str]],
        typer.Option("--fix", metavar="KEY=VALUE", help="Pin a parameter: key=value, e.g. layout=per-cpu. Repeatable."),
    ] = None,
    faithful: Annotated[
        bool, typer.Option("--faithful", help="Only policies the stock kernel runs (per-CPU, no emergency reserve).")
    ] = False,
    objective: Annotated[
        ObjectiveChoice, typer.Option(help="multi: reserved MiB and fallback cost; scalar: one weighted value.")
    ] = ObjectiveChoice.multi,
    seconds: Annotated[
        Optional[float],
        typer.Option(
            min=0.001, max=86_400, metavar="S", help="Simulated seconds per replication (default 2; --quick 1)."
        ),
    ] = None,
    replications: Annotated[
        Optional[int],
        typer.Option(min=1, max=100, metavar="R", help="Base seeds every trial runs (default 3; --quick 2)."),
    ] = None,
    race_replications: Annotated[
        Optional[int],
        typer.Option(min=0, max=100, metavar="R", help="Extra seeds for contenders (default 3; --quick 2)."),
    ] = None,
    sampler: Annotated[SamplerChoice, typer.Option(help="Optuna sampler.")] = SamplerChoice.tpe,
    sim_timeout: Annotated[
        Optional[float],
        typer.Option(
            min=1.0,
            metavar="S",
            help="Wall-clock limit of one simulation in seconds (default: 30 per simulated second, at "
            "least 30); past it the trial fails.",
        ),
    ] = None,
    no_run: Annotated[
        bool,
        typer.Option(
            "--no-run",
            help="Create the campaign and add --trials to each study's budget; rcutune worker processes run them.",
        ),
    ] = False,
    settings: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Create or resume a campaign: one Optuna study per workload, stored with everything that defines it.

    One run at a time per campaign: a campaign another rcutune study (or workers) is running is
    refused with one line and exit 2, and the other run goes on unharmed. A database that can no
    longer be written mid-run (its file system turned read-only) ends the run with one line and
    exit 1; everything stored before is kept, and the same command resumes it."""
    import optuna

    from ..search import PlainProgress, ProgressSink, RichProgress, StudyRequest, parse_fix, run_campaign

    with user_errors():
        request = StudyRequest(
            hardware=hardware,
            workloads=tuple(workload or ()),
            overrides=tuple(settings or ()),
            kernel=kernel.value,
            fixed=tuple(parse_fix(fix).items()),
            faithful=faithful,
            objective=objective.value,
            trials=trials,
            campaign=study_name,
            storage_url=storage_url,
            jobs=jobs,
            seed=seed,
            quick=quick,
            new=new,
            sampler=sampler.value,
            max_seconds=seconds,
            replications=replications,
            race_replications=race_replications,
            sim_timeout_s=sim_timeout,
            run=not no_run,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        progress = ProgressSink() if quiet else RichProgress() if is_terminal() else PlainProgress()
        previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        try:
            result = run_campaign(request, progress)
        finally:
            signal.signal(signal.SIGTERM, previous)
    where = storage.storage_option(result.storage_url)
    if no_run:
        budgets = ", ".join(f"{w} {b}" for w, b in result.budgets.items())
        if not quiet:
            typer.echo(f"campaign {result.campaign}: {len(result.budgets)} studies, trial budgets {budgets}")
        typer.echo(f"next, on each machine: rcutune worker --study {result.campaign} --storage {result.storage_url}")
        return
    if not quiet:
        told = sum(result.told.values())
        typer.echo(
            f"campaign {result.campaign}: {told} trials added to {len(result.told)} studies in "
            f"{result.wall_seconds:.1f} s ({result.storage_url})"
        )
    typer.echo(f"next: rcutune report {result.campaign}{where}")
    exit_if_aborted("studies stopped early", result.aborted)


def worker(
    study_name: Annotated[
        str, typer.Option("--study", metavar="NAME", help="Campaign to join (created with rcutune study ... --no-run).")
    ],
    storage_url: StorageOpt = None,
    jobs: Annotated[
        int,
        typer.Option(
            min=1, max=256, metavar="J", help="Processes running one trial's simulations (seeds) in parallel."
        ),
    ] = 1,
    heartbeat_interval: Annotated[
        int, typer.Option(min=1, max=3600, metavar="S", help="Seconds between heartbeats of the running trial.")
    ] = 10,
    grace_period: Annotated[
        int,
        typer.Option(
            min=1,
            max=86_400,
            metavar="S",
            help="A running trial whose heartbeat is older than this many seconds is failed and run again.",
        ),
    ] = 30,
    sim_timeout: Annotated[
        Optional[float],
        typer.Option(
            min=1.0,
            metavar="S",
            help="Wall-clock limit of one simulation in seconds (default: 30 per simulated second, at least 30).",
        ),
    ] = None,
    db_timeout: Annotated[
        float,
        typer.Option(
            min=1.0,
            max=86_400,
            help="Seconds to wait for a database server that went away (restart, outage) before this worker exits 1.",
        ),
    ] = storage.DEFAULT_DB_TIMEOUT_S,
) -> None:
    """Join a campaign on a database server: run trials of all its studies until their budgets are spent.

    Start one on each machine (or several per machine); they share the work through the database,
    and the trial of a worker that dies is run again by the others. A server that restarts or stops
    for a while is waited for (one line on stderr per outage); one away longer than --db-timeout
    ends the worker with exit 1."""
    import optuna

    from ..search import WorkerRequest, run_worker

    with user_errors():
        if grace_period <= heartbeat_interval:
            raise UserError(
                f"--grace-period {grace_period}: must be longer than --heartbeat-interval {heartbeat_interval}"
            )
        request = WorkerRequest(
            campaign=study_name,
            storage_url=storage_url,
            jobs=jobs,
            heartbeat_interval_s=heartbeat_interval,
            grace_period_s=grace_period,
            sim_timeout_s=sim_timeout,
            db_timeout_s=db_timeout,
        )
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        try:
            result = run_worker(
                request, on_trial=_print_worker_trial, on_outage=lambda line: typer.echo(line, err=True)
            )
        except storage.DatabaseUnreachable as err:
            raise storage.DatabaseUnreachable(
                f"{err}; this worker stops (its running trial runs again in "
                "another worker, or in this one started again)"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
    done = sum(result.finished.values())
    typer.echo(
        f"worker: campaign {result.campaign}: budgets spent; this worker ran {done} trials "
        f"({sum(result.failed.values())} failed) in {result.wall_seconds:.1f} s"
    )
    exit_if_aborted("this worker gave up", result.aborted)


def exit_if_aborted(what: str, aborted: dict[str, str]) -> None:
    """Studies whose trials kept failing end the command with exit 1 and one line naming them."""
    if aborted:
        typer.echo(
            f"error: {what}: {', '.join(aborted)} (their trials kept failing; "
            "see the fail_reason of their failed trials)",
            err=True,
        )
        raise typer.Exit(EXIT_FAILURE)


def _print_worker_trial(workload: str, trial, note: str | None = None) -> None:
    attrs = trial.user_attrs
    policy = attrs.get("policy", {})
    text = f"{workload} #{trial.number} {trial.state.name.lower()}"
    if policy:
        text += f" N={policy.get('n_per_cpu')} {policy.get('layout')}"
    if "retry_of" in attrs:
        text += f" (retry of #{attrs['retry_of']})"
    if note is not None:
        text += f": {note}"
    elif trial.state.name == "FAIL":
        text += f": {attrs.get('fail_reason', 'failed')}"
    typer.echo(text)


def studies(
    storage_url: StorageOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """List stored campaigns and their studies: trials complete/pruned/failed, the best trial, age."""
    from ..search import list_studies

    with user_errors():
        url = storage.resolve_url(storage_url)
        campaigns = list_studies(url) if storage.database_exists(url) else []
    if json_out:
        typer.echo(json.dumps({"storage": url, "campaigns": [_campaign_json(c) for c in campaigns]}, default=str))
        return
    if not campaigns:
        typer.echo(
            f"no studies in {url}"
            if storage.database_exists(url)
            else f"no studies: {url} does not exist yet (run rcutune study first)"
        )
        return
    now = datetime.now(UTC).replace(tzinfo=None)
    for c in campaigns:
        typer.echo(
            f"{c.name}: {c.hardware}, kernel {c.kernel}, {c.objective} objective, created "
            f"{_age(now - c.created_at)} ago"
        )
        width = max([len("workload")] + [len(s.workload) for s in c.studies])
        typer.echo(f"  {'workload':<{width}}  {'trials c/p/f':>12}  {'best':<17} {'MiB':>7} {'ms/s':>8}  last")
        for s in c.studies:
            v = s.best_values or {}
            p = s.best_policy or {}
            best = "-" if s.best_number is None else f"#{s.best_number} N={p.get('n_per_cpu')} {p.get('layout')}"
            counts = f"{s.complete}/{s.pruned}/{s.failed}"
            typer.echo(
                f"  {s.workload:<{width}}  {counts:>12}  {best:<17} {_num(v.get('reserved_mib')):>7} "
                f"{_num(v.get('fallback_cost')):>8}  "
                + ("-" if s.last_activity is None else f"{_age(now - s.last_activity)} ago")
            )


def _campaign_json(c) -> dict:
    return {
        **{k: v for k, v in asdict(c).items() if k != "studies"},
        "studies": [{**asdict(s), "best_trial": s.best_number} for s in c.studies],
    }


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def _age(delta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
