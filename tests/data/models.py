"""Model messages as a genuine coordinator sends them, for agents under test."""

from alchimia.broker.schemas import Envelope, ModelBody, decode
from alchimia.coordinator.publishing import initial_weights, model_message
from alchimia.models.spec import ModelSpec


def first_model(spec: ModelSpec, version: int = 0) -> bytes:
    """The model message of ``version`` (unsigned) carrying the first weights of ``spec``
    drawn with seed ``version``: different versions, different weights."""
    return model_message(
        "coordinator",
        spec,
        initial_weights(spec, version),
        version=version,
        parent=version - 1 if version else None,
        round_id=None,
        metadata={},
    )


def first_model_envelope(spec: ModelSpec, version: int = 0) -> Envelope:
    """``first_model`` decoded, as an agent's ``_on_model`` takes it."""
    return decode(first_model(spec, version), ModelBody)
