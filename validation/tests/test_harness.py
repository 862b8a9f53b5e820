"""Fast tests of the real-kernel harness: parsing, classification, sweep files, CSV resume.

No kernel is built or booted here; console logs are short samples of what the 6.1 guests print.
"""

from __future__ import annotations

import csv
import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from rcutune.validation.kernel import harness as h

OK_LOG = """\
[    0.000000] Linux version 6.1.192 (root@builder) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP
[    0.012000] Memory: 482304K/523768K available (8192K kernel code, 1024K rwdata)
[    0.543176] kfree object size=24
[    0.543320] rcu-torture: Creating kfree_scale_thread task
[    0.654165] Total time taken by all kfree'ers: 97675810 ns, loops: 10, batches: 13, memory footprint: 3MB
[    0.659364] rcu-torture: Stopping kfree_scale_thread task
[    1.278523] reboot: Power down
"""

OOM_LOG = """\
[    0.000000] Linux version 6.1.192 (root@builder) #1 SMP
[    0.376621] kfree object size=1536
[    0.912000] kfree_scale_thr invoked oom-killer: gfp_mask=0x40cc0(GFP_KERNEL|__GFP_COMP), order=0, oom_score_adj=0
[    0.913000] CPU: 1 PID: 57 Comm: kfree_scale_thr Not tainted 6.1.192 #1
[    0.950000] Out of memory and no killable processes...
[    0.951000] Kernel panic - not syncing: System is deadlocked on memory
"""

PANIC_LOG = """\
[    0.000000] Linux version 6.1.192 #1 SMP
[    0.700000] Kernel panic - not syncing: No working init found.
"""

EMULATION_LOG = """\
KVM internal error. Suberror: 1
emulation failure
EAX=00000000 EBX=00000000
"""

HANGING_LOG = """\
[    0.000000] Linux version 6.1.192 #1 SMP
[    0.543176] kfree object size=24
[   13.918928] input: ImExPS/2 Generic Explorer Mouse as /devices/platform/i8042/serio1/input/input3
"""


# --- parsing ------------------------------------------------------------------------------


def test_parse_kfree_line_positive():
    r = h.parse_kfree_line(
        "[ 0.65] Total time taken by all kfree'ers: 97675810 ns, loops: 10, batches: 13, memory footprint: 3MB"
    )
    assert r == h.KfreeResult(97675810, 10, 13, 3)


def test_parse_kfree_line_negative_footprint():
    r = h.parse_kfree_line("Total time taken by all kfree'ers: 5 ns, loops: 50, batches: 0, memory footprint: -4MB\r")
    assert r is not None and r.footprint_mb == -4 and r.batches == 0


def test_parse_kfree_line_absent():
    assert h.parse_kfree_line("rcu-scale: kfree_scale_thread task started") is None
    assert h.parse_kfree_line("Total time taken by all kfree'ers: garbage") is None


def test_parse_console_collects_context():
    f = h.parse_console(OK_LOG)
    assert f.result == h.KfreeResult(97675810, 10, 13, 3)
    assert f.kernel_version == "6.1.192"
    assert f.object_size_bytes == 24
    assert f.kernel_ts_test_start_s == pytest.approx(0.543176)
    assert f.kernel_ts_result_s == pytest.approx(0.654165)
    assert f.kernel_ts_last_s == pytest.approx(1.278523)
    assert (f.guest_mem_available_kib, f.guest_mem_total_kib) == (482304, 523768)
    assert not f.oom_seen


# --- failure classification -----------------------------------------------------------------

# PID 1 could not load the test (a bad module parameter): it says so and powers the guest off.
LOAD_FAILED_LOG = """[    0.621363] Run /init as init process
rcutune-init: loading rcuscale kfree_rcu_test=1 shutdown=1 kfree_loops=abc
[    0.873943] rcuscale: `abc' invalid for parameter `kfree_loops'
rcutune-init: loading /rcuscale.ko failed: Invalid argument
[    0.880214] ACPI: PM: Preparing to enter system sleep state S5
[    0.886525] reboot: Power down
"""


