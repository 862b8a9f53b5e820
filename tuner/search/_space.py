"""The search space of DESIGN.md §4, restricted by the kernel release, `--fix` and `--faithful`.

Parameters carry the names of `sim.Policy` fields, except `refill_low_watermark_fraction`: the
watermark is a fraction of N (`refill_low_watermark = floor(fraction x n_per_cpu)`) so that its
range does not depend on N and every parameter keeps one distribution for the whole study.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from rcutune import sim
from rcutune.sim import Policy

from .._errors import UserError

N_MAX = 128
SHARED_RESERVE_PAGES_PER_CPU_MAX = 16
DESIGN_N = (1, 2, 4, 8, 16, 32, 64, 128)
"""N values enqueued after the kernel default and N=0: a log-spaced start (small N matter most)."""

PARAM_NAMES = (
    "n_per_cpu",
    "layout",
    "shared_reserve_pages",
    "refill_delay_ms",
    "refill_low_watermark_fraction",
    "emergency_reserve_fraction",
    "prealloc_at_boot",
)


@dataclass(frozen=True)
class Param:
    """One searched parameter; `when` = (parent, value) makes it exist only when the parent has that value."""

    name: str
    distribution: BaseDistribution
    when: tuple[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": json.loads(distribution_to_json(self.distribution)),
            "when": list(self.when) if self.when else None,
        }


@dataclass(frozen=True)
class SearchSpace:
    """What a study may vary (`params`) and what it holds still (`fixed`), for one kernel release.

    Attributes:
        kernel: the modelled release.
        cpus: CPUs of the hardware profile (bounds the hybrid shared reserve).
        params: the searched parameters, in suggestion order.
        fixed: pinned values, by the user (`--fix`), by `--faithful`, or because the release lacks the knob.
        faithful: only policies a stock kernel of the release can run.
    """

    kernel: str
    cpus: int
    params: tuple[Param, ...]
    fixed: tuple[tuple[str, Any], ...] = ()
    faithful: bool = False
    _by_name: dict[str, Param] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.params})

    @property
    def behaviour(self) -> sim.KernelBehaviour:
        return sim.kernel_behaviour(self.kernel)

    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def to_json(self) -> dict[str, Any]:
        """The canonical description stored with the campaign."""
        return {
            "kernel": self.kernel,
            "cpus": self.cpus,
            "faithful": self.faithful,
            "params": [p.to_json() for p in self.params],
            "fixed": {k: v for k, v in self.fixed},
        }

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """Ask the trial for every active parameter; returns the values it chose."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.when is not None and self._value(p.when[0], values) != p.when[1]:
                continue
            d = p.distribution
            if isinstance(d, IntDistribution):
                values[p.name] = trial.suggest_int(p.name, d.low, d.high, step=d.step, log=d.log)
            elif isinstance(d, FloatDistribution):
                values[p.name] = trial.suggest_float(p.name, d.low, d.high, step=d.step, log=d.log)
            else:
                assert isinstance(d, CategoricalDistribution)
                values[p.name] = trial.suggest_categorical(p.name, d.choices)
        return values

    def _value(self, name: str, values: Mapping[str, Any]) -> Any:
        if name in values:
            return values[name]
        return dict(self.fixed).get(name, kernel_defaults(self.behaviour)[name])

    def active(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """`values` restricted to the parameters that exist for them (drops a reserve without hybrid)."""
        out = {}
        for p in self.params:
            if p.when is not None and self._value(p.when[0], values) != p.when[1]:
                continue
            if p.name in values:
                out[p.name] = values[p.name]
        return out

    def complete(self, values: Mapping[str, Any]) -> bool:
        """Whether `values` holds every parameter that is active for them, and nothing else."""
        return set(self.active(values)) == set(values) and all(
            p.name in values for p in self.params if p.when is None or self._value(p.when[0], values) == p.when[1]
        )

    def policy(self, values: Mapping[str, Any]) -> Policy:
        """The policy that parameter values (plus the fixed ones and the kernel's defaults) describe.

        Raises:
            ValueError: for values no policy has (the message is one line).
        """
        merged = {**kernel_defaults(self.behaviour), **dict(self.fixed), **values}
        n = int(merged["n_per_cpu"])
        layout = merged["layout"]
        return Policy(
            n_per_cpu=n,
            layout=layout,
            shared_reserve_pages=int(merged["shared_reserve_pages"]) if layout == "hybrid" else 0,
            refill_delay_ms=int(merged["refill_delay_ms"]),
            refill_low_watermark=math.floor(float(merged["refill_low_watermark_fraction"]) * n + 1e-9),
            prealloc_at_boot=bool(merged["prealloc_at_boot"]),
            emergency_reserve_fraction=float(merged["emergency_reserve_fraction"]),
        )

    def initial_design(self) -> list[tuple[str, dict[str, Any]]]:
        """The trials every study starts with: the kernel default, N=0, then a log-spaced N design.

        Returns (label, parameter values) pairs, duplicates removed; values hold only searched parameters.
        """
        base = kernel_defaults(self.behaviour)
        points: list[tuple[str, dict[str, Any]]] = [("kernel-default", {}), ("no-cache", {"n_per_cpu": 0})]
        points += [("initial-design", {"n_per_cpu": n}) for n in DESIGN_N]
        out: list[tuple[str, dict[str, Any]]] = []
        seen = set()
        for label, change in points:
            values = {}
            for p in self.params:
                want = change.get(p.name, base.get(p.name))
                if not _contains(p.distribution, want):
                    want = _lowest(p.distribution)
                values[p.name] = want
            values = self.active(values)
            key = json.dumps(values, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((label, values))
        return out


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _contains(d: BaseDistribution, value: Any) -> bool:
    if isinstance(d, CategoricalDistribution):
        return value in d.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high, step = d.low, d.high, d.step  # type: ignore[attr-defined]
    if not low <= value <= high:
        return False
    return step is None or abs((value - low) / step - round((value - low) / step)) < 1e-9


def _lowest(d: BaseDistribution) -> Any:
    if isinstance(d, CategoricalDistribution):
        return d.choices[0]
    return d.low  # type: ignore[attr-defined]


def kernel_defaults(kernel: sim.KernelBehaviour) -> dict[str, Any]:
    """Every parameter at the value a stock kernel of the release uses."""
    return {
        "n_per_cpu": kernel.default_n,
        "layout": "per-cpu",
        "shared_reserve_pages": 0,
        "refill_delay_ms": 5000,
        "refill_low_watermark_fraction": 0.0,
        "emergency_reserve_fraction": 0.0,
        "prealloc_at_boot": kernel.prealloc_at_boot,
    }


def _full_space(cpus: int) -> dict[str, Param]:
    return {
        p.name: p
        for p in (
            Param("n_per_cpu", IntDistribution(0, N_MAX)),
            Param("layout", CategoricalDistribution(sim.LAYOUTS)),
            Param(
                "shared_reserve_pages",
                IntDistribution(1, max(2, SHARED_RESERVE_PAGES_PER_CPU_MAX * cpus), log=True),
                when=("layout", "hybrid"),
            ),
            Param("refill_delay_ms", IntDistribution(0, 100_000, step=500)),
            Param("refill_low_watermark_fraction", FloatDistribution(0.0, 1.0, step=0.125)),
            Param("emergency_reserve_fraction", FloatDistribution(0.0, 0.5, step=0.025)),
            Param("prealloc_at_boot", CategoricalDistribution((False, True))),
        )
    }


def _unsupported(kernel: sim.KernelBehaviour) -> dict[str, str]:
    """Parameters this release has no use for, and why."""
    out = {}
    if not kernel.batching:
        for name in PARAM_NAMES:
            out[name] = f"kernel {kernel.version} frees every object by call_rcu() (no page blocks to cache)"
        return out
    if not kernel.n_tunable:
        out["n_per_cpu"] = f"kernel {kernel.version} caches exactly {kernel.default_n} page per CPU"
    if not kernel.refill_worker:
        out["refill_low_watermark_fraction"] = f"kernel {kernel.version} has no refill worker"
    if not kernel.shrinker_drains_cache:
        out["refill_delay_ms"] = f"the refill backoff only exists from 6.1 (kernel {kernel.version})"
    return out


def parse_fix(items: list[str] | None) -> dict[str, Any]:
    """`--fix key=value` strings as typed values.

    Raises:
        UserError: malformed item, unknown key or a value of the wrong type.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or not raw:
            raise UserError(f"--fix {item!r}: expected key=value, e.g. --fix layout=per-cpu")
        if key not in PARAM_NAMES:
            raise UserError(f"--fix {key}: unknown parameter; choose one of: {', '.join(PARAM_NAMES)}")
        try:
            if key in ("n_per_cpu", "shared_reserve_pages", "refill_delay_ms"):
                value: Any = int(raw)
            elif key in ("refill_low_watermark_fraction", "emergency_reserve_fraction"):
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError
            elif key == "prealloc_at_boot":
                lowered = raw.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = lowered in ("true", "1", "yes")
            else:
                if raw not in sim.LAYOUTS:
                    raise UserError(f"--fix layout={raw}: choose one of: {', '.join(sim.LAYOUTS)}")
                value = raw
        except ValueError:
            whole = ("n_per_cpu", "shared_reserve_pages", "refill_delay_ms")
            kind = (
                "true or false"
                if key == "prealloc_at_boot"
                else "a whole number"
                if key in whole
                else "a finite number"
            )
            raise UserError(f"--fix {key}={raw}: expected {kind}") from None
        out[key] = value
    return out


def build_search_space(
    kernel: str, cpus: int, *, fixed: Mapping[str, Any] | None = None, faithful: bool = False
) -> SearchSpace:
    """The search space for one kernel release and hardware profile.

    Args:
        kernel: a modelled release (see `sim.KERNELS`).
        cpus: the hardware profile's CPUs.
        fixed: parameters the user pins (`--fix`), already typed (see `parse_fix`).
        faithful: keep to policies the release's stock kernel runs (per-CPU, no emergency reserve,
            refill on a miss, the release's own boot pre-allocation).

    Raises:
        UserError: unknown kernel, a pinned parameter the release lacks or `--faithful` forbids,
            an invalid pinned value, or nothing left to search.
    """
    try:
        behaviour = sim.kernel_behaviour(kernel)
    except ValueError as err:
        raise UserError(str(err)) from None
    fixed = dict(fixed or {})
    unsupported = _unsupported(behaviour)
    defaults = kernel_defaults(behaviour)
    pinned: dict[str, Any] = {}
    for name, value in fixed.items():
        if name in unsupported and value != defaults[name]:
            raise UserError(f"--fix {name}={value}: not a parameter on this release ({unsupported[name]})")
    if faithful:
        for name, value in (
            ("layout", "per-cpu"),
            ("shared_reserve_pages", 0),
            ("refill_low_watermark_fraction", 0.0),
            ("emergency_reserve_fraction", 0.0),
            ("prealloc_at_boot", behaviour.prealloc_at_boot),
        ):
            if name in fixed and fixed[name] != value:
                raise UserError(
                    f"--fix {name}={fixed[name]} contradicts --faithful (the stock kernel has {name}={value})"
                )
            pinned[name] = value
    for name in unsupported:
        pinned[name] = defaults[name]
    full = _full_space(cpus)
    for name, value in fixed.items():
        d = full[name].distribution
        if (
            isinstance(d, (IntDistribution, FloatDistribution))
            and not d.low <= value <= d.high
            and value != defaults[name]
        ):
            raise UserError(f"--fix {name}={value}: outside the range rcutune models ({_num(d.low)} to {_num(d.high)})")
    pinned.update(fixed)
    if pinned.get("layout", "hybrid") != "hybrid":
        pinned.setdefault("shared_reserve_pages", 0)
    params = tuple(p for name, p in full.items() if name not in pinned)
    space = SearchSpace(kernel=kernel, cpus=cpus, params=params, fixed=tuple(sorted(pinned.items())), faithful=faithful)
    try:
        space.policy({})  # the pinned values must make a policy on their own
    except ValueError as err:
        raise UserError(f"--fix: {err}") from None
    if not params:
        reason = unsupported.get("n_per_cpu", "every parameter is fixed")
        raise UserError(f"nothing to search on kernel {kernel}: {reason}")
    return space
