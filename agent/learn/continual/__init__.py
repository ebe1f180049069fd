"""Continual-learning pieces: prequential error, drift detection, replay, EWC.

Everything here is pure (no I/O, no clocks). The site's policy that combines them is
``agent.learn.site_learning.SiteLearner``, which the online agent and the offline drift
experiment (``alchimia.experiment``) both drive. See docs/CONTINUAL.md.
"""

from alchimia.agent.learn.continual.drift import (
    ErrorDriftMonitor,
    InputDriftMonitor,
    PageHinkley,
    StreamDetector,
    psi,
)
from alchimia.agent.learn.continual.prequential import Prequential
from alchimia.agent.learn.continual.regularise import EwcPenalty, fisher_diagonal
from alchimia.agent.learn.continual.replay import RegimeReplayBuffer, ReplayBuffer

__all__ = [
    "ErrorDriftMonitor",
    "EwcPenalty",
    "InputDriftMonitor",
    "PageHinkley",
    "Prequential",
    "RegimeReplayBuffer",
    "ReplayBuffer",
    "StreamDetector",
    "fisher_diagonal",
    "psi",
]
