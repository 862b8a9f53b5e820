"""Hardware and workload profiles: validated TOML files.

A profile is a flat TOML table. Every key is declared here with its unit and its allowed range;
an unknown key, a wrong type, an out-of-range value or malformed TOML raises `ProfileError`,
whose one-line message names the file, the key, the line where known, and the allowed range.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_KMALLOC_SMALL = (8, 16, 32, 64, 96, 128, 192)


def kmalloc_size(nbytes: int) -> int:
    """The kmalloc cache an allocation of `nbytes` lands in (kmalloc-8 ... kmalloc-192, then powers of two).

    Large allocations go to the page allocator and round up to whole pages of 4 KiB.
    """
    for size in _KMALLOC_SMALL:
        if nbytes <= size:
            return size
    size = 256
    while size < nbytes and size < 8192:
        size *= 2
    if nbytes <= size:
        return size
    return -(-nbytes // 4096) * 4096


class ProfileError(ValueError):
    """A profile (file, name or override) that cannot be used; the message is one line."""


class _Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=64)
    description: str = ""

    @classmethod
    def kind(cls) -> str:
        raise NotImplementedError


def _float(default: float, lo: float, hi: float, doc: str) -> Any:
    return Field(default=default, ge=lo, le=hi, description=doc)


class HardwareProfile(_Profile):
    """A machine: CPUs, memory, timer, grace periods, allocator and lock costs, SLOs."""

    cpus: int = Field(ge=1, le=4096, description="online CPUs (nr_cpu_ids)")
    memory_mib: int = Field(ge=64, le=16 * 1024 * 1024, description="RAM in MiB")
    page_size: Literal[4096, 16384, 65536] = 4096
    hz: Literal[100, 250, 300, 1000] = 1000
    nocb_cpus: int = Field(default=0, ge=0, le=4096, description="CPUs whose callbacks are offloaded (rcu_nocbs=)")
    # Grace periods: a shifted log-normal, clipped to [gp_min_ms, gp_max_ms].
    gp_median_ms: float = _float(12.0, 0.05, 10_000.0, "median normal grace-period duration")
    gp_sigma: float = _float(0.4, 0.0, 3.0, "log-normal shape of normal grace periods")
    gp_min_ms: float = _float(4.0, 0.01, 10_000.0, "shortest normal grace period")
    gp_max_ms: float = _float(80.0, 0.05, 100_000.0, "longest normal grace period")
    gp_expedited_median_ms: float = _float(0.15, 0.01, 1000.0, "median expedited grace period")
    gp_expedited_sigma: float = _float(1.0, 0.0, 3.0, "log-normal shape of expedited grace periods")
    rcu_expedited: bool = Field(default=False, description="rcupdate.rcu_expedited: synchronize_rcu() is expedited")
    # Callback invocation and work items.
    cb_invoke_us: float = _float(50.0, 0.0, 1e6, "CPU time of invoking one RCU callback (softirq or rcuo)")
    nocb_invoke_ms: float = _float(3.0, 0.0, 1e4, "rcuog and rcuo wake-ups together, on CPUs no kernel loop holds")
    wq_latency_us: float = _float(30.0, 0.0, 1e6, "a woken kworker starts on a CPU no kernel loop holds")
    context_switch_us: float = _float(
        2.0, 0.0, 1e5, "CPU time of a switch between a kernel loop and queued work, each way"
    )
    hrtimer_latency_us: float = _float(
        5.0, 0.0, 1e6, "hrtimer_start(0) to a woken kworker being runnable (the refill kick)"
    )
    rcu_lazy: bool = Field(default=False, description="CONFIG_RCU_LAZY with lazy call_rcu() on NOCB CPUs")
    preempt: Literal["none", "voluntary", "full"] = Field(
        default="voluntary",
        description="the preemption model: CONFIG_PREEMPT_NONE, _VOLUNTARY or PREEMPT (preemptible RCU)",
    )
    preempt_dynamic: bool = Field(
        default=False, description="CONFIG_PREEMPT_DYNAMIC: preempt_count is tracked whatever the model"
    )
    lazy_flush_ms: float = _float(10_000.0, 0.0, 1e6, "LAZY_FLUSH_JIFFIES in ms")
    # CPU costs.
    kfree_call_ns: float = _float(110.0, 1.0, 1e6, "one kmalloc + kvfree_rcu() fast path")
    kmalloc_ns_per_kib: float = _float(
        0.0, 0.0, 1e6, "extra cost of that call per KiB of the object's kmalloc size class"
    )
    loop_jitter: float = _float(
        0.05,
        0.0,
        2.0,
        "coefficient of variation of a kernel loop's call time per chunk (interrupts, caches, a guest's host)",
    )
    allocator: Literal["slub", "slab"] = Field(
        default="slub", description="CONFIG_SLUB or CONFIG_SLAB (removed in 6.8)"
    )
    kfree_fast_ns: float = _float(
        12.0, 0.1, 1e6, "kfree() into the freeing CPU's current slab (SLUB) or array cache (SLAB)"
    )
    kfree_slow_ns: float = _float(
        60.0, 0.1, 1e6, "kfree() into another slab: SLUB __slab_free(), SLAB free_block() per object"
    )
    kfree_remote_ns: float = _float(40.0, 0.0, 1e6, "extra per object another CPU allocated (cache lines move)")
    global_lock_hold_ns: float = _float(120.0, 1.0, 1e6, "hold time of a shared pool lock, incl. cache-line transfer")
    # Page allocator.
    alloc_fast_us: float = _float(0.6, 0.01, 1e5, "order-0 allocation above the low watermark")
    direct_reclaim_ms: float = _float(2.0, 0.0, 1e4, "one light direct-reclaim pass (NORETRY)")
    reclaim_mib_per_s: float = _float(800.0, 1.0, 1e6, "kswapd reclaim throughput")
    file_cache_fraction: float = _float(0.25, 0.0, 0.95, "reclaimable page cache at start, of memory")
    boot_reserved_mib: float = _float(
        0.0, 0.0, 1e7, "memory the kernel holds from boot besides the memmap (image, per-CPU areas)"
    )
    watermark_scale_factor: int = Field(default=10, ge=1, le=3000, description="vm.watermark_scale_factor")
    alloc_fail_softness: float = _float(0.15, 0.001, 5.0, "width of the failure edge, in min-watermark units")
    # Default SLOs a recommendation must meet.
    slo_p99_call_latency_us: float = _float(50.0, 0.01, 1e9, "p99 kvfree_rcu() call latency")
    slo_sync_fallbacks_per_s: float = _float(1.0, 0.0, 1e9, "synchronize_rcu() fallbacks per second")
    slo_pending_peak_mib: float = _float(512.0, 0.001, 1e9, "peak memory waiting for a grace period")

    @classmethod
    def kind(cls) -> str:
        return "hardware"

    @model_validator(mode="after")
    def _consistent(self) -> HardwareProfile:
        if self.nocb_cpus > self.cpus:
            raise ValueError(f"nocb_cpus={self.nocb_cpus} exceeds cpus={self.cpus} (allowed 0..cpus)")
        if self.gp_min_ms > self.gp_median_ms or self.gp_median_ms > self.gp_max_ms:
            raise ValueError("need gp_min_ms <= gp_median_ms <= gp_max_ms")
        return self


class WorkloadProfile(_Profile):
    """What calls kvfree_rcu(), how often, and what else presses on memory meanwhile."""

    shape: Literal["open", "rcuscale"] = "open"
    duration_s: float = _float(10.0, 0.01, 86_400.0, "default simulated seconds")
    # Open-loop callers.
    calls_per_s_per_cpu: float = _float(10_000.0, 0.0, 1e9, "mean kvfree_rcu() calls per second per CPU")
    headless_fraction: float = _float(0.1, 0.0, 1.0, "share of kvfree_rcu_mightsleep() calls")
    vmalloc_fraction: float = _float(0.0, 0.0, 1.0, "share of vmalloc'ed objects (block channel 1)")
    object_bytes: int = Field(default=256, ge=1, le=1 << 30, description="mean slab object size")
    slab_locality: float = _float(
        0.0, 0.0, 1.0, "share of a slab's objects freed next to each other (1: allocation order)"
    )
    sheaf_share: float = _float(
        0.0, 0.0, 1.0, "share of slab objects from caches with per-CPU sheaves (6.18: maple nodes, VMAs; not kmalloc)"
    )
    sheaf_capacity: int = Field(
        default=32, ge=1, le=4096, description="objects per sheaf of those caches (kmem_cache_args.sheaf_capacity)"
    )
    vmalloc_object_bytes: int = Field(default=65536, ge=1, le=1 << 34, description="mean vmalloc object size")
    active_cpus_fraction: float = _float(1.0, 0.0, 1.0, "share of CPUs that call at all at a time")
    skew: float = _float(0.0, 0.0, 4.0, "Zipf exponent of call rates across active CPUs")
    hot_set_period_s: float = _float(0.0, 0.0, 86_400.0, "re-draw which CPUs are hot this often; 0 = never")
    burst_every_s: float = _float(0.0, 0.0, 86_400.0, "mean time between bursts; 0 = no bursts")
    burst_ms: float = _float(50.0, 0.0, 1e7, "burst length")
    burst_multiplier: float = _float(1.0, 1.0, 1e5, "call-rate factor during a burst")
    # Memory pressure from everything else.
    pressure: Literal["steady", "ramp", "storm"] = "steady"
    anon_fraction: float = _float(0.4, 0.0, 1.0, "unreclaimable demand at start, of memory")
    anon_fraction_end: float = _float(0.4, 0.0, 1.5, "ramp: demand at the end")
    storm_every_s: float = _float(5.0, 0.01, 86_400.0, "storm: period")
    storm_ms: float = _float(500.0, 1.0, 1e7, "storm: length")
    storm_fraction: float = _float(0.0, 0.0, 1.5, "storm: extra demand, of memory")
    oom_kill_fraction: float = _float(0.3, 0.0, 1.0, "share of unreclaimable demand an OOM kill frees")
    # The chain reaction of the LKML thread: a subsystem whose memory grows with the backlog.
    chain_bytes_per_pending_byte: float = _float(0.0, 0.0, 1000.0, "dependent allocations per byte waiting")
    chain_mib_per_blocked_caller: float = _float(0.0, 0.0, 1e5, "dependent allocations per blocked caller")
    chain_tau_ms: float = _float(200.0, 1.0, 1e6, "time constant of the dependent subsystem")
    # rcuscale (shape = "rcuscale"): the kernel test's own module parameters.
    kfree_nthreads: int = Field(default=-1, ge=-4096, le=4096, description="-1 = one per CPU; -k = CPUs-k+1")
    kfree_alloc_num: int = Field(default=8000, ge=1, le=10**9)
    kfree_loops: int = Field(default=10, ge=1, le=10**9)
    kfree_mult: int = Field(default=1, ge=1, le=1 << 20, description="object size = 24 B x kfree_mult")
    kfree_rcu_test_single: bool = False
    kfree_rcu_test_double: bool = False
    kfree_by_call_rcu: bool = False

    @classmethod
    def kind(cls) -> str:
        return "workload"

    @model_validator(mode="after")
    def _consistent(self) -> WorkloadProfile:
        if self.kfree_nthreads == 0:
            raise ValueError("kfree_nthreads=0 is not allowed (use -1 for one per CPU, or a positive count)")
        return self

    @property
    def rcuscale_object_bytes(self) -> int:
        """rcuscale allocates kfree_mult x sizeof(struct kfree_obj): char[8] + rcu_head = 24 B."""
        return 24 * self.kfree_mult

    @property
    def rcuscale_slab_bytes(self) -> int:
        """What each rcuscale object really occupies: its kmalloc size class."""
        return kmalloc_size(self.rcuscale_object_bytes)

    def rcuscale_threads(self, cpus: int) -> int:
        """kfree_nthreads as rcuscale resolves it (-1: all CPUs; -k: CPUs - k + 1, at least 1)."""
        if self.kfree_nthreads > 0:
            return self.kfree_nthreads
        return max(1, cpus + self.kfree_nthreads + 1)


_KINDS: dict[str, type[_Profile]] = {"hardware": HardwareProfile, "workload": WorkloadProfile}
_DIRS = {"hardware": "hardware", "workload": "workloads"}


def _shipped_dir(kind: str) -> Path:
    return Path(str(resources.files("rcutune.sim").joinpath("profiles", _DIRS[kind])))


def list_profiles(kind: str) -> list[str]:
    """Names of the shipped profiles of one kind ("hardware" or "workload"), sorted."""
    return sorted(p.stem for p in _shipped_dir(kind).glob("*.toml"))


def _line_of(text: str, key: str) -> int | None:
    match = re.search(rf"^\s*{re.escape(key)}\s*=", text, flags=re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _range_of(model: type[_Profile], key: str) -> str:
    field = model.model_fields.get(key)
    if field is None:
        return ""
    lo = hi = None
    for meta in field.metadata:
        lo = getattr(meta, "ge", lo)
        hi = getattr(meta, "le", hi)
    annotation = field.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(map(str, annotation.__args__))
    kind = getattr(annotation, "__name__", str(annotation))
    if lo is not None and hi is not None:
        return f"{kind} in [{_num(lo)}, {_num(hi)}]"
    return kind


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _known_keys(model: type[_Profile], key: str) -> str:
    """The mend for an unknown key: the keys it resembles, else every key."""
    close = difflib.get_close_matches(key, list(model.model_fields), n=3)
    if close:
        return "did you mean " + " or ".join(f"'{k}'" for k in close) + "?"
    keys = sorted(model.model_fields)
    shown: list[str] = []
    for k in keys:  # one line: as many keys as fit, then how many more there are
        if sum(len(x) + 2 for x in shown) + len(k) > 520:
            break
        shown.append(k)
    more = f" and {len(keys) - len(shown)} more (the shipped profiles show them)" if len(shown) < len(keys) else ""
    return "known keys: " + ", ".join(shown) + more


def _describe(model: type[_Profile], source: str, text: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(profile)"
    where = source
    line = _line_of(text, key) if first["loc"] else None
    if line:
        where += f":{line}"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown {model.kind()} key '{key}'; {_known_keys(model, key)}"
    if first["type"] == "missing":
        return f"{where}: missing required key '{key}' ({_range_of(model, key)})"
    allowed = _range_of(model, key)
    value = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")
    detail = f"{key}={value!r}: {msg}" if first["loc"] else msg
    return f"{where}: {detail}" + (f" (allowed: {allowed})" if allowed else "")


def _parse_override_value(raw: str) -> Any:
    """Parse the right-hand side of --set as a TOML value; bare words are strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _coerce(model: type[_Profile], data: dict[str, Any]) -> dict[str, Any]:
    """TOML ints are fine where floats are declared; strict mode would refuse them."""
    out = dict(data)
    for key, value in data.items():
        field = model.model_fields.get(key)
        if field is not None and field.annotation is float and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _build(model: type[_Profile], data: dict[str, Any], source: str, text: str) -> _Profile:
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            line = _line_of(text, key)
            where = f"{source}:{line}" if line else source
            raise ProfileError(f"{where}: {key}={value} is not a finite number (allowed: {_range_of(model, key)})")
    try:
        return model.model_validate(_coerce(model, data))
    except ValidationError as err:
        raise ProfileError(_describe(model, source, text, err)) from None


