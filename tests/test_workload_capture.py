"""`rcutune workload capture --from-trace`: real 6.1 rcuscale traces (tests/data/traces) and small made ones."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.capture import capture_workload, parse_trace
from rcutune.tuner.cli import app

TRACES = Path(__file__).parent / "data" / "traces"
DOUBLE = TRACES / "rcuscale-6.1-double.console.txt"
SINGLE = TRACES / "rcuscale-6.1-single.console.txt"


def _capture(trace: Path, tmp_path: Path, *args: str):
    out = tmp_path / "traced.toml"
    result = CliRunner().invoke(app, ["workload", "capture", "--from-trace", str(trace), "--out", str(out), *args])
    return out, result


def test_the_real_double_trace_gives_every_event_and_object_of_the_run():
    trace = parse_trace(DOUBLE.read_text())
    assert trace.cpus == 2  # the "#P:2" header
    bulk = [e for e in trace.events if e.event == "rcu_invoke_kfree_bulk_callback"]
    assert [e.objects for e in bulk] == [190, 510]
    assert sum(e.objects for e in trace.events) == 1600  # 2 threads x 8 loops x 100 objects
    assert {e.rcu for e in trace.events} == {"rcu_sched"}


def test_the_real_double_trace_becomes_a_profile_with_its_rate_size_and_cpus(tmp_path):
    out, result = _capture(DOUBLE, tmp_path)
    assert result.exit_code == 0, result.output
    profile = sim.load_workload(str(out))
    trace = parse_trace(DOUBLE.read_text())
    span = trace.events[-1].time - trace.events[0].time
    assert profile.calls_per_s_per_cpu == pytest.approx(1600 / span / 2, rel=1e-3)
    assert profile.object_bytes == 24  # func=8: the rcu_head at offset 8 of rcuscale's 24-byte kfree_obj
    assert (profile.active_cpus_fraction, profile.skew, profile.burst_every_s) == (1.0, 0.0, 0.0)
    assert profile.vmalloc_fraction == 0.0


def test_the_real_single_trace_says_what_it_could_not_see(tmp_path):
    out, result = _capture(SINGLE, tmp_path)
    assert result.exit_code == 0, result.output
    assumed = " ".join(result.stderr.split()).split("assumed: ")[1:]  # wrapped to 80 columns
    assert all(len(line) <= 80 for line in result.stderr.splitlines())
    assert any("object_bytes = 256" in item for item in assumed)
    assert any("headless_fraction" in item for item in assumed)
    assert any("memory pressure" in item for item in assumed)
    text = out.read_text()
    assert "# Not in the trace, so assumed:" in text and "object_bytes = 256" in text
    assert tomllib.loads(text)["calls_per_s_per_cpu"] > 0


@pytest.mark.slow
def test_a_captured_workload_runs_in_the_model(tmp_path):
    out, _ = _capture(DOUBLE, tmp_path)
    metrics = sim.simulate(
        sim.load_hardware("vm-2"), sim.load_workload(str(out)), sim.Policy(), kernel="6.1", seconds=0.2, seed=3
    )
    assert metrics.calls > 0 and metrics.calls == metrics.objects_freed + metrics.objects_pending_end


def _line(task: str, cpu: int, ts: float, event: str, fields: str, flags: bool = True) -> str:
    return f"{task:>16}-{100 + cpu:<6} [{cpu:03d}] {'..... ' if flags else ''}{ts:12.6f}: {event}: {fields}"


def test_call_events_show_bursts_and_which_cpus_called(tmp_path):
    """rcu_kvfree_callback logs each call: 100 calls/s on CPU 0, and five 200 ms bursts of 1000 more per second."""
    lines = ["cpus=2"]  # trace-cmd report's first line
    t = 0.0
    times = [round(0.01 * i + 0.005, 6) for i in range(2000)]
    for start in (2.0, 6.0, 10.0, 14.0, 18.0):
        times += [round(start + 0.001 * i + 0.0005, 6) for i in range(200)]
    for t in sorted(times):
        lines.append(_line("worker", 0, t, "rcu_kvfree_callback", "rcu_preempt rhp=0x1 func=16 12", flags=False))
    trace = tmp_path / "calls.trace"
    trace.write_text("\n".join(lines) + "\n")
    captured = capture_workload(trace)
    keys = captured.keys
    assert keys["calls_per_s_per_cpu"] == pytest.approx(100 / 2, rel=0.05)
    assert keys["burst_multiplier"] == pytest.approx(11, rel=0.1)
    assert keys["burst_ms"] == pytest.approx(200, rel=0.1)
    assert keys["burst_every_s"] == pytest.approx((20 - 1.0) / 5, rel=0.1)
    assert keys["active_cpus_fraction"] == 0.5 and keys["object_bytes"] == 32


def test_slab_era_reclaims_do_not_say_which_cpu_called(tmp_path):
    """From 6.14 ("slab") reclaim runs on an unbound workqueue: the CPU of a reclaim is not the caller's."""
    lines = [
        _line(
            "kworker/u8:1",
            3,
            1.0 + 0.5 * i,
            "rcu_invoke_kfree_bulk_callback",
            "slab bulk=0x0000000012ab nr_records=507",
        )
        for i in range(10)
    ]
    trace = tmp_path / "slab.trace"
    trace.write_text("\n".join(lines) + "\n")
    captured = capture_workload(trace, cpus=8)
    assert (captured.keys["active_cpus_fraction"], captured.keys["skew"]) == (1.0, 0.0)
    assert any("unbound workqueue" in a for a in captured.assumed)
    assert any("kfree_rcu_sheaf" in a for a in captured.assumed)


@pytest.mark.parametrize(
    "content, args, says",
    [
        ("nothing traced here\n", [], "no rcu_invoke_kfree_bulk_callback"),
        (
            _line("kworker/0:1", 0, 1.0, "rcu_invoke_kfree_bulk_callback", "rcu_sched bulk=0x1 records=3") + "\n",
            [],
            "do not read as the kernel prints them",
        ),
        (
            _line("kworker/3:1", 3, 1.0, "rcu_invoke_kvfree_callback", "rcu_sched rhp=0x1 func=8")
            + "\n"
            + _line("kworker/3:1", 3, 2.0, "rcu_invoke_kvfree_callback", "rcu_sched rhp=0x1 func=8")
            + "\n",
            ["--cpus", "2"],
            "give at least 4",
        ),
        (
            _line("kworker/0:1", 0, 1.0, "rcu_invoke_kvfree_callback", "rcu_sched rhp=0x1 func=8") + "\n",
            [],
            "give --duration",
        ),
    ],
)
def test_a_trace_that_cannot_be_read_is_refused_in_one_line(tmp_path, content, args, says):
    trace = tmp_path / "bad.trace"
    trace.write_text(content)
    out, result = _capture(trace, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and says in result.stderr
    assert not out.exists()
