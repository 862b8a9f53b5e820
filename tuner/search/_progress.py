"""Progress of a campaign: a rich bar per workload on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import optuna
from optuna.trial import TrialState

from rcutune import sim

from ._protocol import raced_best


@dataclass
class TrialOutcome:
    """What the progress display learns about one told trial."""

    number: int
    state: TrialState
    policy: sim.Policy
    values: dict[str, float] | None
    feasible: bool
    raced: bool
    label: str | None
    error: str | None = None


def describe_outcome(outcome: TrialOutcome) -> str:
    p = outcome.policy
    text = f"N={p.n_per_cpu} {p.layout}"
    if outcome.values:
        text += f" {outcome.values['reserved_mib']:.3g} MiB {outcome.values['fallback_cost']:.3g} ms/s"
    return text


class ProgressSink:
    """What a campaign run reports; the base class ignores everything."""

    def begin(self, campaign: str, workloads: list[tuple[str, int, int]]) -> None:
        """workloads: (name, trials this run adds, trials already finished)."""

    def start_study(self, workload: str) -> None: ...

    def trial(self, workload: str, outcome: TrialOutcome, study: optuna.Study) -> None: ...

    def end_study(self, workload: str, study: optuna.Study) -> None: ...

    def aborted(self, workload: str, reason: str) -> None: ...

    def close(self) -> None: ...


NullProgress = ProgressSink


def best_text(study: optuna.Study) -> str:
    """The raced best trial of a study in a few words, or '-'."""
    best = raced_best(study.get_trials(deepcopy=False))
    if best is None:
        return "-"
    policy = best.user_attrs.get("policy", {})
    summary = best.user_attrs.get("summary", {})
    return (
        f"#{best.number} N={policy.get('n_per_cpu')} {policy.get('layout')}: "
        f"{summary['reserved_mib']['mean']:.3g} MiB, {summary['fallback_cost']['mean']:.3g} ms/s"
    )


def _state_word(state: TrialState) -> str:
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(
        state, state.name.lower()
    )


class PlainProgress(ProgressSink):
    """One line per trial and per finished study, for logs and pipes."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.done: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.started: dict[str, float] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def begin(self, campaign: str, workloads: list[tuple[str, int, int]]) -> None:
        self._print(
            f"campaign {campaign}: {len(workloads)} studies, {workloads[0][1] if workloads else 0} new trials each"
        )
        for name, total, _ in workloads:
            self.total[name], self.done[name] = total, 0

    def start_study(self, workload: str) -> None:
        self.started[workload] = time.monotonic()

    def trial(self, workload: str, outcome: TrialOutcome, study: optuna.Study) -> None:
        self.done[workload] += 1
        extra = f" ({outcome.error})" if outcome.error else (" raced" if outcome.raced else "")
        self._print(
            f"{workload}: trial {outcome.number} {_state_word(outcome.state)} {describe_outcome(outcome)}{extra}"
            f" [{self.done[workload]}/{self.total[workload]}]"
        )

    def end_study(self, workload: str, study: optuna.Study) -> None:
        took = time.monotonic() - self.started.get(workload, time.monotonic())
        self._print(f"{workload}: done in {took:.1f} s; best {best_text(study)}")

    def aborted(self, workload: str, reason: str) -> None:
        self._print(f"{workload}: stopped early: {reason}")


class RichProgress(ProgressSink):
    """A bar per workload: trials done, best so far, time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("best {task.fields[best]}"),
            console=Console(stderr=True),
        )
        self._tasks: dict[str, Any] = {}

    def begin(self, campaign: str, workloads: list[tuple[str, int, int]]) -> None:
        self._progress.console.print(f"campaign [bold]{campaign}[/]")
        for name, total, _ in workloads:
            self._tasks[name] = self._progress.add_task(name, total=total, best="-", start=False)
        self._progress.start()

    def start_study(self, workload: str) -> None:
        self._progress.start_task(self._tasks[workload])

    def trial(self, workload: str, outcome: TrialOutcome, study: optuna.Study) -> None:
        self._progress.update(
            self._tasks[workload],
            advance=1,
            best=best_text(study) if outcome.raced else self._progress.tasks[self._tasks[workload]].fields["best"],
        )

    def end_study(self, workload: str, study: optuna.Study) -> None:
        self._progress.update(self._tasks[workload], best=best_text(study))
        self._progress.stop_task(self._tasks[workload])

    def aborted(self, workload: str, reason: str) -> None:
        self._progress.update(self._tasks[workload], best="[red]stopped[/]")
        self._progress.stop_task(self._tasks[workload])
        self._progress.console.print(f"[red]{workload}: stopped early:[/] {reason}")

    def close(self) -> None:
        self._progress.stop()
