"""A workload profile from a trace of the kernel's own kvfree_rcu() events.

The events (include/trace/events/rcu.h, all TRACE_EVENT_RCU, so only with CONFIG_RCU_TRACE=y):
- `rcu_invoke_kfree_bulk_callback` ("%s bulk=0x%p nr_records=%lu"): kfree_rcu_work() frees one block
  page of pointers with kfree_bulk(), after a grace period; one line stands for nr_records objects.
- `rcu_invoke_kvfree_callback` ("%s rhp=%p func=%ld"): kfree_rcu_work() frees one object of the
  rcu_head list (two-argument callers that found no block page; func is the rcu_head's offset in the
  object), or one pointer of a vmalloc block (func=0).
- `rcu_kvfree_callback` ("%s rhp=%p func=%ld %ld", the last number the queue length): call_rcu() of
  a kvfree offset, i.e. the call itself. Tree RCU's batched path never logs it (Tiny RCU does).
The first word is the RCU flavour (rcu_sched, rcu_preempt), or "slab" from 6.14, where the code moved
to mm/slab_common.c. Lines come as tracefs prints them (trace, trace_pipe) or as `trace-cmd report`
does: `TASK-PID [CPU] FLAGS TIMESTAMP: EVENT: FIELDS`, flags optional.

A reclaim event says when and where objects were freed, not when they were queued: rates are
averages over the trace, bursts shorter than `RECLAIM_WINDOW_S` are smoothed by batching, and which
CPU called is known only where the reclaim work runs on the calling CPU (a per-CPU workqueue,
before 6.12). What a trace cannot show is listed in `WorkloadCapture.assumed`.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rcutune import sim

from .._errors import UserError

EVENTS = ("rcu_invoke_kfree_bulk_callback", "rcu_invoke_kvfree_callback", "rcu_kvfree_callback")
RCU_HEAD_BYTES = 16
"""sizeof(struct rcu_head) on 64-bit: an object is at least its rcu_head's offset plus this."""
RECLAIM_WINDOW_S = 1.0
"""Window for bursts seen in reclaim events: batching and grace periods blur anything shorter."""
CALL_WINDOW_S = 0.01
"""Window for bursts seen in call events."""
BURST_FACTOR = 3.0
"""A window is part of a burst when it holds this many times the median window's objects."""
MAX_BURST_MULTIPLIER = 1e4

_LINE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+(?:\S+\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>" + "|".join(EVENTS) + r"):\s+(?P<fields>.*?)\s*$"
)
_FIELDS = {
    "rcu_invoke_kfree_bulk_callback": re.compile(r"(?P<rcu>\S+) bulk=\S+ nr_records=(?P<n>\d+)"),
    "rcu_invoke_kvfree_callback": re.compile(r"(?P<rcu>\S+) rhp=\S+ func=(?P<offset>-?\d+)"),
    "rcu_kvfree_callback": re.compile(r"(?P<rcu>\S+) rhp=\S+ func=(?P<offset>-?\d+)(?: (?:qlen=)?\d+)?"),
}


@dataclass(frozen=True)
class TraceEvent:
    """One event line: where and when, and how many objects it stands for."""

    event: str
    cpu: int
    time: float
    rcu: str  # rcu_sched, rcu_preempt, or slab (6.14+)
    objects: int
    offset: int | None = None


@dataclass(frozen=True)
class Trace:
    """The kvfree_rcu() events of a trace file and the CPU count its header gives (None if none)."""

    events: tuple[TraceEvent, ...]
    cpus: int | None
    lines_ignored: int


def parse_trace(text: str) -> Trace:
    """The kvfree_rcu() events of a tracefs or `trace-cmd report` text; other lines are skipped.

    Raises:
        UserError: a kvfree_rcu() event line whose fields do not read as the kernel prints them.
    """
    events = []
    cpus = None
    ignored = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        header = re.search(r"#P:(\d+)|^cpus=(\d+)", line)
        if header and cpus is None:
            cpus = int(header.group(1) or header.group(2))
        match = _LINE.match(line)
        if not match:
            ignored += bool(line.strip())
            continue
        event = match.group("event")
        fields = _FIELDS[event].match(match.group("fields"))
        if not fields:
            raise UserError(
                f"trace line {number}: {event} fields {match.group('fields')!r} do not read as the "
                "kernel prints them; give the text of `trace-cmd report` or of tracefs's trace"
            )
        groups = fields.groupdict()
        events.append(
            TraceEvent(
                event,
                int(match.group("cpu")),
                float(match.group("ts")),
                groups["rcu"],
                int(groups.get("n") or 1),
                int(groups["offset"]) if groups.get("offset") is not None else None,
            )
        )
    events.sort(key=lambda e: e.time)
    return Trace(tuple(events), cpus, ignored)


