"""`rcutune profiles` and `rcutune simulate`, bad input included; one test through the real console entry point."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.cli import app


def rcutune(*args: str, cwd: Path | None = None) -> SimpleNamespace:
    """Run a command in this process; an exception the CLI did not turn into an exit code is raised."""
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


@pytest.mark.slow
def test_the_console_entry_point_runs_as_a_process(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "rcutune.tuner.cli",
            "simulate",
            "--hardware",
            "vm-2",
            "--workload",
            "steady",
            "--seconds",
            "0.2",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hardware"] == "vm-2"
    version = subprocess.run(["rcutune", "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("rcutune ")


def test_profiles_lists_every_shipped_profile():
    out = rcutune("profiles")
    assert out.returncode == 0, out.stderr
    for name in sim.list_profiles("hardware") + sim.list_profiles("workload"):
        assert name in out.stdout


def test_simulate_json_has_every_metric_and_the_context():
    out = rcutune("simulate", "--hardware", "vm-2", "--workload", "steady", "--seconds", "1", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for name in sim.Metrics.names():
        assert name in data
    assert data["hardware"] == "vm-2" and data["workload"] == "steady" and data["kernel"] == sim.DEFAULT_KERNEL
    assert data["policy"]["n_per_cpu"] == 5 and data["what_if"] is False
    assert data["calls"] == data["objects_freed"] + data["objects_pending_end"]


def test_simulate_json_is_deterministic():
    args = ("simulate", "-H", "phone-8", "-W", "bursty", "--seconds", "1", "--seed", "7", "--json")
    a, b = json.loads(rcutune(*args).stdout), json.loads(rcutune(*args).stdout)
    a.pop("wall_seconds"), b.pop("wall_seconds")
    assert a == b


def test_simulate_labels_what_ifs():
    out = rcutune("simulate", "-H", "vm-2", "-W", "steady", "--seconds", "0.5", "--layout", "global", "--json")
    data = json.loads(out.stdout)
    assert data["what_if"] is True and any("global" in r for r in data["what_if_reasons"])
    text = rcutune("simulate", "-H", "vm-2", "-W", "steady", "--seconds", "0.5", "--layout", "global")
    assert "what-if" in text.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kernel", list(sim.KERNELS))
def test_simulate_runs_every_kernel(kernel):
    out = rcutune(
        "simulate", "-H", "phone-8", "-W", "rcuscale", "--kernel", kernel, "--json", "--set", "workload.kfree_loops=2"
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["kernel"] == kernel
    assert data["rcuscale_total_time_ns"] > 0
    assert data["policy"]["n_per_cpu"] == sim.KERNELS[kernel].default_n


def test_set_overrides_reach_the_model():
    out = rcutune(
        "simulate",
        "-H",
        "vm-2",
        "-W",
        "rcuscale",
        "--json",
        "--set",
        "hardware.cpus=4",
        "--set",
        "workload.kfree_loops=3",
    )
    data = json.loads(out.stdout)
    assert data["calls"] == 4 * 3 * 8000


def _bad(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUT = [
    (["-H", "vm-3", "-W", "steady"], "unknown hardware profile 'vm-3'; valid: "),
    (["-H", "vm-2", "-W", "stedy"], "unknown workload profile 'stedy'"),
    (["-H", "vm-2", "-W", "steady", "--set", "hardware.cpus=abc"], "cpus='abc'"),
    (["-H", "vm-2", "-W", "steady", "--set", "hardware.cpus=0"], "allowed: int in [1, 4096]"),
    (["-H", "vm-2", "-W", "steady", "--set", "hardware.cpuz=3"], "unknown hardware key"),
    (["-H", "vm-2", "-W", "steady", "--set", "hardware.gp_median_ms=nan"], "not a finite number"),
    (["-H", "vm-2", "-W", "steady", "--set", "workload.headless_fraction=1.5"], "headless_fraction=1.5"),
    (["-H", "vm-2", "-W", "steady", "--set", "cpus=3"], "expected section.key=value"),
    (["-H", "vm-2", "-W", "steady", "--set", "kernel.cpus=3"], "unknown section 'kernel'"),
    (["-H", "vm-2", "-W", "steady", "--set", "hardware.nocb_cpus=9"], "nocb_cpus=9 exceeds cpus=2"),
    (["-H", "vm-2", "-W", "steady", "--refill-low-watermark", "9"], "refill_low_watermark=9"),
    (["-H", "vm-2", "-W", "steady", "--shared-reserve-pages", "4"], "only meaningful with layout=hybrid"),
    (["-H", "vm-2", "-W", "steady", "--seconds", "inf"], "finite"),
]


@pytest.mark.parametrize("args,expected", BAD_INPUT)
def test_bad_values_are_one_line_errors(args, expected):
    out = rcutune("simulate", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cpus = 4\nmemory_mib = 10\n", ":2: memory_mib=10"),
        ("cpus = 4\nmemory_mib = [\n", "malformed TOML"),
        ("cpus = 4\nmemory_mib = 1024\ncpu_count = 3\n", "unknown hardware key 'cpu_count'"),
        ("cpus = '4'\nmemory_mib = 1024\n", "cpus='4'"),
        ("memory_mib = 1024\n", "missing required key 'cpus'"),
        ("cpus = 4\nmemory_mib = 1024\n[extra]\nx = 1\n", "one flat table"),
        ("cpus = 4\nmemory_mib = 1024\npage_size = 8192\n", "one of 4096, 16384, 65536"),
    ],
)
def test_bad_profile_files_name_file_key_and_range(tmp_path, text, expected):
    path = _bad(tmp_path, "machine.toml", text)
    out = rcutune("simulate", "-H", path, "-W", "steady", "--seconds", "0.1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and str(path) in line and expected in line


def test_a_binary_file_is_refused(tmp_path):
    path = tmp_path / "noise.toml"
    path.write_bytes(bytes(range(256)))
    out = rcutune("simulate", "-H", str(path), "-W", "steady")
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(path) in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-H", "vm-2", "-W", "steady", "--n-per-cpu", "-1"],
        ["-H", "vm-2", "-W", "steady", "--n-per-cpu", "2.5"],
        ["-H", "vm-2", "-W", "steady", "--kernel", "4.19"],
        ["-H", "vm-2", "-W", "steady", "--layout", "mempool"],
        ["-H", "vm-2", "-W", "steady", "--seed", "-3"],
        ["-H", "vm-2"],
    ],
)
def test_malformed_flags_are_usage_errors(args):
    out = rcutune("simulate", *args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "Usage" in out.stderr
