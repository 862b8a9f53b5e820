"""`python -m rcutune.tuner.cli`: the same as the `rcutune` command."""

from . import app

app(prog_name="rcutune")