def load_profile(kind: str, name_or_path: str | Path, overrides: dict[str, str] | None = None) -> _Profile:
    """Load a shipped profile by name, or a user's TOML file by path, then apply overrides.

    Args:
        kind: "hardware" or "workload".
        name_or_path: a shipped profile name (see `list_profiles`) or a path to a .toml file.
        overrides: key -> raw TOML value text, from `--set kind.key=value`.

    Returns:
        The validated, frozen profile.

    Raises:
        ProfileError: one line naming the file, key, line and allowed range.
    """
    model = _KINDS[kind]
    path = Path(name_or_path)
    if not (path.suffix == ".toml" or path.exists()):
        candidate = _shipped_dir(kind) / f"{name_or_path}.toml"
        if not candidate.exists():
            valid = ", ".join(list_profiles(kind))
            raise ProfileError(f"unknown {kind} profile '{name_or_path}'; valid: {valid} (or a path to a .toml file)")
        path = candidate
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError(f"{path}: cannot read {kind} profile ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: not a UTF-8 text file; a {kind} profile is TOML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ProfileError(f"{path}: malformed TOML: {err}") from None
    data.setdefault("name", path.stem)
    for key, value in data.items():
        if isinstance(value, dict):
            raise ProfileError(
                f"{path}:{_line_of(text, key) or '?'}: a {kind} profile is one flat table; '[{key}]' is not allowed"
            )
    source = str(path) if path.parent != _shipped_dir(kind) else f"{kind} profile '{path.stem}'"
    profile = _build(model, data, source, text)
    if overrides:
        merged = profile.model_dump()
        for key, raw in overrides.items():
            if key not in model.model_fields:
                raise ProfileError(f"--set {kind}.{key}: unknown {kind} key; {_known_keys(model, key)}")
            merged[key] = _parse_override_value(raw)
        profile = _build(model, merged, f"--set {kind}", "")
    return profile


def load_hardware(name_or_path: str | Path, overrides: dict[str, str] | None = None) -> HardwareProfile:
    """Load a hardware profile (see `load_profile`)."""
    return load_profile("hardware", name_or_path, overrides)  # type: ignore[return-value]


def load_workload(name_or_path: str | Path, overrides: dict[str, str] | None = None) -> WorkloadProfile:
    """Load a workload profile (see `load_profile`)."""
    return load_profile("workload", name_or_path, overrides)  # type: ignore[return-value]


def split_overrides(settings: list[str]) -> dict[str, dict[str, str]]:
    """Parse `--set section.key=value` items into {"hardware": {...}, "workload": {...}}.

    Raises:
        ProfileError: for an item without '=', or a section other than hardware/workload.
    """
    out: dict[str, dict[str, str]] = {"hardware": {}, "workload": {}}
    for item in settings:
        left, sep, raw = item.partition("=")
        section, dot, key = left.strip().partition(".")
        if not sep or not dot or not key:
            raise ProfileError(f"--set {item!r}: expected section.key=value, e.g. hardware.cpus=16")
        if section not in out:
            raise ProfileError(f"--set {item!r}: unknown section '{section}'; use hardware.<key> or workload.<key>")
        out[section][key.strip()] = raw.strip()
    return out


def profile_text(profile: _Profile) -> str:
    """A canonical text of a profile's contents, for hashing and storing with a study."""
    items = sorted(profile.model_dump().items())
    return "\n".join(f"{k} = {v!r}" for k, v in items)


def profile_from_text(kind: str, text: str) -> HardwareProfile | WorkloadProfile:
    """The profile a `profile_text` describes (validated as on load), e.g. the one a study stored.

    Raises:
        ProfileError: the text holds a key or value this release does not accept.
    """
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = ast.literal_eval(value.strip())
    model = HardwareProfile if kind == "hardware" else WorkloadProfile
    try:
        return model.model_validate(values)
    except ValidationError as err:
        raise ProfileError(_describe(model, f"stored {kind} profile", text, err)) from None