@dataclass(frozen=True)
class WorkloadCapture:
    """A workload profile estimated from a trace, with what was measured and what assumed."""

    keys: dict[str, Any]
    measured: tuple[str, ...]  # one line each: what the trace showed
    assumed: tuple[str, ...]  # one line each: what it cannot show, and the value taken
    source: str

    def profile(self, name: str = "captured") -> sim.WorkloadProfile:
        return sim.WorkloadProfile.model_validate({"name": name, **self.keys})

    def toml(self) -> str:
        lines = [f"# Workload profile from the kvfree_rcu() events of {self.source}, by rcutune workload capture."]
        lines.append("# Measured:")
        lines += [line for m in self.measured for line in comment(m)]
        lines.append("# Not in the trace, so assumed:")
        lines += [line for a in self.assumed for line in comment(a)]
        lines += [f"{k} = {_toml(v)}" for k, v in self.keys.items()]
        return "\n".join(lines) + "\n"


def comment(text: str, width: int = 100) -> list[str]:
    """One item of a profile's comment block, wrapped: "#   first line", "#     more"."""
    return textwrap.wrap(
        text, width, initial_indent="#   ", subsequent_indent="#     ", break_long_words=False, break_on_hyphens=False
    )


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


@dataclass
class _Bursts:
    base_per_s: float  # objects per second between bursts, all CPUs
    multiplier: float = 1.0
    burst_ms: float = 0.0
    every_s: float = 0.0
    windows: int = 0
    runs: int = 0
    notes: list[str] = field(default_factory=list)


def _bursts(times: np.ndarray, weights: np.ndarray, span: float, window: float) -> _Bursts:
    """Bursts as runs of windows holding `BURST_FACTOR` times the median window's objects."""
    total = float(weights.sum())
    n = int(span // window)
    if n < 4:
        return _Bursts(
            total / span,
            notes=[
                f"the trace spans {span:.3g} s, under 4 windows of {window:g} s: too short to show bursts; none assumed"
            ],
        )
    edges = times[0] + window * np.arange(n + 1)
    counts, _ = np.histogram(times, bins=edges, weights=weights)
    counts[-1] += weights[times >= edges[-1]].sum()
    median = float(np.median(counts))
    hot = counts > BURST_FACTOR * median if median > 0 else counts > 0
    if median <= 0 and hot.all() or not hot.any():
        return _Bursts(total / span, windows=n)
    runs = int(np.sum(hot & ~np.concatenate(([False], hot[:-1]))))
    calm = float(counts[~hot].mean()) / window if (~hot).any() else 0.0
    burst_rate = float(counts[hot].mean()) / window
    multiplier = min(MAX_BURST_MULTIPLIER, burst_rate / calm) if calm > 0 else MAX_BURST_MULTIPLIER
    burst_ms = hot.sum() * window * 1000 / runs
    every = max(0.0, (span - hot.sum() * window) / runs)
    return _Bursts(burst_rate / multiplier, multiplier, burst_ms, every, n, runs)


def _skew(rates: list[float]) -> float:
    """The Zipf exponent s that fits rate_i ~ i^-s over the calling CPUs ranked by rate."""
    ranked = sorted((r for r in rates if r > 0), reverse=True)
    if len(ranked) < 2:
        return 0.0
    x = np.log(np.arange(1, len(ranked) + 1))
    y = np.log(ranked)
    slope = float(np.polyfit(x, y, 1)[0])
    return min(4.0, max(0.0, -slope))


def _read_trace(path: Path) -> Trace:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"--from-trace {path}: cannot read it ({err.strerror}); give a trace file") from None
    trace = parse_trace(text)
    if not trace.events:
        raise UserError(
            f"--from-trace {path}: no {', '.join(EVENTS)} line; record them as docs/apply.md says "
            "(the kernel needs CONFIG_RCU_TRACE=y)"
        )
    return trace


