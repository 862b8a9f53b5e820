"""The answer as typed objects: what `recommend` computes and the report renders (JSON only at the edge).

`Recommendation.to_json()` gives the recommendation.json document (its keys are a contract) and
`Recommendation.from_json()` reads one back, so a stored answer prints exactly as a fresh one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from rcutune import sim

DEFAULT_CONFIDENCE = 0.95
"""The probability of meeting every SLO a recommendation must reach, unless the user asks otherwise."""
CONFIRM_SEEDS = 4
"""Fresh seeds a recommendation is confirmed on."""


@dataclass(frozen=True)
class Interval:
    """A predicted metric: the median and its 90 % interval."""

    mean: float
    lo90: float
    hi90: float


@dataclass(frozen=True)
class Stat:
    """A mean over fresh seeds and the half-width of its 95 % Student-t interval (None with one seed)."""

    mean: float
    ci95: float | None = None


Predicted = dict[str, dict[str, Interval]]
"""workload -> metric -> interval."""


@dataclass(frozen=True)
class Choice:
    """A recommended policy with its predicted figures.

    `p_meet` and `cost` are the worst served workload's probability of meeting every SLO and the
    predicted scalar cost averaged over the workloads of `predicted`.
    """

    policy: sim.Policy
    kernel: str
    p_meet: float
    cost: float
    predicted: Predicted
    what_if_reasons: tuple[str, ...] = ()
    gain: float | None = None  # a what-if only: the faithful choice's cost minus this one's

    @property
    def behaviour(self) -> sim.KernelBehaviour:
        return sim.kernel_behaviour(self.kernel)

    @property
    def kernel_cmdline(self) -> str:
        return self.policy.kernel_cmdline(self.behaviour)

    @property
    def what_if(self) -> bool:
        return bool(self.what_if_reasons)


@dataclass(frozen=True)
class Confirmation:
    """A policy on fresh seeds (common random numbers), against the kernel default and N=0 on the same seeds."""

    seeds: tuple[int, ...]
    seconds: float
    constraints: dict[str, float]
    recommended: dict[str, Stat]
    kernel_default: dict[str, Stat]
    minus_default: dict[str, Stat]  # paired differences, recommended - default
    n_zero: dict[str, Stat] = field(default_factory=dict)
    minus_n_zero: dict[str, Stat] = field(default_factory=dict)

    @property
    def feasible(self) -> bool:
        return all(v <= 0 for v in self.constraints.values())


@dataclass(frozen=True)
class KnobChange:
    """A knob other than N that the search moved from the kernel default, and what keeping it buys.

    `buys` is the paired saving in scalar cost (ms/s, averaged over the served workloads) of the
    changed value against the default on fresh seeds; the change is kept only when it exceeds the
    practical threshold.
    """

    knob: str
    value: Any
    default: Any
    buys: Stat
    kept: bool


@dataclass(frozen=True)
class NExplanation:
    """Why the overall N is what it is: the workload that sets it and how the next smaller N falls short."""

    n: int
    workload: str | None  # None: no workload needs more (N is the smallest candidate)
    reason: str


@dataclass(frozen=True)
class SurrogateFigures:
    """One metric's surrogate for one workload: its estimator, accuracy and whether it decides anything."""

    estimator: str
    n_trials: int
    cv_r2: float | None
    rank_correlation: float | None
    coverage: float | None
    decisive: bool
    noise_limited: bool
    healthy: bool
    model: dict[str, Any] = field(default_factory=dict)
    estimator_decides: bool = True  # see `surrogate.Accuracy.estimator_decides`
    narrow: bool = False  # see `surrogate.Accuracy.narrow`
    explainable_r2: float | None = None  # see `surrogate.Accuracy.explainable_r2`


@dataclass(frozen=True)
class WorkloadRecommendation:
    """The answer for one workload: the faithful choice, a what-if that beats it, their confirmation."""

    workload: str
    faithful: Choice | None
    what_if: Choice | None = None
    confirmed: bool | None = None
    confirmation: Confirmation | None = None
    problems: tuple[str, ...] = ()  # unhealthy surrogates that decide something
    unattainable: str | None = None  # why no policy can serve it (see `_models.unattainable`)


