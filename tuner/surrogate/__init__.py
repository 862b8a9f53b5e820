"""The surrogate stage: models of each study's metrics over the policy, with measured accuracy (DESIGN.md §5).

Public surface: the estimators (`GPSurrogate`, `ForestSurrogate`, scikit-learn contract), the
policy features they read (`policy_features`, `FEATURES`), and one metric's fitted model with its
accuracy (`fit_metric`, `exact_metric`, `MetricSurrogate`, `Accuracy`).
"""

from ._estimators import FEATURES, ForestSurrogate, GPSurrogate, ReplicationNoise, policy_features
from ._fit import (
    COVERAGE_RANGE,
    INTERVAL_LEVEL,
    MIN_R2,
    Z90,
    Accuracy,
    MetricSurrogate,
    cross_validate,
    describe,
    exact_metric,
    explainable_r2,
    fit_metric,
    flat_within_noise,
    intervals_wide,
    mean_noise_variance,
    no_cache_key,
)

__all__ = [
    "COVERAGE_RANGE",
    "intervals_wide",
    "FEATURES",
    "INTERVAL_LEVEL",
    "MIN_R2",
    "Z90",
    "Accuracy",
    "ForestSurrogate",
    "GPSurrogate",
    "MetricSurrogate",
    "ReplicationNoise",
    "cross_validate",
    "describe",
    "exact_metric",
    "explainable_r2",
    "fit_metric",
    "flat_within_noise",
    "mean_noise_variance",
    "no_cache_key",
    "policy_features",
]