def _cpus_and_span(
    path: Path, trace: Trace, cpus: int | None, duration_s: float | None, assumed: list[str]
) -> tuple[int, float]:
    """The machine's CPU count and the seconds the trace stands for, checked against its events."""
    events = trace.events
    seen_cpus = max(e.cpu for e in events) + 1
    if cpus is None:
        cpus = trace.cpus or seen_cpus
        if trace.cpus is None:
            assumed.append(f"{cpus} CPUs: the highest CPU with an event (give --cpus for the machine's count)")
    if cpus < seen_cpus:
        raise UserError(f"--cpus {cpus}: the trace has events on CPU {seen_cpus - 1}; give at least {seen_cpus}")
    span = events[-1].time - events[0].time
    if duration_s is not None:
        if duration_s < span:
            raise UserError(f"--duration {duration_s:g}: the events alone span {span:.6g} s; give at least that")
        span = duration_s
    elif span <= 0:
        raise UserError(f"--from-trace {path}: every event has the same time stamp; give --duration (seconds)")
    return cpus, span


def _rate_keys(
    keys: dict[str, Any],
    side: list[TraceEvent],
    span: float,
    cpus: int,
    calls: bool,
    measured: list[str],
    assumed: list[str],
) -> _Bursts:
    """calls_per_s_per_cpu from the objects between bursts; the bursts themselves for the caller."""
    times = np.array([e.time for e in side])
    weights = np.array([float(e.objects) for e in side])
    window = CALL_WINDOW_S if calls else RECLAIM_WINDOW_S
    bursts = _bursts(times, weights, span, window)
    assumed += bursts.notes
    if bursts.runs:
        measured.append(
            f"{bursts.runs} bursts in {bursts.windows} windows of {window:g} s: x{bursts.multiplier:.3g} "
            f"for {bursts.burst_ms:.3g} ms every {bursts.every_s:.3g} s"
        )
        if not calls:
            assumed.append(
                f"bursts shorter than {window:g} s are smoothed by batching: the reclaim side shows only longer ones"
            )
    keys["calls_per_s_per_cpu"] = _round(bursts.base_per_s / cpus)
    measured.append(
        f"calls_per_s_per_cpu = {keys['calls_per_s_per_cpu']:g}: objects per second between bursts, divided by the CPUs"
    )
    return bursts


def _object_keys(
    keys: dict[str, Any], calls: list[TraceEvent], reclaims: list[TraceEvent], measured: list[str], assumed: list[str]
) -> None:
    """headless_fraction, vmalloc_fraction and object_bytes: what the reclaim events show of the objects."""
    head_list = [e for e in reclaims if e.event == "rcu_invoke_kvfree_callback" and (e.offset or 0) > 0]
    vmalloc = sum(1 for e in reclaims if e.event == "rcu_invoke_kvfree_callback" and e.offset == 0)
    reclaimed = sum(e.objects for e in reclaims)
    two_arg_floor = len(head_list) / reclaimed if reclaimed else 0.0
    headless = min(0.1, 1.0 - two_arg_floor)
    keys["headless_fraction"] = _round(headless, 3)
    assumed.append(
        f"headless_fraction = {keys['headless_fraction']:g}: headless and two-argument frees share block "
        f"pages; only the rcu_head list ({two_arg_floor:.3g} of objects) is surely two-argument"
    )
    keys["vmalloc_fraction"] = _round(vmalloc / reclaimed, 3) if reclaimed else 0.0
    measured.append(f"vmalloc_fraction = {keys['vmalloc_fraction']:g}: pointers freed from vmalloc blocks (func=0)")
    sized = [e.offset for e in (calls or head_list) if e.offset]
    if sized:
        size = int(8 * math.ceil(np.mean([o + RCU_HEAD_BYTES for o in sized]) / 8))
        keys["object_bytes"] = size
        measured.append(
            f"object_bytes = {size}: rcu_head offset + {RCU_HEAD_BYTES} (func=), a lower bound: what "
            "follows the rcu_head is not in the trace"
        )
    else:
        keys["object_bytes"] = 256
        assumed.append("object_bytes = 256: block-page frees show no size, and no rcu_head-list free was traced")


