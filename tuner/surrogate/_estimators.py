"""The regressors behind the surrogates, both following the scikit-learn estimator contract.

Settings in `__init__`, `fit` returns self, learned state in `*_` attributes, and
`predict(X, return_std=True)` gives a predictive standard deviation: `GPSurrogate` (Matern +
WhiteKernel, normalised targets) and `ForestSurrogate` (trees bootstrapped by trial).
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
    """

    def __init__(self, nu: float = 2.5, n_restarts_optimizer: int = 0, random_state: int = 0) -> None:
        self.nu = nu
        self.n_restarts_optimizer = n_restarts_optimizer
        self.random_state = random_state

    def fit(self, X, y, groups=None):  # groups: accepted for a common signature, not needed
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
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, return_std: bool = False):
        Z = (np.asarray(X, dtype=float) - self.x_mean_) / self.x_scale_
        if return_std:
            mean, std = self.model_.predict(Z, return_std=True)
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
    """

    def __init__(self, n_estimators: int = 50, min_samples_leaf: int = 1, random_state: int = 0) -> None:
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state

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
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X, return_std: bool = False):
        X = np.ascontiguousarray(X, dtype=np.float32)
        mean = np.mean([t.predict(X, check_input=False) for t in self.estimators_], axis=0)
        if return_std:
            # With whole trials out of bag, the out-of-bag residual is the error of predicting an
            # unseen policy, replication noise included: the interval's width as calibrated on the
            # training trials. Adding or taking the larger of the inter-tree variance over-covers.
            return mean, np.full(len(mean), np.sqrt(self.residual_var_ + 1e-12))
        return mean
