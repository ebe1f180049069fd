"""The coordinator counts every rejected message by reason and keeps its log bounded and
on one line a record (issue 17 item 5, issue 16 item 5), without a broker."""

from __future__ import annotations

import logging
from pathlib import Path

import msgpack
import pytest

from alchimia.broker.schemas import StatusBody, message
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings


def _raw(sender: str, kind: str, body: dict) -> bytes:
    return msgpack.packb(
        {"v": 1, "kind": kind, "sender": sender, "ts": 1.0, "msg_id": "0" * 32, "body": body}
    )


def test_ten_thousand_hostile_messages_are_all_counted_in_a_bounded_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = CoordinatorSettings.load(
        None, federation="flood", state_dir=tmp_path, rate_limit_per_s=0.001, rate_limit_burst=100
    )
    c = Coordinator(settings)
    forged = _raw(
        "a1",
        "status",
        {"role": "agent", "state": "online", "x\nERROR alchimia.coordinator: forged": 1},
    )
    kinds = [  # the reason each is counted under, before its budget runs out
        (c.topics.agent_status("a1"), forged),  # schema
        (c.topics.agent_update("a2"), b"\xc1\x00garbage"),  # malformed
        # a status where metrics belong: the wrong kind, malformed
        (c.topics.agent_metrics("a3"), message("a4", StatusBody(role="agent", state="online"))),
        (
            c.topics.agent_status("a5"),  # wrong_sender
            message("a6", StatusBody(role="agent", state="online")),
        ),
        ("alchimia/v1/flood/agents/a7/predictions", b""),  # unread_topic
        ("alchimia/v1/flood/other\ntopic", b""),  # not_agent_topic, never rate limited
    ]
    try:
        with caplog.at_level(logging.DEBUG, "alchimia.coordinator"):
            for i in range(10_000):
                topic, payload = kinds[i % len(kinds)]
                c.handle(topic, payload)
        lines = [r for r in caplog.records if r.name == "alchimia.coordinator"]
    finally:
        c.db.close()
    # Each agent topic's budget lets the burst of 100 through, the rest is rate limited.
    assert c.rejection_log.counts == {
        "schema": 100,
        "malformed": 200,
        "wrong_sender": 100,
        "unread_topic": 100,
        "not_agent_topic": 1666,
        "rate_limited": 4 * 1567 + 1566,
    }
    assert c.rejection_log.total == 10_000
    # Five lines per reason at most (the summary comes after a minute): not one a message.
    assert len(lines) <= 5 * len(c.rejection_log.counts), len(lines)
    assert all("\n" not in r.getMessage() for r in lines)
    assert any("x\\x0aERROR alchimia.coordinator: forged" in r.getMessage() for r in lines)
