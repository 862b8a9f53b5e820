"""Real-kernel harness: build Linux 6.1 with rcuscale, boot it under qemu TCG, record a CSV."""

from .harness import (  # noqa: F401
    BootParams, BootResult, BuildResult, KfreeResult, Sweep, SweepError, boot, build,
    classify_console, completed_runs, load_sweep, parse_console, parse_kfree_line, run_sweep,
    summarize,
)
