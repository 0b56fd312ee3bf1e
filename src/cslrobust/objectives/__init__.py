"""Training objectives: InfoNCE on masks, mask builders, false-negative detectors, plug-ins.

Importing this package registers every built-in objective in :data:`OBJECTIVES` and every
detector in :data:`FN_DETECTORS`.
"""

from cslrobust.objectives.contrastive import (
    Reduction,
    info_nce,
    normalize_views,
    pair_similarity_means,
)
from cslrobust.objectives.fn_detectors import (
    FN_DETECTORS,
    FalseNegativeDetector,
    OracleDetector,
    build_fn_detector,
    detection_quality,
)
from cslrobust.objectives.masks import (
    expand_to_views,
    instance_positive_mask,
    label_positive_mask,
    negative_mask,
)
from cslrobust.objectives.objective import (
    OBJECTIVES,
    HeadKind,
    LossOutput,
    Objective,
    build_objective,
    check_batch,
)
from cslrobust.objectives.simclr import SimCLRObjective
from cslrobust.objectives.simclr_fnr import FNRMode, SimCLRFNRObjective
from cslrobust.objectives.supcon import SupConObjective
from cslrobust.objectives.supervised import SupervisedObjective

__all__ = [
    "FN_DETECTORS",
    "OBJECTIVES",
    "FNRMode",
    "FalseNegativeDetector",
    "HeadKind",
    "LossOutput",
    "Objective",
    "OracleDetector",
    "Reduction",
    "SimCLRFNRObjective",
    "SimCLRObjective",
    "SupConObjective",
    "SupervisedObjective",
    "build_fn_detector",
    "build_objective",
    "check_batch",
    "detection_quality",
    "expand_to_views",
    "info_nce",
    "instance_positive_mask",
    "label_positive_mask",
    "negative_mask",
    "normalize_views",
    "pair_similarity_means",
]
