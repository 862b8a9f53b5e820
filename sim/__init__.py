"""rcutune's model of the kernel's kvfree_rcu() page-cache path (see DESIGN.md §2).

Public surface: `simulate()` and `simulate_with_trace()`, the profile loaders, `Policy`, `Metrics`
and the kernel table. Everything else in this package is private. `sim` imports neither `tuner`
nor `storage`.
"""

from ._engine import Trace, simulate, simulate_with_trace
from ._kernels import DEFAULT_KERNEL, KERNELS, KernelBehaviour, kernel_behaviour
from ._metrics import Metrics
from ._policy import LAYOUTS, Policy
from ._profiles import (
    HardwareProfile,
    ProfileError,
    WorkloadProfile,
    list_profiles,
    load_hardware,
    load_profile,
    load_workload,
    profile_from_text,
    profile_text,
    split_overrides,
)

SIMULATOR_VERSION = "2.4.0"
"""Bumped whenever a change can alter any metric for the same inputs; stored with every study."""

__all__ = [
    "DEFAULT_KERNEL",
    "KERNELS",
    "LAYOUTS",
    "SIMULATOR_VERSION",
    "HardwareProfile",
    "KernelBehaviour",
    "Metrics",
    "Policy",
    "ProfileError",
    "Trace",
    "WorkloadProfile",
    "kernel_behaviour",
    "list_profiles",
    "load_hardware",
    "load_profile",
    "load_workload",
    "profile_from_text",
    "profile_text",
    "simulate",
    "simulate_with_trace",
    "split_overrides",
]
