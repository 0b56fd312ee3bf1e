"""Training objectives: InfoNCE on masks, mask builders, false-negative detectors, plug-ins.

Importing this package registers every built-in objective in :data:`OBJECTIVES` and every
detector in :data:`FN_DETECTORS`, each with its typed config section.
"""

from cslrobust.objectives.barlow import BarlowTwinsObjective, BarlowTwinsSection
from cslrobust.objectives.contrastive import (
    Reduction,
    info_nce,
    info_nce_logits,
    normalize_views,
    pair_similarity_means,
    similarity_logits,
)
from cslrobust.objectives.contrastive_objective import ContrastiveSection
from cslrobust.objectives.debiased import (
    DebiasedObjective,
    DebiasedSection,
    debiased_contrastive_loss,
)
from cslrobust.objectives.fn_detectors import (
    FN_DETECTORS,
    BankFalseNegativeDetector,
    CandidateSet,
    ClusterDetector,
    ClusterSection,
    FalseNegativeDetector,
    FalseNegativeSection,
    OracleDetector,
    OracleSection,
    ThresholdDetector,
    ThresholdSection,
    TopKDetector,
    TopKSection,
    build_fn_detector,
    detection_quality,
)
from cslrobust.objectives.kmeans import KMeansResult, spherical_kmeans
from cslrobust.objectives.masks import (
    expand_to_views,
    instance_positive_mask,
    label_positive_mask,
    negative_mask,
)
from cslrobust.objectives.method import (
    MethodObjective,
    ObjectiveMethod,
    TrainingMethod,
    ViewRunner,
    build_method,
)
from cslrobust.objectives.moco import KeyQueue, MoCoMethod, MoCoObjective, MoCoSection
from cslrobust.objectives.negative_free import (
    BYOLObjective,
    BYOLSection,
    PredictorMethod,
    SimSiamObjective,
    SimSiamSection,
)
from cslrobust.objectives.objective import (
    FAMILIES,
    OBJECTIVES,
    BankObjective,
    HeadKind,
    LossOutput,
    Objective,
    ObjectiveSection,
    StatefulObjective,
    build_objective,
    check_batch,
    family_of,
    load_objective_state,
    objective_needs_bank,
    objective_state,
    refresh_objective,
)
from cslrobust.objectives.simclr import SimCLRObjective, SimCLRSection
from cslrobust.objectives.simclr_fnr import FNRMode, SimCLRFNRObjective, SimCLRFNRSection
from cslrobust.objectives.supcon import SupConObjective, SupConSection
from cslrobust.objectives.supervised import SupervisedObjective, SupervisedSection

__all__ = [
    "FAMILIES",
    "FN_DETECTORS",
    "BYOLObjective",
    "BYOLSection",
    "BarlowTwinsObjective",
    "BarlowTwinsSection",
    "KeyQueue",
    "MethodObjective",
    "MoCoMethod",
    "MoCoObjective",
    "MoCoSection",
    "ObjectiveMethod",
    "PredictorMethod",
    "SimSiamObjective",
    "SimSiamSection",
    "TrainingMethod",
    "ViewRunner",
    "build_method",
    "family_of",
    "OBJECTIVES",
    "BankFalseNegativeDetector",
    "CandidateSet",
    "BankObjective",
    "ClusterDetector",
    "ClusterSection",
    "ContrastiveSection",
    "DebiasedObjective",
    "DebiasedSection",
    "FNRMode",
    "FalseNegativeDetector",
    "FalseNegativeSection",
    "HeadKind",
    "KMeansResult",
    "LossOutput",
    "Objective",
    "ObjectiveSection",
    "OracleDetector",
    "OracleSection",
    "Reduction",
    "SimCLRFNRObjective",
    "SimCLRFNRSection",
    "SimCLRObjective",
    "SimCLRSection",
    "StatefulObjective",
    "SupConObjective",
    "SupConSection",
    "SupervisedObjective",
    "SupervisedSection",
    "ThresholdDetector",
    "ThresholdSection",
    "TopKDetector",
    "TopKSection",
    "build_fn_detector",
    "build_objective",
    "check_batch",
    "debiased_contrastive_loss",
    "detection_quality",
    "expand_to_views",
    "info_nce",
    "info_nce_logits",
    "instance_positive_mask",
    "label_positive_mask",
    "load_objective_state",
    "negative_mask",
    "normalize_views",
    "objective_needs_bank",
    "objective_state",
    "pair_similarity_means",
    "refresh_objective",
    "similarity_logits",
    "spherical_kmeans",
]
