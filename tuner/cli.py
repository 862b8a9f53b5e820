"""The `rcutune` command line: a thin layer over functions the tests call directly."""

from __future__ import annotations

import json
import math
import os
import signal
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from rcutune import sim
from rcutune.sim import KERNELS, Policy

from ._errors import EXIT_FAILURE, UserError, is_terminal, user_errors
from ._validate_cli import validate_app

app = typer.Typer(
    name="rcutune",
    help="Choose rcutree.rcu_min_cached_objs, the kvfree_rcu() page-cache layout and its fallback "
    "thresholds for your hardware and workloads, by simulation and tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

app.add_typer(validate_app, name="validate")
KernelVersion = Enum("KernelVersion", {v.replace(".", "_"): v for v in KERNELS}, type=str)  # type: ignore[misc]


class LayoutChoice(str, Enum):
    per_cpu = "per-cpu"
    global_ = "global"
    hybrid = "hybrid"


HardwareOpt = Annotated[str, typer.Option("--hardware", "-H", help="Hardware profile name or path to a .toml file.")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a profile key: hardware.<key>=<value> or workload.<key>=<value>. Repeatable."),
]


def load_profiles(hardware: str, workload: str | None, settings: list[str] | None):
    """Profiles with `--set` overrides applied; raises ProfileError with a one-line message."""
    overrides = sim.split_overrides(settings or [])
    hw = sim.load_hardware(hardware, overrides["hardware"])
    wl = sim.load_workload(workload, overrides["workload"]) if workload is not None else None
    if wl is None and overrides["workload"]:
        raise UserError("--set workload.* needs --workload")
    return hw, wl


@app.command()
def profiles() -> None:
    """List the shipped hardware and workload profiles."""
    console = Console()
    for kind in ("hardware", "workload"):
        table = Table(title=f"{kind} profiles", title_justify="left")
        table.add_column("name")
        table.add_column("summary")
        for name in sim.list_profiles(kind):
            profile = sim.load_profile(kind, name)
            summary = _summary(profile)
            table.add_row(name, summary)
        console.print(table)


def _summary(profile) -> str:
    if isinstance(profile, sim.HardwareProfile):
        return (f"{profile.cpus} CPUs, {profile.memory_mib // 1024} GiB, {profile.page_size // 1024} KiB pages, "
                f"HZ={profile.hz}, {profile.nocb_cpus} NOCB, GP median {profile.gp_median_ms:g} ms")
    if profile.shape == "rcuscale":
        return (f"rcuscale: {profile.kfree_loops} loops x {profile.kfree_alloc_num} allocs, "
                f"{profile.rcuscale_object_bytes} B objects")
    return (f"{profile.calls_per_s_per_cpu:g} calls/s/CPU, {profile.headless_fraction:.0%} headless, "
            f"{profile.pressure} pressure, {profile.duration_s:g} s")


@app.command()
def simulate(
    hardware: HardwareOpt,
    workload: Annotated[str, typer.Option("--workload", "-W", help="Workload profile name or path.")],
    n_per_cpu: Annotated[Optional[int], typer.Option(min=0, help="rcutree.rcu_min_cached_objs (default: the kernel's).")] = None,
    layout: Annotated[LayoutChoice, typer.Option(help="Pool layout; global and hybrid are what-ifs.")] = LayoutChoice.per_cpu,
    shared_reserve_pages: Annotated[int, typer.Option(min=0, help="Hybrid layout: shared reserve pages.")] = 0,
    refill_delay_ms: Annotated[int, typer.Option(min=0, max=100_000, help="rcutree.rcu_delay_page_cache_fill_msec.")] = 5000,
    refill_low_watermark: Annotated[int, typer.Option(min=0, help="Refill when the cache falls to this (what-if; 0 = on a miss).")] = 0,
    prealloc_at_boot: Annotated[Optional[bool], typer.Option("--prealloc-at-boot/--no-prealloc-at-boot", help="Fill caches at boot (default: as the kernel).")] = None,
    emergency_reserve_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="What-if GFP_MEMALLOC-like reserve access below this free fraction.")] = 0.0,
    kernel: Annotated[KernelVersion, typer.Option(help="Kernel release to model.")] = KernelVersion(sim.DEFAULT_KERNEL),  # type: ignore[call-arg]
    seconds: Annotated[Optional[float], typer.Option(min=1e-6, help="Simulated seconds (default: the workload's).")] = None,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object with every metric.")] = False,
    settings: SetOpt = None,
) -> None:
    """Run the model once and print its metrics."""
    with user_errors():
        hw, wl = load_profiles(hardware, workload, settings)
        if seconds is not None and not math.isfinite(seconds):
            raise UserError(f"--seconds {seconds}: must be a finite number of seconds")
        behaviour = sim.kernel_behaviour(kernel.value)
        default = Policy.kernel_default(behaviour)
        policy = Policy(
            n_per_cpu=default.n_per_cpu if n_per_cpu is None else n_per_cpu,
            layout=layout.value,  # type: ignore[arg-type]
            shared_reserve_pages=shared_reserve_pages,
            refill_delay_ms=refill_delay_ms,
            refill_low_watermark=refill_low_watermark,
            prealloc_at_boot=default.prealloc_at_boot if prealloc_at_boot is None else prealloc_at_boot,
            emergency_reserve_fraction=emergency_reserve_fraction,
        )
        metrics = _run_with_progress(hw, wl, policy, seconds, seed, kernel.value)
    if json_out:
        out = {"hardware": hw.name, "workload": wl.name, "kernel": kernel.value,
               "policy": _policy_dict(policy), **metrics.as_dict()}
        typer.echo(json.dumps(out, sort_keys=False))
        return
    _print_metrics(hw, wl, kernel.value, policy, metrics)