@pytest.mark.parametrize(
    "log, timed_out, status, detail_has",
    [
        (OK_LOG, False, "ok", ""),
        (OOM_LOG, False, "oom", "invoked oom-killer"),
        (OOM_LOG, True, "oom", "invoked oom-killer"),  # the cause wins over the symptom
        (PANIC_LOG, False, "panic", "No working init"),
        (EMULATION_LOG, False, "emulation_failure", "KVM internal error"),
        (HANGING_LOG, True, "timeout", "timeout"),
        (HANGING_LOG, False, "no_result", "exited"),
        ("", False, "no_result", "exited"),
        (LOAD_FAILED_LOG, False, "no_result", "loading /rcuscale.ko failed: Invalid argument"),
    ],
)
def test_classify_console(log, timed_out, status, detail_has):
    got, detail = h.classify_console(log, timed_out, 0 if not timed_out else None)
    assert got == status
    assert detail_has in detail
    assert "[" not in detail[:2]  # the kernel timestamp is stripped from the cause


def test_allocation_failure_counts_as_oom():
    log = "[ 1.0] kfree_scale_thr: page allocation failure: order:0, mode:0xcc0(GFP_KERNEL)\n"
    assert h.classify_console(log, True)[0] == "oom"


def test_result_line_wins_over_late_oom():
    status, _ = h.classify_console(OK_LOG + "[ 2.0] Out of memory: Killed process 1\n", False)
    assert status == "ok"
    assert h.parse_console(OK_LOG + "[ 2.0] Out of memory: Killed process 1\n").oom_seen


# --- boot parameters ---------------------------------------------------------------------------


def test_boot_params_mode_and_cmdline():
    p = h.BootParams(guest_cpus=4, rcu_min_cached_objs=0, kfree_loops=50, kfree_rcu_test_double=1)
    assert p.mode == "double"
    assert p.kfree_threads_effective == 4
    cmd = p.kernel_cmdline()
    for want in (
        "rcutree.rcu_min_cached_objs=0",
        "rcuscale.kfree_loops=50",
        "rcuscale.kfree_rcu_test_double=1",
        "rcuscale.shutdown=1",
        "panic=-1",
    ):
        assert want in cmd
    assert h.BootParams().mode == "mixed"
    assert h.BootParams(kfree_rcu_test_single=1).mode == "single"
    assert h.BootParams(kfree_rcu_test_single=1, kfree_rcu_test_double=1).mode == "mixed"
    assert h.BootParams(guest_cpus=4, kfree_nthreads=-2).kfree_threads_effective == 3


def test_accel_facts():
    assert h.accel_facts("tcg,thread=single") == ("tcg", "single")
    assert h.accel_facts("tcg") == ("tcg", "multi")
    assert h.accel_facts("kvm") == ("kvm", "")


# --- sweep files ----------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(text)
    return p


GOOD = """
[sweep]
name = "t"
seed = 5
repetitions = 3
timeout_s = 30

[defaults]
guest_mem_mib = 256
kfree_loops = 50

[[grid]]
guest_cpus = [2, 4]
mode = ["double", "mixed"]
rcu_min_cached_objs = [0, 64]

[[grid]]
guest_cpus = 2
mode = "double"
rcu_min_cached_objs = 0
repetitions = 5
"""


def test_load_sweep_grid_and_overlap(tmp_path):
    sw = h.load_sweep(write(tmp_path, GOOD))
    assert sw.name == "t" and sw.seed == 5 and sw.timeout_s == 30
    assert sw.accel == h.DEFAULT_ACCEL
    assert len(sw.points) == 8  # 2 x 2 x 2; the second block overlaps one point
    reps = {p.point_id: p.repetitions for p in sw.points}
    assert reps["c2-m256-n0-d5000-t-1-a8000-l50-x1-double"] == 5
    assert sum(reps.values()) == 7 * 3 + 5
    assert all(p.params.guest_mem_mib == 256 for p in sw.points)


