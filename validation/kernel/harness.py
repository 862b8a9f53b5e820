"""Build a Linux 6.1 kernel with rcuscale, boot it under qemu (TCG) and record kfree test figures.

The simulator's predictions are only worth trusting if they match what a real kernel does, so this
module produces measured data: one qemu boot per sweep row and repetition, one CSV row per boot.
Standard library only, so that it runs on a bare Debian 12 with Python 3.11.

Public functions (used by the CLI and by ``python -m rcutune.validation.kernel``):
``build``, ``boot``, ``run_sweep``, ``load_sweep``, ``parse_kfree_line``, ``classify_console``,
``parse_console``, ``completed_runs``, ``summarize``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
FRAGMENT = HERE / "config.fragment"
INIT_C = HERE / "init.c"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
SOURCE_DIRNAME = "linux-source-6.1"
DEFAULT_CACHE = Path("~/.cache/rcutune/kernel-6.1")
QEMU = "qemu-system-x86_64"
# One host thread runs all vCPUs round-robin. With multi-threaded TCG, 4 vCPU threads on a shared
# 2-core host get preempted while holding guest locks and a 1 s run sometimes takes 30 s; the
# single-threaded variant keeps boots at 2-3 s and the run-to-run spread small (README).
DEFAULT_ACCEL = "tcg,thread=single"
# Bump when the build recipe changes in a way the hash of fragment + init.c does not see.
BUILD_RECIPE_VERSION = "1"

APT_PACKAGES = (
    "linux-source-6.1", "qemu-system-x86", "build-essential", "flex", "bison", "bc",
    "libelf-dev", "libssl-dev", "cpio", "gzip", "xz-utils",
)

MODES = ("single", "double", "mixed")
STATUSES = ("ok", "oom", "timeout", "emulation_failure", "panic", "no_result")


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
        return (f"c{self.guest_cpus}-m{self.guest_mem_mib}-n{self.rcu_min_cached_objs}"
                f"-d{self.rcu_delay_page_cache_fill_msec}-t{self.kfree_nthreads}"
                f"-a{self.kfree_alloc_num}-l{self.kfree_loops}-x{self.kfree_mult}-{mode}")

    def kernel_cmdline(self) -> str:
        """The boot parameters: the test powers the guest off; a panic (e.g. OOM) ends qemu."""
        return " ".join([
            "console=ttyS0", "panic=-1", "rcuscale.kfree_rcu_test=1", "rcuscale.shutdown=1",
            f"rcutree.rcu_min_cached_objs={self.rcu_min_cached_objs}",
            f"rcutree.rcu_delay_page_cache_fill_msec={self.rcu_delay_page_cache_fill_msec}",
            f"rcuscale.kfree_nthreads={self.kfree_nthreads}",
            f"rcuscale.kfree_alloc_num={self.kfree_alloc_num}",
            f"rcuscale.kfree_loops={self.kfree_loops}",
            f"rcuscale.kfree_mult={self.kfree_mult}",
            f"rcuscale.kfree_rcu_test_single={self.kfree_rcu_test_single}",
            f"rcuscale.kfree_rcu_test_double={self.kfree_rcu_test_double}",
        ])


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
    r"batches: (?P<batches>-?\d+), memory footprint: (?P<fp>-?\d+)MB")
_TS_RE = re.compile(r"^\[\s*(\d+\.\d+)\]")
_OBJ_SIZE_RE = re.compile(r"kfree object size=(\d+)")
_VERSION_RE = re.compile(r"Linux version (\S+)")
_MEMORY_RE = re.compile(r"Memory: (\d+)K/(\d+)K available")
_HYPERVISOR_RE = re.compile(r"Hypervisor detected: (\S+)")

OOM_MARKERS = ("invoked oom-killer", "Out of memory", "page allocation failure",
               "rcu-scale!!! out of memory")
EMULATION_MARKERS = ("emulation failure", "KVM internal error")
PANIC_MARKERS = ("Kernel panic", "BUG:", "Oops:", "general protection fault")


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


def build_key() -> str:
    """Hash of what defines the guest image, so an edited fragment or init triggers a rebuild."""
    h = hashlib.sha256()
    h.update(BUILD_RECIPE_VERSION.encode())
    h.update(FRAGMENT.read_bytes())
    h.update(INIT_C.read_bytes())
    return h.hexdigest()[:12]


def missing_packages(packages: Iterable[str] = APT_PACKAGES) -> list[str]:
    """Debian packages not installed yet (dpkg-query is quick, apt-get is not)."""
    missing = []
    for pkg in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg],
                           capture_output=True, text=True)
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


def _run_logged(cmd: list[str], log: Path, cwd: Path | None = None,
                env: dict | None = None) -> None:
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


def config_mismatches(fragment: Path, config: Path) -> list[str]:
    """Options of the fragment that the final .config does not have (dropped by Kconfig)."""
    want = read_kconfig(fragment)
    have = read_kconfig(config)
    return [f"{k}: wanted {v}, got {have.get(k, 'n (absent)')}"
            for k, v in want.items() if have.get(k, "n") != v]


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


def _pack_initramfs(init_bin: Path, out: Path, log: Path) -> None:
    """cpio (newc) + gzip with only /init; the kernel's built-in cpio supplies /dev/console."""
    stage = out.parent / "initramfs-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    shutil.copy2(init_bin, stage / "init")
    (stage / "init").chmod(0o755)
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=stage, input=b"init\n",
                          capture_output=True, check=True)
    gz = subprocess.run(["gzip", "-9", "-n"], input=cpio.stdout, capture_output=True, check=True)
    out.write_bytes(gz.stdout)
    shutil.rmtree(stage)
    with log.open("a") as fh:
        fh.write(f"\n[initramfs] {out} {out.stat().st_size} bytes\n")


