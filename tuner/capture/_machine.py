"""What a running Linux machine tells about itself, read from a directory laid out like `/`.

Everything is read from files (procfs, sysfs, the kernel's build configuration), so a test can
point `root` at a small tree of the same files. A fact the files do not give stays None, with the
reason in `Machine.unread`; nothing here guesses.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rcutune import sim

from .._errors import UserError

CACHE_PARAMS = ("rcu_min_cached_objs", "rcu_delay_page_cache_fill_msec")
"""The kvfree_rcu() page-cache parameters rcutune recommends (names without the module prefix)."""
PARAM_MODULES = ("slab_common", "rcutree")
"""Where kernels keep them: slab_common from the 6.14 move to mm/slab_common.c, rcutree before."""

PreemptModel = str
"""none, voluntary, full, lazy or rt: CONFIG_PREEMPT_{NONE,VOLUNTARY}, CONFIG_PREEMPT, _LAZY, _RT."""


@dataclass(frozen=True)
class ParamValue:
    """A cache parameter of the running kernel: its value and the file it was read from."""

    name: str  # with the module prefix, e.g. slab_common.rcu_min_cached_objs
    value: int
    source: str


@dataclass(frozen=True)
class Machine:
    """The facts of one machine; None where its files do not say (see `unread`)."""

    release: str  # uname -r, e.g. 6.18.44-generic
    kernel: str  # the modelled release whose behaviour it runs (see `modelled_release`)
    kernel_note: str | None  # one line when the release is newer or older than every modelled one
    cmdline: tuple[str, ...]  # the kernel's own arguments (before any "--")
    cpus: int | None = None
    memory_mib: int | None = None
    page_size: int | None = None
    hz: int | None = None
    preempt: PreemptModel | None = None
    preempt_dynamic: bool | None = None
    allocator: str | None = None  # slub or slab
    nocb_cpus: int | None = None
    rcu_lazy: bool | None = None
    rcu_expedited: bool | None = None
    config_source: str | None = None
    parameters: dict[str, ParamValue] = field(default_factory=dict)  # CACHE_PARAMS name -> value
    sources: dict[str, str] = field(default_factory=dict)  # fact -> where it was read
    unread: dict[str, str] = field(default_factory=dict)  # fact -> why it was not read

    @property
    def behaviour(self) -> sim.KernelBehaviour:
        return sim.kernel_behaviour(self.kernel)

    def cmdline_value(self, name: str) -> str | None:
        """The last value the command line gives parameter `name` (kernel spelling: - and _ alike)."""
        return cmdline_values(self.cmdline).get(_param_key(name))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def modelled_release(release: str) -> tuple[str, str | None]:
    """The modelled release a running kernel behaves as: the newest one not newer than it.

    Returns (version, note): the note is one line when the release is newer than every modelled
    release (modelled as the newest) or older than all of them (modelled as the oldest).

    Raises:
        UserError: a release string that does not start with major.minor.
    """
    match = re.match(r"(\d+)\.(\d+)", release.strip())
    if not match:
        raise UserError(f"kernel release {release.strip()!r} does not start with major.minor (e.g. 6.18.2)")
    running = (int(match.group(1)), int(match.group(2)))
    known = sorted(sim.KERNELS, key=_version)
    older = [k for k in known if _version(k) <= running]
    short = f"{running[0]}.{running[1]}"
    if not older:
        return known[0], f"Linux {short} is older than every modelled release; modelled as {known[0]}"
    chosen = older[-1]
    if running > _version(known[-1]):
        return chosen, f"Linux {short} is newer than every modelled release; modelled as {chosen}"
    return chosen, None


def cmdline_args(text: str) -> tuple[str, ...]:
    """The kernel's arguments from /proc/cmdline: words (double quotes keep spaces), up to "--"."""
    args = []
    for match in re.finditer(r'(?:[^\s"]|"[^"]*")+', text):
        word = match.group(0)
        if word == "--":
            break
        args.append(word.replace('"', ""))
    return tuple(args)


def _param_key(name: str) -> str:
    return name.replace("-", "_")


def cmdline_values(args: tuple[str, ...]) -> dict[str, str]:
    """{parameter: value} of the arguments (the last one wins, as in the kernel; bare words map to '')."""
    out = {}
    for arg in args:
        key, _, value = arg.partition("=")
        out[_param_key(key)] = value
    return out


def parse_cpulist(text: str, cpus: int) -> set[int]:
    """CPUs of a cpulist as the kernel parses it: "0-3,8", "all", "N" (the last CPU), "0-15:2/4".

    Raises:
        UserError: text that is not a cpulist.
    """
    text = text.strip()
    if text == "all":
        return set(range(cpus))
    out: set[int] = set()
    for part in filter(None, text.split(",")):
        match = re.fullmatch(r"(\d+|N)(?:-(\d+|N))?(?::(\d+)/(\d+))?", part.strip())
        if not match:
            raise UserError(f"cpulist {text!r}: cannot read {part!r}; expected e.g. 0-3,8")
        lo, hi = (cpus - 1 if x == "N" else int(x) for x in (match.group(1), match.group(2) or match.group(1)))
        used, group = int(match.group(3) or 1), int(match.group(4) or 1)
        out.update(c for c in range(lo, hi + 1) if (c - lo) % group < used)
    return out


