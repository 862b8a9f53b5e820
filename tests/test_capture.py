"""`rcutune profile capture`: machine trees (tests/data/roots) and this machine, into profiles a study takes."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.capture import capture_hardware, cmdline_args, modelled_release, parse_cpulist, read_machine
from rcutune.tuner.cli import app
from tests.support.study import url

ROOTS = Path(__file__).parent / "data" / "roots"


def _capture(root: str, tmp_path: Path) -> tuple[Path, object]:
    out = tmp_path / "mine.toml"
    result = CliRunner().invoke(app, ["profile", "capture", "--root", str(ROOTS / root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result


# root -> keys the file must hold (read from the tree), modelled release, nearest shipped profile
EXPECTED = {
    "laptop-6.18": (
        {
            "cpus": 8,
            "memory_mib": 15921,
            "page_size": 4096,
            "hz": 1000,
            "nocb_cpus": 0,
            "preempt": "full",
            "preempt_dynamic": True,
            "rcu_lazy": False,
            "rcu_expedited": False,
        },
        "6.18",
        "laptop-8",
    ),
    "server-5.15-boot-config": (
        {"cpus": 64, "memory_mib": 257672, "hz": 250, "preempt": "voluntary", "allocator": "slub"},
        "5.14",
        "server-64",
    ),
    "rt-6.6-nocb": (
        {"cpus": 16, "hz": 1000, "nocb_cpus": 14, "preempt": "full", "rcu_lazy": False},
        "6.6",
        "rt-16-nocb",
    ),
    "arm64-16k-6.12": (
        {"cpus": 32, "page_size": 16384, "hz": 250, "preempt": "none", "preempt_dynamic": False},
        "6.12",
        "arm64-16k-32",
    ),
    "phone-7.1-newer": (
        {"cpus": 8, "nocb_cpus": 8, "rcu_lazy": True, "rcu_expedited": True, "preempt": "full"},
        "6.18",
        "phone-8",
    ),
    "bare-5.10": ({"cpus": 2, "memory_mib": 986}, "5.9", "vm-2"),
}


@pytest.mark.parametrize("root", sorted(EXPECTED))
def test_each_machine_tree_gives_a_profile_that_loads_with_what_the_tree_says(root, tmp_path):
    keys, kernel, nearest = EXPECTED[root]
    out, _ = _capture(root, tmp_path)
    profile = sim.load_hardware(str(out))
    assert profile.name == "mine"
    assert {k: getattr(profile, k) for k in keys} == keys
    text = out.read_text()
    assert f"modelled as {kernel}" in text and f"nearest shipped profile '{nearest}'" in text


@pytest.mark.parametrize("root", sorted(EXPECTED))
def test_every_key_not_read_from_the_tree_is_named_in_the_file_as_borrowed(root):
    captured = capture_hardware(ROOTS / root)
    text = captured.toml()
    data = tomllib.loads(text)
    borrowed = set(data) - set(captured.read) - {"description"}
    assert borrowed == set(captured.borrowed)
    comment = " ".join(line for line in text.splitlines() if line.startswith("#"))
    assert all(k in comment for k in borrowed)
    assert all(getattr(captured.nearest, k) == data[k] for k in borrowed)


def test_without_config_gz_the_boot_config_of_the_release_is_read():
    m = read_machine(ROOTS / "server-5.15-boot-config")
    assert m.config_source == "/boot/config-5.15.0-91-generic"
    assert (m.hz, m.preempt, m.allocator) == (250, "voluntary", "slub")
    assert "page_size" in m.unread  # x86 configs before 6.x name no page size


def test_a_tree_without_any_config_names_what_it_could_not_read(tmp_path):
    out, _ = _capture("bare-5.10", tmp_path)
    text = out.read_text()
    assert "not read: hz (no /proc/config.gz or /boot/config-5.10.0-28-amd64)" in text
    assert "not read: preempt" in text
    assert "hz = 250" in text  # vm-2's


def test_the_running_cache_parameters_are_read_where_the_release_keeps_them():
    new = read_machine(ROOTS / "laptop-6.18").parameters
    old = read_machine(ROOTS / "rt-6.6-nocb").parameters
    assert new["rcu_min_cached_objs"].name == "slab_common.rcu_min_cached_objs"
    assert old["rcu_min_cached_objs"].name == "rcutree.rcu_min_cached_objs"
    assert old["rcu_min_cached_objs"].value == 8
    assert old["rcu_min_cached_objs"].source == "/sys/module/rcutree/parameters/rcu_min_cached_objs"
    assert read_machine(ROOTS / "bare-5.10").parameters == {}


def test_a_release_newer_than_every_modelled_one_warns_in_one_line(tmp_path):
    _, result = _capture("phone-7.1-newer", tmp_path)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: Linux 7.1 is newer than every modelled release; modelled as 6.18"]


def test_the_next_step_names_the_kernel_when_it_is_not_the_default(tmp_path):
    _, result = _capture("rt-6.6-nocb", tmp_path)
    assert result.stdout.splitlines()[-1] == f"next: rcutune study --hardware {tmp_path / 'mine.toml'} --kernel 6.6"


def test_without_out_the_profile_goes_to_standard_output_and_the_notes_to_standard_error():
    result = CliRunner().invoke(app, ["profile", "capture", "--root", str(ROOTS / "laptop-6.18")])
    assert result.exit_code == 0
    assert tomllib.loads(result.stdout)["cpus"] == 8
    assert "next: save it as mine.toml" in result.stderr


def test_a_root_that_is_no_machine_is_refused_in_one_line_and_nothing_is_written(tmp_path):
    out = tmp_path / "mine.toml"
    result = CliRunner().invoke(app, ["profile", "capture", "--root", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert not out.exists()


def test_out_into_a_missing_directory_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["profile", "capture", "--root", str(ROOTS / "laptop-6.18"), "--out", str(tmp_path / "no" / "mine.toml")]
    )
    assert result.exit_code == 2 and "error: --out" in result.stderr


@pytest.mark.parametrize(
    "release, kernel, warns",
    [
        ("6.18.44-generic", "6.18", False),
        ("6.8.0-31-generic", "6.6", False),
        ("5.15.0", "5.14", False),
        ("5.10.0-28-amd64", "5.9", False),
        ("7.1.0", "6.18", True),
        ("4.19.0", "5.5", True),
        ("6.1", "6.1", False),
    ],
)
def test_a_release_is_modelled_as_the_newest_modelled_release_not_newer_than_it(release, kernel, warns):
    got, note = modelled_release(release)
    assert got == kernel and (note is not None) == warns


def test_cpulists_parse_as_the_kernel_parses_them():
    assert parse_cpulist("0-3,8", 16) == {0, 1, 2, 3, 8}
    assert parse_cpulist("all", 4) == {0, 1, 2, 3}
    assert parse_cpulist("2-N", 4) == {2, 3}
    assert parse_cpulist("0-15:2/4", 16) == {0, 1, 4, 5, 8, 9, 12, 13}


def test_the_command_line_stops_at_the_arguments_for_init_and_keeps_quoted_spaces():
    args = cmdline_args('root=/dev/sda1 dyndbg="file a.c +p" rcu_nocbs=1-3 -- --init-arg rcu_nocbs=0\n')
    assert args == ("root=/dev/sda1", "dyndbg=file a.c +p", "rcu_nocbs=1-3")


def _this_machine() -> Path:
    if not Path("/proc/sys/kernel/osrelease").exists():
        pytest.skip("not a Linux machine with /proc")
    return Path("/")


@pytest.mark.slow
def test_this_machine_is_captured_and_simulated_and_a_study_takes_the_file(tmp_path, monkeypatch):
    root = _this_machine()
    out = tmp_path / "mine.toml"
    result = CliRunner().invoke(app, ["profile", "capture", "--out", str(out)])
    assert result.exit_code == 0, result.output
    profile = sim.load_hardware(str(out))
    online = (root / "sys/devices/system/cpu/online").read_text()
    assert profile.cpus == len(parse_cpulist(online, os.cpu_count() or 1))
    meminfo = (root / "proc/meminfo").read_text()
    assert profile.memory_mib == int(meminfo.split("MemTotal:")[1].split()[0]) // 1024
    machine = read_machine(root)
    metrics = sim.simulate(
        profile,
        sim.load_workload("steady"),
        sim.Policy.kernel_default(machine.behaviour),
        kernel=machine.kernel,
        seconds=0.2,
        seed=1,
    )
    assert metrics.calls > 0 and metrics.calls == metrics.objects_freed + metrics.objects_pending_end
    monkeypatch.chdir(tmp_path)
    study = CliRunner().invoke(
        app,
        [
            "study",
            "--hardware",
            "./mine.toml",
            "--quick",
            "--workload",
            "steady",
            "--trials",
            "4",
            "--seconds",
            "0.2",
            "--jobs",
            "1",
            "--storage",
            url(tmp_path / "r.db"),
            "--kernel",
            machine.kernel,
        ],
    )
    assert study.exit_code == 0, study.output
    assert "next: rcutune report mine-quick" in study.output
