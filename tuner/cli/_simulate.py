"""`rcutune profiles` and `rcutune simulate`: the shipped profiles, and one run of the model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from rcutune import sim
from rcutune.sim import KERNELS, Policy

from .._errors import UserError
from ._common import HardwareOpt, SetOpt, is_terminal, load_profiles, user_errors

KernelVersion = Enum("KernelVersion", {v.replace(".", "_"): v for v in KERNELS}, type=str)  # type: ignore[misc]


class LayoutChoice(str, Enum):
    per_cpu = "per-cpu"
    global_ = "global"
    hybrid = "hybrid"


def register(app: typer.Typer) -> None:
    app.command()(profiles)
    app.command()(simulate)


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
        return (
            f"{profile.cpus} CPUs, {profile.memory_mib // 1024} GiB, {profile.page_size // 1024} KiB pages, "
            f"HZ={profile.hz}, {profile.nocb_cpus} NOCB, GP median {profile.gp_median_ms:g} ms"
        )
    if profile.shape == "rcuscale":
        return (
            f"rcuscale: {profile.kfree_loops} loops x {profile.kfree_alloc_num} allocs, "
            f"{profile.rcuscale_object_bytes} B objects"
        )
    return (
        f"{profile.calls_per_s_per_cpu:g} calls/s/CPU, {profile.headless_fraction:.0%} headless, "
        f"{profile.pressure} pressure, {profile.duration_s:g} s"
    )


def simulate(
    hardware: HardwareOpt,
    workload: Annotated[
        str, typer.Option("--workload", "-W", metavar="NAME|FILE", help="Workload profile name or path.")
    ],
    n_per_cpu: Annotated[
        Optional[int],
        typer.Option(min=0, metavar="N", help="rcu_min_cached_objs: cached pages per CPU (default: the kernel's)."),
    ] = None,
    layout: Annotated[
        LayoutChoice, typer.Option(help="Pool layout; global and hybrid are what-ifs.")
    ] = LayoutChoice.per_cpu,
    shared_reserve_pages: Annotated[
        int, typer.Option(min=0, metavar="PAGES", help="Hybrid layout: shared reserve pages.")
    ] = 0,
    refill_delay_ms: Annotated[
        int,
        typer.Option(min=0, max=100_000, metavar="MS", help="rcu_delay_page_cache_fill_msec: refill backoff delay."),
    ] = 5000,
    refill_low_watermark: Annotated[
        int, typer.Option(min=0, metavar="PAGES", help="Refill when the cache falls to this (what-if; 0 = on a miss).")
    ] = 0,
    prealloc_at_boot: Annotated[
        Optional[bool],
        typer.Option("--prealloc-at-boot/--no-prealloc-at-boot", help="Fill caches at boot (default: as the kernel)."),
    ] = None,
    emergency_reserve_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            metavar="FRACTION",
            help="What-if GFP_MEMALLOC-like reserve access below this free fraction.",
        ),
    ] = 0.0,
    kernel: Annotated[KernelVersion, typer.Option(help="Kernel release to model.")] = KernelVersion(sim.DEFAULT_KERNEL),  # type: ignore[call-arg]
    seconds: Annotated[
        Optional[float], typer.Option(min=1e-6, metavar="S", help="Simulated seconds (default: the workload's).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, metavar="K", help="Random seed.")] = 0,
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
        out = {
            "hardware": hw.name,
            "workload": wl.name,
            "kernel": kernel.value,
            "policy": asdict(policy),
            **metrics.as_dict(),
        }
        typer.echo(json.dumps(out, sort_keys=False))
        return
    _print_metrics(hw, wl, kernel.value, policy, metrics)


def _run_with_progress(hw, wl, policy, seconds, seed, kernel):
    if not is_terminal():
        return sim.simulate(hw, wl, policy, seconds=seconds, seed=seed, kernel=kernel)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("simulating"), BarColumn(), TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task("sim", total=1.0)
        return sim.simulate(
            hw, wl, policy, seconds=seconds, seed=seed, kernel=kernel, progress=lambda f: bar.update(task, completed=f)
        )


def _print_metrics(hw, wl, kernel: str, policy: Policy, m: sim.Metrics) -> None:
    console = Console()
    label = " [bold yellow](what-if: " + "; ".join(m.what_if_reasons) + ")[/]" if m.what_if else ""
    console.print(
        f"[bold]{hw.name}[/] / [bold]{wl.name}[/], kernel {kernel}, N={policy.n_per_cpu}, layout={policy.layout}{label}"
    )
    table = Table(show_header=False, box=None)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("calls (two-arg / headless)", f"{m.calls:,} ({m.calls_two_arg:,} / {m.calls_headless:,})"),
        ("objects freed / pending at end", f"{m.objects_freed:,} / {m.objects_pending_end:,}"),
        ("memory waiting, mean / peak", f"{m.bytes_pending_mean / 2**20:.2f} / {m.bytes_pending_peak / 2**20:.2f} MiB"),
        ("grace periods / batches", f"{m.grace_periods:,} / {m.batches:,}"),
        (f"records per block (mean of {m.records_per_block})", f"{m.records_per_block_mean:.0f}"),
        (
            "blocks from cache / inline allocs",
            f"{m.blocks_from_cache:,} / {m.page_alloc_attempts:,} ({m.page_alloc_failures:,} failed)",
        ),
        ("rcu_head fallbacks", f"{m.head_fallbacks:,}"),
        ("synchronize_rcu() fallbacks, stall", f"{m.sync_fallbacks:,}, {m.sync_stall_seconds:.3f} s"),
        (
            "call latency p50 / p99 / max",
            f"{m.call_latency_p50_us:.2f} / {m.call_latency_p99_us:.2f} / {m.call_latency_max_us:.1f} us",
        ),
        ("lock wait", f"{m.lock_wait_seconds:.4f} s"),
        ("cache reserved", f"{m.cache_pages_reserved:,} pages ({m.cache_bytes_reserved / 2**20:.2f} MiB)"),
        ("cached pages stranded (mean)", f"{m.cache_pages_stranded_mean:.1f}"),
        ("free pages min / OOM events", f"{m.free_pages_min:,} / {m.oom_events}"),
        ("shrinker scans", f"{m.shrinker_scans:,}"),
        ("simulated / wall seconds", f"{m.sim_seconds:.2f} / {m.wall_seconds:.2f} ({m.events:,} events)"),
    ]
    if m.rcuscale_total_time_ns is not None:
        rows.append(
            (
                "rcuscale: time, batches, footprint",
                f"{m.rcuscale_total_time_ns:,} ns, {m.rcuscale_batches}, {m.rcuscale_footprint_mb} MB"
                + (" (OOM)" if m.rcuscale_enomem else ""),
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