def read_config(root: Path, release: str) -> tuple[dict[str, str], str | None]:
    """The kernel's build configuration ({CONFIG_X: value}) from /proc/config.gz or /boot/config-<release>."""
    for rel in ("proc/config.gz", f"boot/config-{release}"):
        path = root / rel
        try:
            raw = path.read_bytes()
            text = gzip.decompress(raw).decode() if rel.endswith(".gz") else raw.decode()
        except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError):
            continue
        config = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.startswith("CONFIG_"):
                config[key.strip()] = value.strip().strip('"')
        return config, "/" + rel
    return {}, None


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _preempt_from_config(config: dict[str, str]) -> PreemptModel | None:
    for symbol, model in (
        ("CONFIG_PREEMPT_RT", "rt"),
        ("CONFIG_PREEMPT_LAZY", "lazy"),
        ("CONFIG_PREEMPT", "full"),
        ("CONFIG_PREEMPT_VOLUNTARY", "voluntary"),
        ("CONFIG_PREEMPT_NONE", "none"),
    ):
        if config.get(symbol) == "y":
            return model
    return None


_PAGE_SIZE_SYMBOLS = {
    "CONFIG_PAGE_SIZE_4KB": 4096,
    "CONFIG_PAGE_SIZE_16KB": 16384,
    "CONFIG_PAGE_SIZE_64KB": 65536,
    "CONFIG_ARM64_4K_PAGES": 4096,
    "CONFIG_ARM64_16K_PAGES": 16384,
    "CONFIG_ARM64_64K_PAGES": 65536,
    "CONFIG_PPC_4K_PAGES": 4096,
    "CONFIG_PPC_64K_PAGES": 65536,
}


