"""Linear-probe protocol: frozen encoder, features without augmentation, selection on validation."""

from cslrobust.probe.features import assert_frozen, extract_features, state_snapshot
from cslrobust.probe.linear import (
    ProbeResult,
    accuracy,
    dead_feature_mask,
    fold_standardisation,
    train_linear_probe,
)

__all__ = [
    "ProbeResult",
    "accuracy",
    "assert_frozen",
    "dead_feature_mask",
    "extract_features",
    "fold_standardisation",
    "state_snapshot",
    "train_linear_probe",
]
