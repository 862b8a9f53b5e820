"""Open-loop kvfree_rcu() callers: Poisson call counts per 1 ms slot, drawn in bulk per CPU.

Calls are never Python events. Each CPU's stream holds, per slot, how many calls of each kind
(two-argument or headless, slab or vmalloc) arrived; the model asks "how many arrived in (a, b]"
and "when will k more have arrived", both answered from cumulative sums. Counts are drawn for up to
ten simulated seconds at a time from the CPU's own stream, by inversion of one uniform per slot and
kind, so they depend neither on the policy nor on how much is drawn at once.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence

import numpy as np

from ._profiles import WorkloadProfile
from ._streams import stream

SLOT = 1e-3  # seconds per slot
CHUNK = 1000  # slots per lazily drawn chunk
DRAW_CHUNKS = 10  # chunks drawn at once, at most (never past the run's end unless asked)
POISSON_TABLE_MAX = 500.0  # mean calls per slot up to which counts are drawn by table inversion
KINDS = ("two_arg_slab", "two_arg_vmalloc", "headless_slab", "headless_vmalloc")


class RateSchedule:
    """Per-CPU call rate over time: skew across CPUs, hot-set epochs and system-wide bursts."""

    def __init__(self, workload: WorkloadProfile, cpus: int, seconds: float, seed: int) -> None:
        self.workload = workload
        self.cpus = cpus
        nslots = int(math.ceil(seconds / SLOT)) + CHUNK
        self.burst = np.ones(nslots)
        if workload.burst_every_s > 0 and workload.burst_multiplier > 1:
            rng = stream(seed, "bursts")
            t = rng.exponential(workload.burst_every_s)
            width = max(1, int(round(workload.burst_ms * 1e-3 / SLOT)))
            while t < seconds:
                s = int(t / SLOT)
                self.burst[s : s + width] = workload.burst_multiplier
                t += workload.burst_ms * 1e-3 + rng.exponential(workload.burst_every_s)
        epochs = 1
        if workload.hot_set_period_s > 0:
            epochs = int(math.ceil(seconds / workload.hot_set_period_s)) + 1
        active = max(1, int(round(cpus * workload.active_cpus_fraction))) if workload.active_cpus_fraction > 0 else 0
        base = np.zeros(cpus)
        if active:
            rank_weight = (np.arange(1, active + 1, dtype=float)) ** (-workload.skew)
            base[:active] = rank_weight * (cpus / rank_weight.sum())  # mean over all CPUs stays the profile's rate
        self._cdfs: dict[float, np.ndarray] = {}
        self.chunks = math.ceil(seconds / SLOT / CHUNK)  # chunks that cover the run
        self.weights = np.empty((epochs, cpus))
        rng = stream(seed, "hot_set")
        self.weights[0] = base
        for e in range(1, epochs):
            self.weights[e] = base[rng.permutation(cpus)]

    def rate(self, cpu: int, first_slot: int, nslots: int) -> np.ndarray:
        """Calls per second on `cpu` for each slot in [first_slot, first_slot + nslots)."""
        w = self.workload
        slots = np.arange(first_slot, first_slot + nslots)
        if self.weights.shape[0] > 1:
            epoch = np.minimum((slots * SLOT / w.hot_set_period_s).astype(int), self.weights.shape[0] - 1)
            weight = self.weights[epoch, cpu]
        else:
            weight = self.weights[0, cpu]
        burst = self.burst[np.minimum(slots, len(self.burst) - 1)]
        return w.calls_per_s_per_cpu * weight * burst

    def poisson(
        self, lam: np.ndarray, uniforms: np.ndarray, large_rng: Callable[[], np.random.Generator]
    ) -> np.ndarray:
        """Poisson counts with the given means, one per slot, by inversion of `uniforms` (one each).

        The rate is piecewise constant (hot-set epochs, bursts), so each run of equal means is one
        table lookup. Inversion costs one uniform per slot where numpy's sampler for small means
        multiplies mean + 1 of them; means above `POISSON_TABLE_MAX` use numpy's sampler.
        """
        n = len(lam)
        if lam[0] == lam[-1] and (lam == lam[0]).all():
            starts = [0]
        else:
            starts = [0, *(np.flatnonzero(lam[1:] != lam[:-1]) + 1).tolist()]
        ends = [*starts[1:], n]
        if len(starts) == 1:
            mean = float(lam[0])
            if mean <= POISSON_TABLE_MAX:
                return self._poisson_cdf(mean).searchsorted(uniforms, side="right")
        out = np.empty(n, dtype=np.int64)
        for a, b in zip(starts, ends):
            mean = float(lam[a])
            if mean <= POISSON_TABLE_MAX:
                out[a:b] = self._poisson_cdf(mean).searchsorted(uniforms[a:b], side="right")
            else:
                out[a:b] = large_rng().poisson(mean, b - a)
        return out

    def _poisson_cdf(self, mean: float) -> np.ndarray:
        """The Poisson(mean) CDF at 0, 1, ..., far enough into the tail that the rest is below 1e-16."""
        cdf = self._cdfs.get(mean)
        if cdf is None:
            top = int(mean + 12.0 * math.sqrt(mean) + 20)
            pmf = np.empty(top + 1)
            pmf[0] = math.exp(-mean)
            pmf[1:] = mean / np.arange(1, top + 1)
            cdf = np.cumsum(np.cumprod(pmf))
            self._cdfs[mean] = cdf
        return cdf

    def total_rate(self, slot: int) -> float:
        w = self.workload
        epoch = 0
        if self.weights.shape[0] > 1:
            epoch = min(int(slot * SLOT / w.hot_set_period_s), self.weights.shape[0] - 1)
        return float(w.calls_per_s_per_cpu * self.weights[epoch].sum() * self.burst[min(slot, len(self.burst) - 1)])


class ArrivalStream:
    """The calls one CPU receives; cumulative per kind, drawn a chunk at a time.

    Per drawn batch of chunks it keeps, for each call kind the workload has, the calls up to the end
    of each slot, and their total over kinds (column 0: the calls before the batch), read through
    memoryviews: one value at a time, that is cheaper than numpy indexing.
    """

    def __init__(self, schedule: RateSchedule, cpu: int, seed: int) -> None:
        w = schedule.workload
        self.schedule = schedule
        self.cpu = cpu
        self.seed = seed
        self.rng = stream(seed, "arrivals", cpu)
        self._large: dict[int, np.random.Generator] = {}
        h, v = w.headless_fraction, w.vmalloc_fraction
        self.mix = np.array([(1 - h) * (1 - v), (1 - h) * v, h * (1 - v), h * v])
        self._kinds = [k for k in range(4) if self.mix[k] > 0]
        self._cum: list[
            list[memoryview]
        ] = []  # per chunk, per kind: its batch's (1 + slots) calls up to each slot's end
        self._total: list[memoryview] = []  # per chunk: its batch's (1 + slots) calls of all kinds
        self._offset: list[int] = []  # per chunk: its first slot's column in its batch, less one
        self._chunk_total: list[int] = []  # calls up to each chunk's end
        self._last = [0] * len(self._kinds)  # calls of each kind up to the last drawn chunk's end

    def _chunk(self, k: int) -> None:
        """Draw chunks up to k, several at once up to the run's end (the values do not depend on how many)."""
        first = len(self._offset)
        if first > k:
            return
        last = max(k + 1, min(first + DRAW_CHUNKS, self.schedule.chunks))
        n = (last - first) * CHUNK
        lam = self.schedule.rate(self.cpu, first * CHUNK, n) * SLOT
        kinds = self._kinds
        # One uniform per slot and kind, chunk after chunk: the same numbers however many are drawn at once.
        uniforms = self.rng.random((last - first, len(kinds), CHUNK))
        cum = np.empty((len(kinds), n + 1), dtype=np.int64)
        for r, kind in enumerate(kinds):  # only the kinds this workload has
            counts = self.schedule.poisson(
                self.mix[kind] * lam, uniforms[:, r, :].reshape(-1), lambda kind=kind: self._large_rng(kind)
            )
            cum[r, 0] = 0
            np.cumsum(counts, out=cum[r, 1:])
            cum[r] += self._last[r]
        total = cum.sum(axis=0) if len(kinds) > 1 else cum[0]
        self._last = cum[:, -1].tolist()
        cum_views, total_view = [memoryview(row) for row in cum], memoryview(total)
        for c in range(last - first):
            self._cum.append(cum_views)
            self._total.append(total_view)
            self._offset.append(c * CHUNK)
            self._chunk_total.append(total_view[(c + 1) * CHUNK])

    def _large_rng(self, kind: int) -> np.random.Generator:
        """Per kind, the stream for slots whose mean is too large for table inversion."""
        rng = self._large.get(kind)
        if rng is None:
            rng = self._large[kind] = stream(self.seed, "arrivals_large", self.cpu * 4 + kind)
        return rng

    def cumulative(self, t: float) -> tuple[int, ...]:
        """Calls of each kind in (0, t]; kind k's i-th call in a slot comes at fraction i / count_k."""
        if t <= 0:
            return (0, 0, 0, 0)
        pos = t / SLOT
        slot = int(pos)
        k, j = divmod(slot, CHUNK)
        frac = pos - slot
        out = [0, 0, 0, 0]
        if k >= len(self._offset):
            if j == 0 and frac == 0.0 and k == len(self._offset):
                # The end of the last chunk drawn: nothing new to draw.
                for r, kind in enumerate(self._kinds):
                    out[kind] = self._last[r]
                return tuple(out)
            self._chunk(k)
        i = self._offset[k] + j + 1
        if len(self._kinds) == 2:  # the common mix, unrolled
            first, second = self._cum[k]
            before = first[i - 1]
            out[self._kinds[0]] = before + int((first[i] - before) * frac)
            before = second[i - 1]
            out[self._kinds[1]] = before + int((second[i] - before) * frac)
            return tuple(out)
        for kind, cum in zip(self._kinds, self._cum[k]):
            before = cum[i - 1]
            out[kind] = before + int((cum[i] - before) * frac)
        return tuple(out)

    def calls_by_slot_end(self, t: float) -> int:
        """Calls of all kinds up to the end of the slot that holds t: at least `sum(cumulative(t))`."""
        k, j = divmod(int(t / SLOT), CHUNK)
        if k >= len(self._offset):
            self._chunk(k)
        return self._total[k][self._offset[k] + j + 1]

    def time_to_reach(self, t: float, k: int, horizon: float, seen: int | None = None) -> float:
        """A time after t by which at least k more calls (all kinds) have arrived; `horizon` if none.

        `seen` is the number of calls up to t when the caller already knows it.
        """
        if k <= 0:
            return t
        target = (sum(self.cumulative(t)) if seen is None else seen) + k
        c = int(t / SLOT) // CHUNK
        chunk_total = self._chunk_total
        while c * CHUNK * SLOT < horizon:  # a call found in a later chunk would come after the horizon
            if c >= len(chunk_total):
                self._chunk(c)
            if chunk_total[c] >= target:
                total = self._total[c]
                offset = self._offset[c]
                i = offset + int(t / SLOT) - c * CHUNK + 1  # t's slot: no earlier one holds the target
                if i <= offset or total[i] < target:
                    i = bisect_left(total, target, max(i, offset + 1), offset + CHUNK + 1)
                before = total[i - 1]
                need = target - before
                in_slot = total[i] - before
                cum = self._cum[c]
                if len(cum) == 1:
                    frac = _fraction_reaching((in_slot,), need)
                elif len(cum) == 2:  # _fraction_reaching() unrolled for the common mix
                    first = cum[0][i] - cum[0][i - 1]
                    second = in_slot - first
                    x = need / in_slot
                    if int(first * x) + int(second * x) >= need:
                        frac = x
                    else:
                        frac = min(1.0, (need + (first > 0) + (second > 0)) / in_slot)
                else:  # the last kind's calls are the rest of the slot's
                    counts = [row[i] - row[i - 1] for row in cum[:-1]]
                    counts.append(in_slot - sum(counts))
                    frac = _fraction_reaching(counts, need)
                # A hair past the exact instant, so that `cumulative()` there counts the target call.
                frac = frac * (1 + 1e-9) + 1e-9
                when = (c * CHUNK + (i - offset - 1) + (frac if frac < 1.0 else 1.0)) * SLOT
                if when < t + 1e-9:  # (conditionals, not min/max: this runs twice a drain cycle)
                    when = t + 1e-9
                return horizon if horizon < when else when
            c += 1
        return horizon


def _fraction_reaching(counts: Sequence[int], need: int) -> float:
    """An x in (0, 1] with sum(floor(n * x) for n in counts) >= need (counts: one slot's calls of each
    kind), at most a few calls late.

    need / total is exact when the kinds' floors line up; otherwise (need + kinds) / total is
    enough, because floor(y) > y - 1 for each kind.
    """
    total = sum(counts)
    x = need / total
    reached = 0
    for n in counts:
        reached += int(n * x)
    if reached >= need:
        return x
    return min(1.0, (need + sum(1 for n in counts if n)) / total)
