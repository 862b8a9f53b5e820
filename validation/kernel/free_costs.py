"""What freeing one object costs by its size, read from the guest kernel's own trace.

A test of one explanation for the OOM block's stronger N effect at large objects (N=64 saves the
kernel ~810 / 530 / 750 ns per object of 768 B / 1.5 KiB / 3 KiB against ~465 ns at 24 B, the
model the same list-free price at every size): the `rcu_head` walk is a dependent pointer chase
(kvfree_rcu_list() reads each next pointer from the object it is about to free) where
`kfree_bulk()` reads an array, so it could wait for memory at each page it enters.
`python -m rcutune.validation.kernel free-costs --guest-cpus C` boots the trace build at several
`kfree_mult` (sizes) with `rcu_min_cached_objs=0` (every object on the rcu_head list) and
`rcu_min_cached_objs=64` (blocks, `kfree_bulk()`), and reads from each trace

- the rcu_head walk's step: the mean time between consecutive `rcu_invoke_kvfree_callback` events
  of one CPU (kvfree_rcu_list() emits one per object, before its kvfree()); a gap with another event
  between, or over `MAX_STEP_NS`, is not a step;
- a `kfree_bulk()` record: the time from `rcu_invoke_kfree_bulk_callback` (emitted before the call) to
  the next event of the same CPU, over the block's records; the median over blocks.

A trace event costs the same at every size, so each figure's increase over the smallest size is the
size's own cost. Least squares through the origin over the pages entered per object (1/128, 1/8,
1/2, 1 for kmalloc-32 ... -4k) give `page_ns`, what `kfree_bulk()` pays per page (both paths touch
every object), and `walk_miss_ns`, what the walk pays per page beyond that. The figures are
emulation time (a step is measured while the vCPU runs; a wait for its turn is over `MAX_STEP_NS`),
and both guests run on the same emulator and host, so one fit covers every measured guest.
"""

from __future__ import annotations

import statistics
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from rcutune.sim._profiles import kmalloc_size

from . import harness

MAX_STEP_NS = 5_000.0  # a longer gap between two objects of a walk is an interruption, not a step
MIN_BLOCK_RECORDS = 50  # smaller blocks are dominated by the call around them
OBJECT_BYTES = 24  # rcuscale's struct kfree_obj: char[8] + rcu_head
KFREE_MULTS = (1, 16, 64, 128)  # 32 B, 512 B, 2 KiB, 4 KiB size classes
LIST_N, BULK_N = 0, 64  # rcu_min_cached_objs of the list and the block boots
FREE_COST_EVENTS = (
    "rcu:rcu_invoke_kfree_bulk_callback",
    "rcu:rcu_invoke_kvfree_callback",
    "workqueue:workqueue_execute_start",
    "workqueue:workqueue_execute_end",
    "sched:sched_switch",
)
FREE_COSTS_DIR = Path(__file__).resolve().parent.parent / "free-costs"
"""One file per guest, `qemu-tcg-<vCPUs>.toml`, written by `free-costs`."""
PAGE_SIZE = 4096


@dataclass(frozen=True)
class TraceCosts:
    """What one trace says: the walk's mean step and a kfree_bulk() record's median, with their counts."""

    list_step_ns: float | None
    list_steps: int
    bulk_record_ns: float | None
    bulk_blocks: int


def trace_costs(text: str) -> TraceCosts:
    """The per-object figures of one trace (a trace boot's console)."""
    last_kvfree: dict[int, float] = {}
    pending_bulk: dict[int, tuple[float, int]] = {}
    steps: list[float] = []
    per_record: list[float] = []
    for line in text.splitlines():
        m = harness.TRACE_LINE_RE.match(line)
        if not m:
            continue
        cpu, ts, event = int(m["cpu"]), float(m["ts"]), m["event"]
        if cpu in pending_bulk:
            started, records = pending_bulk.pop(cpu)
            if event != "sched_switch" and records >= MIN_BLOCK_RECORDS:
                per_record.append((ts - started) * 1e9 / records)
        if event == "rcu_invoke_kvfree_callback":
            if cpu in last_kvfree:
                step = (ts - last_kvfree[cpu]) * 1e9
                if step <= MAX_STEP_NS:
                    steps.append(step)
            last_kvfree[cpu] = ts
            continue
        last_kvfree.pop(cpu, None)
        if event == "rcu_invoke_kfree_bulk_callback":
            records = _field(m["fields"], "nr_records")
            if records is not None:
                pending_bulk[cpu] = (ts, records)
    return TraceCosts(
        statistics.fmean(steps) if steps else None,
        len(steps),
        statistics.median(per_record) if per_record else None,
        len(per_record),
    )


def _field(fields: str, name: str) -> int | None:
    for word in fields.split():
        key, _, value = word.partition("=")
        if key == name and value.isdigit():
            return int(value)
    return None


@dataclass(frozen=True)
class SizeCosts:
    """One size class: the walk's step (from the list boot) and a record's cost (from the block boot)."""

    slot_bytes: int
    list_step_ns: float
    bulk_record_ns: float


