"""Build a Linux 6.1 kernel with rcuscale, boot it under qemu (TCG) and record kfree test figures.

The simulator's predictions are only worth trusting if they match what a real kernel does, so this
module produces measured data: one qemu boot per sweep row and repetition, one CSV row per boot.
Standard library only, so that it runs on a bare Debian 12 with Python 3.11.

Public functions (used by the CLI and by ``python -m rcutune.validation.kernel``):
``build``, ``boot``, ``run_sweep``, ``load_sweep``, ``parse_kfree_line``, ``classify_console``,
``parse_console``, ``completed_runs``, ``read_rows``, ``summarize``, ``trace_boot``,
``count_trace_events``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "config.fragment"
INIT_C = HERE / "init.c"
# Included by every PID 1: loads torture.ko and rcuscale.ko after the boot.
MODULE_LOADER_H = HERE / "rcuscale_module.h"
# The modules the initramfs carries, as built under the object tree, loaded in this order.
MODULES = ("kernel/torture.ko", "kernel/rcu/rcuscale.ko")
# Config variants: variants/<name>.fragment is merged after config.fragment; a variant may bring
# its own PID 1 as variants/<name>.init.c. A sweep chooses its variant set (README).
VARIANTS_DIR = HERE / "variants"
BASE_VARIANT = "base"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_DIRNAME = "linux-source-6.1"
DEFAULT_CACHE = Path("~/.cache/rcutune/kernel-6.1")
QEMU = "qemu-system-x86_64"
# One host thread runs all vCPUs round-robin. With multi-threaded TCG, 4 vCPU threads on a shared
# 2-core host get preempted while holding guest locks and a 1 s run sometimes takes 30 s; the
# single-threaded variant keeps boots at 2-3 s and the run-to-run spread small (README).
DEFAULT_ACCEL = "tcg,thread=single"
# Bump when the build recipe changes in a way the hash of fragment + init.c does not see.
# 2: rcuscale is a module that PID 1 loads after the boot (it was built in and started inside it).
BUILD_RECIPE_VERSION = "2"

APT_PACKAGES = (
    "linux-source-6.1",
    "qemu-system-x86",
    "build-essential",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "gzip",
    "xz-utils",
)

MODES = ("single", "double", "mixed")
STATUSES = ("ok", "oom", "timeout", "emulation_failure", "panic", "no_result")
# The kvfree_rcu() trace events of include/trace/events/rcu.h (compiled in with CONFIG_RCU_TRACE).
KVFREE_TRACE_EVENTS = (
    "rcu:rcu_invoke_kfree_bulk_callback",
    "rcu:rcu_invoke_kvfree_callback",
    "rcu:rcu_kvfree_callback",
)


# --------------------------------------------------------------------------------------------
# Config variants
# --------------------------------------------------------------------------------------------


def available_variants() -> tuple[str, ...]:
    """Names of the committed config variants (variants/*.fragment)."""
    return tuple(sorted(p.name[: -len(".fragment")] for p in VARIANTS_DIR.glob("*.fragment")))


def normalize_variants(value) -> tuple[str, ...]:
    """A variant set from None, "base", "a", "a+b" or ["a", "b"]: sorted, no duplicates, no base.

    Raises ValueError naming an unknown variant. The set is what a build is keyed on, so the
    order in which a sweep lists variants does not matter.
    """
    if value is None:
        return ()
    items = value.split("+") if isinstance(value, str) else list(value)
    names = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"config variant names are strings, got {item!r}")
        item = item.strip()
        if item and item != BASE_VARIANT:
            names.add(item)
    known = available_variants()
    unknown = sorted(names - set(known))
    if unknown:
        raise ValueError(f"unknown config variant(s) {', '.join(unknown)}; known: {', '.join((BASE_VARIANT,) + known)}")
    return tuple(sorted(names))


def variant_label(variants: Iterable[str]) -> str:
    """The CSV's config_variant value: 'base', or the variant names joined with '+'."""
    variants = tuple(variants)
    return "+".join(variants) if variants else BASE_VARIANT


def variant_fragments(variants: Iterable[str]) -> list[Path]:
    """The fragments merged for a variant set, base first."""
    return [FRAGMENT] + [VARIANTS_DIR / f"{v}.fragment" for v in variants]


def variant_init(variants: Iterable[str]) -> Path:
    """The PID 1 source for a variant set: a variant's own init.c, or the base one."""
    own = [VARIANTS_DIR / f"{v}.init.c" for v in variants if (VARIANTS_DIR / f"{v}.init.c").exists()]
    if len(own) > 1:
        raise ValueError(f"config variants {', '.join(p.name for p in own)} each bring an init")
    return own[0] if own else INIT_C


def wanted_config(variants: Iterable[str] = ()) -> dict[str, str]:
    """The options the merged fragments ask for (later fragments override the base).

    Two variants that set one option differently cannot be combined (ValueError).
    """
    variants = tuple(variants)
    want = read_kconfig(FRAGMENT)
    by_variant: dict[str, tuple[str, str]] = {}
    for v in variants:
        for k, val in read_kconfig(VARIANTS_DIR / f"{v}.fragment").items():
            if k in by_variant and by_variant[k][1] != val:
                raise ValueError(f"config variants {by_variant[k][0]} and {v} disagree on {k}")
            by_variant[k] = (v, val)
            want[k] = val
    return want


def preempt_model(config: dict[str, str]) -> str:
    """none / voluntary / full / dynamic / rt, from a .config's options."""
    if config.get("CONFIG_PREEMPT_RT") == "y":
        return "rt"
    if config.get("CONFIG_PREEMPT_DYNAMIC") == "y":
        return "dynamic"
    if config.get("CONFIG_PREEMPT") == "y":
        return "full"
    if config.get("CONFIG_PREEMPT_VOLUNTARY") == "y":
        return "voluntary"
    return "none"


_CPULIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def resolve_cpulist(spec: str, guest_cpus: int) -> str:
    """rcu_nocbs as passed to the kernel: '' (none), 'all' -> '0-<cpus-1>', or a cpulist."""
    spec = spec.strip()
    if spec == "all":
        return "0" if guest_cpus == 1 else f"0-{guest_cpus - 1}"
    return spec


def cpulist_cpus(cpulist: str) -> set[int]:
    """The CPU numbers of a kernel cpulist such as '0-3' or '0,2-3'."""
    cpus: set[int] = set()
    for part in filter(None, cpulist.split(",")):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildResult:
    """Where a built kernel and initramfs live, so boots need not know the cache layout."""

    kernel_image: Path
    initramfs: Path
    config: Path
    kernel_version: str
    build_key: str
    build_seconds: float  # time the (possibly earlier) full build took
    cached: bool  # True if this call found everything already built
    variants: tuple[str, ...] = ()  # config variants layered on the base fragment
    preempt_model: str = "none"  # from the built .config

    @property
    def config_variant(self) -> str:
        return variant_label(self.variants)


@dataclass(frozen=True)
class BootParams:
    """One guest: machine shape, the two rcutree knobs under study and the rcuscale workload."""

    guest_cpus: int = 2
    guest_mem_mib: int = 512
    rcu_min_cached_objs: int = 5
    rcu_delay_page_cache_fill_msec: int = 5000
    kfree_nthreads: int = -1
    kfree_alloc_num: int = 8000
    kfree_loops: int = 10
    kfree_mult: int = 1
    kfree_rcu_test_single: int = 0
    kfree_rcu_test_double: int = 0
    # Not rcuscale/rcutree knobs, and CSV columns after the original ones (EXTRA_COLUMNS):
    rcu_nocbs: str = ""  # '' (none), 'all' (every guest CPU) or a cpulist such as '0-1'
    config_variant: str = BASE_VARIANT  # the kernel build this point needs ('base', 'nocb', ...)

    @property
    def nocb_cpulist(self) -> str:
        """The rcu_nocbs= value on the kernel command line ('' when not offloading)."""
        return resolve_cpulist(self.rcu_nocbs, self.guest_cpus)

    @property
    def variants(self) -> tuple[str, ...]:
        return normalize_variants(self.config_variant)

    @property
    def mode(self) -> str:
        """rcuscale picks the free form per call: only one flag set selects it, equal flags mix."""
        if self.kfree_rcu_test_single and not self.kfree_rcu_test_double:
            return "single"
        if self.kfree_rcu_test_double and not self.kfree_rcu_test_single:
            return "double"
        return "mixed"

    @property
    def kfree_threads_effective(self) -> int:
        """rcuscale's compute_real(): -1 means one per CPU, -k means CPUs-k+1, at least 1."""
        n = self.kfree_nthreads
        if n > 0:
            return n
        return max(self.guest_cpus + n + 1, 1)

    @property
    def object_size_bytes(self) -> int:
        """struct kfree_obj is 24 bytes on 64-bit (8-byte buffer + rcu_head)."""
        return 24 * self.kfree_mult

    @property
    def point_id(self) -> str:
        """Readable and stable, so a resumed or edited sweep still recognises its finished rows."""
        mode = self.mode
        if mode == "mixed" and self.kfree_rcu_test_single:
            mode = "mixed11"
        # Points of the base build without offloading keep the ids of the first committed data;
        # offloading and other builds add suffixes, so ids stay unique across all CSVs.
        nocbs = f"-nocbs{self.nocb_cpulist}" if self.nocb_cpulist else ""
        variant = f"@{self.config_variant}" if self.config_variant != BASE_VARIANT else ""
        return (
            f"c{self.guest_cpus}-m{self.guest_mem_mib}-n{self.rcu_min_cached_objs}"
            f"-d{self.rcu_delay_page_cache_fill_msec}-t{self.kfree_nthreads}"
            f"-a{self.kfree_alloc_num}-l{self.kfree_loops}-x{self.kfree_mult}-{mode}"
            f"{nocbs}{variant}"
        )

    def kernel_cmdline(self, shutdown: bool = True, extra: Iterable[str] = ()) -> str:
        """The boot parameters: the test powers the guest off; a panic (e.g. OOM) ends qemu.

        shutdown=False leaves the power-off to PID 1 (the trace variant's init); extra
        parameters (e.g. trace_event=...) go last.
        """
        nocbs = [f"rcu_nocbs={self.nocb_cpulist}"] if self.nocb_cpulist else []
        return " ".join(
            [
                "console=ttyS0",
                "panic=-1",
                "rcuscale.kfree_rcu_test=1",
                f"rcuscale.shutdown={int(shutdown)}",
                f"rcutree.rcu_min_cached_objs={self.rcu_min_cached_objs}",
                f"rcutree.rcu_delay_page_cache_fill_msec={self.rcu_delay_page_cache_fill_msec}",
                f"rcuscale.kfree_nthreads={self.kfree_nthreads}",
                f"rcuscale.kfree_alloc_num={self.kfree_alloc_num}",
                f"rcuscale.kfree_loops={self.kfree_loops}",
                f"rcuscale.kfree_mult={self.kfree_mult}",
                f"rcuscale.kfree_rcu_test_single={self.kfree_rcu_test_single}",
                f"rcuscale.kfree_rcu_test_double={self.kfree_rcu_test_double}",
                *nocbs,
                *extra,
            ]
        )


@dataclass(frozen=True)
class KfreeResult:
    """The figures of rcuscale's one summary line."""

    total_time_ns: int
    loops: int
    batches: int
    footprint_mb: int


@dataclass
class ConsoleFacts:
    """Everything we read from a guest's console, besides the pass/fail verdict."""

    result: KfreeResult | None = None
    kernel_version: str = ""
    object_size_bytes: int | None = None
    kernel_ts_test_start_s: float | None = None  # "kfree object size=" line (test init)
    kernel_ts_result_s: float | None = None
    kernel_ts_last_s: float | None = None
    guest_mem_available_kib: int | None = None
    guest_mem_total_kib: int | None = None
    oom_seen: bool = False
    hypervisor: str = ""
    # "Offload RCU callbacks from CPUs: <list>." at boot (kernels with CONFIG_RCU_NOCB_CPU, when
    # rcu_nocbs= or nohz_full= asked for offloading); '' when the guest printed no such line.
    nocb_offloaded_cpus: str = ""


@dataclass
class BootResult:
    """One boot's outcome: status is 'ok' or the cause of failure; figures are None on failure."""

    params: BootParams
    status: str
    failure_detail: str
    facts: ConsoleFacts
    boot_wall_s: float
    accelerator: str  # "tcg" or "kvm": what the guest ran on
    tcg_threads: str  # "single" or "multi" for TCG, "" otherwise
    returncode: int | None
    console: str = field(repr=False, default="")

    @property
    def result(self) -> KfreeResult | None:
        return self.facts.result


class SweepError(ValueError):
    """A sweep file that cannot be run; the message names the file and the offending key."""


class CsvMismatchError(ValueError):
    """An existing output CSV whose header is not ours: refuse to append rather than mix data."""


# --------------------------------------------------------------------------------------------
# Console parsing (pure functions, tested without a kernel)
# --------------------------------------------------------------------------------------------

KFREE_LINE_RE = re.compile(
    r"Total time taken by all kfree'ers: (?P<ns>\d+) ns, loops: (?P<loops>-?\d+), "
    r"batches: (?P<batches>-?\d+), memory footprint: (?P<fp>-?\d+)MB"
)
_TS_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")
_OBJ_SIZE_RE = re.compile(r"kfree object size=(\d+)")
_VERSION_RE = re.compile(r"Linux version (\S+)")
_MEMORY_RE = re.compile(r"Memory: (\d+)K/(\d+)K available")
_HYPERVISOR_RE = re.compile(r"Hypervisor detected: (\S+)")
_NOCB_RE = re.compile(r"Offload RCU callbacks from CPUs: (.*?)\.?\s*$")

OOM_MARKERS = ("invoked oom-killer", "Out of memory", "page allocation failure", "rcu-scale!!! out of memory")
EMULATION_MARKERS = ("emulation failure", "KVM internal error")
PANIC_MARKERS = ("Kernel panic", "BUG:", "Oops:", "general protection fault")
# PID 1 could not load the test (rcuscale_module.h says so and powers off); its line for a good
# load is "rcutune-init: loading rcuscale <params>", without a path.
LOAD_FAILURE_MARKERS = ("rcutune-init: cannot open", "rcutune-init: loading /")


def parse_kfree_line(text: str) -> KfreeResult | None:
    """Return the figures of rcuscale's summary line, or None if the test never finished.

    The footprint is 'memory available at start minus running average', so it can be negative.
    """
    m = KFREE_LINE_RE.search(text)
    if not m:
        return None
    return KfreeResult(int(m["ns"]), int(m["loops"]), int(m["batches"]), int(m["fp"]))


def _line_ts(line: str) -> float | None:
    m = _TS_RE.match(line.strip("\r"))
    return float(m.group(1)) if m else None


def parse_console(text: str) -> ConsoleFacts:
    """Collect the result line and the boot's context (version, memory, timestamps, OOM)."""
    facts = ConsoleFacts()
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        ts = _line_ts(line)
        if ts is not None:
            facts.kernel_ts_last_s = ts
        if facts.result is None:
            r = parse_kfree_line(line)
            if r is not None:
                facts.result = r
                facts.kernel_ts_result_s = ts
                continue
        if not facts.kernel_version:
            m = _VERSION_RE.search(line)
            if m:
                facts.kernel_version = m.group(1)
                continue
        m = _OBJ_SIZE_RE.search(line)
        if m and facts.object_size_bytes is None:
            facts.object_size_bytes = int(m.group(1))
            facts.kernel_ts_test_start_s = ts
            continue
        m = _MEMORY_RE.search(line)
        if m and facts.guest_mem_available_kib is None:
            facts.guest_mem_available_kib = int(m.group(1))
            facts.guest_mem_total_kib = int(m.group(2))
            continue
        m = _HYPERVISOR_RE.search(line)
        if m and not facts.hypervisor:
            facts.hypervisor = m.group(1)
        m = _NOCB_RE.search(line)
        if m and not facts.nocb_offloaded_cpus:
            facts.nocb_offloaded_cpus = m.group(1).strip()
        if any(k in line for k in OOM_MARKERS):
            facts.oom_seen = True
    return facts


def _first_line_with(text: str, markers: Iterable[str]) -> str:
    for line in text.splitlines():
        if any(k in line for k in markers):
            return _TS_RE.sub("", line.strip()).strip()[:160]
    return ""


def classify_console(text: str, timed_out: bool, returncode: int | None = 0) -> tuple[str, str]:
    """Return (status, detail) for a boot; detail is the console line that gave the cause.

    Order matters: a finished test is 'ok' whatever follows; OOM wins over the panic and the
    timeout it causes (an -ENOMEM kfree thread leaves the shutdown waiting forever), so the
    pressure block's outcome is named by its cause, not its symptom.
    """
    if parse_kfree_line(text) is not None:
        return "ok", ""
    detail = _first_line_with(text, OOM_MARKERS)
    if detail:
        return "oom", detail
    detail = _first_line_with(text, EMULATION_MARKERS)
    if detail:
        return "emulation_failure", detail
    detail = _first_line_with(text, PANIC_MARKERS)
    if detail:
        return "panic", detail
    if timed_out:
        return "timeout", "no result line before the wall-clock timeout"
    detail = _first_line_with(text, LOAD_FAILURE_MARKERS)
    if detail:
        return "no_result", detail
    return "no_result", f"qemu exited with code {returncode} and no result line"


# --------------------------------------------------------------------------------------------
# Host facts
# --------------------------------------------------------------------------------------------


def host_cpu_model() -> str:
    """CPU model of the host; recorded instead of the hostname, which has no place in the repo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def host_load1() -> float | None:
    """Host load at boot start: TCG timings drift when something else uses the cores."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    m = re.search(r"version (\S+)", out.stdout)
    return m.group(1) if m else out.stdout.strip().splitlines()[0]


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Build products live outside the repository (they are large and machine-specific)."""
    if cache_dir is None:
        cache_dir = os.environ.get("RCUTUNE_KERNEL_CACHE") or DEFAULT_CACHE
    return Path(cache_dir).expanduser().resolve()


def build_key(variants: Iterable[str] = ()) -> str:
    """Hash of what defines the guest image, so an edited fragment or init triggers a rebuild.

    The key covers the recipe version, the set of fragments (base + variants, by name and
    content), the init program used and the module loader it includes.
    """
    variants = tuple(variants)
    h = hashlib.sha256()
    h.update(BUILD_RECIPE_VERSION.encode())
    h.update(FRAGMENT.read_bytes())
    h.update(MODULE_LOADER_H.read_bytes())
    for v in variants:
        h.update(f"\0variant {v}\0".encode())
        h.update((VARIANTS_DIR / f"{v}.fragment").read_bytes())
    init = variant_init(variants)
    h.update(f"\0init {init.name}\0".encode())
    h.update(init.read_bytes())
    return h.hexdigest()[:12]


def missing_packages(packages: Iterable[str] = APT_PACKAGES) -> list[str]:
    """Debian packages not installed yet (dpkg-query is quick, apt-get is not)."""
    missing = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        if r.returncode != 0 or "install ok installed" not in r.stdout:
            missing.append(pkg)
    return missing


def ensure_packages(packages: Iterable[str] = APT_PACKAGES) -> None:
    """Install the kernel source, qemu and build tools from the distribution if missing."""
    missing = missing_packages(packages)
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"missing packages {missing} and no apt-get to install them")
    print(f"[build] installing {' '.join(missing)}", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run a build step with its output in a log file; on failure show the log's tail."""
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        r = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"build step failed ({r.returncode}): {' '.join(cmd)}\n{tail}")


def read_kconfig(path: Path) -> dict[str, str]:
    """Map CONFIG_X -> value ('n' for '# CONFIG_X is not set'), for .config and fragments."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        m = re.match(r"# (CONFIG_\w+) is not set", line)
        if m:
            values[m.group(1)] = "n"
        elif line.startswith("CONFIG_") and "=" in line:
            k, v = line.split("=", 1)
            values[k] = v.strip('"')
    return values


def config_mismatches(fragment: Path | dict[str, str], config: Path) -> list[str]:
    """Options of the fragment (or merged fragments) that the final .config does not have
    (dropped by Kconfig)."""
    want = fragment if isinstance(fragment, dict) else read_kconfig(fragment)
    have = read_kconfig(config)
    return [f"{k}: wanted {v}, got {have.get(k, 'n (absent)')}" for k, v in want.items() if have.get(k, "n") != v]


def _extract_source(root: Path, log: Path) -> Path:
    """Extract Debian's linux-source tarball once; an interrupted extraction is redone."""
    src = root / "src" / SOURCE_DIRNAME
    stamp = root / "src" / ".extracted"
    if stamp.exists() and src.is_dir():
        return src
    if not SOURCE_TARBALL.exists():
        raise RuntimeError(f"{SOURCE_TARBALL} not found (package linux-source-6.1)")
    tmp = root / "src.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    print(f"[build] extracting {SOURCE_TARBALL.name}", flush=True)
    _run_logged(["tar", "-xJf", str(SOURCE_TARBALL), "-C", str(tmp)], log)
    shutil.rmtree(root / "src", ignore_errors=True)
    tmp.rename(root / "src")
    stamp.touch()
    return src


def _pack_initramfs(init_bin: Path, modules: Iterable[Path], out: Path, log: Path) -> None:
    """cpio (newc) + gzip with /init and the test's modules at the root; the kernel's built-in
    cpio supplies /dev/console."""
    stage = out.parent / "initramfs-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    shutil.copy2(init_bin, stage / "init")
    (stage / "init").chmod(0o755)
    names = ["init"]
    for module in modules:
        shutil.copy2(module, stage / module.name)
        names.append(module.name)
    cpio = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        cwd=stage,
        input="".join(f"{n}\n" for n in names).encode(),
        capture_output=True,
        check=True,
    )
    gz = subprocess.run(["gzip", "-9", "-n"], input=cpio.stdout, capture_output=True, check=True)
    out.write_bytes(gz.stdout)
    shutil.rmtree(stage)
    with log.open("a") as fh:
        fh.write(f"\n[initramfs] {out} {out.stat().st_size} bytes: {' '.join(names)}\n")


def find_build(cache_dir: Path | str | None = None, variants: Iterable[str] = ()) -> BuildResult | None:
    """The cached build for the current fragments and init, or None if it must be built."""
    variants = normalize_variants(variants)
    out = cache_root(cache_dir) / "builds" / build_key(variants)
    meta = out / "build.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    image, initrd = out / "bzImage", out / "initramfs.cpio.gz"
    if not (image.exists() and initrd.exists()):
        return None
    model = info.get("preempt_model") or preempt_model(read_kconfig(out / "config"))
    return BuildResult(
        image,
        initrd,
        out / "config",
        info["kernel_version"],
        info["build_key"],
        info["build_seconds"],
        cached=True,
        variants=variants,
        preempt_model=model,
    )


def build(cache_dir: Path | str | None = None, jobs: int = 2, variants: Iterable[str] = ()) -> BuildResult:
    """Build bzImage and initramfs from the committed fragments, reusing the cache if current.

    tinyconfig + config.fragment (+ the variants' fragments, in name order) keeps the build to a
    few minutes on 2 cores; the cache is keyed by a hash of the fragment set and the init program
    so that results always match the committed recipe.
    """
    t0 = time.monotonic()
    variants = normalize_variants(variants)
    want = wanted_config(variants)
    ensure_packages()
    found = find_build(cache_dir, variants)
    if found is not None:
        print(
            f"[build] cached {found.build_key} ({found.config_variant}): Linux "
            f"{found.kernel_version} (built in {found.build_seconds:.0f} s earlier)",
            flush=True,
        )
        return found

    root = cache_root(cache_dir)
    key = build_key(variants)
    out = root / "builds" / key
    obj = out / "obj"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text(f"rcutune kernel build {key} ({variant_label(variants)})\n")
    print(f"[build] key {key} ({variant_label(variants)}), cache {root}, log {log}", flush=True)

    src = _extract_source(root, log)
    make = ["make", "-C", str(src), f"O={obj}", "ARCH=x86_64"]
    t_cfg = time.monotonic()
    _run_logged(make + ["tinyconfig"], log)
    _run_logged(
        [
            str(src / "scripts/kconfig/merge_config.sh"),
            "-m",
            "-O",
            str(obj),
            str(obj / ".config"),
            *map(str, variant_fragments(variants)),
        ],
        log,
        cwd=src,
    )
    _run_logged(make + ["olddefconfig"], log)
    bad = config_mismatches(want, obj / ".config")
    if bad:
        raise RuntimeError(
            "options of the config fragments did not survive olddefconfig "
            "(missing dependencies?):\n  " + "\n  ".join(bad)
        )
    print(f"[build] configured in {time.monotonic() - t_cfg:.0f} s; make -j{jobs} bzImage modules", flush=True)
    t_make = time.monotonic()
    _run_logged(make + [f"-j{jobs}", "bzImage", "modules"], log)
    print(f"[build] bzImage and modules in {time.monotonic() - t_make:.0f} s", flush=True)
    release = (
        subprocess.run(make + ["-s", "kernelrelease"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )

    init_bin = out / "init"
    init_src = variant_init(variants)
    _run_logged(["gcc", "-static", "-O2", "-s", f"-I{HERE}", "-o", str(init_bin), str(init_src)], log)
    _pack_initramfs(init_bin, [obj / m for m in MODULES], out / "initramfs.cpio.gz", log)
    shutil.copy2(obj / "arch/x86/boot/bzImage", out / "bzImage")
    shutil.copy2(obj / ".config", out / "config")

    seconds = time.monotonic() - t0
    model = preempt_model(read_kconfig(out / "config"))
    (out / "build.json").write_text(
        json.dumps(
            {
                "build_key": key,
                "kernel_version": release,
                "build_seconds": round(seconds, 1),
                "jobs": jobs,
                "host_cpu": host_cpu_model(),
                "host_cores": os.cpu_count(),
                "built_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                "variants": list(variants),
                "preempt_model": model,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"[build] done: Linux {release} ({variant_label(variants)}, preempt {model}) in {seconds:.0f} s", flush=True)
    return BuildResult(
        out / "bzImage",
        out / "initramfs.cpio.gz",
        out / "config",
        release,
        key,
        round(seconds, 1),
        cached=False,
        variants=variants,
        preempt_model=model,
    )


# --------------------------------------------------------------------------------------------
# Boot
# --------------------------------------------------------------------------------------------


def accel_facts(accel: str) -> tuple[str, str]:
    """Split a qemu -accel value into (accelerator, tcg thread mode) for the CSV."""
    name, *opts = accel.split(",")
    if name != "tcg":
        return name, ""
    threads = "multi"  # qemu's default for an x86_64 guest on an x86_64 host
    for opt in opts:
        if opt.startswith("thread="):
            threads = opt.split("=", 1)[1]
    return "tcg", threads


def qemu_command(
    params: BootParams, kernel: BuildResult, accel: str = DEFAULT_ACCEL, cmdline: str | None = None
) -> list[str]:
    """TCG only: the nested KVM here dies on cmpxchg16b/xrstor, and -icount distorts timing."""
    return [
        QEMU,
        "-accel",
        accel,
        "-smp",
        str(params.guest_cpus),
        "-m",
        f"{params.guest_mem_mib}M",
        "-nographic",
        "-no-reboot",
        "-kernel",
        str(kernel.kernel_image),
        "-initrd",
        str(kernel.initramfs),
        "-append",
        params.kernel_cmdline() if cmdline is None else cmdline,
    ]


def _build_hint(variants: tuple[str, ...]) -> str:
    opt = f" --variant {variant_label(variants)}" if variants else ""
    return f"`python -m rcutune.validation.kernel build{opt}`"


def kernel_for(variants: Iterable[str], kernel: BuildResult | None = None, build_missing: bool = False) -> BuildResult:
    """The build a point or sweep needs: `kernel` if it is that variant set, else the cached one,
    else (build_missing) a new build; RuntimeError when none is available."""
    variants = normalize_variants(variants)
    if kernel is not None and tuple(kernel.variants) == variants:
        return kernel
    found = find_build(variants=variants)
    if found is not None:
        return found
    if build_missing:
        return build(variants=variants)
    raise RuntimeError(
        f"no kernel built for config variant {variant_label(variants)}; run {_build_hint(variants)} first"
    )


def boot(
    params: BootParams,
    timeout_s: float = 120.0,
    kernel: BuildResult | None = None,
    accel: str = DEFAULT_ACCEL,
    cmdline: str | None = None,
) -> BootResult:
    """Boot one guest and classify it; the timeout backstops runs whose shutdown never comes.

    The kernel must be the build of the point's config variant (found in the cache if None).
    """
    if kernel is None:
        kernel = kernel_for(params.variants)
    elif tuple(kernel.variants) != params.variants:
        raise RuntimeError(
            f"point {params.point_id} needs the {params.config_variant} build, "
            f"got {kernel.config_variant} ({kernel.build_key})"
        )
    cmd = qemu_command(params, kernel, accel, cmdline)
    t0 = time.monotonic()
    timed_out = False
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
        out, err, rc = r.stdout, r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:  # run() has killed qemu and collected its output
        timed_out = True
        out, err, rc = e.stdout or b"", e.stderr or b"", None
    wall = time.monotonic() - t0
    console = out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
    status, detail = classify_console(console, timed_out, rc)
    facts = parse_console(console)
    # Requested accelerator, corrected if the guest saw a hypervisor (KVM) rather than TCG.
    used, threads = accel_facts(accel)
    if facts.hypervisor.upper() == "KVM":
        used, threads = "kvm", ""
    return BootResult(params, status, detail, facts, round(wall, 3), used, threads, rc, console)


# --------------------------------------------------------------------------------------------
# Sweep files
# --------------------------------------------------------------------------------------------

# The integer knobs, in the order of the CSV's first columns (the original format).
PARAM_FIELDS = (
    "guest_cpus",
    "guest_mem_mib",
    "rcu_min_cached_objs",
    "rcu_delay_page_cache_fill_msec",
    "kfree_nthreads",
    "kfree_alloc_num",
    "kfree_loops",
    "kfree_mult",
    "kfree_rcu_test_single",
    "kfree_rcu_test_double",
)
assert set(PARAM_FIELDS) | {"rcu_nocbs", "config_variant"} == {f.name for f in dataclasses.fields(BootParams)}
_GRID_KEYS = set(PARAM_FIELDS) | {"mode", "repetitions", "rcu_nocbs"}
_SWEEP_KEYS = {"name", "seed", "repetitions", "timeout_s", "accel", "description", "config_variant"}


@dataclass(frozen=True)
class SweepPoint:
    params: BootParams
    repetitions: int

    @property
    def point_id(self) -> str:
        return self.params.point_id


@dataclass(frozen=True)
class Sweep:
    name: str
    seed: int
    timeout_s: float
    points: tuple[SweepPoint, ...]
    accel: str = DEFAULT_ACCEL
    variants: tuple[str, ...] = ()  # config variants of the kernel every point boots

    @property
    def config_variant(self) -> str:
        return variant_label(self.variants)

    def runs(self) -> list[tuple[SweepPoint, int]]:
        """All (point, rep) boots in a seeded random order, so host drift is not confounded
        with the parameters; the same seed gives the same order, which makes resume natural."""
        runs = [(p, rep) for p in self.points for rep in range(p.repetitions)]
        random.Random(self.seed).shuffle(runs)
        return runs


def _check_int(where: str, key: str, v, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SweepError(f"{where}: {key} must be an integer, got {v!r}")
    if lo is not None and v < lo or hi is not None and v > hi:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise SweepError(f"{where}: {key} = {v} must be {rng}")
    return v


def validate_params(where: str, values: dict, variants: Iterable[str] = ()) -> BootParams:
    """Reject values the kernel would clamp, ignore or crash on, before spending boots on them."""
    v = dict(values)
    variants = tuple(variants)
    mode = v.pop("mode", None)
    if mode is not None:
        if mode not in MODES:
            raise SweepError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        flags = {"single": (1, 0), "double": (0, 1), "mixed": (0, 0)}[mode]
        for key, flag in zip(("kfree_rcu_test_single", "kfree_rcu_test_double"), flags):
            v.setdefault(key, flag)
    for key in ("kfree_rcu_test_single", "kfree_rcu_test_double"):
        if key in v:
            val = v[key]
            if isinstance(val, bool):
                val = int(val)
            v[key] = _check_int(where, key, val, 0, 1)
    limits = {
        "guest_cpus": (1, 16),  # CONFIG_NR_CPUS=16
        "guest_mem_mib": (64, 16384),
        "rcu_min_cached_objs": (0, 100000),
        "rcu_delay_page_cache_fill_msec": (0, 100000),  # the kernel clamps outside this
        "kfree_nthreads": (-64, 64),
        "kfree_alloc_num": (1, 10_000_000),
        "kfree_loops": (4, 1_000_000),  # rcuscale divides by kfree_loops / 4
        "kfree_mult": (1, 100000),
    }
    for key, (lo, hi) in limits.items():
        if key in v:
            _check_int(where, key, v[key], lo, hi)
    if v.get("kfree_nthreads") == 0:
        raise SweepError(f"{where}: kfree_nthreads = 0 is not meaningful (use -1 for one per CPU)")
    if "rcu_nocbs" in v:
        nocbs = v["rcu_nocbs"]
        if not isinstance(nocbs, str):
            raise SweepError(
                f"{where}: rcu_nocbs must be a string ('', 'all' or a cpulist such as '0-1'), got {nocbs!r}"
            )
        nocbs = v["rcu_nocbs"] = nocbs.strip()
        if nocbs:
            cpus = v.get("guest_cpus", BootParams.guest_cpus)
            resolved = resolve_cpulist(nocbs, cpus)
            if not _CPULIST_RE.match(resolved):
                raise SweepError(f"{where}: rcu_nocbs = {nocbs!r} is not 'all' or a cpulist such as '0-1' or '0,2'")
            if max(cpulist_cpus(resolved)) >= cpus:
                raise SweepError(f"{where}: rcu_nocbs = {nocbs!r} names CPUs the guest ({cpus} CPUs) does not have")
            if wanted_config(variants).get("CONFIG_RCU_NOCB_CPU") != "y":
                raise SweepError(
                    f"{where}: rcu_nocbs needs a kernel with CONFIG_RCU_NOCB_CPU; "
                    f"set [sweep] config_variant to one that has it (e.g. 'nocb')"
                )
    params = BootParams(**v, config_variant=variant_label(variants))
    if mode is not None and params.mode != mode:
        raise SweepError(
            f"{where}: mode = {mode!r} contradicts kfree_rcu_test_single = "
            f"{params.kfree_rcu_test_single}, kfree_rcu_test_double = "
            f"{params.kfree_rcu_test_double}"
        )
    return params


def load_sweep(path: Path | str) -> Sweep:
    """Parse and validate a sweep file (format in validation/README.md); errors name the key."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{path}: not valid TOML: {e}") from None
    unknown_top = set(doc) - {"sweep", "defaults", "grid"}
    if unknown_top:
        raise SweepError(
            f"{path}: unknown top-level keys {sorted(unknown_top)} (expected [sweep], [defaults], [[grid]])"
        )
    head = doc.get("sweep", {})
    if not isinstance(head, dict):
        raise SweepError(f"{path}: [sweep] must be a table")
    bad = set(head) - _SWEEP_KEYS
    if bad:
        raise SweepError(f"{path}: [sweep]: unknown keys {sorted(bad)}")
    name = str(head.get("name", path.stem))
    try:
        variants = normalize_variants(head.get("config_variant"))
        wanted_config(variants)
    except ValueError as e:
        raise SweepError(f"{path}: [sweep]: config_variant: {e}") from None
    seed = _check_int(f"{path}: [sweep]", "seed", head.get("seed", 1))
    reps_default = _check_int(f"{path}: [sweep]", "repetitions", head.get("repetitions", 4), 1)
    timeout = head.get("timeout_s", 120)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SweepError(f"{path}: [sweep]: timeout_s must be a positive number, got {timeout!r}")

    defaults = doc.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SweepError(f"{path}: [defaults] must be a table")
    bad = set(defaults) - (_GRID_KEYS - {"repetitions"})
    if bad:
        raise SweepError(
            f"{path}: [defaults]: unknown keys {sorted(bad)}; known: {', '.join(sorted(_GRID_KEYS - {'repetitions'}))}"
        )
    grids = doc.get("grid")
    if not grids or not isinstance(grids, list):
        raise SweepError(f"{path}: needs at least one [[grid]] table")

    points: dict[str, SweepPoint] = {}
    for gi, grid in enumerate(grids, 1):
        where = f"{path}: [[grid]] #{gi}"
        bad = set(grid) - _GRID_KEYS
        if bad:
            raise SweepError(f"{where}: unknown keys {sorted(bad)}; known: {', '.join(sorted(_GRID_KEYS))}")
        reps = _check_int(where, "repetitions", grid.get("repetitions", reps_default), 1)
        merged = {**defaults, **{k: v for k, v in grid.items() if k != "repetitions"}}
        axes = []
        for key, val in merged.items():
            vals = val if isinstance(val, list) else [val]
            if not vals:
                raise SweepError(f"{where}: {key} is an empty list")
            axes.append([(key, x) for x in vals])
        for combo in itertools.product(*axes):
            params = validate_params(where, dict(combo), variants)
            pid = params.point_id
            old = points.get(pid)
            # Overlapping blocks share a point; it runs with the larger repetition count.
            if old is None or old.repetitions < reps:
                points[pid] = SweepPoint(params, reps)
    accel = head.get("accel", DEFAULT_ACCEL)
    if not isinstance(accel, str) or not accel.startswith(("tcg", "kvm")):
        raise SweepError(
            f"{path}: [sweep]: accel must be a qemu -accel value such as 'tcg' or '{DEFAULT_ACCEL}', got {accel!r}"
        )
    return Sweep(name, seed, float(timeout), tuple(points.values()), accel, variants)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

# The columns of the first committed CSVs (main, pressure), which are kept byte for byte.
LEGACY_COLUMNS = (
    "point_id",
    "rep",
    *PARAM_FIELDS,
    "mode",
    "kfree_threads_effective",
    "object_size_bytes",
    "status",
    "failure_detail",
    "total_time_ns",
    "loops",
    "batches",
    "footprint_mb",
    "boot_wall_s",
    "kernel_ts_test_start_s",
    "kernel_ts_result_s",
    "kernel_ts_last_s",
    "guest_mem_available_kib",
    "guest_mem_total_kib",
    "oom_seen",
    "kernel_version",
    "qemu_version",
    "accelerator",
    "tcg_threads",
    "host_cpu",
    "host_cores",
    "host_load1",
    "sweep",
    "seed",
    "boot_index",
    "started_utc",
    "build_key",
)
# Columns added with config variants and callback offloading, after all the original ones; a
# file with the legacy header reads as having these defaults (it was all base builds,
# PREEMPT_NONE, nothing offloaded).
EXTRA_COLUMN_DEFAULTS = {
    "config_variant": BASE_VARIANT,  # 'base', or the variants layered on it ('voluntary', 'nocb')
    "preempt_model": "none",  # from the build's .config: none / voluntary / full / dynamic
    "rcu_nocbs": "",  # the rcu_nocbs= cpulist on the kernel command line ('' = not given)
    "nocb_offloaded_cpus": "",  # what the guest printed: "Offload RCU callbacks from CPUs: ..."
}
CSV_COLUMNS = LEGACY_COLUMNS + tuple(EXTRA_COLUMN_DEFAULTS)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e6 else f"{v:.0f}"
    return str(v)


def result_row(res: BootResult, *, rep: int, context: dict) -> dict[str, str]:
    """One CSV row: the boot's parameters and conditions as columns, so any analysis can group
    by them without a side table."""
    p, f, r = res.params, res.facts, res.facts.result
    row = {k: getattr(p, k) for k in PARAM_FIELDS}
    row.update(
        point_id=p.point_id,
        rep=rep,
        mode=p.mode,
        kfree_threads_effective=p.kfree_threads_effective,
        object_size_bytes=f.object_size_bytes or p.object_size_bytes,
        status=res.status,
        failure_detail=res.failure_detail,
        total_time_ns=r.total_time_ns if r else None,
        loops=r.loops if r else None,
        batches=r.batches if r else None,
        footprint_mb=r.footprint_mb if r else None,
        boot_wall_s=res.boot_wall_s,
        kernel_ts_test_start_s=f.kernel_ts_test_start_s,
        kernel_ts_result_s=f.kernel_ts_result_s,
        kernel_ts_last_s=f.kernel_ts_last_s,
        guest_mem_available_kib=f.guest_mem_available_kib,
        guest_mem_total_kib=f.guest_mem_total_kib,
        oom_seen=f.oom_seen,
        kernel_version=f.kernel_version or context.get("kernel_version", ""),
        accelerator=res.accelerator,
        tcg_threads=res.tcg_threads,
        config_variant=p.config_variant,
        rcu_nocbs=p.nocb_cpulist,
        nocb_offloaded_cpus=f.nocb_offloaded_cpus,
    )
    for k in (
        "qemu_version",
        "host_cpu",
        "host_cores",
        "host_load1",
        "sweep",
        "seed",
        "boot_index",
        "started_utc",
        "build_key",
        "preempt_model",
    ):
        row.setdefault(k, context.get(k))
    return {k: _fmt(row.get(k)) for k in CSV_COLUMNS}


def _csv_header(csv_path: Path) -> tuple[str, ...] | None:
    """The header of an existing CSV (None if empty or absent); CsvMismatchError if not ours."""
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return None
    with csv_path.open(newline="") as fh:
        header = next(csv.reader(fh), None)
    if header is None:
        return None
    header = tuple(header)
    if header not in (CSV_COLUMNS, LEGACY_COLUMNS):
        raise CsvMismatchError(f"{csv_path}: header differs from this harness's columns; write to a new file")
    return header


def read_rows(csv_path: Path | str) -> list[dict[str, str]]:
    """Every complete row of a harness CSV as a dict with all CSV_COLUMNS.

    Files with the legacy header (before config variants) get the EXTRA_COLUMN_DEFAULTS; a row
    cut short by an interruption is left out.
    """
    csv_path = Path(csv_path)
    header = _csv_header(csv_path)
    if header is None:
        return []
    rows = []
    with csv_path.open(newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            if len(row) != len(header):
                continue  # a row cut short by an interruption: run that boot again
            rec = dict(EXTRA_COLUMN_DEFAULTS)
            rec.update(zip(header, row))
            rows.append(rec)
    return rows


def completed_runs(csv_path: Path | str) -> set[tuple[str, int]]:
    """(point_id, rep) pairs already in the CSV, failed boots included: a failure is a result,
    and re-running it until it passes would bias the OOM probability."""
    return {(r["point_id"], int(r["rep"])) for r in read_rows(csv_path)}


def _repair_tail(csv_path: Path) -> None:
    """Drop a partial last line left by a killed run, so appended rows start on their own line."""
    data = csv_path.read_bytes()
    if data and not data.endswith(b"\n"):
        csv_path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_row(csv_path: Path, row: dict[str, str]) -> None:
    """Append and fsync each row at once: an interrupted sweep keeps every finished boot.

    A file with the legacy header gets legacy rows, which is possible only for base-build rows
    without offloading (the new columns at their defaults); anything else is CsvMismatchError.
    """
    header = _csv_header(csv_path)
    new = header is None
    columns = header or CSV_COLUMNS
    if columns == LEGACY_COLUMNS:
        differ = {
            k: row.get(k, "")
            for k, v in EXTRA_COLUMN_DEFAULTS.items()
            if k != "nocb_offloaded_cpus" and row.get(k, v) != v
        }
        if differ:
            raise CsvMismatchError(
                f"{csv_path}: has the columns of the base build only; rows with {differ} go to a new file"
            )
        row = {k: row[k] for k in LEGACY_COLUMNS}
    if not new:
        _repair_tail(csv_path)
    with csv_path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
        if new:
            w.writeheader()
        w.writerow(row)
        fh.flush()
        os.fsync(fh.fileno())


# --------------------------------------------------------------------------------------------
# Sweep runner
# --------------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    planned: int
    skipped: int
    ran: int
    by_status: dict[str, int]
    seconds: float


def run_sweep(
    sweep_file: Path | str,
    out_csv: Path | str,
    *,
    kernel: BuildResult | None = None,
    timeout_s: float | None = None,
    limit: int | None = None,
    log_dir: Path | str | None = None,
    progress: Callable[[str], None] = lambda s: print(s, flush=True),
) -> SweepSummary:
    """Boot every (point, repetition) of a sweep one after another, appending to out_csv.

    Boots run sequentially (the host has 2 cores, and parallel guests would perturb each other's
    timings); rows already in out_csv are skipped, so rerunning the same command resumes.
    Console logs go to the cache (outside the repository) for diagnosing failed boots.

    The sweep's config variant picks the kernel: `kernel` if it is that build, else the cached
    build of the variant; if `kernel` is another variant's build (the caller builds), the
    sweep's variant is built too; with no kernel and no cached build, RuntimeError.
    """
    sweep = load_sweep(sweep_file)
    out_csv = Path(out_csv)
    done = completed_runs(out_csv)
    if _csv_header(out_csv) == LEGACY_COLUMNS and (sweep.variants or any(p.params.nocb_cpulist for p in sweep.points)):
        raise CsvMismatchError(
            f"{out_csv}: has the columns of the base build only; sweep "
            f"{sweep.name} ({sweep.config_variant}) goes to a new file"
        )
    if not all(p.params.variants == sweep.variants for p in sweep.points):
        raise SweepError(f"{sweep_file}: points of another config variant than the sweep's")
    kernel = kernel_for(sweep.variants, kernel, build_missing=kernel is not None)
    timeout = timeout_s or sweep.timeout_s
    logs = Path(log_dir) if log_dir else cache_root() / "logs" / out_csv.stem
    logs.mkdir(parents=True, exist_ok=True)
    out_csv.parent.mkdir(parents=True, exist_ok=True)

    runs = sweep.runs()
    todo = [(i, p, rep) for i, (p, rep) in enumerate(runs) if (p.point_id, rep) not in done]
    skipped = len(runs) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    context = {
        "qemu_version": qemu_version(),
        "host_cpu": host_cpu_model(),
        "host_cores": os.cpu_count(),
        "sweep": sweep.name,
        "seed": sweep.seed,
        "build_key": kernel.build_key,
        "kernel_version": kernel.kernel_version,
        "preempt_model": kernel.preempt_model,
    }
    progress(
        f"[sweep] {sweep.name}: {len(sweep.points)} points, {len(runs)} boots planned, "
        f"{skipped} already in {out_csv.name}, {len(todo)} to run "
        f"(build {kernel.build_key} {kernel.config_variant}, accel {sweep.accel}, "
        f"timeout {timeout:.0f} s)"
    )
    t0 = time.monotonic()
    by_status: dict[str, int] = {}
    for n, (index, point, rep) in enumerate(todo, 1):
        ctx = dict(
            context,
            boot_index=index,
            host_load1=host_load1(),
            started_utc=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )
        res = boot(point.params, timeout, kernel, sweep.accel)
        (logs / f"{point.point_id}-r{rep}.log").write_text(res.console)
        append_row(out_csv, result_row(res, rep=rep, context=ctx))
        by_status[res.status] = by_status.get(res.status, 0) + 1
        elapsed = time.monotonic() - t0
        eta = elapsed / n * (len(todo) - n)
        r = res.result
        figs = (
            f"time={r.total_time_ns / 1e6:.1f}ms batches={r.batches} fp={r.footprint_mb}MB"
            if r
            else res.failure_detail[:70]
        )
        progress(
            f"[sweep] {n}/{len(todo)} {point.point_id} r{rep}: {res.status} "
            f"{res.boot_wall_s:.1f}s {figs} | eta {eta / 60:.1f} min"
        )
    seconds = time.monotonic() - t0
    progress(
        f"[sweep] done: {sum(by_status.values())} boots in {seconds / 60:.1f} min"
        + "".join(f", {k}={v}" for k, v in sorted(by_status.items()))
    )
    return SweepSummary(len(runs), skipped, len(todo), by_status, round(seconds, 1))


# --------------------------------------------------------------------------------------------
# Trace boot: the kvfree_rcu() trace events of one rcuscale run, on the console
# --------------------------------------------------------------------------------------------

TRACE_VARIANT = "trace"
# One line of tracefs's `trace` / `trace_pipe` (and of `trace-cmd report`, which prints the same
# fields): task-pid, [cpu], the flags column (absent in some trace-cmd versions), timestamp,
# event name, the event's own fields.
TRACE_LINE_RE = re.compile(
    r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
    r"(?:(?P<flags>[^\s:]{4,5})\s+)?(?P<ts>\d+\.\d+):\s+(?P<event>\w+):\s?(?P<fields>.*?)\r?$"
)
_OVERRUN_RE = re.compile(r"^overrun:\s*(\d+)")


@dataclass
class TraceSummary:
    """What a trace console holds: events by name and by CPU, and events the buffer lost."""

    events: dict[str, int]
    events_by_cpu: dict[int, int]
    overrun: int | None  # sum of the per-CPU 'overrun:' stats printed after the trace
    first_ts_s: float | None
    last_ts_s: float | None


def count_trace_events(text: str) -> TraceSummary:
    """Count the trace lines of a console (or of trace_pipe / trace-cmd report output)."""
    events: dict[str, int] = {}
    by_cpu: dict[int, int] = {}
    overrun = None
    first = last = None
    for line in text.splitlines():
        line = line.rstrip("\r")
        m = TRACE_LINE_RE.match(line)
        if m:
            events[m["event"]] = events.get(m["event"], 0) + 1
            cpu = int(m["cpu"])
            by_cpu[cpu] = by_cpu.get(cpu, 0) + 1
            ts = float(m["ts"])
            first = ts if first is None else min(first, ts)
            last = ts if last is None else max(last, ts)
            continue
        o = _OVERRUN_RE.match(line)
        if o:
            overrun = (overrun or 0) + int(o.group(1))
    return TraceSummary(events, dict(sorted(by_cpu.items())), overrun, first, last)


def trace_cmdline(
    params: BootParams, events: Iterable[str] = KVFREE_TRACE_EVENTS, quiet_ms: int = 6000, buf_size: str = "4M"
) -> str:
    """Boot parameters of a trace boot: the events enabled from boot, rcuscale leaving the
    power-off to the trace variant's PID 1, which dumps the trace once it is quiet.

    trace_clock=global is the clock the kernel switches to by itself on this guest ("Unstable
    clock detected") at late_initcall_sync, but that switch empties the ring buffer and so
    drops the events of rcuscale, which runs earlier (device_initcall); naming it avoids that.
    """
    return params.kernel_cmdline(
        shutdown=False,
        extra=[
            f"trace_event={','.join(events)}",
            f"trace_buf_size={buf_size}",
            "trace_clock=global",
            f"rcutune_quiet_ms={quiet_ms}",
        ],
    )


def trace_boot(
    params: BootParams,
    out: Path | str,
    *,
    kernel: BuildResult | None = None,
    events: Iterable[str] = KVFREE_TRACE_EVENTS,
    quiet_ms: int = 6000,
    timeout_s: float = 300.0,
    accel: str = DEFAULT_ACCEL,
) -> tuple[BootResult, TraceSummary]:
    """Boot the trace build once (building it first if the cache lacks it) and write its
    console, exactly as qemu printed it, to `out`. The point's own variants (e.g. `nocb`) are
    kept: the build is those plus `trace`."""
    params = dataclasses.replace(
        params, config_variant=variant_label(normalize_variants((*params.variants, TRACE_VARIANT)))
    )
    kernel = kernel_for(params.variants, kernel, build_missing=True)
    res = boot(params, timeout_s, kernel, accel, cmdline=trace_cmdline(params, events, quiet_ms))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as fh:
        fh.write(res.console)
    return res, count_trace_events(res.console)


def summarize(csv_path: Path | str) -> list[dict]:
    """Per point: boots, OK boots, OOM fraction and medians of the figures.

    The README's observations come from this, so anyone can recheck them from the committed CSV.
    """
    import statistics

    groups: dict[str, list[dict]] = {}
    for row in read_rows(csv_path):
        groups.setdefault(row["point_id"], []).append(row)

    def med(rows, key):
        vals = [float(r[key]) for r in rows if r[key] != ""]
        return statistics.median(vals) if vals else None

    out = []
    for pid, rows in groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        times = [float(r["total_time_ns"]) for r in ok]
        out.append(
            {
                "point_id": pid,
                "boots": len(rows),
                "ok": len(ok),
                "oom_fraction": sum(r["status"] == "oom" for r in rows) / len(rows),
                "other_failures": sum(r["status"] not in ("ok", "oom") for r in rows),
                "time_ms_median": med(ok, "total_time_ns") / 1e6 if ok else None,
                "time_cv": (statistics.stdev(times) / statistics.mean(times) if len(times) > 1 else None),
                "batches_median": med(ok, "batches"),
                "footprint_mb_median": med(ok, "footprint_mb"),
                "boot_wall_s_median": med(rows, "boot_wall_s"),
            }
        )
    return out


def _print_summary(rows: list[dict]) -> None:
    cols = (
        "point_id",
        "boots",
        "ok",
        "oom_fraction",
        "other_failures",
        "time_ms_median",
        "time_cv",
        "batches_median",
        "footprint_mb_median",
        "boot_wall_s_median",
    )
    print("\t".join(cols))
    for r in sorted(rows, key=lambda r: r["point_id"]):
        print("\t".join("-" if r[c] is None else f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    """`python -m rcutune.validation.kernel build | boot ... | sweep FILE --out CSV | measure |
    summary CSV | trace ... --out FILE | free-costs --guest-cpus C`."""
    import argparse

    from . import free_costs

    ap = argparse.ArgumentParser(
        prog="python -m rcutune.validation.kernel", description="Build/boot Linux 6.1 rcuscale guests under qemu TCG."
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    variant_help = (
        f"config variant(s) layered on the base fragment: "
        f"{', '.join((BASE_VARIANT,) + available_variants())}; 'a+b' combines"
    )
    b = sub.add_parser("build", help="install packages and build kernel + initramfs (cached)")
    b.add_argument("--cache-dir")
    b.add_argument("--jobs", type=int, default=2)
    b.add_argument("--variant", default=BASE_VARIANT, help=variant_help)

    def point_args(o, defaults: BootParams) -> None:
        for name in PARAM_FIELDS:
            o.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
        o.add_argument("--mode", choices=MODES)
        o.add_argument("--accel", default=DEFAULT_ACCEL, help="qemu -accel value")

    o = sub.add_parser("boot", help="one boot with the given parameters; prints the figures")
    point_args(o, BootParams())
    o.add_argument("--variant", default=BASE_VARIANT, help=variant_help)
    o.add_argument(
        "--rcu-nocbs", default="", help="offload callbacks of these guest CPUs ('all' or a cpulist; needs nocb)"
    )
    o.add_argument("--timeout", type=float, default=120)
    o.add_argument("--console", action="store_true", help="print the guest console")
    t = sub.add_parser(
        "trace",
        help="boot the trace build once and write its console (the "
        "kvfree_rcu() trace events of one rcuscale run) to a file",
    )
    point_args(t, BootParams(kfree_loops=4, kfree_alloc_num=100))
    t.add_argument("--out", required=True, help="console file to write")
    t.add_argument(
        "--quiet-ms", type=int, default=6000, help="dump the trace once no event came for this long after the result"
    )
    t.add_argument("--timeout", type=float, default=300)
    t.add_argument("--variant", default=BASE_VARIANT, help="variants to layer under trace (e.g. nocb)")
    t.add_argument("--rcu-nocbs", default="", help="offload callbacks of these guest CPUs (needs --variant nocb)")
    t.add_argument(
        "--events",
        default=",".join(KVFREE_TRACE_EVENTS),
        help="comma-separated trace events enabled from boot (default: the kvfree_rcu() ones)",
    )
    fc = sub.add_parser(
        "free-costs",
        help="measure per-object free costs by size on the trace build (per page: rcu_head walk, kfree_bulk())",
    )
    fc.add_argument("--guest-cpus", type=int, default=2)
    fc.add_argument("--guest-mem-mib", type=int, default=1024)
    fc.add_argument("--kfree-alloc-num", type=int, default=8000)
    fc.add_argument("--kfree-loops", type=int, default=4)
    fc.add_argument("--kfree-mult", default=",".join(map(str, free_costs.KFREE_MULTS)), help="sizes, comma-separated")
    fc.add_argument("--boots", type=int, default=3, help="boots per size and form; the figures are their medians")
    fc.add_argument("--out", help="file to write (default: validation/free-costs/qemu-tcg-<cpus>.toml)")
    fc.add_argument("--keep-dir", help="keep the trace consoles here")
    s = sub.add_parser("sweep", help="run a sweep file, appending to (and resuming) a CSV")
    s.add_argument("file")
    s.add_argument("--out", required=True)
    s.add_argument("--timeout", type=float)
    s.add_argument("--limit", type=int, help="run at most this many boots, then stop")
    s.add_argument("--dry-run", action="store_true", help="validate and list, boot nothing")
    s.add_argument("--build", action="store_true", help="build (or reuse cache) first")
    e = sub.add_parser("measure", help="build, then run every committed sweep (one command)")
    e.add_argument(
        "--out-dir",
        default=str(HERE.parent / "data"),
        help="where rcuscale-6.1-<sweep>.csv go (existing rows are kept and skipped)",
    )
    e.add_argument("--jobs", type=int, default=2)
    m = sub.add_parser("summary", help="per-point medians and OOM fractions of a CSV")
    m.add_argument("csv")
    a = ap.parse_args(argv)

    try:

        def cli_params(variants: tuple[str, ...], nocbs: str = "") -> BootParams:
            vals = {k: getattr(a, k) for k in PARAM_FIELDS}
            if a.mode:
                vals.pop("kfree_rcu_test_single")
                vals.pop("kfree_rcu_test_double")
                vals["mode"] = a.mode
            if nocbs:
                vals["rcu_nocbs"] = nocbs
            return validate_params("command line", vals, variants)

        if a.cmd == "build":
            build(a.cache_dir, a.jobs, normalize_variants(a.variant))
        elif a.cmd == "trace":
            params = cli_params(normalize_variants(a.variant), a.rcu_nocbs)
            events = tuple(e.strip() for e in a.events.split(",") if e.strip())
            if not events:
                raise ValueError("--events: name at least one event (subsystem:event)")
            res, tr = trace_boot(params, a.out, events=events, quiet_ms=a.quiet_ms, timeout_s=a.timeout, accel=a.accel)
            print(
                f"{res.params.point_id}: status={res.status} wall={res.boot_wall_s:.2f}s "
                f"console={a.out} ({Path(a.out).stat().st_size} bytes)"
            )
            print(
                f"  events: {tr.events or 'none'}; by CPU: {tr.events_by_cpu}; "
                f"overrun: {tr.overrun}; span: {tr.first_ts_s}-{tr.last_ts_s} s"
            )
            return 0 if res.status == "ok" and tr.events else 1
        elif a.cmd == "free-costs":
            try:
                mults = tuple(int(x) for x in a.kfree_mult.split(",") if x.strip())
            except ValueError:
                raise ValueError(f"--kfree-mult {a.kfree_mult!r}: give sizes as integers, e.g. 1,16,64,128") from None
            if len(mults) < 2 or min(mults) < 1 or a.boots < 1:
                raise ValueError("free-costs needs two sizes or more (--kfree-mult >= 1) and --boots >= 1")
            keep = Path(a.keep_dir) if a.keep_dir else None
            if keep:
                keep.mkdir(parents=True, exist_ok=True)
            rows = free_costs.measure(
                a.guest_cpus, a.guest_mem_mib, a.kfree_alloc_num, a.kfree_loops, mults, a.boots, keep
            )
            out = Path(a.out) if a.out else free_costs.FREE_COSTS_DIR / f"qemu-tcg-{a.guest_cpus}.toml"
            command = (
                f"python -m rcutune.validation.kernel free-costs --guest-cpus {a.guest_cpus} "
                f"--guest-mem-mib {a.guest_mem_mib} --kfree-alloc-num {a.kfree_alloc_num} "
                f"--kfree-loops {a.kfree_loops} --kfree-mult {','.join(map(str, mults))} --boots {a.boots}"
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(free_costs.free_costs_text(a.guest_cpus, rows, command))
            costs = free_costs.measured_costs(out.parent)
            print(" ".join(f"{k}={v:.1f}" for k, v in costs.items()))
            return 0
        elif a.cmd == "boot":
            params = cli_params(normalize_variants(a.variant), a.rcu_nocbs)
            res = boot(params, a.timeout, accel=a.accel)
            if a.console:
                print(res.console)
            r, f = res.result, res.facts
            print(
                f"{params.point_id}: status={res.status} wall={res.boot_wall_s:.2f}s "
                f"accel={res.accelerator} kernel={f.kernel_version} "
                f"test_start={f.kernel_ts_test_start_s} result_at={f.kernel_ts_result_s}"
                + (f" offloaded={f.nocb_offloaded_cpus}" if f.nocb_offloaded_cpus else "")
            )
            if r:
                print(f"  total_time_ns={r.total_time_ns} batches={r.batches} footprint_mb={r.footprint_mb}")
            else:
                print(f"  {res.failure_detail}")
        elif a.cmd == "measure":
            for sweep_file in sorted((HERE.parent / "sweeps").glob("*.toml")):
                out = Path(a.out_dir) / f"rcuscale-6.1-{sweep_file.stem}.csv"
                kernel = build(jobs=a.jobs, variants=load_sweep(sweep_file).variants)
                run_sweep(sweep_file, out, kernel=kernel)
        elif a.cmd == "summary":
            _print_summary(summarize(a.csv))
        elif a.cmd == "sweep":
            if a.dry_run:
                sw = load_sweep(a.file)
                runs = sw.runs()
                for p in sw.points:
                    print(f"{p.point_id} x{p.repetitions}")
                print(f"{len(sw.points)} points, {len(runs)} boots, seed {sw.seed}, config variant {sw.config_variant}")
                return 0
            kernel = build(variants=load_sweep(a.file).variants) if a.build else None
            run_sweep(a.file, a.out, kernel=kernel, timeout_s=a.timeout, limit=a.limit)
    except (SweepError, CsvMismatchError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