def _policy_dict(policy: Policy) -> dict[str, object]:
    from dataclasses import asdict

    return asdict(policy)


def _run_with_progress(hw, wl, policy, seconds, seed, kernel):
    if not is_terminal():
        return sim.simulate(hw, wl, policy, seconds=seconds, seed=seed, kernel=kernel)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("simulating"), BarColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("sim", total=1.0)
        return sim.simulate(hw, wl, policy, seconds=seconds, seed=seed, kernel=kernel,
                            progress=lambda f: bar.update(task, completed=f))


def _print_metrics(hw, wl, kernel: str, policy: Policy, m: sim.Metrics) -> None:
    console = Console()
    label = " [bold yellow](what-if: " + "; ".join(m.what_if_reasons) + ")[/]" if m.what_if else ""
    console.print(f"[bold]{hw.name}[/] / [bold]{wl.name}[/], kernel {kernel}, "
                  f"N={policy.n_per_cpu}, layout={policy.layout}{label}")
    table = Table(show_header=False, box=None)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("calls (two-arg / headless)", f"{m.calls:,} ({m.calls_two_arg:,} / {m.calls_headless:,})"),
        ("objects freed / pending at end", f"{m.objects_freed:,} / {m.objects_pending_end:,}"),
        ("memory waiting, mean / peak", f"{m.bytes_pending_mean / 2**20:.2f} / {m.bytes_pending_peak / 2**20:.2f} MiB"),
        ("grace periods / batches", f"{m.grace_periods:,} / {m.batches:,}"),
        ("records per block (mean of {})".format(m.records_per_block), f"{m.records_per_block_mean:.0f}"),
        ("blocks from cache / inline allocs", f"{m.blocks_from_cache:,} / {m.page_alloc_attempts:,} ({m.page_alloc_failures:,} failed)"),
        ("rcu_head fallbacks", f"{m.head_fallbacks:,}"),
        ("synchronize_rcu() fallbacks, stall", f"{m.sync_fallbacks:,}, {m.sync_stall_seconds:.3f} s"),
        ("call latency p50 / p99 / max", f"{m.call_latency_p50_us:.2f} / {m.call_latency_p99_us:.2f} / {m.call_latency_max_us:.1f} us"),
        ("lock wait", f"{m.lock_wait_seconds:.4f} s"),
        ("cache reserved", f"{m.cache_pages_reserved:,} pages ({m.cache_bytes_reserved / 2**20:.2f} MiB)"),
        ("cached pages stranded (mean)", f"{m.cache_pages_stranded_mean:.1f}"),
        ("free pages min / OOM events", f"{m.free_pages_min:,} / {m.oom_events}"),
        ("shrinker scans", f"{m.shrinker_scans:,}"),
        ("simulated / wall seconds", f"{m.sim_seconds:.2f} / {m.wall_seconds:.2f} ({m.events:,} events)"),
    ]
    if m.rcuscale_total_time_ns is not None:
        rows.append(("rcuscale: time, batches, footprint",
                     f"{m.rcuscale_total_time_ns:,} ns, {m.rcuscale_batches}, {m.rcuscale_footprint_mb} MB"
                     + (" (OOM)" if m.rcuscale_enomem else "")))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


