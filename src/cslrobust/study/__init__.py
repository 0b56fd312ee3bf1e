"""Studies: spec -> runs -> report.

Importing this package registers every built-in stage in :data:`~cslrobust.study.stages.STAGES`
(one module per stage; a new stage adds its module here).
"""

from cslrobust.study import (
    analyze,
    attack,
    evaluate,
    gates,
    probe,
    protocols,
    train,
    trajectory,
)

__all__ = [
    "analyze",
    "attack",
    "evaluate",
    "gates",
    "probe",
    "protocols",
    "train",
    "trajectory",
]
