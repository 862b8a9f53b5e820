"""Surrogates: the scikit-learn estimator contract and the accuracy check (healthy vs starved)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from rcutune.tuner.surrogate import Accuracy, ForestSurrogate, GPSurrogate, exact_metric, fit_metric


def _policies(ns, layout="per-cpu"):
    return [
        {
            "n_per_cpu": n,
            "layout": layout,
            "shared_reserve_pages": 0,
            "refill_delay_ms": 5000,
            "refill_low_watermark": 0,
            "prealloc_at_boot": False,
            "emergency_reserve_fraction": 0.0,
        }
        for n in ns
    ]


@pytest.mark.parametrize("estimator", [GPSurrogate(), ForestSurrogate(n_estimators=30)])
def test_surrogates_follow_the_estimator_contract(estimator):
    X = np.random.default_rng(0).uniform(size=(20, 3))
    y = X[:, 0] * 2 + X[:, 1]
    assert estimator.get_params() == clone(estimator).get_params()
    assert not [k for k in vars(estimator) if k.endswith("_")], "no learned state before fit"
    assert estimator.fit(X, y) is estimator
    mean, std = estimator.predict(X, return_std=True)
    assert mean.shape == std.shape == (20,) and np.all(std > 0)
    assert np.allclose(estimator.predict(X), mean)
    assert np.isfinite(cross_val_score(clone(estimator), X, y, cv=3)).all()


@pytest.mark.slow
def test_a_well_sampled_smooth_metric_gets_a_healthy_surrogate():
    rng = np.random.default_rng(1)
    ns = list(range(0, 64, 2))
    policies, values, groups = [], [], []
    for i, n in enumerate(ns):
        for _ in range(3):
            policies += _policies([n])
            values.append(10.0 / (1 + n) * np.exp(rng.normal(0, 0.05)))
            groups.append(i)
    s = fit_metric("fallback_cost", policies, values, groups)
    assert s.accuracy.healthy, s.accuracy
    assert s.accuracy.cv_r2 >= 0.8 and 0.8 <= s.accuracy.coverage <= 0.97


def test_a_starved_noisy_study_gets_an_unhealthy_surrogate_that_says_why():
    rng = np.random.default_rng(2)
    policies = _policies([0, 5, 9, 30])
    values = rng.exponential(1.0, size=4)
    s = fit_metric("fallback_cost", policies, values)
    assert not s.accuracy.healthy
    assert "R²" in s.accuracy.problem() or "coverage" in s.accuracy.problem()


def test_a_metric_far_from_deciding_anything_is_not_required_to_be_accurate():
    a = Accuracy("ForestSurrogate", 8, cv_r2=-0.5, rank_correlation=0.0, coverage=1.0, decisive=False)
    assert a.healthy and a.problem() is None


def test_a_constant_metric_is_predicted_exactly_and_its_probability_is_certain():
    s = fit_metric("oom_events", _policies([0, 5, 9]), [0.0, 0.0, 0.0])
    assert s.accuracy.healthy
    assert list(s.prob_at_most(_policies([3]), 0.5)) == [1.0]


def test_reserved_memory_is_exact_and_checked_against_the_observations():
    formula = lambda p: p["n_per_cpu"] * 8 * 4096 / 2**20  # noqa: E731
    good = exact_metric("reserved_mib", formula, _policies([1, 2]), [8 * 4096 / 2**20, 16 * 4096 / 2**20])
    bad = exact_metric("reserved_mib", formula, _policies([1, 2]), [1.0, 1.0])
    assert good.accuracy.healthy and not bad.accuracy.healthy


def _rows(ns, values_per_trial, **policy):
    """Rows of replications: one trial per N, its values on seeds 0, 1, ..."""
    policies, values, groups, seeds = [], [], [], []
    for i, (n, vs) in enumerate(zip(ns, values_per_trial)):
        for s, v in enumerate(vs):
            policies += [dict(_policies([n])[0], **policy)]
            values.append(v)
            groups.append(i)
            seeds.append(s)
    return policies, values, groups, seeds


def test_the_forest_interval_holds_the_error_of_an_unseen_policy_not_only_replication_noise():
    # A saw-tooth in N with almost no replication noise: a row-level bootstrap would leave a trial's
    # twin replication in the bag of every "out-of-bag" tree and give an interval that misses.
    rng = np.random.default_rng(3)
    ns = list(range(1, 60, 2))
    values = [[2.0 + (n % 16) / 4 + rng.normal(0, 0.01) for _ in range(2)] for n in ns]
    policies, y, groups, _ = _rows(ns, values)
    from rcutune.tuner.surrogate import cross_validate, policy_features

    X = policy_features(policies)[:, :1]
    _, _, coverage = cross_validate(ForestSurrogate(), X, np.log(np.array(y)), np.array(groups))
    assert coverage >= 0.8


def test_a_metric_every_policy_reproduces_seed_by_seed_is_seed_determined():
    # The workload's own OOM kill: on seed 1 every policy sees it, on seed 0 none does.
    policies, values, groups, seeds = _rows([1, 2, 4, 8, 16], [[0.0, 1.0]] * 5)
    s = fit_metric("oom_events", policies, values, groups, seeds=seeds)
    assert s.accuracy.estimator == "seed-determined" and s.accuracy.healthy and not s.accuracy.decisive
    assert list(s.prob_at_most(_policies([3, 100]), 0.5)) == [0.5, 0.5]


def test_a_difference_every_seed_agrees_on_is_not_taken_for_noise():
    # Seeds differ by a factor of 100, policies by 10 % on every seed: a one-way ANOVA drowns the
    # policy effect in the seed effect; the randomised-block ANOVA of common random numbers does not.
    from rcutune.tuner.surrogate import flat_within_noise

    ns = [1, 2, 4, 8, 16, 32]
    values = [[1.0 * (1 + 0.1 * i), 100.0 * (1 + 0.1 * i)] for i in range(len(ns))]
    _, y, groups, seeds = _rows(ns, values)
    y, groups, seeds = np.log(y), np.array(groups), np.array(seeds)
    assert flat_within_noise(y, groups) is True
    assert flat_within_noise(y, groups, seeds) is False


def test_an_emergency_reserve_that_switches_a_stall_off_is_fitted_as_a_switch():
    # Off (0, the stock kernel) stalls, any reserve at all does not: a step, not a slope.
    rng = np.random.default_rng(4)
    policies, values, groups = [], [], []
    for i in range(24):
        fraction = 0.0 if i % 3 == 0 else float(rng.choice([0.025, 0.1, 0.3, 0.5]))
        n = int(rng.integers(1, 128))
        for _ in range(2):
            policies.append(dict(_policies([n])[0], emergency_reserve_fraction=fraction))
            values.append((40.0 if fraction == 0 else 0.02) * np.exp(rng.normal(0, 0.05)))
            groups.append(i)
    s = fit_metric("fallback_cost", policies, values, groups)
    assert s.accuracy.healthy, s.accuracy


def test_a_policy_with_no_cache_is_predicted_from_its_own_replications():
    from dataclasses import replace

    from rcutune.tuner.surrogate import no_cache_key

    s = fit_metric("fallback_cost", _policies([1, 2, 4, 8, 16, 32]), [1.0, 0.9, 0.8, 0.8, 0.8, 0.8])
    s = replace(s, observed={no_cache_key(_policies([0])[0]): (float(np.log(6.0 + s.offset)), 0.01)})
    mid, _, _ = s.interval(_policies([0]))
    assert mid[0] == pytest.approx(6.0, rel=1e-6)
    assert no_cache_key(_policies([1])[0]) is None
    assert no_cache_key(dict(_policies([0])[0], layout="hybrid", shared_reserve_pages=8)) is None


def _block_design(rng, means, noise_sd, seeds=2, seed_effect=3.0):
    """Rows of a randomised complete block design: trial i's value on seed j is its mean, plus a seed
    effect every trial shares, plus its own noise (standard deviation per trial)."""
    shift = rng.normal(0, seed_effect, seeds)
    y = np.concatenate([m + shift + rng.normal(0, sd, seeds) for m, sd in zip(means, noise_sd)])
    groups = np.repeat(np.arange(len(means)), seeds)
    return y, groups, np.tile(np.arange(seeds), len(means))


def test_the_replication_noise_of_a_trial_mean_is_measured_without_the_seed_effect():
    # 60 trials x 2 seeds, half of them noisy (sd 2), half quiet (sd 0.1), and seed effects of sd 3
    # that every trial shares. Averaged over 300 designs the estimate must be within 5 % of the true
    # mean variance of a trial mean (mean of sd^2 / 2); the seed effect must not leak into it.
    from rcutune.tuner.surrogate import mean_noise_variance

    sd = np.array([2.0, 0.1] * 30)
    truth = float(np.mean(sd**2) / 2)
    rng = np.random.default_rng(11)
    estimates = [mean_noise_variance(*_block_design(rng, np.zeros(60), sd)) for _ in range(300)]
    assert abs(np.mean(estimates) / truth - 1) <= 0.05, (np.mean(estimates), truth)


def test_the_r2_beyond_noise_credits_a_right_model_that_noisy_trial_means_cap():
    # A policy effect (a step) plus heteroscedastic noise that makes trial means over two seeds noisy
    # themselves: the true means as predictions have a CV R² well below 0.8, but explain the variance
    # beyond replication noise; a constant explains none of it. 200 designs, fixed seed. The noise is
    # estimated from 12 noisy trials, so the R² beyond noise itself varies (10 % quantile about 0.79):
    # the tolerances are on shares of designs passing the 0.8 check.
    from rcutune.tuner.surrogate import explainable_r2, mean_noise_variance
    from rcutune.tuner.surrogate._fit import score, trial_means

    means = np.array([4.0] * 12 + [0.0] * 48)
    sd = np.array([3.0] * 12 + [0.05] * 48)
    rng = np.random.default_rng(12)
    raw, right, constant = [], [], []
    for _ in range(200):
        y, groups, seeds = _block_design(rng, means, sd)
        noise = mean_noise_variance(y, groups, seeds)
        truth = means[groups] + (y.mean() - means.mean())
        raw.append(score(y, truth, np.ones_like(y), groups)[0])
        right.append(explainable_r2(*trial_means(y, truth, groups, None), noise))
        constant.append(explainable_r2(*trial_means(y, np.full_like(y, y.mean()), groups, None), noise))
    passing = lambda r2: float(np.mean(np.array(r2) >= 0.8))  # noqa: E731
    assert np.median(raw) < 0.8 and passing(raw) <= 0.5
    assert np.median(right) >= 0.95 and passing(right) >= 0.85
    assert np.quantile(constant, 0.9) <= 0.1


def test_a_metric_whose_runs_split_into_two_outcomes_is_judged_beyond_its_replication_noise():
    # The chain-reaction workload's fallback cost: below N=4 each run either starts a chain reaction
    # (tens of ms/s) or does not (0.02 ms/s), seed by seed; from N=4 on it never does. The trial means
    # over two seeds are noisy themselves, so their CV R² stays low, yet the step is modelled.
    rng = np.random.default_rng(13)
    ns = [1, 2, 3, 1, 2, 3, 2, 1, 3, 2, *range(4, 64, 2)]
    values = [
        [float(rng.lognormal(np.log(50), 0.5)) if n < 4 and rng.random() < 0.6 else 0.019 for _ in range(2)] for n in ns
    ]
    policies, y, groups, seeds = _rows(ns, values)
    s = fit_metric("fallback_cost", policies, y, groups, seeds=seeds)
    assert s.accuracy.cv_r2 < 0.8 <= s.accuracy.explainable_r2, s.accuracy
    assert s.accuracy.healthy and s.accuracy.problem() is None
    low, high = np.exp(s.predict(_policies([2, 40]))[0]) - s.offset
    assert low > 1.0 and high < 0.05


@pytest.mark.parametrize("estimator", [GPSurrogate, ForestSurrogate])
def test_the_interval_carries_each_policys_own_replication_noise(estimator):
    # Below N=8 runs split into two outcomes seed by seed (0 or 4 on the log scale); from N=8 on they
    # barely vary (sd 0.02). One pooled noise gives both regimes the same width: the noisy policies'
    # interval too narrow, the quiet ones' too wide. The policy's own noise (out of fold, 3 seeds per
    # trial, fixed seed; seeds 15 and 16 give 0.83-1.00 and ratios above 3) covers both at >= 80 % and
    # makes the quiet interval at least 2.5 times narrower than the noisy one.
    from rcutune.tuner.surrogate import policy_features
    from rcutune.tuner.surrogate._fit import Z90, out_of_fold

    rng = np.random.default_rng(14)
    ns = [int(round(n)) for n in np.exp(rng.uniform(0, np.log(64), 48))]  # about half below 8
    rows = [(n, (4.0 if rng.random() < 0.5 else 0.0) if n < 8 else rng.normal(0, 0.02)) for n in ns for _ in range(3)]
    X = policy_features(_policies([n for n, _ in rows]))[:, :1]
    y = np.array([v for _, v in rows])
    groups = np.repeat(np.arange(len(ns)), 3)
    noisy = X[:, 0] < np.log1p(8)
    mean, std = out_of_fold(estimator(policy_noise=False), X, y, groups)
    assert np.median(std[noisy]) < 1.2 * np.median(std[~noisy]), "pooled: one width for both"
    mean, std = out_of_fold(estimator(), X, y, groups)
    inside = np.abs(y - mean) <= Z90 * std
    assert inside[noisy].mean() >= 0.8 and inside[~noisy].mean() >= 0.8
    assert np.median(std[~noisy]) * 2.5 <= np.median(std[noisy])
