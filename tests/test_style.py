"""The code base stays as the house style says: ruff-clean and ruff-formatted, and only `rcutune.*` imports."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = [sys.executable, "-m", "ruff"] if shutil.which("ruff") is None else ["ruff"]
BARE = re.compile(r"^\s*(?:from|import)\s+(sim|tuner|storage|validation)(?:\.|\s|$)", re.M)


def _python_files() -> list[Path]:
    return [p for d in ("sim", "tuner", "storage", "validation", "tests", "bench") for p in (ROOT / d).rglob("*.py")]


def test_code_imports_the_installed_namespace_never_a_folder_by_its_own_name():
    offenders = [
        f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p in _python_files() for m in BARE.finditer(p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["lint", "format"])
def test_ruff_is_clean(command):
    done = subprocess.run([*RUFF, *command], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
