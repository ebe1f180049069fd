"""The agent's side of compressed updates: the federation's codec, with error feedback.

The task names the codec (``update_codec``, a coordinator setting). With a lossy codec the
agent sends ``C(delta + residual)`` and keeps ``residual = delta + residual - sent``: what
the codec dropped is added to the next update (error feedback; Stich et al. 2018,
"Sparsified SGD with Memory", for top-k; Karimireddy et al. 2019 show it also repairs
biased quantisers such as sign, so every lossy codec gets it). Over the rounds the sum of
what was sent tracks the sum of the true deltas to within one residual.

When the residual is dropped: it is owed to the model it was computed on and its
successors, so it is kept only while every global model the agent adopts is an
aggregation of the one it adopted before (``round_id`` set, ``parent_version`` equal to
the previous version). A rollback (``round_id`` nil: the versions the residual chased were
thrown away), the initial model of a new federation, a version the agent missed (it cannot
tell whether that one was a rollback) or tensors of other names or shapes all drop it.
Rounds the agent is not selected for do not: their versions still descend from its last
update, and error feedback only needs each owed coordinate to be sent eventually. The
residual lives in memory; a restart loses it, which costs at most what one update had not
sent yet.

Top-k sends few of the coordinates it owes, so it also sends which ones this update
trained (the ``trained`` bitmap): those where this round's delta is non-zero, and every
entry it sends. The coordinator counts them, sent or deferred, in each coordinate's mean
(submodel averaging); a coordinate the site never trains (a scrap grade it never
charges) stays out of it, as with any other codec (docs/FEDERATION.md, "Compressed
updates").
"""

from __future__ import annotations

import numpy as np

from alchimia.broker.codec import Encoded
from alchimia.broker.codec_names import MASKED
from alchimia.broker.compression import compress, decompress
from alchimia.models.params import Weights


class UpdateCompressor:
    """Encodes each outgoing delta with the task's codec and keeps the error-feedback
    residual (sans-I/O: the agent calls ``follow`` per adopted model, ``encode`` per
    update)."""

    def __init__(self) -> None:
        self.residual: Weights | None = None
        self._version: int | None = None  # the latest global version adopted

    def follow(self, version: int, parent_version: int | None, round_id: int | None) -> None:
        """A new global model was adopted: keep the residual only along unbroken
        aggregations (see the module's docstring)."""
        if round_id is None or parent_version is None or parent_version != self._version:
            self.residual = None
        self._version = version

    def encode(
        self,
        delta: Weights,
        codec: str,
        topk_fraction: float,
    ) -> dict[str, np.ndarray | Encoded]:
        """The tensors to send for ``delta`` (arrays for ``raw``, else wire forms); the
        residual becomes what this update owes."""
        owed = delta
        if self.residual is not None and (
            {k: v.shape for k, v in self.residual.items()} == {k: v.shape for k, v in delta.items()}
        ):
            owed = {k: (v + self.residual[k]).astype(np.float32) for k, v in delta.items()}
        self.residual = None
        if codec == "raw":
            return dict(owed)
        out: dict[str, np.ndarray | Encoded] = {}
        residual: Weights = {}
        for name, value in owed.items():
            trained = delta[name] != 0 if codec in MASKED else None
            wire = compress(value, codec, topk_fraction=topk_fraction, trained=trained)
            out[name] = Encoded(wire)
            residual[name] = value - decompress(wire, value.size).reshape(value.shape)
        self.residual = residual
        return out