def find_build(cache_dir: Path | str | None = None) -> BuildResult | None:
    """The cached build for the current fragment and init.c, or None if it must be built."""
    out = cache_root(cache_dir) / "builds" / build_key()
    meta = out / "build.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    image, initrd = out / "bzImage", out / "initramfs.cpio.gz"
    if not (image.exists() and initrd.exists()):
        return None
    return BuildResult(image, initrd, out / "config", info["kernel_version"], info["build_key"],
                       info["build_seconds"], cached=True)


def build(cache_dir: Path | str | None = None, jobs: int = 2) -> BuildResult:
    """Build bzImage and initramfs from the committed fragment, reusing the cache if current.

    tinyconfig + fragment keeps the build to a few minutes on 2 cores; the cache is keyed by a
    hash of the fragment and init.c so that results always match the committed recipe.
    """
    t0 = time.monotonic()
    ensure_packages()
    found = find_build(cache_dir)
    if found is not None:
        print(f"[build] cached {found.build_key}: Linux {found.kernel_version} "
              f"(built in {found.build_seconds:.0f} s earlier)", flush=True)
        return found

    root = cache_root(cache_dir)
    key = build_key()
    out = root / "builds" / key
    obj = out / "obj"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "build.log"
    log.write_text(f"rcutune kernel build {key}\n")
    print(f"[build] key {key}, cache {root}, log {log}", flush=True)

    src = _extract_source(root, log)
    make = ["make", "-C", str(src), f"O={obj}", "ARCH=x86_64"]
    t_cfg = time.monotonic()
    _run_logged(make + ["tinyconfig"], log)
    _run_logged([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
                 str(obj / ".config"), str(FRAGMENT)], log, cwd=src)
    _run_logged(make + ["olddefconfig"], log)
    bad = config_mismatches(FRAGMENT, obj / ".config")
    if bad:
        raise RuntimeError("options of config.fragment did not survive olddefconfig "
                           "(missing dependencies?):\n  " + "\n  ".join(bad))
    print(f"[build] configured in {time.monotonic() - t_cfg:.0f} s; make -j{jobs} bzImage",
          flush=True)
    t_make = time.monotonic()
    _run_logged(make + [f"-j{jobs}", "bzImage"], log)
    print(f"[build] bzImage in {time.monotonic() - t_make:.0f} s", flush=True)
    release = subprocess.run(make + ["-s", "kernelrelease"], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]

    init_bin = out / "init"
    _run_logged(["gcc", "-static", "-O2", "-s", "-o", str(init_bin), str(INIT_C)], log)
    _pack_initramfs(init_bin, out / "initramfs.cpio.gz", log)
    shutil.copy2(obj / "arch/x86/boot/bzImage", out / "bzImage")
    shutil.copy2(obj / ".config", out / "config")

    seconds = time.monotonic() - t0
    (out / "build.json").write_text(json.dumps({
        "build_key": key, "kernel_version": release, "build_seconds": round(seconds, 1),
        "jobs": jobs, "host_cpu": host_cpu_model(), "host_cores": os.cpu_count(),
        "built_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }, indent=2) + "\n")
    print(f"[build] done: Linux {release} in {seconds:.0f} s", flush=True)
    return BuildResult(out / "bzImage", out / "initramfs.cpio.gz", out / "config", release, key,
                       round(seconds, 1), cached=False)


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


def qemu_command(params: BootParams, kernel: BuildResult, accel: str = DEFAULT_ACCEL) -> list[str]:
    """TCG only: the nested KVM here dies on cmpxchg16b/xrstor, and -icount distorts timing."""
    return [QEMU, "-accel", accel, "-smp", str(params.guest_cpus),
            "-m", f"{params.guest_mem_mib}M", "-nographic", "-no-reboot",
            "-kernel", str(kernel.kernel_image), "-initrd", str(kernel.initramfs),
            "-append", params.kernel_cmdline()]


def boot(params: BootParams, timeout_s: float = 120.0, kernel: BuildResult | None = None,
         accel: str = DEFAULT_ACCEL) -> BootResult:
    """Boot one guest and classify it; the timeout backstops runs whose shutdown never comes."""
    if kernel is None:
        kernel = find_build()
        if kernel is None:
            raise RuntimeError("no kernel built for the current fragment; run "
                               "`python -m rcutune.validation.kernel build` first")
    cmd = qemu_command(params, kernel, accel)
    t0 = time.monotonic()
    timed_out = False
    try:
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout_s)
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

PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(BootParams))
_GRID_KEYS = set(PARAM_FIELDS) | {"mode", "repetitions"}
_SWEEP_KEYS = {"name", "seed", "repetitions", "timeout_s", "accel", "description"}


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


def validate_params(where: str, values: dict) -> BootParams:
    """Reject values the kernel would clamp, ignore or crash on, before spending boots on them."""
    v = dict(values)
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
    params = BootParams(**v)
    if mode is not None and params.mode != mode:
        raise SweepError(f"{where}: mode = {mode!r} contradicts kfree_rcu_test_single = "
                         f"{params.kfree_rcu_test_single}, kfree_rcu_test_double = "
                         f"{params.kfree_rcu_test_double}")
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
        raise SweepError(f"{path}: unknown top-level keys {sorted(unknown_top)} "
                         "(expected [sweep], [defaults], [[grid]])")
    head = doc.get("sweep", {})
    if not isinstance(head, dict):
        raise SweepError(f"{path}: [sweep] must be a table")
    bad = set(head) - _SWEEP_KEYS
    if bad:
        raise SweepError(f"{path}: [sweep]: unknown keys {sorted(bad)}")
    name = str(head.get("name", path.stem))
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
        raise SweepError(f"{path}: [defaults]: unknown keys {sorted(bad)}; "
                         f"known: {', '.join(sorted(_GRID_KEYS - {'repetitions'}))}")
    grids = doc.get("grid")
    if not grids or not isinstance(grids, list):
        raise SweepError(f"{path}: needs at least one [[grid]] table")

    points: dict[str, SweepPoint] = {}
    for gi, grid in enumerate(grids, 1):
        where = f"{path}: [[grid]] #{gi}"
        bad = set(grid) - _GRID_KEYS
        if bad:
            raise SweepError(f"{where}: unknown keys {sorted(bad)}; "
                             f"known: {', '.join(sorted(_GRID_KEYS))}")
        reps = _check_int(where, "repetitions", grid.get("repetitions", reps_default), 1)
        merged = {**defaults, **{k: v for k, v in grid.items() if k != "repetitions"}}
        axes = []
        for key, val in merged.items():
            vals = val if isinstance(val, list) else [val]
            if not vals:
                raise SweepError(f"{where}: {key} is an empty list")
            axes.append([(key, x) for x in vals])
        for combo in itertools.product(*axes):
            params = validate_params(where, dict(combo))
            pid = params.point_id
            old = points.get(pid)
            # Overlapping blocks share a point; it runs with the larger repetition count.
            if old is None or old.repetitions < reps:
                points[pid] = SweepPoint(params, reps)
    accel = head.get("accel", DEFAULT_ACCEL)
    if not isinstance(accel, str) or not accel.startswith(("tcg", "kvm")):
        raise SweepError(f"{path}: [sweep]: accel must be a qemu -accel value such as "
                         f"'tcg' or '{DEFAULT_ACCEL}', got {accel!r}")
    return Sweep(name, seed, float(timeout), tuple(points.values()), accel)


# --------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------

CSV_COLUMNS = (
    "point_id", "rep", *PARAM_FIELDS, "mode", "kfree_threads_effective", "object_size_bytes",
    "status", "failure_detail", "total_time_ns", "loops", "batches", "footprint_mb",
    "boot_wall_s", "kernel_ts_test_start_s", "kernel_ts_result_s", "kernel_ts_last_s",
    "guest_mem_available_kib", "guest_mem_total_kib", "oom_seen",
    "kernel_version", "qemu_version", "accelerator", "tcg_threads", "host_cpu", "host_cores",
    "host_load1",
    "sweep", "seed", "boot_index", "started_utc", "build_key",
)


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
        point_id=p.point_id, rep=rep, mode=p.mode,
        kfree_threads_effective=p.kfree_threads_effective,
        object_size_bytes=f.object_size_bytes or p.object_size_bytes,
        status=res.status, failure_detail=res.failure_detail,
        total_time_ns=r.total_time_ns if r else None, loops=r.loops if r else None,
        batches=r.batches if r else None, footprint_mb=r.footprint_mb if r else None,
        boot_wall_s=res.boot_wall_s, kernel_ts_test_start_s=f.kernel_ts_test_start_s,
        kernel_ts_result_s=f.kernel_ts_result_s, kernel_ts_last_s=f.kernel_ts_last_s,
        guest_mem_available_kib=f.guest_mem_available_kib,
        guest_mem_total_kib=f.guest_mem_total_kib, oom_seen=f.oom_seen,
        kernel_version=f.kernel_version or context.get("kernel_version", ""),
        accelerator=res.accelerator, tcg_threads=res.tcg_threads,
    )
    for k in ("qemu_version", "host_cpu", "host_cores", "host_load1", "sweep", "seed",
              "boot_index", "started_utc", "build_key"):
        row.setdefault(k, context.get(k))
    return {k: _fmt(row.get(k)) for k in CSV_COLUMNS}


