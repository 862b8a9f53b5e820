"""A hardware profile of a running machine: what it tells, and the nearest shipped profile for the rest."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rcutune import sim

from ._machine import Machine, read_machine
from ._trace import comment

EMULATOR_PREFIX = "qemu-tcg-"
"""Shipped profiles calibrated on an emulator (timings of qemu TCG): never the nearest to a real machine."""


def machine_keys(m: Machine) -> dict[str, tuple[Any, str]]:
    """The hardware-profile keys a machine's facts give, each with where it was read.

    The one place that maps kernel facts to profile keys: a change of the profile schema is an
    edit here. A fact whose value the schema does not take is left out (so it is borrowed).
    """
    fields = sim.HardwareProfile.model_fields
    out: dict[str, tuple[Any, str]] = {}
    for key in ("cpus", "memory_mib", "page_size", "hz", "nocb_cpus", "rcu_lazy", "rcu_expedited"):
        value = getattr(m, key)
        if value is not None and _allowed(key, value):
            out[key] = (value, m.sources[key])
    if m.preempt is not None:
        # rt and lazy preempt a kernel loop as full preemption does (preemptible RCU); none and voluntary
        # wait for cond_resched().
        model = m.preempt if m.preempt in ("none", "voluntary") else "full"
        out["preempt"] = (model, m.sources["preempt"] + ("" if model == m.preempt else f": {m.preempt}"))
    if m.preempt_dynamic is not None:
        out["preempt_dynamic"] = (m.preempt_dynamic, m.sources["preempt_dynamic"])
    if m.allocator is not None:
        out["allocator"] = (m.allocator, m.sources["allocator"])
    return {k: v for k, v in out.items() if k in fields}


def _allowed(key: str, value: Any) -> bool:
    try:
        sim.HardwareProfile.model_validate({**_MINIMAL, key: value})
    except ValueError:
        return False
    return True


_MINIMAL = {"name": "probe", "cpus": 4096, "memory_mib": 65536}


def nearest_shipped(
    cpus: int | None, memory_mib: int | None, page_size: int | None, hz: int | None, nocb_cpus: int | None
) -> sim.HardwareProfile:
    """The shipped machine profile closest to these facts: CPU count counts twice as much as memory
    (both on a log scale), then page size, the share of offloaded CPUs and HZ."""

    def distance(p: sim.HardwareProfile) -> float:
        d = 0.0
        if cpus:
            d += 2 * abs(math.log2(p.cpus / cpus))
        if memory_mib:
            d += abs(math.log2(p.memory_mib / memory_mib))
        if page_size:
            d += 2 * (p.page_size != page_size)
        if cpus and nocb_cpus is not None:
            d += abs(p.nocb_cpus / p.cpus - nocb_cpus / cpus)
        if hz:
            d += 0.5 * (p.hz != hz)
        return d

    shipped = [sim.load_hardware(n) for n in sim.list_profiles("hardware") if not n.startswith(EMULATOR_PREFIX)]
    return min(shipped, key=lambda p: (distance(p), p.name))


@dataclass(frozen=True)
class HardwareCapture:
    """A captured hardware profile: its keys, which were read and which borrowed, and what to warn about."""

    machine: Machine
    nearest: sim.HardwareProfile
    keys: dict[str, Any]  # in the order the file lists them
    read: dict[str, str]  # key -> where it was read
    borrowed: tuple[str, ...]  # keys taken from `nearest`
    warnings: tuple[str, ...]

    def profile(self, name: str = "captured") -> sim.HardwareProfile:
        """The profile the file describes, validated (the file's name is its stem when loaded)."""
        return sim.HardwareProfile.model_validate({"name": name, **self.keys})

    def study_command(self, path: str) -> str:
        """The study to run with the file written at `path` (with --kernel when not the default)."""
        kernel = "" if self.machine.kernel == sim.DEFAULT_KERNEL else f" --kernel {self.machine.kernel}"
        return f"rcutune study --hardware {path}{kernel}"

    def toml(self, path: str = "<this file>") -> str:
        m = self.machine
        params = ", ".join(f"{p.name}={p.value}" for p in m.parameters.values()) or "none found under /sys/module"
        names = ", ".join(m.behaviour.boot_param(n) for n in m.behaviour.boot_params()) or "none"
        lines = [f"# Hardware profile of a machine running Linux {m.release}, by rcutune profile capture."]
        lines += comment(f"kernel: modelled as {m.kernel}; its cache parameters are {names}")
        lines += comment(f"as running: {params}")
        lines += [line for w in self.warnings for line in comment(f"WARNING: {w}")]
        lines.append("# Read from the machine:")
        lines += [f"#   {k}: {source}" for k, source in self.read.items()]
        for fact, why in m.unread.items():
            lines.append(f"#   not read: {fact} ({why})")
        lines.append(
            f"# Not readable from a running system, so taken from the nearest shipped profile '{self.nearest.name}'"
        )
        lines.append(
            f"# ({self.nearest.cpus} CPUs, {self.nearest.memory_mib} MiB, HZ={self.nearest.hz}); "
            "measure them to do better:"
        )
        lines += comment(", ".join(self.borrowed))
        lines.append(f"# Next: {self.study_command(path)}")
        lines.append(f"description = {json.dumps(self.keys_description())}")
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.keys.items()]
        return "\n".join(lines) + "\n"

    def keys_description(self) -> str:
        m = self.machine
        return (
            f"captured: Linux {m.release} (modelled as {m.kernel}), "
            f"{self.keys['cpus']} CPUs, {self.keys['memory_mib']} MiB"
        )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def capture_hardware(root: Path | str = "/") -> HardwareCapture:
    """A hardware profile of the machine under `root` (default: this one).

    The keys the machine's files give are read; every other key the nearest shipped profile sets is
    borrowed from it, and the file says which. Raises UserError when `root` is not a machine's tree.
    """
    m = read_machine(root)
    got = machine_keys(m)
    nearest = nearest_shipped(*(got.get(k, (None,))[0] for k in ("cpus", "memory_mib", "page_size", "hz", "nocb_cpus")))
    borrowed = tuple(
        k
        for k in sim.HardwareProfile.model_fields
        if k in nearest.model_fields_set and k not in got and k not in ("name", "description")
    )
    for key in ("cpus", "memory_mib"):  # required keys a strange tree may lack
        if key not in got and key not in borrowed:
            borrowed += (key,)
    keys = {k: v for k, (v, _) in got.items()}
    keys.update({k: getattr(nearest, k) for k in borrowed})
    if keys.get("nocb_cpus", 0) > keys["cpus"]:
        keys["nocb_cpus"] = keys["cpus"]
    order = list(sim.HardwareProfile.model_fields)
    keys = dict(sorted(keys.items(), key=lambda kv: order.index(kv[0])))
    warnings = tuple(w for w in (m.kernel_note,) if w)
    capture = HardwareCapture(m, nearest, keys, {k: s for k, (_, s) in got.items()}, borrowed, warnings)
    capture.profile()  # validated here, so a file it writes always loads
    return capture