def pages_per_object(slot_bytes: int) -> float:
    """Pages a free enters per object when objects are freed in allocation order."""
    return min(1.0, slot_bytes / PAGE_SIZE)


def fit_page_costs(guests: list[list[SizeCosts]]) -> dict[str, float]:
    """`page_ns` and `walk_miss_ns` (emulation time per page entered) from each guest's increases
    over its smallest size, by least squares through the origin over all guests."""
    page_xy = page_xx = miss_xy = 0.0
    for rows in guests:
        if len(rows) < 2:
            raise ValueError("need figures of at least two sizes")
        rows = sorted(rows, key=lambda r: r.slot_bytes)
        base = rows[0]
        for r in rows[1:]:
            bulk_up = r.bulk_record_ns - base.bulk_record_ns
            pages = pages_per_object(r.slot_bytes) - pages_per_object(base.slot_bytes)
            page_xy += pages * bulk_up
            miss_xy += pages * ((r.list_step_ns - base.list_step_ns) - bulk_up)
            page_xx += pages * pages
    if page_xx <= 0.0:
        raise ValueError("need figures of at least two sizes")
    return {"page_ns": page_xy / page_xx, "walk_miss_ns": miss_xy / page_xx}


def slot_of(kfree_mult: int) -> int:
    return kmalloc_size(OBJECT_BYTES * kfree_mult)


def read_figures(path: Path | str) -> tuple[int, list[SizeCosts]]:
    """A guest's file: its vCPUs and its figures per size."""
    data = tomllib.loads(Path(path).read_text())
    return int(data["vcpus"]), [SizeCosts(int(a), float(b), float(c)) for a, b, c in data["sizes"]]


def measured_costs(directory: Path | str = FREE_COSTS_DIR) -> dict[str, float]:
    """One fit over the figures of every guest measured in `directory` ({} when none is)."""
    guests = [read_figures(path)[1] for path in sorted(Path(directory).glob("*.toml"))]
    return fit_page_costs(guests) if guests else {}


def free_costs_text(vcpus: int, rows: list[SizeCosts], command: str) -> str:
    """A guest's file: its figures (`measured_costs` fits every guest's together)."""
    lines = [
        "# Per-object free costs by size, measured on the guest's own trace (validation/kernel/free_costs.py).",
        f"# {command}",
        f"vcpus = {vcpus}",
        "# [slot bytes, rcu_head walk step ns, kfree_bulk() record ns], emulation time; trace events included",
        "sizes = [",
        *(f"  [{r.slot_bytes}, {r.list_step_ns:.1f}, {r.bulk_record_ns:.1f}]," for r in rows),
        "]",
    ]
    return "\n".join(lines) + "\n"


def measure(
    cpus: int,
    mem_mib: int,
    alloc_num: int,
    loops: int,
    mults: tuple[int, ...],
    boots: int,
    keep_dir: Path | None,
) -> list[SizeCosts]:
    """Boot the trace build `boots` times at each size with the list and with blocks; the medians over
    boots (one boot's figures move by up to 2x from the next's: the host, not the trace)."""
    rows = []
    for mult in mults:
        steps, records = [], []
        for rep in range(boots):
            for n in (LIST_N, BULK_N):
                costs = _trace_once(cpus, mem_mib, alloc_num, loops, mult, n, rep, keep_dir)
                if n == LIST_N and costs.list_step_ns is not None:
                    steps.append(costs.list_step_ns)
                if n == BULK_N and costs.bulk_record_ns is not None:
                    records.append(costs.bulk_record_ns)
        if not steps or not records:
            raise RuntimeError(f"kfree_mult={mult}: the traces have no rcu_head walk or no kfree_bulk() block")
        step, record = statistics.median(steps), statistics.median(records)
        rows.append(SizeCosts(slot_of(mult), step, record))
        print(
            f"slot {slot_of(mult):5d} B: rcu_head walk step {step:7.1f} ns, kfree_bulk() record {record:7.1f} ns"
            f" (medians of {len(steps)} and {len(records)} boots)",
            flush=True,
        )
    return rows


def _trace_once(
    cpus: int, mem_mib: int, alloc_num: int, loops: int, mult: int, n: int, rep: int, keep_dir: Path | None
) -> TraceCosts:
    params = harness.BootParams(
        guest_cpus=cpus,
        guest_mem_mib=mem_mib,
        rcu_min_cached_objs=n,
        kfree_nthreads=-1,
        kfree_alloc_num=alloc_num,
        kfree_loops=loops,
        kfree_mult=mult,
        kfree_rcu_test_single=0,
        kfree_rcu_test_double=1,
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(keep_dir or scratch) / f"free-costs-c{cpus}-n{n}-x{mult}-{rep}.txt"
        res, _ = harness.trace_boot(params, out, events=FREE_COST_EVENTS, quiet_ms=3000)
        if res.status != "ok":
            raise RuntimeError(f"{params.point_id}: the trace boot ended with status {res.status}")
        return trace_costs(out.read_text(errors="replace"))
