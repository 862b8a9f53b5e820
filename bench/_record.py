"""`--record`: a bench writes its own figures into bench/README.md, between markers of its own.

Each bench's section holds the command that produced it, when, on what machine (core count and
CPU model, no names), and everything the bench printed. Nothing in bench/README.md between
markers is written by hand.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

README = Path(__file__).resolve().parent / "README.md"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}, load average {load:.1f}"


def record(name: str, lines: list[str], readme: Path = README, intro: str = "") -> None:
    """Replace bench `name`'s section of bench/README.md with `lines` (appending the section if new);
    `intro`, when given, is a paragraph saying what the figures are, printed before them."""
    command = "python bench/" + Path(sys.argv[0]).name + "".join(f" {a}" for a in _figure_args(sys.argv[1:]))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = (
        f"<!-- bench:{name} -->\n"
        + (intro.strip() + "\n\n" if intro else "")
        + f"`{command}` on {stamp} ({machine()}):\n\n```\n"
        + "\n".join(lines)
        + f"\n```\n<!-- /bench:{name} -->"
    )
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    readme.write_text(text)


LOCAL_OPTIONS = ("--logs", "--truth-cache")
"""Options that say where this machine keeps files, not what was measured: left out of the record."""


def _figure_args(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--record":
            continue
        elif a in LOCAL_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in LOCAL_OPTIONS)):
            out.append(a)
    return out


class Printer:
    """print() that also keeps the lines for `record`."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