class ObjectiveChoice(str, Enum):
    multi = "multi"
    scalar = "scalar"


class SamplerChoice(str, Enum):
    tpe = "tpe"
    random = "random"


StorageOpt = Annotated[
    Optional[str],
    typer.Option("--storage", help="Database URL (default: $RCUTUNE_STORAGE, else sqlite:///rcutune.db here)."),
]


@app.command()
def study(
    hardware: HardwareOpt,
    workload: Annotated[Optional[list[str]], typer.Option("--workload", "-W", help="Workload profile (repeatable; default: all shipped).")] = None,
    trials: Annotated[Optional[int], typer.Option(min=1, help="New trials this run adds to each study (default: 30; --quick: 40).")] = None,
    study_name: Annotated[Optional[str], typer.Option("--study", help="Campaign name (default: the hardware profile's, with -quick for --quick).")] = None,
    storage_url: StorageOpt = None,
    jobs: Annotated[int, typer.Option(min=1, max=256, help="Worker processes running simulations (this process owns all writes).")] = max(1, min(os.cpu_count() or 1, 8)),
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the replication seed list and the sampler.")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Small preset: 1 simulated s, 2+2 seeds, 40 trials per workload.")] = False,
    new: Annotated[bool, typer.Option("--new", help="Start a fresh campaign (name-2, name-3, ...) instead of resuming.")] = False,
    kernel: Annotated[KernelVersion, typer.Option(help="Kernel release to model.")] = KernelVersion(sim.DEFAULT_KERNEL),  # type: ignore[call-arg]
    fix: Annotated[Optional[list[str]], typer.Option("--fix", help="Pin a parameter: key=value, e.g. layout=per-cpu. Repeatable.")] = None,
    faithful: Annotated[bool, typer.Option("--faithful", help="Only policies the stock kernel runs (per-CPU, no emergency reserve).")] = False,
    objective: Annotated[ObjectiveChoice, typer.Option(help="multi: reserved MiB and fallback cost; scalar: one weighted value.")] = ObjectiveChoice.multi,
    seconds: Annotated[Optional[float], typer.Option(min=0.001, max=86_400, help="High-fidelity simulated seconds per replication (default 2; --quick 1).")] = None,
    replications: Annotated[Optional[int], typer.Option(min=1, max=100, help="Base seeds every trial runs (default 3; --quick 2).")] = None,
    race_replications: Annotated[Optional[int], typer.Option(min=0, max=100, help="Extra seeds for contenders (default 3; --quick 2).")] = None,
    sampler: Annotated[SamplerChoice, typer.Option(help="Optuna sampler.")] = SamplerChoice.tpe,
    sim_timeout: Annotated[Optional[float], typer.Option(min=1.0, help="Wall-clock limit of one simulation in seconds (default: 30 per simulated second, at least 30); past it the trial fails.")] = None,
    no_run: Annotated[bool, typer.Option("--no-run", help="Create the campaign and add --trials to each study's budget without running trials; rcutune worker processes run them.")] = False,
    settings: SetOpt = None,
) -> None:
    """Create or resume a campaign: one Optuna study per workload, stored with everything that defines it."""
    import optuna

    from ._progress import PlainProgress, RichProgress
    from ._runner import StudyRequest, run_campaign
    from ._space import parse_fix

    with user_errors():
        if seconds is not None and not math.isfinite(seconds):
            raise UserError(f"--seconds {seconds}: must be a finite number of seconds")
        request = StudyRequest(
            hardware=hardware, workloads=tuple(workload or ()), overrides=tuple(settings or ()),
            kernel=kernel.value, fixed=tuple(parse_fix(fix).items()), faithful=faithful, objective=objective.value,
            trials=trials, campaign=study_name, storage_url=storage_url, jobs=jobs, seed=seed, quick=quick, new=new,
            sampler=sampler.value, max_seconds=seconds, replications=replications,
            race_replications=race_replications, sim_timeout_s=sim_timeout, run=not no_run,
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        progress = RichProgress() if is_terminal() else PlainProgress()
        # A polite kill stops like Ctrl-C: in-flight trials are failed and re-enqueued at once.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            result = run_campaign(request, progress)
        finally:
            signal.signal(signal.SIGTERM, previous)
    if no_run:
        budgets = ", ".join(f"{w} {b}" for w, b in result.budgets.items())
        typer.echo(f"campaign {result.campaign}: {len(result.budgets)} studies, trial budgets {budgets} "
                   f"({result.storage_url}); run them with: rcutune worker --study {result.campaign} --storage {result.storage_url}")
        return
    told = sum(result.told.values())
    typer.echo(f"campaign {result.campaign}: {told} trials added to {len(result.told)} studies in "
               f"{result.wall_seconds:.1f} s ({result.storage_url})")
    _exit_if_aborted("studies stopped early", result.aborted)


@app.command()
def worker(
    study_name: Annotated[str, typer.Option("--study", help="Campaign to join (created with rcutune study ... --no-run).")],
    storage_url: StorageOpt = None,
    jobs: Annotated[int, typer.Option(min=1, max=256, help="Processes running one trial's simulations (seeds) in parallel.")] = 1,
    heartbeat_interval: Annotated[int, typer.Option(min=1, max=3600, help="Seconds between heartbeats of the running trial.")] = 10,
    grace_period: Annotated[int, typer.Option(min=1, max=86_400, help="A running trial whose heartbeat is older than this many seconds is failed and run again.")] = 30,
    sim_timeout: Annotated[Optional[float], typer.Option(min=1.0, help="Wall-clock limit of one simulation in seconds (default: 30 per simulated second, at least 30).")] = None,
) -> None:
    """Join a campaign on a database server: run trials of all its studies until their budgets are spent.

    Start one on each machine (or several per machine); they share the work through the database,
    and the trial of a worker that dies is run again by the others."""
    import optuna

    from ._fleet import WorkerRequest, run_worker

    with user_errors():
        if grace_period <= heartbeat_interval:
            raise UserError(f"--grace-period {grace_period}: must be longer than --heartbeat-interval {heartbeat_interval}")
        request = WorkerRequest(campaign=study_name, storage_url=storage_url, jobs=jobs,
                                heartbeat_interval_s=heartbeat_interval, grace_period_s=grace_period,
                                sim_timeout_s=sim_timeout)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            result = run_worker(request, on_trial=_print_worker_trial)
        finally:
            signal.signal(signal.SIGTERM, previous)
    done = sum(result.finished.values())
    typer.echo(f"worker: campaign {result.campaign}: budgets spent; this worker ran {done} trials "
               f"({sum(result.failed.values())} failed) in {result.wall_seconds:.1f} s")
    _exit_if_aborted("this worker gave up", result.aborted)


def _exit_if_aborted(what: str, aborted) -> None:
    """Studies whose trials kept failing end the command with exit 1 and one line naming them."""
    if aborted:
        typer.echo(f"error: {what}: {', '.join(aborted)} (their trials kept failing; "
                   "see the fail_reason of their failed trials)", err=True)
        raise typer.Exit(EXIT_FAILURE)


def _print_worker_trial(workload: str, trial) -> None:
    attrs = trial.user_attrs
    policy = attrs.get("policy", {})
    text = f"{workload} #{trial.number} {trial.state.name.lower()}"
    if policy:
        text += f" N={policy.get('n_per_cpu')} {policy.get('layout')}"
    if "retry_of" in attrs:
        text += f" (retry of #{attrs['retry_of']})"
    if trial.state.name == "FAIL":
        text += f": {attrs.get('fail_reason', 'failed')}"
    typer.echo(text)


@app.command()
def studies(storage_url: StorageOpt = None) -> None:
    """List stored campaigns and studies: trials complete/pruned/failed, best values, age."""
    from rcutune import storage as storage_pkg

    from ._listing import list_studies

    with user_errors():
        url = storage_pkg.resolve_url(storage_url)
        if not storage_pkg.database_exists(url):
            typer.echo(f"no studies: {url} does not exist yet (run rcutune study first)")
            return
        campaigns = list_studies(url)
    if not campaigns:
        typer.echo(f"no studies in {url}")
        return
    console = Console()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for c in campaigns:
        table = Table(title=f"{c.name}: {c.hardware}, kernel {c.kernel}, {c.objective} objective, "
                            f"created {_age(now - c.created_at)} ago", title_justify="left")
        for column in ("study", "complete", "pruned", "failed", "best", "reserved MiB", "fallback ms/s", "last trial"):
            table.add_column(column, justify="left" if column in ("study", "best") else "right")
        for s in c.studies:
            v = s.best_values or {}
            table.add_row(s.optuna_name, str(s.complete), str(s.pruned), str(s.failed),
                          "-" if s.best_number is None else f"#{s.best_number}",
                          f"{v['reserved_mib']:.4g}" if "reserved_mib" in v else "-",
                          f"{v['fallback_cost']:.4g}" if "fallback_cost" in v else "-",
                          "-" if s.last_activity is None else f"{_age(now - s.last_activity)} ago")
        console.print(table)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="Campaign name (see rcutune studies).")],
    storage_url: StorageOpt = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Directory under which reports/<hardware>/<campaign>/ goes (default: reports).")] = None,
    confidence: Annotated[float, typer.Option(help="Required probability of meeting every SLO, in [0.5, 1).")] = 0.95,
    confirm_seeds: Annotated[int, typer.Option(min=0, max=32, help="Fresh seeds confirming the recommendation.")] = 4,
) -> None:
    """Write the report of a campaign (report.md, report.html, recommendation.json, plots); print its path.

    When no overall recommendation can be made (unhealthy surrogates, or no stock-kernel policy meets
    any workload) the report is still written and its path printed, but the command exits 1 and says
    on stderr why and which `rcutune study ... --trials K` to run."""
    import json as json_module
    from pathlib import Path

    from rcutune import storage as storage_pkg

    from ._report import write_report

    with user_errors():
        if not 0.5 <= confidence < 1.0:
            raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
        if out and Path(out).exists() and not Path(out).is_dir():
            raise UserError(f"--out {out}: not a directory; name a directory (it is created if missing)")
        url = storage_pkg.resolve_url(storage_url)
        directory = write_report(url, name, Path(out) if out else None, confidence=confidence,
                                 confirm_seeds=confirm_seeds)
    typer.echo(str(directory))
    doc = json_module.loads((directory / "recommendation.json").read_text())
    if doc["kernel_cmdline"] is None:
        why = ("unhealthy surrogates: " + "; ".join(f"{w} ({', '.join(p)})" for w, p in doc["unhealthy"].items())
               if doc["unhealthy"] else "no stock-kernel policy meets the SLOs of any workload at the required confidence")
        typer.echo(f"no recommendation: {why}" + (f"; run: {doc['fix_command']}" if doc["fix_command"] else ""), err=True)
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def recommend(
    hardware: HardwareOpt,
    workload: Annotated[Optional[str], typer.Option("--workload", "-W", help="Only this workload's recommendation.")] = None,
    storage_url: StorageOpt = None,
    campaign: Annotated[Optional[str], typer.Option("--study", help="Campaign (default: the newest for this hardware).")] = None,
    confidence: Annotated[float, typer.Option(help="Required probability of meeting every SLO, in [0.5, 1).")] = 0.95,
    confirm_seeds: Annotated[int, typer.Option(min=0, max=32, help="Fresh seeds confirming the recommendation.")] = 4,
    json_out: Annotated[bool, typer.Option("--json", help="Print recommendation.json's document.")] = False,
    settings: SetOpt = None,
) -> None:
    """Print the recommendation for a hardware profile: the kernel command line first.

    With --set hardware.<key>=<value> (e.g. hardware.cpus=96) the profile may have no study of its own:
    the recommendation is then extrapolated from the surrogates of the nearest studied profile of the
    family (CPU count, then memory), with intervals twice as wide, confirmed by simulating the new
    profile, and flagged as extrapolated."""
    from rcutune import storage as storage_pkg

    from ._recommend import EXTRAPOLATION_WIDEN, campaign_for, fit_surrogates, load_campaign, transfer
    from ._recommend import recommend as make_recommendation
    from ._recommend import store
    from ._report import recommendation_json

    with user_errors():
        if not 0.5 <= confidence < 1.0:
            raise UserError(f"--confidence {confidence}: must be at least 0.5 and below 1")
        url = storage_pkg.resolve_url(storage_url)
        target, _ = load_profiles(hardware, None, settings)
        name = campaign or campaign_for(url, target)[0]
        data = load_campaign(url, name)
        extrapolated = sim.profile_text(target) != sim.profile_text(data.hardware)
        if workload is not None:
            known = [w.name for w in data.workloads]
            if workload not in known:
                raise UserError(f"workload '{workload}' has no study in campaign '{name}' (studied: {', '.join(known)})")
            data.workloads = [w for w in data.workloads if w.name == workload]
        fit_surrogates(data)
        if extrapolated:
            transfer(data, target)
        rec = make_recommendation(data, confidence=confidence, confirm_seeds=confirm_seeds,
                                  widen=EXTRAPOLATION_WIDEN if extrapolated else 1.0, extrapolated=extrapolated)
        doc = recommendation_json(rec, data)
        if not extrapolated:
            store(url, rec, data)
    if json_out:
        typer.echo(json.dumps(doc, default=_json_safe))
        return
    choice = doc["overall"] if workload is None else doc["workloads"][workload]
    if choice is None or choice.get("kernel_cmdline") is None:
        if workload is not None and choice is not None and choice.get("unattainable"):
            reason = choice["unattainable"]
        elif doc["unhealthy"]:
            reason = "unhealthy surrogates"
        else:
            reason = "no stock-kernel policy meets the SLOs at the required confidence"
        typer.echo(f"no recommendation for {hardware} (campaign {name}): {reason}")
        for w, problems in doc["unhealthy"].items():
            typer.echo(f"  {w}: {'; '.join(problems)}")
        if doc["fix_command"]:
            typer.echo(f"run: {doc['fix_command']}")
        raise typer.Exit(EXIT_FAILURE)
    typer.echo(choice["kernel_cmdline"])
    typer.echo(f"  kernel {doc['kernel']}, layout {choice['layout']}, N={choice['n_per_cpu']}, "
               f"P(every SLO met)={choice['slo_met_probability']:.3f} (confidence {confidence}), campaign {name}"
               + (", EXTRAPOLATED" if doc["extrapolated"] else ""))
    typer.echo(f"  revert to the default: {doc['revert_cmdline']}")
    if workload is None:
        typer.echo(f"  serves: {', '.join(doc['served'])}")
        for w, entry in doc["workloads"].items():
            if w not in doc["served"]:
                why = entry["unattainable"] or ("; ".join(entry["unhealthy"]) if entry["unhealthy"]
                                                else "no stock-kernel policy meets its SLOs at that confidence")
                typer.echo(f"  not served: {w}: {why}")
    for w, entry in doc["workloads"].items():
        if entry["what_if"]:
            wi = entry["what_if"]
            typer.echo(f"  what-if for {w} (needs a kernel patch: {'; '.join(wi['what_if_reasons'])}): "
                       f"layout {wi['layout']}, N={wi['n_per_cpu']}, cost lower by {wi['gain']:.3g}")


def _json_safe(value):
    return value.item() if hasattr(value, "item") else list(value) if isinstance(value, tuple) else str(value)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _age(delta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def main() -> None:  # pragma: no cover - the console script calls `app`
    app()


if __name__ == "__main__":
    app()
