"""The error every stage raises for something the user can mend; the CLI prints it in one line."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can mend (bad value, bad file, unknown name); the message is one line."""
