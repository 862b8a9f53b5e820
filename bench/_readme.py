"""`bench/README.md`: each bench run with `--record` rewrites its own section, between two markers."""

from __future__ import annotations

import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"
_HEAD = """# Benchmarks

Each section below is written by its bench when run with `--record` (`python bench/<name>.py
--record`); a run replaces its own section and leaves the others. Figures are from the machine
named in the section, at the time given.
"""


def machine() -> str:
    """The machine a figure comes from, in words: cores, and how busy it was when the bench started."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()}, load average {load:.1f} at the start, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def record(name: str, body: str) -> Path:
    """Replace (or add) the section `name` of bench/README.md with `body`; returns the file."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    section = f"{begin}\n{body.strip()}\n{end}\n"
    text = README.read_text() if README.exists() else _HEAD
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    README.write_text(text)
    return README
