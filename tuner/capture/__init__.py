"""The capture stage: profiles of what really runs, for the study to start from.

`capture_hardware` reads a machine (procfs, sysfs, the kernel's build configuration; any directory
laid out like `/`) into a hardware profile, borrowing what a running system cannot tell from the
nearest shipped profile. `capture_workload` turns a trace of the kernel's kvfree_rcu() events
into a workload profile and says what a trace cannot show. `read_machine` is what `check` reads.
"""

from ._hardware import HardwareCapture, capture_hardware, machine_keys, nearest_shipped
from ._machine import (
    CACHE_PARAMS,
    PARAM_MODULES,
    Machine,
    ParamValue,
    cmdline_args,
    modelled_release,
    parse_cpulist,
    read_machine,
)
from ._trace import EVENTS, WorkloadCapture, capture_workload, parse_trace

__all__ = [
    "CACHE_PARAMS",
    "EVENTS",
    "PARAM_MODULES",
    "HardwareCapture",
    "Machine",
    "ParamValue",
    "WorkloadCapture",
    "capture_hardware",
    "capture_workload",
    "cmdline_args",
    "machine_keys",
    "modelled_release",
    "nearest_shipped",
    "parse_cpulist",
    "parse_trace",
    "read_machine",
]