def _cpu_keys(
    keys: dict[str, Any], side: list[TraceEvent], cpus: int, known: bool, measured: list[str], assumed: list[str]
) -> None:
    """active_cpus_fraction and skew, where the trace says which CPUs called."""
    if not known:
        keys["active_cpus_fraction"] = 1.0
        keys["skew"] = 0.0
        assumed.append(
            "active_cpus_fraction = 1, skew = 0: reclaim runs on an unbound workqueue on this release "
            "(6.12 on), so the trace does not say which CPUs called"
        )
        return
    per_cpu = [0.0] * cpus
    for e in side:
        per_cpu[e.cpu] += e.objects
    active = sum(1 for c in per_cpu if c > 0)
    keys["active_cpus_fraction"] = _round(active / cpus, 3)
    keys["skew"] = round(_skew(per_cpu), 3)
    measured.append(
        f"active_cpus_fraction = {keys['active_cpus_fraction']:g}, skew = {keys['skew']:g}: "
        f"objects per CPU {', '.join(f'{c:g}' for c in per_cpu)}"
    )


def capture_workload(
    path: Path | str, *, cpus: int | None = None, kernel: str | None = None, duration_s: float | None = None
) -> WorkloadCapture:
    """A workload profile from the trace in `path`.

    Args:
        cpus: online CPUs of the traced machine (default: the trace's header, else the highest CPU seen).
        kernel: the release that recorded it, if known (decides whether reclaim CPUs are calling CPUs).
        duration_s: how long the trace recorded (default: from the first event to the last).

    Raises:
        UserError: an unreadable file, no kvfree_rcu() event in it, or a bad option value.
    """
    path = Path(path)
    trace = _read_trace(path)
    if kernel is not None:
        sim.kernel_behaviour(kernel)  # raises ValueError naming the modelled releases
    events = trace.events
    measured: list[str] = []
    assumed: list[str] = []
    cpus, span = _cpus_and_span(path, trace, cpus, duration_s, assumed)
    calls = [e for e in events if e.event == "rcu_kvfree_callback"]
    reclaims = [e for e in events if e.event != "rcu_kvfree_callback"]
    side = calls if calls else reclaims
    rcu = sorted({e.rcu for e in events})
    objects = sum(e.objects for e in side)
    counts = {name: sum(1 for e in events if e.event == name) for name in EVENTS}
    measured.append(
        f"{len(events)} events over {span:.6g} s on {cpus} CPUs ({', '.join(rcu)}): "
        + ", ".join(f"{n} {name}" for name, n in counts.items())
    )
    if calls:
        measured.append(f"{objects} kvfree_rcu() calls (rcu_kvfree_callback logs each call)")
    else:
        head = sum(e.objects for e in reclaims if e.event == "rcu_invoke_kvfree_callback")
        measured.append(
            f"{objects} objects reclaimed: {objects - head} from block pages, {head} one by one "
            "(rcu_head list or vmalloc)"
        )
    slab_era = "slab" in rcu
    behaviour = sim.kernel_behaviour(kernel) if kernel else None
    if calls:
        per_cpu_known = True
    elif behaviour is not None:
        per_cpu_known = behaviour.reclaim_wq == "system_wq"
    else:
        per_cpu_known = not slab_era
        if not slab_era:
            assumed.append(
                "reclaim ran on the CPU whose calls filled the batch (per-CPU system_wq, before 6.12; "
                "give --kernel to say which release recorded it)"
            )
    keys: dict[str, Any] = {"shape": "open", "duration_s": 10.0}
    assumed.append("duration_s = 10: the simulated time of each run, not the trace's length")
    bursts = _rate_keys(keys, side, span, cpus, bool(calls), measured, assumed)
    _object_keys(keys, calls, reclaims, measured, assumed)
    _cpu_keys(keys, side, cpus, per_cpu_known, measured, assumed)
    if bursts.runs:
        keys.update(
            burst_every_s=_round(bursts.every_s),
            burst_ms=_round(bursts.burst_ms),
            burst_multiplier=_round(max(1.0, bursts.multiplier)),
        )
    else:
        keys["burst_every_s"] = 0.0
    keys["pressure"] = "steady"
    assumed.append(
        "pressure = steady, anon_fraction = 0.4 (the default): a trace of these events shows nothing "
        "of the memory pressure around them"
    )
    assumed.append(
        "what left no event: headless frees that fell back to synchronize_rcu() and freed inline"
        + (", frees through kfree_rcu_sheaf() (6.18 on)" if (behaviour.sheaves if behaviour else slab_era) else "")
        + ", and objects still pending when the trace stopped"
    )
    capture = WorkloadCapture(keys, tuple(measured), tuple(assumed), path.name)
    capture.profile()  # validated here, so a file it writes always loads
    return capture
