"""Real-kernel harness: build Linux 6.1 with rcuscale, boot it under qemu TCG, record a CSV."""

from .harness import (  # noqa: F401
    BootParams,
    BootResult,
    BuildResult,
    KfreeResult,
    Sweep,
    SweepError,
    TraceSummary,
    boot,
    build,
    classify_console,
    completed_runs,
    count_trace_events,
    load_sweep,
    normalize_variants,
    parse_console,
    parse_kfree_line,
    read_rows,
    run_sweep,
    summarize,
    trace_boot,
)