def completed_runs(csv_path: Path | str) -> set[tuple[str, int]]:
    """(point_id, rep) pairs already in the CSV, failed boots included: a failure is a result,
    and re-running it until it passes would bias the OOM probability."""
    csv_path = Path(csv_path)
    if not csv_path.exists() or csv_path.stat().st_size == 0:
        return set()
    with csv_path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return set()
        if tuple(header) != CSV_COLUMNS:
            raise CsvMismatchError(
                f"{csv_path}: header differs from this harness's columns; write to a new file")
        done = set()
        for row in reader:
            if len(row) != len(CSV_COLUMNS):
                continue  # a row cut short by an interruption: run that boot again
            rec = dict(zip(CSV_COLUMNS, row))
            done.add((rec["point_id"], int(rec["rep"])))
        return done


def _repair_tail(csv_path: Path) -> None:
    """Drop a partial last line left by a killed run, so appended rows start on their own line."""
    data = csv_path.read_bytes()
    if data and not data.endswith(b"\n"):
        csv_path.write_bytes(data[: data.rfind(b"\n") + 1])


def append_row(csv_path: Path, row: dict[str, str]) -> None:
    """Append and fsync each row at once: an interrupted sweep keeps every finished boot."""
    new = not csv_path.exists() or csv_path.stat().st_size == 0
    if not new:
        _repair_tail(csv_path)
    with csv_path.open("a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS, lineterminator="\n")
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


def run_sweep(sweep_file: Path | str, out_csv: Path | str, *, kernel: BuildResult | None = None,
              timeout_s: float | None = None, limit: int | None = None,
              log_dir: Path | str | None = None,
              progress: Callable[[str], None] = lambda s: print(s, flush=True)) -> SweepSummary:
    """Boot every (point, repetition) of a sweep one after another, appending to out_csv.

    Boots run sequentially (the host has 2 cores, and parallel guests would perturb each other's
    timings); rows already in out_csv are skipped, so rerunning the same command resumes.
    Console logs go to the cache (outside the repository) for diagnosing failed boots.
    """
    sweep = load_sweep(sweep_file)
    out_csv = Path(out_csv)
    done = completed_runs(out_csv)
    if kernel is None:
        kernel = find_build()
        if kernel is None:
            raise RuntimeError("no kernel built for the current fragment; run "
                               "`python -m rcutune.validation.kernel build` first")
    timeout = timeout_s or sweep.timeout_s
    logs = Path(log_dir) if log_dir else cache_root() / "logs" / out_csv.stem
    logs.mkdir(parents=True, exist_ok=True)
    out_csv.parent.mkdir(parents=True, exist_ok=True)

    runs = sweep.runs()
    todo = [(i, p, rep) for i, (p, rep) in enumerate(runs) if (p.point_id, rep) not in done]
    skipped = len(runs) - len(todo)
    if limit is not None:
        todo = todo[:limit]
    context = {"qemu_version": qemu_version(), "host_cpu": host_cpu_model(),
               "host_cores": os.cpu_count(), "sweep": sweep.name, "seed": sweep.seed,
               "build_key": kernel.build_key, "kernel_version": kernel.kernel_version}
    progress(f"[sweep] {sweep.name}: {len(sweep.points)} points, {len(runs)} boots planned, "
             f"{skipped} already in {out_csv.name}, {len(todo)} to run "
             f"(accel {sweep.accel}, timeout {timeout:.0f} s)")
    t0 = time.monotonic()
    by_status: dict[str, int] = {}
    for n, (index, point, rep) in enumerate(todo, 1):
        ctx = dict(context, boot_index=index, host_load1=host_load1(),
                   started_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        res = boot(point.params, timeout, kernel, sweep.accel)
        (logs / f"{point.point_id}-r{rep}.log").write_text(res.console)
        append_row(out_csv, result_row(res, rep=rep, context=ctx))
        by_status[res.status] = by_status.get(res.status, 0) + 1
        elapsed = time.monotonic() - t0
        eta = elapsed / n * (len(todo) - n)
        r = res.result
        figs = (f"time={r.total_time_ns / 1e6:.1f}ms batches={r.batches} fp={r.footprint_mb}MB"
                if r else res.failure_detail[:70])
        progress(f"[sweep] {n}/{len(todo)} {point.point_id} r{rep}: {res.status} "
                 f"{res.boot_wall_s:.1f}s {figs} | eta {eta / 60:.1f} min")
    seconds = time.monotonic() - t0
    progress(f"[sweep] done: {sum(by_status.values())} boots in {seconds / 60:.1f} min"
             + "".join(f", {k}={v}" for k, v in sorted(by_status.items())))
    return SweepSummary(len(runs), skipped, len(todo), by_status, round(seconds, 1))


def summarize(csv_path: Path | str) -> list[dict]:
    """Per point: boots, OK boots, OOM fraction and medians of the figures.

    The README's observations come from this, so anyone can recheck them from the committed CSV.
    """
    import statistics

    groups: dict[str, list[dict]] = {}
    with Path(csv_path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            groups.setdefault(row["point_id"], []).append(row)

    def med(rows, key):
        vals = [float(r[key]) for r in rows if r[key] != ""]
        return statistics.median(vals) if vals else None

    out = []
    for pid, rows in groups.items():
        ok = [r for r in rows if r["status"] == "ok"]
        times = [float(r["total_time_ns"]) for r in ok]
        out.append({
            "point_id": pid, "boots": len(rows), "ok": len(ok),
            "oom_fraction": sum(r["status"] == "oom" for r in rows) / len(rows),
            "other_failures": sum(r["status"] not in ("ok", "oom") for r in rows),
            "time_ms_median": med(ok, "total_time_ns") / 1e6 if ok else None,
            "time_cv": (statistics.stdev(times) / statistics.mean(times)
                        if len(times) > 1 else None),
            "batches_median": med(ok, "batches"), "footprint_mb_median": med(ok, "footprint_mb"),
            "boot_wall_s_median": med(rows, "boot_wall_s"),
        })
    return out


def _print_summary(rows: list[dict]) -> None:
    cols = ("point_id", "boots", "ok", "oom_fraction", "other_failures", "time_ms_median",
            "time_cv", "batches_median", "footprint_mb_median", "boot_wall_s_median")
    print("\t".join(cols))
    for r in sorted(rows, key=lambda r: r["point_id"]):
        print("\t".join("-" if r[c] is None else f"{r[c]:.3g}" if isinstance(r[c], float)
                        else str(r[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    """`python -m rcutune.validation.kernel build | boot ... | sweep FILE --out CSV | measure | summary CSV`."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m rcutune.validation.kernel",
                                 description="Build/boot Linux 6.1 rcuscale guests under qemu TCG.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="install packages and build kernel + initramfs (cached)")
    b.add_argument("--cache-dir")
    b.add_argument("--jobs", type=int, default=2)
    o = sub.add_parser("boot", help="one boot with the given parameters; prints the figures")
    for name in PARAM_FIELDS:
        o.add_argument("--" + name.replace("_", "-"), type=int,
                       default=getattr(BootParams(), name))
    o.add_argument("--mode", choices=MODES)
    o.add_argument("--timeout", type=float, default=120)
    o.add_argument("--accel", default=DEFAULT_ACCEL, help="qemu -accel value")
    o.add_argument("--console", action="store_true", help="print the guest console")
    s = sub.add_parser("sweep", help="run a sweep file, appending to (and resuming) a CSV")
    s.add_argument("file")
    s.add_argument("--out", required=True)
    s.add_argument("--timeout", type=float)
    s.add_argument("--limit", type=int, help="run at most this many boots, then stop")
    s.add_argument("--dry-run", action="store_true", help="validate and list, boot nothing")
    s.add_argument("--build", action="store_true", help="build (or reuse cache) first")
    e = sub.add_parser("measure", help="build, then run every committed sweep (one command)")
    e.add_argument("--out-dir", default=str(HERE.parent / "data"),
                   help="where rcuscale-6.1-<sweep>.csv go (existing rows are kept and skipped)")
    e.add_argument("--jobs", type=int, default=2)
    m = sub.add_parser("summary", help="per-point medians and OOM fractions of a CSV")
    m.add_argument("csv")
    a = ap.parse_args(argv)

    try:
        if a.cmd == "build":
            build(a.cache_dir, a.jobs)
        elif a.cmd == "boot":
            vals = {k: getattr(a, k) for k in PARAM_FIELDS}
            if a.mode:
                vals.pop("kfree_rcu_test_single")
                vals.pop("kfree_rcu_test_double")
                vals["mode"] = a.mode
            params = validate_params("command line", vals)
            res = boot(params, a.timeout, accel=a.accel)
            if a.console:
                print(res.console)
            r, f = res.result, res.facts
            print(f"{params.point_id}: status={res.status} wall={res.boot_wall_s:.2f}s "
                  f"accel={res.accelerator} kernel={f.kernel_version} "
                  f"test_start={f.kernel_ts_test_start_s} result_at={f.kernel_ts_result_s}")
            if r:
                print(f"  total_time_ns={r.total_time_ns} batches={r.batches} "
                      f"footprint_mb={r.footprint_mb}")
            else:
                print(f"  {res.failure_detail}")
        elif a.cmd == "measure":
            kernel = build(jobs=a.jobs)
            for sweep_file in sorted((HERE.parent / "sweeps").glob("*.toml")):
                out = Path(a.out_dir) / f"rcuscale-6.1-{sweep_file.stem}.csv"
                run_sweep(sweep_file, out, kernel=kernel)
        elif a.cmd == "summary":
            _print_summary(summarize(a.csv))
        elif a.cmd == "sweep":
            if a.dry_run:
                sw = load_sweep(a.file)
                runs = sw.runs()
                for p in sw.points:
                    print(f"{p.point_id} x{p.repetitions}")
                print(f"{len(sw.points)} points, {len(runs)} boots, seed {sw.seed}")
                return 0
            kernel = build() if a.build else None
            run_sweep(a.file, a.out, kernel=kernel, timeout_s=a.timeout, limit=a.limit)
    except (SweepError, CsvMismatchError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
