"""One metric's surrogate: the better of the two estimators, its predictive intervals, its measured accuracy.

`fit_metric` cross-validates `GPSurrogate` and `ForestSurrogate` by trial on one metric and keeps the
better, with its accuracy (CV R², rank correlation, 90 % interval coverage).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import GroupKFold

from ._estimators import FEATURES, ForestSurrogate, GPSurrogate, policy_features

MIN_R2 = 0.8
COVERAGE_RANGE = (0.80, 0.97)
"""Coverage of the nominal 90 % interval: below 80 % the intervals are too narrow (overconfident) and
the surrogate may not decide; above 97 % too wide, which only makes P(SLOs met) cautious (the mean,
which the cost uses, is judged by R²): reported as wide, not refused."""
INTERVAL_LEVEL = 0.90
Z90 = float(stats.norm.ppf(0.5 + INTERVAL_LEVEL / 2))
# Ten folds, not five: a regime that only two or three trials show (a step in N at the top of the
# design) must keep one of them in training when another is held out.
CV_FOLDS = 10


def intervals_wide(coverage: float | None) -> bool:
    """Intervals wider than nominal: cautious, not wrong (see COVERAGE_RANGE)."""
    return coverage is not None and coverage > COVERAGE_RANGE[1]


@dataclass(frozen=True)
class Accuracy:
    """Cross-validated accuracy of one surrogate (on the transformed target)."""

    estimator: str
    n_trials: int
    cv_r2: float | None
    rank_correlation: float | None
    coverage: float | None
    decisive: bool = True  # False: the metric cannot change the recommendation (see `fit_metric`)
    noise_limited: bool = False  # trial means indistinguishable within replication noise: R² is not meaningful
    # False: what the estimator predicts (the policies that cache pages) spans less than the practical
    # threshold, so its errors cannot change the answer; the metric may still decide through the
    # regimes measured directly (N = 0, see `no_cache_key`).
    estimator_decides: bool = True
    # True: a constraint whose predictions over the candidates span less than its practical threshold:
    # the order among them cannot matter, only whether the band is under the SLO, which the interval
    # (its coverage) judges; R² is not required.
    narrow: bool = False
    # CV R² of the variance between trial means that replication noise does not account for (see
    # `explainable_r2`); None when the replications cannot measure that noise. Judged instead of
    # `cv_r2`: a trial mean over a few seeds of a metric whose runs split into two outcomes (a chain
    # reaction or none) is noisy itself, and no model, however right, predicts the noise.
    explainable_r2: float | None = None
    # Root mean square of the out-of-fold errors of trial means (log scale): how far a predicted mean
    # may be from the policy's true mean. An objective is decided by its means, not by single runs.
    mean_error: float | None = None

    @property
    def judged_r2(self) -> float | None:
        """The R² the accuracy check uses: of the explainable variance where it is measured."""
        return self.cv_r2 if self.explainable_r2 is None else self.explainable_r2

    @property
    def healthy(self) -> bool:
        if self.cv_r2 is None or not self.decisive or not self.estimator_decides:
            return True  # constant, exact, or its model too flat to decide anything
        covered = self.coverage is not None and self.coverage >= COVERAGE_RANGE[0]
        if self.noise_limited or self.narrow:  # only the calibration of its interval matters
            return covered
        return self.judged_r2 >= MIN_R2 and covered

    @property
    def wide(self) -> bool:
        return intervals_wide(self.coverage)

    def problem(self) -> str | None:
        """Why the surrogate is unhealthy, in a few words; None when healthy."""
        if self.healthy:
            return None
        if self.judged_r2 < MIN_R2 and not (self.noise_limited or self.narrow):
            if self.explainable_r2 is None:
                return f"CV R² {self.cv_r2:.2f} < {MIN_R2}"
            return f"CV R² {self.explainable_r2:.2f} of the variance beyond replication noise < {MIN_R2}"
        return f"90% interval coverage {self.coverage:.1%} < {COVERAGE_RANGE[0]:.0%}"


def no_cache_key(policy: Mapping[str, Any]) -> tuple[str, float] | None:
    """The regime key of a policy that caches no page at all (N = 0, no hybrid reserve), else None.

    With no cache every block comes from the page allocator: a regime of its own that no smooth model
    bridges from N >= 1 (there is no N between 0 and 1 to sample). The refill knobs do nothing there;
    the emergency reserve still decides whether an allocation may dip below the watermarks.
    """
    if int(policy["n_per_cpu"]) == 0 and not (policy["layout"] == "hybrid" and policy.get("shared_reserve_pages", 0)):
        return ("no-cache", float(policy.get("emergency_reserve_fraction", 0.0)))
    return None


@dataclass(frozen=True)
class MetricSurrogate:
    """A fitted model of one metric of one workload: log-transformed target, predictive normal.

    Policies that cache nothing are not predicted by the estimator: `observed` holds the mean and
    standard deviation (log scale) of their replicated simulations, and the estimator is fitted and
    cross-validated on the policies with a cache. A metric that every policy reproduces seed by seed
    (`per_seed`) is predicted by its per-seed values, the same for every policy.
    """

    metric: str
    estimator: Any  # fitted GPSurrogate / ForestSurrogate, or None for a constant or exact target
    constant: float | None
    accuracy: Accuracy
    columns: tuple[int, ...] = ()  # the feature columns the estimator uses (those that varied)
    exact: Callable[[Mapping[str, Any]], float] | None = None  # a metric known in closed form
    offset: float = 1.0  # the model sees log(value + offset)
    per_seed: tuple[float, ...] = ()  # seed-determined metric: its value on each common seed
    observed: Mapping[tuple[str, float], tuple[float, float]] = field(default_factory=dict)  # no-cache regimes
    scale: float = 1.0  # transfer to another CPU count: the metric's values are multiplied by this

    def predict(self, policies: Sequence[Mapping[str, Any]], widen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation on the log(value + offset) scale."""
        if self.exact is not None:
            return np.log(np.array([self.exact(p) for p in policies], dtype=float) + self.offset), np.full(
                len(policies), 1e-9
            )
        if self.per_seed:
            z = np.log(np.array(self.per_seed) + self.offset)
            return np.full(len(policies), float(z.mean())), np.full(len(policies), max(float(z.std()), 1e-9) * widen)
        mean = np.empty(len(policies))
        std = np.empty(len(policies))
        keys = [no_cache_key(p) for p in policies]
        modelled = [i for i, k in enumerate(keys) if k not in self.observed]
        for i, k in enumerate(keys):
            if k in self.observed:
                mean[i], std[i] = self.observed[k]
        if modelled:
            if self.estimator is None:
                mean[modelled] = math.log(max(self.constant or 0.0, 0.0) + self.offset)
                std[modelled] = 1e-9
            else:
                X = policy_features([policies[i] for i in modelled])[:, list(self.columns)]
                mean[modelled], std[modelled] = self.estimator.predict(X, return_std=True)
        if self.scale != 1.0:  # log(k (e^z - offset) + offset): the same quantity, k times larger
            mean = np.log(self.scale * np.maximum(np.exp(mean) - self.offset, 0.0) + self.offset)
        return mean, std * widen

    def interval(
        self, policies: Sequence[Mapping[str, Any]], widen: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Median prediction and the 90% interval, on the metric's own scale."""
        mean, std = self.predict(policies, widen)
        return self._on_scale(mean, std)

    def _on_scale(self, mean: np.ndarray, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A log-scale prediction and its 90% bounds back on the metric's own scale."""
        back = lambda z: np.exp(z) - self.offset  # noqa: E731
        return back(mean), back(mean - Z90 * spread), back(mean + Z90 * spread)

    def mean_interval(self, policies: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted mean and its 90 % interval (the model's error of a trial mean, `Accuracy.mean_error`),
        on the metric's own scale: what an objective, which compares means, can differ by. Replication
        noise, which a single run adds, is not in it; where the error is unmeasured, `interval`."""
        error = self.accuracy.mean_error
        if error is None or self.estimator is None:
            return self.interval(policies)
        mean, std = self.predict(policies)
        keys = [no_cache_key(p) for p in policies]
        spread = np.array([std[i] if k in self.observed else error for i, k in enumerate(keys)])
        return self._on_scale(mean, spread)

    def prob_at_most(self, policies: Sequence[Mapping[str, Any]], limit: float, widen: float = 1.0) -> np.ndarray:
        """P(metric <= limit) under the predictive distribution."""
        if self.per_seed:  # the same for every policy: the share of seeds on which it held
            return np.full(len(policies), float(np.mean(np.array(self.per_seed) <= limit)))
        if limit < 0:
            return np.zeros(len(policies))
        mean, std = self.predict(policies, widen)
        return stats.norm.cdf((math.log(limit + self.offset) - mean) / std)


def describe(s: MetricSurrogate) -> dict[str, Any]:
    """What it takes to rebuild a fitted surrogate: estimator, hyper-parameters (for a GP, the fitted
    kernel), features, target transform, and the no-cache and per-seed values it predicts from."""
    out: dict[str, Any] = {
        "estimator": s.accuracy.estimator,
        "target": "log(value + offset)",
        "offset": s.offset,
        "features": [FEATURES[c] for c in s.columns] if s.estimator is not None else [],
    }
    if s.estimator is not None:
        out["params"] = s.estimator.get_params()
        if isinstance(s.estimator, GPSurrogate):
            out["fitted_kernel"] = str(s.estimator.model_.kernel_)
        else:
            out["residual_var"] = s.estimator.residual_var_
    if s.constant is not None:
        out["constant"] = s.constant
    if s.per_seed:
        out["per_seed"] = list(s.per_seed)
    if s.observed:
        out["observed"] = {
            f"{k[0]} (emergency_reserve_fraction={k[1]:g})": {"mean": m, "std": sd} for k, (m, sd) in s.observed.items()
        }
    return out


def out_of_fold(
    estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = CV_FOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictive mean and standard deviation of every row; a trial's replications stay
    in one fold, so each is the prediction of an unseen policy."""
    k = max(2, min(folds, len(set(groups.tolist()))))
    mean = np.empty_like(y)
    std = np.empty_like(y)
    for train, test in GroupKFold(k).split(X, y, groups):
        model = clone(estimator).fit(X[train], y[train], groups=groups[train])
        mean[test], std[test] = model.predict(X[test], return_std=True)
    return mean, std


def trial_means(
    y: np.ndarray, mean: np.ndarray, groups: np.ndarray, common: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Observed and predicted mean of each trial over the rows in `common` (all rows when None)."""
    use = np.ones(len(y), dtype=bool) if common is None or not np.any(common) else np.asarray(common, dtype=bool)
    trials = sorted(set(groups[use].tolist()))
    y_mean = np.array([y[use & (groups == g)].mean() for g in trials])
    p_mean = np.array([mean[use & (groups == g)].mean() for g in trials])
    return y_mean, p_mean


def score(
    y: np.ndarray, mean: np.ndarray, std: np.ndarray, groups: np.ndarray, common: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(R², Spearman rank correlation, 90% interval coverage) of predictions. R² and rank correlation
    compare trial means over the rows in `common` (the seeds every trial ran: under common random
    numbers a raced trial's extra seeds would shift its mean by their own luck); coverage counts
    single replications inside the 90% interval."""
    y_mean, p_mean = trial_means(y, mean, groups, common)
    ss = float(np.sum((y_mean - y_mean.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y_mean - p_mean) ** 2)) / ss if ss > 0 else 0.0
    rho = stats.spearmanr(y_mean, p_mean).statistic if np.ptp(p_mean) > 0 and np.ptp(y_mean) > 0 else 0.0
    coverage = float(np.mean(np.abs(y - mean) <= Z90 * std))
    return r2, float(0.0 if not np.isfinite(rho) else rho), coverage


def explainable_r2(y_mean: np.ndarray, p_mean: np.ndarray, noise: float) -> float | None:
    """CV R² against the noise ceiling: the share of the variance between trial means (`y_mean`, as
    `trial_means` gives them with their out-of-fold predictions `p_mean`) that is not replication
    noise which the predictions explain.

    `noise` is the variance one trial mean owes to replication noise (`mean_noise_variance`). Of the
    observed sum of squares about the grand mean, (a - 1) noise is expected from noise alone; of the
    residual sum of squares of out-of-fold predictions, a noise (a: trials). With no noise this is
    the CV R²; None when noise accounts for all the variance (nothing left to explain).
    """
    a = len(y_mean)
    explainable = float(np.sum((y_mean - y_mean.mean()) ** 2)) - (a - 1) * noise
    if a < 3 or explainable <= 0:
        return None
    missed = max(float(np.sum((y_mean - p_mean) ** 2)) - a * noise, 0.0)
    return 1.0 - missed / explainable


def cross_validate(
    estimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = CV_FOLDS, common: np.ndarray | None = None
) -> tuple[float, float, float]:
    """`score` of the `out_of_fold` predictions: the accuracy of predicting an unseen policy."""
    mean, std = out_of_fold(estimator, X, y, groups, folds)
    return score(y, mean, std, groups, common)


def common_seed_rows(groups: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
    """Rows whose seed every trial ran (the base seeds of common random numbers)."""
    g, s = np.asarray(groups), np.asarray(seeds)
    shared = set.intersection(*[set(s[g == x].tolist()) for x in np.unique(g)])
    return np.isin(s, sorted(shared))


def seed_determined(values: np.ndarray, groups: np.ndarray, seeds: np.ndarray) -> bool:
    """True when, on every seed all trials ran (at least two), every trial saw the same value: under
    common random numbers the policy then has no effect on the metric (e.g. an OOM kill the
    workload's own memory storm causes whatever the cache does)."""
    common = common_seed_rows(groups, seeds)
    shared = np.unique(seeds[common])
    if len(shared) < 2 or len(np.unique(groups)) < 3:
        return False
    return all(np.ptp(values[common & (seeds == s)]) == 0 for s in shared)


def fit_metric(
    metric: str,
    policies: Sequence[Mapping[str, Any]],
    values: Sequence[float],
    groups: Sequence[int] | None = None,
    *,
    decisive: bool = True,
    candidates: Sequence[Any] | None = None,
    seeds: Sequence[int] | None = None,
) -> MetricSurrogate:
    """Fit each candidate estimator to log(values + offset), keep the one with the best CV R² (coverage breaks ties).

    Args:
        policies, values: one row per replication (or per trial).
        groups: the trial of each row (rows of one trial are never split across folds).
        decisive: False when the metric cannot change the recommendation (e.g. every value far below
            its SLO); its accuracy is still measured and stored but does not make the surrogate unhealthy.
        seeds: the seed of each row; with it, R² compares trial means over the seeds every trial ran,
            and a metric that every policy reproduces exactly seed by seed is modelled by its
            per-seed values (`Accuracy.estimator == "seed-determined"`).
    """
    y_raw = np.maximum(np.asarray(values, dtype=float), 0.0)
    # A log scale relative to the metric's own size: small values (fallback costs of 0.03 ms/s) keep
    # their ratios instead of vanishing under log1p.
    positive = y_raw[y_raw > 0]
    offset = float(max(0.05 * np.median(positive), 1e-9)) if positive.size else 1.0
    y = np.log(y_raw + offset)
    g = np.arange(len(y)) if groups is None else np.asarray(groups)
    n_trials = len(set(g.tolist()))
    if np.ptp(y) <= 1e-9 * max(1.0, abs(float(y.mean()))):
        return MetricSurrogate(metric, None, float(y_raw.mean()), Accuracy("constant", n_trials, None, None, None))
    s = None if seeds is None else np.asarray(seeds)
    if s is not None and seed_determined(y_raw, g, s):
        common = common_seed_rows(g, s)
        per_seed = tuple(float(y_raw[common & (s == x)][0]) for x in np.unique(s[common]))
        return MetricSurrogate(
            metric,
            None,
            None,
            Accuracy("seed-determined", n_trials, None, None, None, False),
            offset=offset,
            per_seed=per_seed,
        )
    X_all = policy_features(policies)
    columns = tuple(int(c) for c in np.flatnonzero(np.ptp(X_all, axis=0) > 0)) or (0,)
    X = X_all[:, list(columns)]
    common = None if s is None else common_seed_rows(g, s)
    judged = (y, g) if common is None else (y[common], g[common], s[common])
    noise_limited = flat_within_noise(*judged)
    noise = mean_noise_variance(*judged)
    best = None
    for estimator in candidates or (GPSurrogate(), ForestSurrogate()):
        mean, std = out_of_fold(estimator, X, y, g)
        r2, rho, coverage = score(y, mean, std, g, common)
        y_mean, p_mean = trial_means(y, mean, g, common)
        explained = None if noise is None or noise_limited else explainable_r2(y_mean, p_mean, noise)
        candidate = Accuracy(
            type(estimator).__name__,
            n_trials,
            r2,
            rho,
            coverage,
            decisive,
            noise_limited,
            explainable_r2=explained,
            mean_error=float(np.sqrt(np.mean((y_mean - p_mean) ** 2))),
        )
        # a healthy model first, then the better judged R², then the coverage nearer nominal
        key = (candidate.healthy, round(candidate.judged_r2, 3), -abs(coverage - INTERVAL_LEVEL))
        if best is None or key > best[0]:
            best = (key, estimator, candidate)
    _, estimator, accuracy = best  # type: ignore[misc]
    return MetricSurrogate(metric, clone(estimator).fit(X, y, groups=g), None, accuracy, columns, offset=offset)


def _block_table(y: np.ndarray, groups: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Trials x seeds table of mean values over the seeds every trial ran (a randomised complete block
    design, the seed being the block)."""
    trials = sorted(set(groups.tolist()))
    blocks = sorted(set(seeds.tolist()))
    table = np.full((len(trials), len(blocks)), np.nan)
    for i, t in enumerate(trials):
        for j, b in enumerate(blocks):
            cell = y[(groups == t) & (seeds == b)]
            if cell.size:
                table[i, j] = cell.mean()
    return table[:, ~np.isnan(table).any(axis=0)]


def _interaction(table: np.ndarray) -> tuple[float, float]:
    """(sum of squares between trials, sum of squares of the trial x seed interaction) of a block table."""
    b = table.shape[1]
    grand = table.mean()
    ss_trials = b * float(np.sum((table.mean(axis=1) - grand) ** 2))
    residual = table - table.mean(axis=1, keepdims=True) - table.mean(axis=0, keepdims=True) + grand
    return ss_trials, float(np.sum(residual**2))


def mean_noise_variance(y: np.ndarray, groups: np.ndarray, seeds: np.ndarray | None = None) -> float | None:
    """The variance a trial mean owes to replication noise; None when the replications cannot tell.

    With seeds (common random numbers) the noise is the trial x seed interaction of the block table: a
    seed harsh for every policy shifts every trial mean alike and costs no accuracy. Without seeds, the
    pooled variance within trials over their mean replication count.
    """
    if seeds is not None:
        table = _block_table(y, groups, seeds)
        a, b = table.shape
        if a < 3 or b < 2:
            return None
        return _interaction(table)[1] / ((a - 1) * (b - 1)) / b
    samples = [y[groups == g] for g in sorted(set(groups.tolist()))]
    df = sum(len(x) - 1 for x in samples)
    if df < 1:
        return None
    pooled = sum(float(np.sum((x - x.mean()) ** 2)) for x in samples) / df
    return pooled * float(np.mean([1.0 / len(x) for x in samples]))


def flat_within_noise(y: np.ndarray, groups: np.ndarray, seeds: np.ndarray | None = None) -> bool:
    """True when an ANOVA over trials cannot tell the trial means apart (p > 0.05).

    With the seed of each row (common random numbers: every trial ran the same seeds) the test is
    the two-way ANOVA of a randomised complete block design, the seed being the block: a seed that is
    harsh for every policy is not mistaken for noise between policies. Without seeds, one-way.
    """
    if seeds is not None:
        table = _block_table(y, groups, seeds)
        a, b = table.shape
        if a < 3 or b < 2:
            return False
        ss_trials, ss_error = _interaction(table)
        if ss_error <= 1e-12 * max(ss_trials, 1e-300):
            return ss_trials <= 1e-12  # no noise left: any difference between trials is real
        p = stats.f.sf((ss_trials / (a - 1)) / (ss_error / ((a - 1) * (b - 1))), a - 1, (a - 1) * (b - 1))
        return bool(np.isfinite(p) and p > 0.05)
    trials = sorted(set(groups.tolist()))
    samples = [y[groups == g] for g in trials]
    samples = [x for x in samples if len(x) >= 2]
    if len(samples) < 3 or all(np.ptp(x) == 0 for x in samples):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = stats.f_oneway(*samples).pvalue
    return bool(np.isfinite(p) and p > 0.05)


def exact_metric(
    metric: str,
    formula: Callable[[Mapping[str, Any]], float],
    policies: Sequence[Mapping[str, Any]],
    values: Sequence[float],
    n_trials: int | None = None,
) -> MetricSurrogate:
    """A metric known in closed form (reserved memory); its accuracy is checked against the observed values."""
    predicted = np.array([formula(p) for p in policies], dtype=float)
    observed = np.asarray(values, dtype=float)
    ss = float(np.sum((observed - observed.mean()) ** 2))
    r2 = 1.0 - float(np.sum((observed - predicted) ** 2)) / ss if ss > 0 else 1.0
    exact = bool(np.allclose(predicted, observed, rtol=1e-9, atol=1e-12))
    rho = stats.spearmanr(observed, predicted).statistic if np.ptp(predicted) > 0 and np.ptp(observed) > 0 else 1.0
    return MetricSurrogate(
        metric,
        None,
        None,
        Accuracy(
            "exact" if exact else "formula (mismatch)",
            n_trials or len(observed),
            r2,
            float(rho),
            1.0 if exact else 0.0,
            not exact,
        ),
        exact=formula,
    )
