"""Surrogates: the scikit-learn estimator contract and the accuracy check (healthy vs starved)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from tuner._surrogate import Accuracy, ForestSurrogate, GPSurrogate, exact_metric, fit_metric


def _policies(ns, layout="per-cpu"):
    return [{"n_per_cpu": n, "layout": layout, "shared_reserve_pages": 0, "refill_delay_ms": 5000,
             "refill_low_watermark": 0, "prealloc_at_boot": False, "emergency_reserve_fraction": 0.0} for n in ns]


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