def test_sweep_order_is_seeded_and_complete(tmp_path):
    sw = h.load_sweep(write(tmp_path, GOOD))
    a, b = sw.runs(), sw.runs()
    assert [(p.point_id, r) for p, r in a] == [(p.point_id, r) for p, r in b]
    keys = {(p.point_id, r) for p, r in a}
    assert len(keys) == len(a) == 26
    ordered = [(p.point_id, r) for p in sw.points for r in range(p.repetitions)]
    assert [(p.point_id, r) for p, r in a] != ordered  # shuffled, not grid order


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[grid]]\nguest_cpus = 0\n", "guest_cpus = 0 must be in [1, 16]"),
        ("[[grid]]\nkfree_loops = 2\n", "kfree_loops = 2"),
        ('[[grid]]\nmode = "triple"\n', "mode must be one of"),
        ("[[grid]]\nguest_cpu = 2\n", "unknown keys ['guest_cpu']"),
        ('[[grid]]\nrcu_min_cached_objs = "5"\n', "rcu_min_cached_objs must be an integer"),
        ("[[grid]]\nrcu_delay_page_cache_fill_msec = 200000\n", "rcu_delay_page_cache_fill_msec"),
        ("[[grid]]\nguest_cpus = []\n", "empty list"),
        ('[[grid]]\nmode = "double"\nkfree_rcu_test_single = 1\n', "contradicts"),
        ('[[grid]]\nmode = "mixed"\nkfree_rcu_test_single = 1\n', "contradicts"),
        ("[sweep]\nrepetitions = 0\n[[grid]]\nguest_cpus = 2\n", "repetitions = 0"),
        ("[sweep]\ntimeout_s = -1\n[[grid]]\nguest_cpus = 2\n", "timeout_s must be a positive"),
        ('[sweep]\nname = "x"\n', "needs at least one [[grid]]"),
        ("[swep]\n[[grid]]\nguest_cpus = 2\n", "unknown top-level keys"),
        ("[[grid]\nguest_cpus = 2\n", "not valid TOML"),
        ("[[grid]]\nkfree_nthreads = 0\n", "kfree_nthreads = 0"),
    ],
)
def test_bad_sweep_files_give_clear_errors(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(h.SweepError) as e:
        h.load_sweep(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_missing_sweep_file(tmp_path):
    with pytest.raises(h.SweepError, match="no such sweep file"):
        h.load_sweep(tmp_path / "nope.toml")


def test_committed_sweeps_are_valid():
    root = Path(h.__file__).resolve().parents[1] / "sweeps"
    files = sorted(root.glob("*.toml"))
    assert files, "validation/sweeps/*.toml missing"
    for f in files:
        sw = h.load_sweep(f)
        assert all(p.repetitions >= 4 for p in sw.points)


# --- CSV rows and resume -------------------------------------------------------------------


def fake_result(params: h.BootParams, log: str, status: str) -> h.BootResult:
    return h.BootResult(params, status, "", h.parse_console(log), 1.5, "tcg", "single", 0, log)


def test_result_row_has_all_columns():
    p = h.BootParams(kfree_loops=10)
    row = h.result_row(fake_result(p, OK_LOG, "ok"), rep=2, context={"host_cores": 2})
    assert tuple(row) == h.CSV_COLUMNS
    assert row["point_id"] == p.point_id and row["rep"] == "2"
    assert row["total_time_ns"] == "97675810" and row["footprint_mb"] == "3"
    assert row["mode"] == "mixed" and row["status"] == "ok" and row["host_cores"] == "2"
    assert row["kernel_version"] == "6.1.192" and row["tcg_threads"] == "single"
    failed = h.result_row(fake_result(p, OOM_LOG, "oom"), rep=0, context={})
    assert failed["total_time_ns"] == "" and failed["oom_seen"] == "1"


def test_completed_runs_and_resume(tmp_path):
    out = tmp_path / "d.csv"
    assert h.completed_runs(out) == set()
    p = h.BootParams(kfree_loops=10)
    h.append_row(out, h.result_row(fake_result(p, OK_LOG, "ok"), rep=0, context={}))
    h.append_row(out, h.result_row(fake_result(p, OOM_LOG, "oom"), rep=1, context={}))
    assert h.completed_runs(out) == {(p.point_id, 0), (p.point_id, 1)}
    # A row cut short by an interrupted run is not counted, and the next append repairs it.
    with out.open("a") as fh:
        fh.write(p.point_id + ",2,2,512")
    assert h.completed_runs(out) == {(p.point_id, 0), (p.point_id, 1)}
    h.append_row(out, h.result_row(fake_result(p, OK_LOG, "ok"), rep=2, context={}))
    rows = list(csv.DictReader(out.open()))
    assert [r["rep"] for r in rows] == ["0", "1", "2"]
    assert h.completed_runs(out) == {(p.point_id, r) for r in range(3)}


def test_completed_runs_refuses_foreign_header(tmp_path):
    out = tmp_path / "other.csv"
    out.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(h.CsvMismatchError):
        h.completed_runs(out)


def test_run_sweep_skips_done_rows(tmp_path, monkeypatch):
    """run_sweep boots only what the CSV lacks, in the seeded order, and appends as it goes."""
    sweep = write(tmp_path, GOOD)
    out = tmp_path / "out.csv"
    booted = []

    def fake_boot(params, timeout_s, kernel=None, accel=h.DEFAULT_ACCEL):
        booted.append(params.point_id)
        return fake_result(params, OK_LOG, "ok")

    kernel = h.BuildResult(Path("bz"), Path("rd"), Path("cfg"), "6.1.192", "k", 1.0, True)
    monkeypatch.setattr(h, "boot", fake_boot)
    monkeypatch.setattr(h, "qemu_version", lambda: "7.2.0")
    logs = tmp_path / "logs"
    s1 = h.run_sweep(sweep, out, kernel=kernel, limit=10, log_dir=logs, progress=lambda s: None)
    assert (s1.ran, s1.skipped) == (10, 0)
    s2 = h.run_sweep(sweep, out, kernel=kernel, log_dir=logs, progress=lambda s: None)
    assert (s2.ran, s2.skipped, s2.planned) == (16, 10, 26)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 26 == len({(r["point_id"], r["rep"]) for r in rows})
    order = [(p.point_id, r) for p, r in h.load_sweep(sweep).runs()]
    assert [(r["point_id"], int(r["rep"])) for r in rows] == order
    assert {r["boot_index"] for r in rows} == {str(i) for i in range(26)}
    s3 = h.run_sweep(sweep, out, kernel=kernel, log_dir=logs, progress=lambda s: None)
    assert s3.ran == 0


# --- config variants and the kernel build cache ------------------------------------------------


def test_the_main_block_was_measured_with_the_current_base_build():
    root = Path(h.__file__).resolve().parents[1] / "data"
    assert {r["build_key"] for r in h.read_rows(root / "rcuscale-6.1-main.csv")} == {h.build_key()}


def test_the_module_loader_is_part_of_the_build_key(tmp_path, monkeypatch):
    base = h.build_key()
    loader = tmp_path / "rcuscale_module.h"
    loader.write_text(h.MODULE_LOADER_H.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(h, "MODULE_LOADER_H", loader)
    assert h.build_key() != base


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_pid1_hands_the_rcuscale_words_of_the_command_line_to_the_module(tmp_path):
    """rcuscale.<name>=<value> words, and only those, reach finit_module() without the prefix."""
    prog = tmp_path / "params.c"
    prog.write_text(
        '#include "rcuscale_module.h"\n'
        "int main(int argc, char **argv) { (void)argc; puts(rcuscale_params_from(argv[1])); "
        "(void)start_rcuscale; return 0; }\n"
    )
    exe = tmp_path / "params"
    subprocess.run(["gcc", "-Wall", "-Werror", f"-I{h.HERE}", "-o", str(exe), str(prog)], check=True)
    params = h.BootParams(guest_cpus=2, kfree_loops=50, rcu_min_cached_objs=5)
    cmdline = params.kernel_cmdline(extra=["rcu_nocbs=0-1", "xrcuscale.bogus=1"])
    out = subprocess.run([str(exe), cmdline], capture_output=True, text=True, check=True).stdout.split()
    want = [w.removeprefix("rcuscale.") for w in cmdline.split() if w.startswith("rcuscale.")]
    assert out == want and "kfree_loops=50" in out and "kfree_rcu_test=1" in out
    assert subprocess.run([str(exe), "console=ttyS0"], capture_output=True, text=True).stdout == "\n"


def test_the_initramfs_carries_init_and_the_modules_in_load_order(tmp_path):
    if shutil.which("cpio") is None:
        pytest.skip("needs cpio")
    files = []
    for name in ("init", "torture.ko", "rcuscale.ko"):
        f = tmp_path / "in" / name
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(name.encode())
        files.append(f)
    out = tmp_path / "initramfs.cpio.gz"
    h._pack_initramfs(files[0], files[1:], out, tmp_path / "log")
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=gzip.decompress(out.read_bytes()), capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == ["init", "torture.ko", "rcuscale.ko"]
    assert [Path(m).name for m in h.MODULES] == ["torture.ko", "rcuscale.ko"]


def test_build_key_follows_the_fragment_set(tmp_path, monkeypatch):
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "a.fragment").write_text("CONFIG_PREEMPT_VOLUNTARY=y\n")
    (variants / "b.fragment").write_text("CONFIG_RCU_EXPERT=y\n")
    monkeypatch.setattr(h, "VARIANTS_DIR", variants)
    base, a, b = h.build_key(), h.build_key(("a",)), h.build_key(("b",))
    ab = h.build_key(h.normalize_variants("b+a"))
    assert len({base, a, b, ab}) == 4
    assert h.normalize_variants(["b", "a", "base"]) == ("a", "b") == h.normalize_variants("a+b")
    assert h.build_key(h.normalize_variants(["b", "a"])) == ab
    (variants / "a.fragment").write_text("CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_HZ_250=y\n")
    assert h.build_key(("a",)) != a and h.build_key(("b",)) == b and h.build_key() == base
    (variants / "a.init.c").write_text("int main(void) { return 0; }\n")
    assert h.variant_init(("a",)) == variants / "a.init.c"
    assert h.variant_init(("b",)) == h.INIT_C
    assert h.build_key(("a",)) != a


def test_variant_names_are_checked():
    assert h.normalize_variants(None) == () == h.normalize_variants("base")
    assert set(h.available_variants()) >= {"voluntary", "nocb", "trace"}
    with pytest.raises(ValueError, match="unknown config variant.*preempt_rt"):
        h.normalize_variants("preempt_rt")
    assert h.variant_label(()) == "base" and h.variant_label(("nocb", "voluntary")) == "nocb+voluntary"


def test_committed_variants_ask_for_what_the_blocks_need():
    vol = h.wanted_config(("voluntary",))
    assert vol["CONFIG_PREEMPT_VOLUNTARY"] == "y" and vol["CONFIG_PREEMPT_NONE"] == "n"
    assert vol["CONFIG_RCU_SCALE_TEST"] == "m"  # the base fragment is still there
    assert h.preempt_model(vol) == "voluntary"
    assert h.preempt_model(h.wanted_config()) == "none"
    nocb = h.wanted_config(("nocb",))
    assert nocb["CONFIG_RCU_NOCB_CPU"] == "y" and nocb["CONFIG_RCU_EXPERT"] == "y"
    tr = h.wanted_config(("trace",))
    assert tr["CONFIG_RCU_TRACE"] == "y" and tr["CONFIG_FTRACE"] == "y"
    assert h.variant_init(("trace",)).name == "trace.init.c"


def test_variants_that_disagree_cannot_be_combined(tmp_path, monkeypatch):
    variants = tmp_path / "variants"
    variants.mkdir()
    (variants / "a.fragment").write_text("CONFIG_HZ_1000=y\n")
    (variants / "b.fragment").write_text("# CONFIG_HZ_1000 is not set\n")
    monkeypatch.setattr(h, "VARIANTS_DIR", variants)
    with pytest.raises(ValueError, match="disagree on CONFIG_HZ_1000"):
        h.wanted_config(("a", "b"))


def test_config_mismatches_checks_the_merged_fragments(tmp_path):
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT_VOLUNTARY is not set\n")
    bad = h.config_mismatches(h.wanted_config(("voluntary",)), cfg)
    assert any("CONFIG_PREEMPT_VOLUNTARY: wanted y, got n" in b for b in bad)
    assert h.preempt_model(h.read_kconfig(cfg)) == "none"


def test_preempt_model_names():
    assert h.preempt_model({"CONFIG_PREEMPT": "y", "CONFIG_PREEMPT_DYNAMIC": "y"}) == "dynamic"
    assert h.preempt_model({"CONFIG_PREEMPT": "y"}) == "full"
    assert h.preempt_model({"CONFIG_PREEMPT_RT": "y"}) == "rt"


# --- offloading: parameters, point ids, console -------------------------------------------------

NOCB_LOG = """\
[    0.000000] Linux version 6.1.192 (root@builder) #1 SMP
[    0.000000] rcu: Hierarchical RCU implementation.
[    0.000000] rcu: \tRCU restricting CPUs from NR_CPUS=16 to nr_cpu_ids=4.
[    0.000000] rcu: \tOffload RCU callbacks from CPUs: 0-3.
[    0.543176] kfree object size=768
[    1.654165] Total time taken by all kfree'ers: 1097675810 ns, loops: 100, batches: 40, memory footprint: 61MB
"""


def test_nocb_point_ids_and_cmdline():
    base = h.BootParams(guest_cpus=4, kfree_loops=50, kfree_rcu_test_double=1)
    assert base.point_id == "c4-m512-n5-d5000-t-1-a8000-l50-x1-double"  # as in the old CSVs
    assert "rcu_nocbs" not in base.kernel_cmdline()
    off = h.BootParams(guest_cpus=4, kfree_loops=50, kfree_rcu_test_double=1, rcu_nocbs="all", config_variant="nocb")
    assert off.nocb_cpulist == "0-3"
    assert off.point_id == "c4-m512-n5-d5000-t-1-a8000-l50-x1-double-nocbs0-3@nocb"
    assert off.kernel_cmdline().split()[-1] == "rcu_nocbs=0-3"
    ctl = h.BootParams(guest_cpus=4, kfree_loops=50, kfree_rcu_test_double=1, config_variant="nocb")
    assert ctl.point_id == "c4-m512-n5-d5000-t-1-a8000-l50-x1-double@nocb"
    assert h.BootParams(guest_cpus=1, rcu_nocbs="all").nocb_cpulist == "0"
    assert "rcuscale.shutdown=0" in base.kernel_cmdline(shutdown=False, extra=["x=1"])
    assert base.kernel_cmdline(extra=["x=1"]).endswith(" x=1")


def test_parse_console_reads_the_offloaded_cpus():
    f = h.parse_console(NOCB_LOG.replace("\n", "\r\n"))
    assert f.nocb_offloaded_cpus == "0-3"
    assert f.result.footprint_mb == 61
    assert h.parse_console(OK_LOG).nocb_offloaded_cpus == ""
    none = "[    0.0] rcu: \tOffload RCU callbacks from CPUs: (none).\n"
    assert h.parse_console(none).nocb_offloaded_cpus == "(none)"


def test_cpulists():
    assert h.cpulist_cpus("0-3") == {0, 1, 2, 3}
    assert h.cpulist_cpus("0,2-3") == {0, 2, 3}
    assert h.resolve_cpulist("all", 2) == "0-1" and h.resolve_cpulist("", 4) == ""


NOCB_SWEEP = """
[sweep]
name = "n"
config_variant = "nocb"
repetitions = 4

[defaults]
mode = "double"

[[grid]]
guest_cpus = [2, 4]
rcu_nocbs = ["", "all"]
rcu_min_cached_objs = [0, 64]
"""


def test_sweep_with_a_config_variant(tmp_path):
    sw = h.load_sweep(write(tmp_path, NOCB_SWEEP))
    assert sw.variants == ("nocb",) and sw.config_variant == "nocb"
    assert len(sw.points) == 8
    assert all(p.params.config_variant == "nocb" for p in sw.points)
    lists = sorted({p.params.nocb_cpulist for p in sw.points})
    assert lists == ["", "0-1", "0-3"]
    assert all(p.point_id.endswith("@nocb") for p in sw.points)
    assert h.load_sweep(write(tmp_path, GOOD)).variants == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[sweep]\nconfig_variant = "rt"\n[[grid]]\nguest_cpus = 2\n', "unknown config variant"),
        ('[[grid]]\nrcu_nocbs = "all"\n', "needs a kernel with CONFIG_RCU_NOCB_CPU"),
        (
            '[sweep]\nconfig_variant = "voluntary"\n[[grid]]\nrcu_nocbs = "all"\n',
            "needs a kernel with CONFIG_RCU_NOCB_CPU",
        ),
        ('[sweep]\nconfig_variant = "nocb"\n[[grid]]\nrcu_nocbs = "0-3"\nguest_cpus = 2\n', "names CPUs the guest"),
        ('[sweep]\nconfig_variant = "nocb"\n[[grid]]\nrcu_nocbs = "some"\n', "cpulist"),
        ('[sweep]\nconfig_variant = "nocb"\n[[grid]]\nrcu_nocbs = 1\n', "must be a string"),
    ],
)
def test_bad_variant_sweeps(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(h.SweepError) as e:
        h.load_sweep(path)
    assert message in str(e.value) and str(path) in str(e.value)


# --- CSV: the new columns, and the files written before them ------------------------------------

DATA = Path(h.__file__).resolve().parents[1] / "data"


def test_new_columns_come_after_the_original_ones():
    assert h.CSV_COLUMNS[: len(h.LEGACY_COLUMNS)] == h.LEGACY_COLUMNS
    assert h.CSV_COLUMNS[len(h.LEGACY_COLUMNS) :] == (
        "config_variant",
        "preempt_model",
        "rcu_nocbs",
        "nocb_offloaded_cpus",
    )


# The first 8 rows of the main block's first measurement, in the format before the new columns.
LEGACY_CSV = Path(__file__).resolve().parent / "data" / "legacy-main.csv"


def test_legacy_csvs_read_with_defaults():
    assert h._csv_header(LEGACY_CSV) == h.LEGACY_COLUMNS
    rows = h.read_rows(LEGACY_CSV)
    assert len(rows) == 8
    assert {(r["config_variant"], r["preempt_model"], r["rcu_nocbs"]) for r in rows} == {("base", "none", "")}
    assert len(h.completed_runs(LEGACY_CSV)) == 8
    assert {r["point_id"] for r in h.summarize(LEGACY_CSV)}
    assert len(h.completed_runs(DATA / "rcuscale-6.1-pressure.csv")) == 198


def test_variant_row_has_the_new_columns():
    p = h.BootParams(guest_cpus=4, kfree_rcu_test_double=1, rcu_nocbs="all", config_variant="nocb")
    row = h.result_row(fake_result(p, NOCB_LOG, "ok"), rep=0, context={"preempt_model": "none"})
    assert tuple(row) == h.CSV_COLUMNS
    assert (row["config_variant"], row["preempt_model"], row["rcu_nocbs"], row["nocb_offloaded_cpus"]) == (
        "nocb",
        "none",
        "0-3",
        "0-3",
    )


def test_appending_to_a_legacy_file_keeps_its_format(tmp_path):
    old = tmp_path / "old.csv"
    src = LEGACY_CSV.read_bytes()
    old.write_bytes(src)
    p = h.BootParams(kfree_loops=10)
    h.append_row(old, h.result_row(fake_result(p, OK_LOG, "ok"), rep=0, context={"preempt_model": "none"}))
    data = old.read_bytes()
    assert data.startswith(src)
    last = data.decode().splitlines()[-1]
    assert last.count(",") == len(h.LEGACY_COLUMNS) - 1
    assert (p.point_id, 0) in h.completed_runs(old)
    v = h.BootParams(kfree_loops=10, config_variant="voluntary")
    with pytest.raises(h.CsvMismatchError, match="new file"):
        h.append_row(old, h.result_row(fake_result(v, OK_LOG, "ok"), rep=0, context={"preempt_model": "voluntary"}))


def kernel_of(variants=(), model="none", key="k"):
    return h.BuildResult(Path("bz"), Path("rd"), Path("cfg"), "6.1.192", key, 1.0, True, tuple(variants), model)


def test_run_sweep_boots_the_build_of_the_sweeps_variant(tmp_path, monkeypatch):
    sweep = write(tmp_path, NOCB_SWEEP)
    out = tmp_path / "out.csv"
    kernels = []

    def fake_boot(params, timeout_s, kernel=None, accel=h.DEFAULT_ACCEL):
        kernels.append(kernel.build_key)
        return fake_result(params, NOCB_LOG if params.nocb_cpulist else OK_LOG, "ok")

    built = []

    def fake_build(cache_dir=None, jobs=2, variants=()):
        built.append(tuple(variants))
        return kernel_of(variants, key="nocb-key")

    monkeypatch.setattr(h, "boot", fake_boot)
    monkeypatch.setattr(h, "build", fake_build)
    monkeypatch.setattr(h, "find_build", lambda cache_dir=None, variants=(): None)
    monkeypatch.setattr(h, "qemu_version", lambda: "7.2.0")
    # No kernel given and none cached: a clear error naming the build command.
    with pytest.raises(RuntimeError, match="build --variant nocb"):
        h.run_sweep(sweep, out, log_dir=tmp_path / "logs", progress=lambda s: None)
    # The base build given (as `measure` or `validate kernel --build` do): the variant is built.
    s = h.run_sweep(sweep, out, kernel=kernel_of(), log_dir=tmp_path / "logs", progress=lambda s: None)
    assert s.ran == 32 and built == [("nocb",)] and set(kernels) == {"nocb-key"}
    rows = h.read_rows(out)
    assert {r["config_variant"] for r in rows} == {"nocb"}
    assert {r["nocb_offloaded_cpus"] for r in rows if r["rcu_nocbs"]} == {"0-3"}
    assert {r["build_key"] for r in rows} == {"nocb-key"}


def test_a_variant_sweep_does_not_go_into_a_legacy_file(tmp_path):
    old = tmp_path / "old.csv"
    old.write_bytes(LEGACY_CSV.read_bytes())
    with pytest.raises(h.CsvMismatchError, match="new file"):
        h.run_sweep(write(tmp_path, NOCB_SWEEP), old, kernel=kernel_of(("nocb",)), progress=lambda s: None)


def test_boot_refuses_another_variants_kernel():
    p = h.BootParams(config_variant="voluntary")
    with pytest.raises(RuntimeError, match="needs the voluntary build"):
        h.boot(p, 1.0, kernel_of())


# --- trace boot --------------------------------------------------------------------------------

TRACES = Path(h.__file__).resolve().parents[2] / "tests" / "data" / "traces"

TRACE_CMD_REPORT = """\
cpus=2
  kworker/0:1-13    [000]     0.426883: rcu_invoke_kfree_bulk_callback: rcu_sched bulk=0x00000000a1b2c3d4 nr_records=190
  kworker/1:1-24    [001]     0.406114: rcu_invoke_kvfree_callback: rcu_sched rhp=0000000012345678 func=8
"""


def test_trace_lines_of_tracefs_and_trace_cmd_are_counted():
    tr = h.count_trace_events(TRACE_CMD_REPORT)
    assert tr.events == {"rcu_invoke_kfree_bulk_callback": 1, "rcu_invoke_kvfree_callback": 1}
    assert tr.events_by_cpu == {0: 1, 1: 1}
    assert (tr.first_ts_s, tr.last_ts_s) == (0.406114, 0.426883)
    assert tr.overrun is None
    line = (
        "     kworker/1:1-24      [001] .....     0.406114: rcu_invoke_kvfree_callback: "
        "rcu_sched rhp=(____ptrval____) func=8\r"
    )
    m = h.TRACE_LINE_RE.match(line)
    assert m and m["task"] == "kworker/1:1" and m["flags"] == "....." and m["fields"].endswith("func=8")
    # Kernel log lines and the trace header are not events.
    assert h.count_trace_events(OK_LOG + "# tracer: nop\n#  TASK-PID CPU#\n").events == {}


def test_trace_cmdline_enables_the_events_and_leaves_the_power_off_to_init():
    cmd = h.trace_cmdline(h.BootParams(kfree_loops=8, kfree_alloc_num=100, kfree_rcu_test_double=1))
    assert "rcuscale.shutdown=0" in cmd and "trace_clock=global" in cmd
    assert (
        "trace_event=rcu:rcu_invoke_kfree_bulk_callback,rcu:rcu_invoke_kvfree_callback,rcu:rcu_kvfree_callback"
    ) in cmd
    assert "rcutune_quiet_ms=6000" in cmd  # no dot: reaches PID 1 as an environment variable


def test_a_trace_boot_keeps_the_points_variants_and_its_events(monkeypatch, tmp_path):
    # An offloaded point is traced on the nocb+trace build, with the events asked for.
    seen = {}

    def kernel_for(variants, kernel=None, build_missing=False):
        seen["variants"] = tuple(variants)
        return kernel

    def boot(params, timeout_s, kernel, accel, cmdline):
        seen["cmdline"] = cmdline
        return h.BootResult.__new__(h.BootResult)

    monkeypatch.setattr(h, "kernel_for", kernel_for)
    monkeypatch.setattr(h, "boot", boot)
    monkeypatch.setattr(h.BootResult, "console", "", raising=False)
    params = h.validate_params("test", {"rcu_nocbs": "all", "guest_cpus": 2, "mode": "double"}, ("nocb",))
    h.trace_boot(params, tmp_path / "c.txt", events=("rcu:rcu_grace_period", "sched:sched_switch"))
    assert seen["variants"] == ("nocb", "trace")
    assert "trace_event=rcu:rcu_grace_period,sched:sched_switch" in seen["cmdline"]
    assert "rcu_nocbs=0-1" in seen["cmdline"]


@pytest.mark.parametrize(
    "mode, events",
    [
        ("double", {"rcu_invoke_kvfree_callback": 900, "rcu_invoke_kfree_bulk_callback": 2}),
        ("single", {"rcu_invoke_kfree_bulk_callback": 160}),
    ],
)
def test_committed_trace_captures(mode, events):
    path = TRACES / f"rcuscale-6.1-{mode}.console.txt"
    data = path.read_bytes()
    assert len(data) <= 200_000
    text = data.decode("utf-8")
    tr = h.count_trace_events(text)
    assert tr.events == events  # rcu_kvfree_callback never fires on 6.1 Tree RCU
    assert tr.overrun == 0 and set(tr.events_by_cpu) == {0, 1}
    facts = h.parse_console(text)
    assert facts.result is not None and facts.kernel_version == "6.1.192"
    assert f"rcuscale.kfree_rcu_test_{mode}=1" in text
    records = sum(
        int(line.rsplit("=", 1)[1])
        for line in text.splitlines()
        if "rcu_invoke_kfree_bulk_callback:" in line and "nr_records=" in line
    )
    kvfree = events.get("rcu_invoke_kvfree_callback", 0)
    assert records + kvfree == {"double": 2 * 8 * 100, "single": 2 * 20 * 2000}[mode]
