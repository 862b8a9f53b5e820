"""Tuning over the simulation, stage by stage (DESIGN.md §4-§7).

- `search`: campaigns of Optuna studies over the model, run here (`rcutune study`) or by workers.
- `surrogate`: models of each study's metrics with measured accuracy.
- `recommend`: the rule from surrogates to the policy to boot with, confirmed on fresh seeds.
- `report`: the report directory a user reads.
- `apply`: the answer in the forms boot loaders and tuning daemons take.
- `cli`: the `rcutune` command, a thin layer over the stages.

Each stage's `__init__` is its public surface; `UserError` is the error every stage raises for
something the user can mend.
"""

from ._errors import UserError

__all__ = ["UserError"]