@dataclass(frozen=True)
class Recommendation:
    """The whole answer for one campaign."""

    campaign: str
    hardware: str
    kernel: str
    simulator_version: str
    confidence: float
    seeds: tuple[int, ...]
    fresh_seeds: tuple[int, ...]
    overall: Choice | None
    overall_what_if: Choice | None
    workloads: tuple[WorkloadRecommendation, ...]
    surrogate: dict[str, dict[str, SurrogateFigures]]  # workload -> metric -> figures
    thresholds: dict[str, float]  # metric -> practical threshold (see `_rule.practical_thresholds`)
    unhealthy: dict[str, list[str]] = field(default_factory=dict)
    overall_confirmation: dict[str, Confirmation] = field(default_factory=dict)  # served workload -> check
    knob_changes: tuple[KnobChange, ...] = ()
    n_explanation: NExplanation | None = None
    extrapolated: bool = False
    fix_command: str | None = None
    served: tuple[str, ...] = ()
    profiles: dict[str, Any] = field(default_factory=dict)  # {"hardware": text, "workloads": {name: text}}

    @property
    def behaviour(self) -> sim.KernelBehaviour:
        return sim.kernel_behaviour(self.kernel)

    @property
    def kernel_cmdline(self) -> str | None:
        return None if self.overall is None else self.overall.kernel_cmdline

    @property
    def revert_cmdline(self) -> str:
        return sim.Policy.kernel_default(self.behaviour).kernel_cmdline(self.behaviour)

    @property
    def default_policy(self) -> sim.Policy:
        return sim.Policy.kernel_default(self.behaviour)

    def workload(self, name: str) -> WorkloadRecommendation | None:
        return next((w for w in self.workloads if w.workload == name), None)

    def not_served(self) -> dict[str, str]:
        """{workload: why the overall recommendation does not cover it}."""
        out = {}
        for w in self.workloads:
            if w.workload in self.served:
                continue
            if w.unattainable:
                out[w.workload] = w.unattainable
            elif w.problems:
                out[w.workload] = "unhealthy surrogates (" + "; ".join(w.problems) + ")"
            else:
                out[w.workload] = f"no stock-kernel policy meets its SLOs with probability {self.confidence:g}"
                if w.what_if is not None:
                    out[w.workload] += (
                        f" (a what-if does: {'; '.join(w.what_if.what_if_reasons)}, N={w.what_if.policy.n_per_cpu})"
                    )
        return out

    # -- the edge: recommendation.json ---------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The recommendation.json document (its keys are a contract; new keys are only ever added)."""
        overall = self.overall
        doc_overall = None
        if overall is not None:
            confirmation = {w: _overall_confirmation_json(c) for w, c in self.overall_confirmation.items()}
            doc_overall = {
                **_choice_json(overall),
                "confirmed": all(c.feasible for c in self.overall_confirmation.values())
                if self.overall_confirmation
                else None,
                "confirmation": confirmation,
            }
        return {
            "hardware": self.hardware,
            "campaign": self.campaign,
            "kernel": self.kernel,
            "kernel_cmdline": self.kernel_cmdline,
            "revert_cmdline": self.revert_cmdline,
            "boot_parameters": {
                "rcu_min_cached_objs": self.behaviour.boot_param("rcu_min_cached_objs"),
                "rcu_delay_page_cache_fill_msec": self.behaviour.boot_param("rcu_delay_page_cache_fill_msec"),
            },
            "confidence": self.confidence,
            "overall": doc_overall,
            "overall_what_if": _choice_json(self.overall_what_if),
            "workloads": {w.workload: _workload_json(w) for w in self.workloads},
            "surrogate": _surrogate_json(self.surrogate),
            "thresholds": dict(self.thresholds),
            "knob_changes": [_knob_json(k) for k in self.knob_changes],
            "n_explanation": None if self.n_explanation is None else asdict(self.n_explanation),
            "extrapolated": self.extrapolated,
            "served": list(self.served),
            "unhealthy": self.unhealthy,
            "fix_command": self.fix_command,
            "simulator_version": self.simulator_version,
            "seeds": list(self.seeds),
            "fresh_seeds": list(self.fresh_seeds),
            "profiles": self.profiles,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Recommendation:
        """The recommendation a recommendation.json document (or a stored answer) holds."""
        kernel = doc["kernel"]
        overall = doc.get("overall")
        overall_confirmation = {}
        if overall is not None:
            overall_confirmation = {
                w: _overall_confirmation_from(c, doc.get("fresh_seeds", ()))
                for w, c in (overall.get("confirmation") or {}).items()
            }
        workloads = tuple(_workload_from(name, w, kernel) for name, w in doc["workloads"].items())
        surrogate = {
            w: {m: SurrogateFigures(**figures) for m, figures in per.items()}
            for w, per in _surrogate_from(doc["surrogate"]).items()
        }
        explanation = doc.get("n_explanation")
        return cls(
            campaign=doc["campaign"],
            hardware=doc["hardware"],
            kernel=kernel,
            simulator_version=doc["simulator_version"],
            confidence=doc["confidence"],
            seeds=tuple(doc["seeds"]),
            fresh_seeds=tuple(doc["fresh_seeds"]),
            overall=_choice_from(overall, kernel),
            overall_what_if=_choice_from(doc.get("overall_what_if"), kernel),
            workloads=workloads,
            surrogate=surrogate,
            thresholds=dict(doc.get("thresholds", {})),
            unhealthy=dict(doc.get("unhealthy", {})),
            overall_confirmation=overall_confirmation,
            knob_changes=tuple(
                KnobChange(k["knob"], k["value"], k["default"], Stat(**k["buys"]), k["kept"])
                for k in doc.get("knob_changes", [])
            ),
            n_explanation=None if explanation is None else NExplanation(**explanation),
            extrapolated=doc["extrapolated"],
            fix_command=doc.get("fix_command"),
            served=tuple(doc["served"]),
            profiles=dict(doc.get("profiles", {})),
        )


def _interval_json(i: Interval) -> dict[str, float]:
    return {"mean": i.mean, "lo90": i.lo90, "hi90": i.hi90}


def _stats_json(stats: Mapping[str, Stat], key: str = "mean") -> dict[str, dict[str, float | None]]:
    return {name: {key: s.mean, "ci95": s.ci95} for name, s in stats.items()}


def _stats_from(doc: Mapping[str, Any] | None, key: str = "mean") -> dict[str, Stat]:
    return {name: Stat(v[key], v.get("ci95")) for name, v in (doc or {}).items()}


def _choice_json(c: Choice | None, *, flat: bool = False) -> dict[str, Any] | None:
    """A choice's document; `flat`: a workload's own choice, whose predicted metrics sit at the top level."""
    if c is None:
        return None
    predicted = {w: {m: _interval_json(i) for m, i in per.items()} for w, per in c.predicted.items()}
    return {
        "kernel_cmdline": c.kernel_cmdline,
        "policy": asdict(c.policy),
        "n_per_cpu": c.policy.n_per_cpu,
        "layout": c.policy.layout,
        "what_if_reasons": list(c.what_if_reasons),
        "slo_met_probability": c.p_meet,
        "cost": c.cost,
        "predicted": next(iter(predicted.values()), {}) if flat else predicted,
        "gain": c.gain,
    }


def _choice_from(doc: Mapping[str, Any] | None, kernel: str, workload: str | None = None) -> Choice | None:
    if doc is None or doc.get("policy") is None:
        return None
    predicted_doc = doc.get("predicted") or {}
    if workload is not None:
        predicted_doc = {workload: predicted_doc}
    predicted = {w: {m: Interval(**i) for m, i in per.items()} for w, per in predicted_doc.items()}
    return Choice(
        sim.Policy(**doc["policy"]),
        kernel,
        doc["slo_met_probability"],
        doc["cost"],
        predicted,
        tuple(doc.get("what_if_reasons", ())),
        doc.get("gain"),
    )


def _workload_json(w: WorkloadRecommendation) -> dict[str, Any]:
    f = w.faithful
    c = w.confirmation
    return {
        "n_per_cpu": None if f is None else f.policy.n_per_cpu,
        "layout": None if f is None else f.policy.layout,
        "kernel_cmdline": None if f is None else f.kernel_cmdline,
        "policy": None if f is None else asdict(f.policy),
        "slo_met_probability": None if f is None else f.p_meet,
        "cost": None if f is None else f.cost,
        "predicted": None if f is None else _choice_json(f, flat=True)["predicted"],  # type: ignore[index]
        "confirmed": w.confirmed,
        "confirmation": {}
        if c is None
        else {
            "seeds": list(c.seeds),
            "seconds": c.seconds,
            "constraints": c.constraints,
            "recommended": _stats_json(c.recommended),
        },
        "what_if": _choice_json(w.what_if, flat=True),
        "default_comparison": {}
        if c is None
        else {
            "kernel_default": {"summary": _stats_json(c.kernel_default)},
            "n_zero": {"summary": _stats_json(c.n_zero)},
            "recommended_minus_default": _stats_json(c.minus_default, "diff"),
            "recommended_minus_n_zero": _stats_json(c.minus_n_zero, "diff"),
        },
        "unhealthy": list(w.problems),
        "unattainable": w.unattainable,
    }


def _workload_from(name: str, doc: Mapping[str, Any], kernel: str) -> WorkloadRecommendation:
    faithful = None
    if doc.get("policy") is not None:
        faithful = _choice_from(
            {**doc, "what_if_reasons": [], "gain": None, "cost": doc.get("cost", 0.0)}, kernel, name
        )
    c, comparison = doc.get("confirmation") or {}, doc.get("default_comparison") or {}
    confirmation = None
    if c:
        confirmation = Confirmation(
            tuple(c["seeds"]),
            c["seconds"],
            dict(c["constraints"]),
            _stats_from(c["recommended"]),
            _stats_from(comparison.get("kernel_default", {}).get("summary")),
            _stats_from(comparison.get("recommended_minus_default"), "diff"),
            _stats_from(comparison.get("n_zero", {}).get("summary")),
            _stats_from(comparison.get("recommended_minus_n_zero"), "diff"),
        )
    return WorkloadRecommendation(
        name,
        faithful,
        _choice_from(doc.get("what_if"), kernel, name),
        doc.get("confirmed"),
        confirmation,
        tuple(doc.get("unhealthy") or ()),
        doc.get("unattainable"),
    )


def _overall_confirmation_json(c: Confirmation) -> dict[str, Any]:
    return {
        "feasible": c.feasible,
        "constraints": c.constraints,
        "seconds": c.seconds,
        "summary": _stats_json(c.recommended),
        "kernel_default": _stats_json(c.kernel_default),
        "minus_default": _stats_json(c.minus_default, "diff"),
    }


def _overall_confirmation_from(doc: Mapping[str, Any], seeds) -> Confirmation:
    return Confirmation(
        tuple(seeds),
        doc.get("seconds", 0.0),
        dict(doc["constraints"]),
        _stats_from(doc["summary"]),
        _stats_from(doc["kernel_default"]),
        _stats_from(doc["minus_default"], "diff"),
    )


def _knob_json(k: KnobChange) -> dict[str, Any]:
    return {
        "knob": k.knob,
        "value": k.value,
        "default": k.default,
        "buys": {"mean": k.buys.mean, "ci95": k.buys.ci95},
        "kept": k.kept,
    }


def _surrogate_json(table: Mapping[str, Mapping[str, SurrogateFigures]]) -> dict[str, Any]:
    """Per metric: the worst CV R² and the coverage farthest from 90 % over the workloads whose model of
    it decides something, with the per-workload figures beside them."""
    metrics = list(dict.fromkeys(m for per in table.values() for m in per))
    out = {}
    for name in metrics:
        per = {w: asdict(table[w][name]) for w in table if name in table[w]}
        deciding = [p for p in per.values() if p["decisive"] and p["estimator_decides"]]
        r2 = [p["cv_r2"] for p in deciding if p["cv_r2"] is not None]
        explained = [p["explainable_r2"] for p in deciding if p.get("explainable_r2") is not None]
        cov = [p["coverage"] for p in deciding if p["coverage"] is not None]
        out[name] = {
            "cv_r2": min(r2) if r2 else None,
            "explainable_r2": min(explained) if explained else None,
            "coverage": max(cov, key=lambda c: abs(c - 0.9)) if cov else None,
            "per_workload": per,
        }
    return out


def _surrogate_from(doc: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for metric, entry in doc.items():
        for workload, figures in entry.get("per_workload", {}).items():
            out.setdefault(workload, {})[metric] = figures
    return out


def json_default(value: Any) -> Any:
    """What `json.dumps` needs for numpy scalars and tuples in a recommendation document."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
