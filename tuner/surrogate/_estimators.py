"""The regressors behind the surrogates, both following the scikit-learn estimator contract.

Settings in `__init__`, `fit` returns self, learned state in `*_` attributes, and
`predict(X, return_std=True)` gives a predictive standard deviation: `GPSurrogate` (Matern +
WhiteKernel, normalised targets) and `ForestSurrogate` (trees bootstrapped by trial). Both let the
replication noise in that deviation depend on the policy (`ReplicationNoise`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.tree import DecisionTreeRegressor

FEATURES = (
    "log_n_per_cpu",
    "layout_global",
    "layout_hybrid",
    "shared_reserve_pages",
    "log_refill_delay_ms",
    "refill_low_watermark",
    "prealloc_at_boot",
    "emergency_reserve_fraction",
    "emergency_reserve_on",
    "refill_low_watermark_on",
)


def policy_features(policies: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The numeric feature matrix of policies (dicts of `sim.Policy` fields), columns as `FEATURES`."""
    rows = []
    for p in policies:
        rows.append(
            [
                math.log1p(float(p["n_per_cpu"])),
                1.0 if p["layout"] == "global" else 0.0,
                1.0 if p["layout"] == "hybrid" else 0.0,
                math.log1p(float(p.get("shared_reserve_pages", 0))),
                math.log1p(float(p.get("refill_delay_ms", 5000))),
                float(p.get("refill_low_watermark", 0)) / max(1.0, float(p["n_per_cpu"])),
                1.0 if p.get("prealloc_at_boot") else 0.0,
                float(p.get("emergency_reserve_fraction", 0.0)),
                # Off (0, the stock kernel) and on are different mechanisms, not two ends of a scale: a
                # metric may step between them, which a smooth model only fits with the switch as a feature.
                1.0 if float(p.get("emergency_reserve_fraction", 0.0)) > 0 else 0.0,
                1.0 if int(p.get("refill_low_watermark", 0)) > 0 else 0.0,
            ]
        )
    return np.asarray(rows, dtype=float)


