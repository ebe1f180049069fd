"""Continual learning on site: prequential error, drift detection, replay, EWC, fine-tune.

Everything here is pure (no I/O, no clocks): the online agent and the offline drift
experiment (``alchimia.experiment``) drive the same pieces. See docs/CONTINUAL.md.
"""

from agent.continual.adapt import local_finetune
from agent.continual.drift import (
    Adwin,
    ErrorDriftMonitor,
    InputDriftMonitor,
    PageHinkley,
    StreamDetector,
    kolmogorov_sf,
    ks_2samp,
    psi,
)
from agent.continual.prequential import Prequential
from agent.continual.regularise import EwcPenalty, fisher_diagonal
from agent.continual.replay import RegimeReplayBuffer, ReplayBuffer

__all__ = [
    "Adwin",
    "ErrorDriftMonitor",
    "EwcPenalty",
    "InputDriftMonitor",
    "PageHinkley",
    "Prequential",
    "RegimeReplayBuffer",
    "ReplayBuffer",
    "StreamDetector",
    "fisher_diagonal",
    "kolmogorov_sf",
    "ks_2samp",
    "local_finetune",
    "psi",
]
