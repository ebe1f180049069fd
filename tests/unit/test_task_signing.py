"""Tasks are signed like models: any change to a signed field breaks the signature."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from alchimia.broker.schemas import TaskBody, decode, message
from alchimia.broker.signing import SignatureError, sign_task, verify_task

KEY = Ed25519PrivateKey.generate()
TASK = TaskBody(
    round_id=7,
    state="open",
    base_version=6,
    deadline_ts=1_800_000_000.25,
    selected=["plant-1", "plant-2"],
    lr=0.001,
    hyper={"mu": 0.01},
)


def test_a_signed_task_verifies_after_the_wire() -> None:
    body = decode(message("coordinator", sign_task(TASK, KEY)), TaskBody).body
    assert isinstance(body, TaskBody)
    verify_task(body, KEY.public_key())


@pytest.mark.parametrize(
    "change",
    [
        {"round_id": 8},
        {"base_version": 5},
        {"state": "closed"},
        {"selected": ["plant-1"]},
        {"hyper": {"mu": 0.02}},
        {"deadline_ts": 1_800_000_000.5},
    ],
)
def test_any_changed_field_fails(change: dict) -> None:
    forged = sign_task(TASK, KEY).model_copy(update=change)
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_task(forged, KEY.public_key())


def test_unsigned_and_foreign_tasks_fail() -> None:
    with pytest.raises(SignatureError, match="not signed"):
        verify_task(TASK, KEY.public_key())
    with pytest.raises(SignatureError, match="invalid signature"):
        verify_task(sign_task(TASK, Ed25519PrivateKey.generate()), KEY.public_key())
