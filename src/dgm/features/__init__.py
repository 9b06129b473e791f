"""Feature networks that dgm ships for sample-quality metrics (``dgm.metrics``)."""

from dgm.features.mnist import (
    FEATURE_DIM,
    FeatureNetworkError,
    MnistClassifier,
    features_and_labels,
    load_feature_network,
)

__all__ = [
    "FEATURE_DIM",
    "FeatureNetworkError",
    "MnistClassifier",
    "features_and_labels",
    "load_feature_network",
]
