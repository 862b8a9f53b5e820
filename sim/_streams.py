"""Random streams keyed by (seed, purpose, index), never by call order across purposes.

Keying every stream by what it is for gives common random numbers: two policies run with one seed
see the same arrivals, bursts and grace-period durations, so their metrics differ by the policy alone.
"""

from __future__ import annotations

import numpy as np

_PURPOSES = {
    "arrivals": 1,  # per CPU: Poisson call counts per millisecond slot
    "hot_set": 2,  # which CPUs are hot in each epoch
    "bursts": 3,  # burst start times
    "grace_periods": 4,  # normal grace-period durations
    "expedited": 5,  # expedited grace-period durations
    "booking": 6,  # per CPU: how calls that miss the cache resolve
    "memory": 7,  # storm phase, sampling jitter
    "rcuscale": 8,  # per thread: single/double choice
    "refill": 9,  # per CPU: refill allocation outcomes
    "arrivals_large": 10,  # per CPU and call kind: counts of slots with a large mean call count
}


def stream(seed: int, purpose: str, index: int = 0) -> np.random.Generator:
    """An independent generator for one purpose (and one CPU or thread, by `index`)."""
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, _PURPOSES[purpose], index]))
