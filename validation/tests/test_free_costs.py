"""Per-object free costs by size, read from a guest's trace (validation/kernel/free_costs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rcutune.validation.kernel import free_costs as fc


def _line(task: str, cpu: int, ts: float, event: str, fields: str) -> str:
    return f"     {task}-13      [{cpu:03d}] .....  {ts:11.6f}: {event}: {fields}"


def _walk(cpu: int, start: float, steps_us: list[float]) -> list[str]:
    lines, t = [], start
    for step in [0.0, *steps_us]:
        t += step * 1e-6
        lines.append(_line("kworker/0:1", cpu, t, "rcu_invoke_kvfree_callback", "rcu_sched rhp=(ptr) func=8"))
    return lines


def test_the_walk_step_is_the_mean_gap_between_objects_of_one_cpu_without_interruptions():
    text = "\n".join(
        [
            "boot noise that is not a trace line",
            *_walk(0, 1.0, [1, 1, 2]),
            _line("kworker/0:1", 0, 1.000010, "sched_switch", "prev_comm=kworker/0:1 ==> next_comm=x"),
            *_walk(0, 1.000011, [1, 9]),  # 9 us is an interruption, not a step
            *_walk(1, 1.0000005, [3]),  # another CPU's walk interleaved in time
        ]
    )
    costs = fc.trace_costs(text)
    assert costs.list_steps == 5 and costs.list_step_ns == pytest.approx((1 + 1 + 2 + 1 + 3) / 5 * 1000)
    assert costs.bulk_record_ns is None


def test_a_bulk_record_costs_its_blocks_time_to_the_next_event_over_its_records_median_over_blocks():
    bulk = "rcu_invoke_kfree_bulk_callback"
    text = "\n".join(
        [
            _line("kworker/1:1", 1, 2.0, bulk, "rcu_sched bulk=0x(ptr) nr_records=100"),
            _line("kworker/1:1", 1, 2.000020, bulk, "rcu_sched bulk=0x(ptr) nr_records=100"),  # 200 ns
            _line("kworker/1:1", 1, 2.000050, "workqueue_execute_end", "work struct (ptr)"),  # 300 ns
            _line("kworker/1:1", 1, 3.0, bulk, "rcu_sched bulk=0x(ptr) nr_records=100"),
            _line("kworker/1:1", 1, 3.001, "sched_switch", "prev_comm=kworker/1:1"),  # preempted: not a figure
            _line("kworker/1:1", 1, 4.0, bulk, "rcu_sched bulk=0x(ptr) nr_records=10"),  # too small a block
            _line("kworker/1:1", 1, 4.001, "workqueue_execute_end", "work struct (ptr)"),
            _line("kworker/1:1", 1, 5.0, bulk, "rcu_sched bulk=0x(ptr) nr_records=200"),
            _line("kworker/1:1", 1, 5.000050, "workqueue_execute_end", "work struct (ptr)"),  # 250 ns
        ]
    )
    costs = fc.trace_costs(text)
    assert costs.bulk_blocks == 3 and costs.bulk_record_ns == pytest.approx(250)


def _figures(vcpus: int, page_ns: float, miss_ns: float, mults=fc.KFREE_MULTS) -> list[fc.SizeCosts]:
    """What a guest's trace shows if freeing costs what the model says (emulation time), plus one
    trace event per walk step and a base price of its own."""
    return [
        fc.SizeCosts(
            slot,
            900 + 40 * vcpus + (page_ns + miss_ns) * fc.pages_per_object(slot),
            30 + vcpus + page_ns * fc.pages_per_object(slot),
        )
        for slot in (fc.slot_of(m) for m in mults)
    ]


def test_the_per_page_costs_come_back_from_figures_made_with_them():
    rows = _figures(2, 300.0, 150.0)
    assert [r.slot_bytes for r in rows] == [32, 512, 2048, 4096]
    costs = fc.fit_page_costs([rows, _figures(4, 300.0, 150.0, mults=(1, 64, 128))])
    assert costs == pytest.approx({"page_ns": 300.0, "walk_miss_ns": 150.0})
    with pytest.raises(ValueError, match="two sizes"):
        fc.fit_page_costs([rows[:1]])


def test_one_fit_covers_every_guest_written_to_the_directory(tmp_path):
    for vcpus in (2, 4):
        text = fc.free_costs_text(vcpus, _figures(vcpus, 300.0, -20.0), "the command")
        (tmp_path / f"qemu-tcg-{vcpus}.toml").write_text(text)
    vcpus, rows = fc.read_figures(tmp_path / "qemu-tcg-2.toml")
    assert vcpus == 2 and [x for r in rows for x in (r.list_step_ns, r.bulk_record_ns)] == pytest.approx(
        [x for r in _figures(2, 300.0, -20.0) for x in (r.list_step_ns, r.bulk_record_ns)], abs=0.05
    )
    assert fc.measured_costs(tmp_path) == pytest.approx({"page_ns": 300.0, "walk_miss_ns": -20.0}, abs=0.2)
    assert fc.measured_costs(tmp_path / "absent") == {}


@pytest.mark.parametrize(
    "args, message",
    [(["--kfree-mult", "1,x"], "give sizes as integers"), (["--kfree-mult", "1"], "two sizes or more")],
)
def test_bad_sizes_are_refused_in_one_line_before_any_boot(args, message, capsys):
    from rcutune.validation.kernel import harness

    assert harness.main(["free-costs", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_measure_boots_each_size_with_the_list_and_with_blocks_and_takes_medians(monkeypatch):
    from types import SimpleNamespace

    from rcutune.validation.kernel import harness

    booted = []

    def fake_trace_boot(params, out, *, events, quiet_ms):
        booted.append((params.kfree_mult, params.rcu_min_cached_objs))
        rep = sum(1 for b in booted if b == booted[-1]) - 1
        step_us = (2 if params.kfree_mult == 128 else 1) + (3 if rep == 1 else 0)  # the second boot is slow
        if params.rcu_min_cached_objs == 0:
            lines = _walk(0, 1.0, [step_us] * 10)
        else:
            bulk = "rcu_invoke_kfree_bulk_callback"
            lines = [
                _line("kworker/0:1", 0, 2.0, bulk, "rcu_sched bulk=0x(ptr) nr_records=100"),
                _line("kworker/0:1", 0, 2.0 + step_us * 1e-5, "workqueue_execute_end", "work"),
            ]
        Path(out).write_text("\n".join(lines))
        return SimpleNamespace(status="ok"), None

    monkeypatch.setattr(harness, "trace_boot", fake_trace_boot)
    rows = fc.measure(2, 1024, 8000, 4, (1, 128), 3, None)
    assert booted == [(1, 0), (1, 64)] * 3 + [(128, 0), (128, 64)] * 3
    assert [r.slot_bytes for r in rows] == [32, 4096]
    assert [r.list_step_ns for r in rows] == pytest.approx([1000, 2000])
    assert [r.bulk_record_ns for r in rows] == pytest.approx([100, 200])