def read_machine(root: Path | str = "/") -> Machine:
    """Read the machine whose files are under `root` (default: this machine).

    Raises:
        UserError: `root` is not a directory, or holds no kernel release (/proc/sys/kernel/osrelease).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root}: not a directory; give a directory laid out like / (or omit --root)")
    release_text = _read(root, "proc/sys/kernel/osrelease")
    if release_text is None and root == Path("/"):
        release_text = os.uname().release
    if not release_text or not release_text.strip():
        raise UserError(f"{root}: no proc/sys/kernel/osrelease; --root must be laid out like / with /proc mounted")
    release = release_text.strip()
    kernel, note = modelled_release(release)
    args = cmdline_args(_read(root, "proc/cmdline") or "")
    values = cmdline_values(args)
    facts: dict[str, object] = {}
    sources: dict[str, str] = {}
    unread: dict[str, str] = {}

    def fact(name: str, value: object, source: str) -> None:
        facts[name] = value
        sources[name] = source

    online = _read(root, "sys/devices/system/cpu/online")
    if online is not None:
        fact("cpus", len(parse_cpulist(online, 4096)), "/sys/devices/system/cpu/online")
    else:
        cpuinfo = _read(root, "proc/cpuinfo")
        count = len(re.findall(r"^processor\s*:", cpuinfo or "", flags=re.MULTILINE))
        if count:
            fact("cpus", count, "/proc/cpuinfo")
        else:
            unread["cpus"] = "no /sys/devices/system/cpu/online or /proc/cpuinfo"

    meminfo = re.search(r"^MemTotal:\s*(\d+)\s*kB", _read(root, "proc/meminfo") or "", flags=re.MULTILINE)
    if meminfo:
        fact("memory_mib", int(meminfo.group(1)) // 1024, "/proc/meminfo MemTotal")
    else:
        unread["memory_mib"] = "no MemTotal in /proc/meminfo"

    config, config_source = read_config(root, release)
    if config_source is None:
        reason = f"no /proc/config.gz or /boot/config-{release}"
        for name in ("hz", "preempt", "allocator"):
            unread[name] = reason
    else:
        hz = config.get("CONFIG_HZ")
        if hz and hz.isdigit():
            fact("hz", int(hz), f"{config_source} CONFIG_HZ")
        else:
            unread["hz"] = f"no CONFIG_HZ in {config_source}"
        preempt = _preempt_from_config(config)
        dynamic = config.get("CONFIG_PREEMPT_DYNAMIC") == "y"
        fact("preempt_dynamic", dynamic, f"{config_source} CONFIG_PREEMPT_DYNAMIC")
        live = re.search(r"\((\w+)\)", _read(root, "sys/kernel/debug/sched/preempt") or "")
        if dynamic and live:
            fact("preempt", live.group(1), "/sys/kernel/debug/sched/preempt")
        elif dynamic and values.get("preempt") in ("none", "voluntary", "full", "lazy"):
            fact("preempt", values["preempt"], "preempt= on /proc/cmdline")
        elif preempt is not None:
            fact("preempt", preempt, f"{config_source} (preemption model)")
        else:
            unread["preempt"] = f"no CONFIG_PREEMPT_* choice in {config_source}"
        allocator = "slab" if config.get("CONFIG_SLAB") == "y" else "slub" if config.get("CONFIG_SLUB") == "y" else None
        if allocator:
            fact("allocator", allocator, f"{config_source} CONFIG_SLUB/CONFIG_SLAB")
        else:
            unread["allocator"] = f"neither CONFIG_SLUB nor CONFIG_SLAB in {config_source}"

    page = next((size for symbol, size in _PAGE_SIZE_SYMBOLS.items() if config.get(symbol) == "y"), None)
    if page:
        fact("page_size", page, f"{config_source} page-size choice")
    else:
        smaps = re.search(r"KernelPageSize:\s*(\d+)\s*kB", _read(root, "proc/self/smaps") or "")
        if smaps:
            fact("page_size", int(smaps.group(1)) * 1024, "/proc/self/smaps KernelPageSize")
        else:
            unread["page_size"] = "no page-size choice in the kernel config and no /proc/self/smaps"

    cpus = facts.get("cpus")
    if isinstance(cpus, int):
        nocb_built = config.get("CONFIG_RCU_NOCB_CPU") == "y" if config_source else None
        if nocb_built is False:
            fact("nocb_cpus", 0, f"{config_source}: CONFIG_RCU_NOCB_CPU is not set")
        else:
            offloaded: set[int] = set()
            said = []
            for name in ("rcu_nocbs", "nohz_full"):
                if values.get(name):
                    offloaded |= parse_cpulist(values[name], cpus)
                    said.append(f"{name}= on /proc/cmdline")
            if config.get("CONFIG_RCU_NOCB_CPU_DEFAULT_ALL") == "y":
                offloaded |= set(range(cpus))
                said.append(f"{config_source} CONFIG_RCU_NOCB_CPU_DEFAULT_ALL")
            where = " and ".join(said) if said else "no rcu_nocbs= or nohz_full= on /proc/cmdline"
            fact("nocb_cpus", len({c for c in offloaded if c < cpus}), where)

    lazy_param = _read(root, "sys/module/rcutree/parameters/enable_rcu_lazy")
    if config_source and config.get("CONFIG_RCU_LAZY") != "y":
        fact("rcu_lazy", False, f"{config_source}: CONFIG_RCU_LAZY is not set")
    elif lazy_param is not None:
        fact("rcu_lazy", lazy_param.strip() in ("Y", "1"), "/sys/module/rcutree/parameters/enable_rcu_lazy")
    elif "rcutree.enable_rcu_lazy" in values:
        fact(
            "rcu_lazy",
            values["rcutree.enable_rcu_lazy"] in ("1", "y", "Y"),
            "rcutree.enable_rcu_lazy= on /proc/cmdline",
        )
    elif config_source:
        fact("rcu_lazy", config.get("CONFIG_RCU_LAZY_DEFAULT_OFF") != "y", f"{config_source} CONFIG_RCU_LAZY")
    else:
        unread["rcu_lazy"] = "no kernel config and no rcutree.enable_rcu_lazy"

    expedited = _read(root, "sys/kernel/rcu_expedited")
    if expedited is not None and expedited.strip().isdigit():
        fact("rcu_expedited", expedited.strip() != "0", "/sys/kernel/rcu_expedited")
    else:
        fact(
            "rcu_expedited",
            values.get("rcupdate.rcu_expedited", "0") not in ("0", "n", "N", ""),
            "rcupdate.rcu_expedited on /proc/cmdline",
        )

    return Machine(
        release=release,
        kernel=kernel,
        kernel_note=note,
        cmdline=args,
        config_source=config_source,
        parameters=read_parameters(root, sim.kernel_behaviour(kernel)),
        sources=sources,
        unread=unread,
        **facts,
    )  # type: ignore[arg-type]


def read_parameters(root: Path, behaviour: sim.KernelBehaviour) -> dict[str, ParamValue]:
    """The cache parameters where the running kernel keeps them: its release's module first, then the
    other one (a distribution may have backported the move)."""
    modules = [behaviour.param_module] + [m for m in PARAM_MODULES if m != behaviour.param_module]
    out = {}
    for name in CACHE_PARAMS:
        for module in modules:
            rel = f"sys/module/{module}/parameters/{name}"
            text = _read(root, rel)
            if text is not None and text.strip().lstrip("-").isdigit():
                out[name] = ParamValue(f"{module}.{name}", int(text.strip()), "/" + rel)
                break
    return out