class ReplicationNoise:
    """The variance of one replication about its policy's mean, as a function of the policy.

    Both estimators' spreads hold one pooled replication noise (the GP's white noise, the forest's
    out-of-bag residual). Where runs of some policies split into two outcomes (a chain reaction or
    none, seed by seed) and runs of others never vary, one pooled noise makes the interval too narrow
    for the first and too wide for the second. Fitted to each trial's sample variance over its
    replications (trees of at least `min_trials_leaf` trials average those one-degree-of-freedom
    estimates), it replaces the pooled noise in the predictive variance: model error + noise(policy).
    A single replication per trial leaves it pooled (`fitted` is False).
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, groups: np.ndarray, min_trials_leaf: int = 3, seed: int = 0):
        labels = [g for g in np.unique(groups) if np.sum(groups == g) >= 2]
        self.fitted = len(labels) >= 2 * min_trials_leaf
        if not self.fitted:
            return
        X_trial = np.array([X[groups == g][0] for g in labels], dtype=np.float32)
        variance = np.array([np.var(y[groups == g], ddof=1) for g in labels])
        self.pooled = float(variance.mean())
        rng = np.random.default_rng(seed)
        self.trees = []
        for _ in range(30):
            draw = rng.integers(0, len(labels), len(labels))
            tree = DecisionTreeRegressor(min_samples_leaf=min_trials_leaf, random_state=int(rng.integers(2**31 - 1)))
            self.trees.append(tree.fit(X_trial[draw], variance[draw], check_input=False))

    def variance(self, X: np.ndarray, variance: np.ndarray, pooled_noise: float | None = None) -> np.ndarray:
        """A predictive `variance` that holds one pooled noise (`pooled_noise`, by default the mean of
        the trials' own) with the policy's own noise instead of it."""
        if not self.fitted:
            return variance
        X = np.ascontiguousarray(X, dtype=np.float32)
        local = np.mean([t.predict(X, check_input=False) for t in self.trees], axis=0)
        pooled = self.pooled if pooled_noise is None else pooled_noise
        return np.maximum(variance - pooled, 0.0) + np.maximum(local, 0.0)


def _bounded_lbfgs(objective, initial_theta, bounds):
    """L-BFGS-B on the log marginal likelihood, capped at 60 iterations (the fit is cross-validated anyway)."""
    from scipy.optimize import minimize

    result = minimize(objective, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds, options={"maxiter": 60})
    return result.x, result.fun


class GPSurrogate(RegressorMixin, BaseEstimator):
    """Gaussian process with a Matern kernel plus white noise on standardised inputs and targets.

    Args:
        nu: Matern smoothness.
        n_restarts_optimizer: restarts of the kernel hyper-parameter fit.
        random_state: seed of those restarts.
        policy_noise: with `groups`, the white noise in the predictive spread is each policy's own
            (`ReplicationNoise`) rather than one level for all.
    """

    def __init__(
        self, nu: float = 2.5, n_restarts_optimizer: int = 0, random_state: int = 0, policy_noise: bool = True
    ) -> None:
        self.nu = nu
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state
        self.policy_noise = policy_noise

    def fit(self, X, y, groups=None):  # groups: the trial of each row, for the policy's own noise
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float)
        self.x_mean_ = X.mean(axis=0)
        self.x_scale_ = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=np.ones(X.shape[1]), length_scale_bounds=(1e-2, 1e3), nu=self.nu
        ) + WhiteKernel(1e-2, (1e-6, 1e1))
        self.model_ = GaussianProcessRegressor(
            kernel=kernel,
            normalize_y=True,
            optimizer=_bounded_lbfgs,
            n_restarts_optimizer=self.n_restarts_optimizer,
            random_state=self.random_state,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_.fit((X - self.x_mean_) / self.x_scale_, y)
        self.y_scale_ = float(np.std(y)) or 1.0  # normalize_y's scale: the white noise is fitted in its units
        self.noise_ = _noise(self.policy_noise, X, y, groups, self.random_state)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, return_std: bool = False):
        Z = (np.asarray(X, dtype=float) - self.x_mean_) / self.x_scale_
        if return_std:
            mean, std = self.model_.predict(Z, return_std=True)
            if self.noise_ is not None:
                # The fitted white noise (in the target's units) holds the replication noise and any
                # misfit the kernel cannot follow: only the replication part is replaced.
                white = float(self.model_.kernel_.k2.noise_level) * self.y_scale_**2
                std = np.sqrt(self.noise_.variance(np.asarray(X, dtype=float), std**2, min(white, self.noise_.pooled)))
            return mean, np.maximum(std, 1e-12)
        return self.model_.predict(Z)


class ForestSurrogate(RegressorMixin, BaseEstimator):
    """Bagged regression trees, bootstrapped by trial; spread = the out-of-bag residual of whole trials.

    A trial's replications share its policy, so a row-level bootstrap would leave a trial's other
    replications in the bag of every tree that predicts it "out of bag": the residual would hold the
    replication noise only and the interval would miss the model error. Passing `groups` (the trial
    of each row) to `fit` draws whole trials, so out of bag means an unseen policy.

    Args:
        n_estimators: trees.
        min_samples_leaf: smallest leaf.
        random_state: seed of the bootstrap.
        policy_noise: with `groups`, the replication noise in the spread is each policy's own
            (`ReplicationNoise`) rather than the one out-of-bag residual for all.
    """

    def __init__(
        self, n_estimators: int = 50, min_samples_leaf: int = 1, random_state: int = 0, policy_noise: bool = True
    ) -> None:
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.policy_noise = policy_noise

    def fit(self, X, y, groups=None):
        X = np.ascontiguousarray(X, dtype=np.float32)  # the trees' own dtype: inputs checked once, not per tree
        y = np.asarray(y, dtype=float)
        g = np.arange(len(y)) if groups is None else np.asarray(groups)
        labels, index = np.unique(g, return_inverse=True)
        rng = np.random.default_rng(self.random_state)
        self.estimators_ = []
        oob_sum = np.zeros(len(y))
        oob_count = np.zeros(len(y))
        for _ in range(self.n_estimators):
            draws = np.bincount(rng.integers(0, len(labels), len(labels)), minlength=len(labels))
            weight = draws[index].astype(float)
            tree = DecisionTreeRegressor(
                min_samples_leaf=self.min_samples_leaf, random_state=int(rng.integers(2**31 - 1))
            )
            tree.fit(X[weight > 0], y[weight > 0], sample_weight=weight[weight > 0], check_input=False)
            self.estimators_.append(tree)
            out = weight == 0
            if out.any():
                oob_sum[out] += tree.predict(X[out], check_input=False)
                oob_count[out] += 1
        seen = oob_count > 0
        if seen.sum() >= 2:
            self.residual_var_ = float(np.mean((oob_sum[seen] / oob_count[seen] - y[seen]) ** 2))
        else:
            self.residual_var_ = float(np.var(y))
        self.feature_importances_ = np.mean([t.feature_importances_ for t in self.estimators_], axis=0)
        self.noise_ = _noise(self.policy_noise, X, y, groups, self.random_state)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, return_std: bool = False):
        X = np.ascontiguousarray(X, dtype=np.float32)
        mean = np.mean([t.predict(X, check_input=False) for t in self.estimators_], axis=0)
        if return_std:
            # With whole trials out of bag, the out-of-bag residual is the error of predicting an
            # unseen policy, replication noise included: the interval's width as calibrated on the
            # training trials. Adding or taking the larger of the inter-tree variance over-covers.
            variance = np.full(len(mean), self.residual_var_)
            if self.noise_ is not None:
                variance = self.noise_.variance(X, variance)
            return mean, np.sqrt(variance + 1e-12)
        return mean


def _noise(enabled: bool, X, y, groups, seed: int) -> ReplicationNoise | None:
    """The policy's own replication noise when enabled and the rows say which trial they belong to."""
    if not enabled or groups is None:
        return None
    noise = ReplicationNoise(np.asarray(X, dtype=float), np.asarray(y, dtype=float), np.asarray(groups), seed=seed)
    return noise if noise.fitted else None
