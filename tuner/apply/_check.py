"""Is a recommendation applied on the running kernel? One verdict per cache parameter.

The value that counts is the one the kernel uses: its sysfs parameter file first; failing that, the
command line under the running release's name; failing that, the release's default. Parameter
names follow the running release (`slab_common.` from 6.14, `rcutree.` before), whatever release
the campaign modelled, and an argument under the other name is pointed out: the kernel ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcutune import sim

from .._errors import UserError
from ..capture import CACHE_PARAMS, PARAM_MODULES, Machine
from ..recommend import Recommendation


@dataclass(frozen=True)
class ParamCheck:
    """One parameter: what the running kernel uses, what was recommended, whether they agree."""

    name: str  # with the running release's prefix
    running: int | None  # None: the running release has no such parameter
    source: str
    recommended: int
    applied: bool

    def line(self) -> str:
        if self.running is None:
            return f"{self.name}: not in this kernel ({self.source}); recommended {self.recommended}: " + (
                "nothing to apply" if self.applied else "NOT applicable"
            )
        verdict = "applied" if self.applied else "NOT applied"
        where = "" if self.source.startswith("/sys/") else f" ({self.source})"
        return f"{self.name}: running {self.running}{where}, recommended {self.recommended}: {verdict}"


@dataclass(frozen=True)
class CheckResult:
    """The verdict for one machine against one campaign's overall recommendation."""

    campaign: str
    kernel: str  # the release the campaign modelled
    machine: Machine
    params: tuple[ParamCheck, ...]
    notes: tuple[str, ...]  # release differences, arguments the kernel ignores

    @property
    def applied(self) -> bool:
        return all(p.applied for p in self.params)

    def lines(self) -> list[str]:
        out = [
            f"campaign {self.campaign} (kernel {self.kernel}) on Linux {self.machine.release} "
            f"(modelled as {self.machine.kernel})"
        ]
        out += list(self.notes)
        out += [p.line() for p in self.params]
        if self.applied:
            out.append("applied: the running kernel uses the recommended values")
        else:
            args = self.missing_args
            out.append(
                f"not applied: boot with {args}"
                if args
                else f"not applied: Linux {self.machine.kernel} lacks a parameter the recommendation sets"
            )
        return out

    @property
    def missing_args(self) -> str:
        """The kernel arguments still to add: each mismatched parameter, under the running release's name."""
        return " ".join(f"{p.name}={p.recommended}" for p in self.params if not p.applied and p.running is not None)


def check(machine: Machine, rec: Recommendation) -> CheckResult:
    """Compare the running kernel's cache parameters with a campaign's overall recommendation.

    Raises:
        UserError: the campaign has no overall recommendation to check against.
    """
    if rec.overall is None:
        raise UserError(
            f"campaign {rec.campaign} has no recommendation to check against"
            + (f"; run: {rec.fix_command}" if rec.fix_command else "; run rcutune report for why")
        )
    policy = rec.overall.policy
    recommended = {"rcu_min_cached_objs": policy.n_per_cpu, "rcu_delay_page_cache_fill_msec": policy.refill_delay_ms}
    running = machine.behaviour
    default = sim.Policy.kernel_default(running)
    defaults = {"rcu_min_cached_objs": default.n_per_cpu, "rcu_delay_page_cache_fill_msec": default.refill_delay_ms}
    notes = []
    modelled = rec.behaviour
    theirs = [modelled.boot_param(n) for n in modelled.boot_params()]
    ours = [running.boot_param(n) for n in running.boot_params()]
    if ours and modelled.param_module != running.param_module:
        notes.append(
            f"the recommendation was made for kernel {rec.kernel}; its names are {modelled.param_module}.*, "
            f"this kernel's {running.param_module}.*"
        )
    elif theirs != ours:
        notes.append(
            f"the recommendation was made for kernel {rec.kernel} ({', '.join(theirs)}); "
            f"this kernel has {', '.join(ours) or 'none of them'}"
        )
    elif rec.kernel != machine.kernel:
        notes.append(
            f"the recommendation was made for kernel {rec.kernel}; this one is modelled as "
            f"{machine.kernel} (same parameter names)"
        )
    given = dict(arg.partition("=")[::2] for arg in machine.cmdline)
    for name in CACHE_PARAMS:
        for module in PARAM_MODULES:
            arg = f"{module}.{name}"
            if module != running.param_module and arg in given:
                notes.append(
                    f"/proc/cmdline has {arg}={given[arg]}, which Linux {machine.kernel} ignores "
                    f"(its name is {running.boot_param(name)})"
                )
    checks = []
    for name in CACHE_PARAMS:
        want = int(recommended[name])
        if name not in running.boot_params():
            checks.append(
                ParamCheck(
                    name,
                    None,
                    f"Linux {machine.kernel} has no {name}",
                    want,
                    applied=want == _stock_value(name, modelled),
                )
            )
            continue
        value, source = _running_value(machine, name, defaults[name])
        checks.append(ParamCheck(running.boot_param(name), value, source, want, applied=value == want))
    return CheckResult(rec.campaign, rec.kernel, machine, tuple(checks), tuple(notes))


def _stock_value(name: str, behaviour: sim.KernelBehaviour) -> int:
    default = sim.Policy.kernel_default(behaviour)
    return int(default.n_per_cpu if name == "rcu_min_cached_objs" else default.refill_delay_ms)


def _running_value(machine: Machine, name: str, default: int) -> tuple[int, str]:
    if name in machine.parameters:
        p = machine.parameters[name]
        return p.value, p.source
    arg = machine.behaviour.boot_param(name)
    value = machine.cmdline_value(arg)
    if value is not None and value.strip().lstrip("-").isdigit():
        return int(value), "from /proc/cmdline"
    return int(default), f"the default: no /sys/module/{machine.behaviour.param_module}/parameters/{name}"
