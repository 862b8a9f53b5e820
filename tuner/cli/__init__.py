"""The `rcutune` command line: a thin layer over the stage packages, one module per group of commands."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Optional

import typer

from . import _answer, _machine, _simulate, _study
from ._validate import validate_app

app = typer.Typer(
    name="rcutune",
    help="Choose rcu_min_cached_objs, the kvfree_rcu() page-cache layout and its fallback thresholds "
    "for your hardware and workloads, by simulation and tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain help: option names are never cut, whatever the terminal's width
    context_settings={"help_option_names": ["--help", "-h"], "max_content_width": 100},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rcutune {metadata.version('rcutune')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print rcutune's version and exit."),
    ] = None,
) -> None:
    """Choose rcu_min_cached_objs, the kvfree_rcu() page-cache layout and its fallback thresholds."""


_simulate.register(app)
_study.register(app)
_answer.register(app)
_machine.register(app)
app.add_typer(validate_app, name="validate")

if __name__ == "__main__":
    app()
