"""What a flood of hostile messages costs in log output, and whether every one is counted.

N payloads (random bytes, bit flips and cuts of a valid message, valid msgpack with hostile
values and keys that carry newlines) go straight into ``Coordinator.handle`` (on the
update, status and metrics topics of 100 forged agents) and ``Agent.handle`` (on
``model/current`` and ``round/current``), in this process and without a broker, so the
figures are those of the two processes' own code. The log is formatted as the commands
write it (``alchimia.logs``, text) into memory. Reported per process: messages, log
lines and bytes, lines that are not one record each (must be 0), the rejections counted
by reason (the others were empty, which clears a retained message, or valid after all),
and messages a second.

Run: ``.venv/bin/python bench/bench_rejections.py [--n 100000] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import io
import logging
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from alchimia.agent.ingest.sources import build_heat_source
from alchimia.agent.service import Agent
from alchimia.agent.settings import AgentSettings
from alchimia.broker.rejections import RejectionLog
from alchimia.broker.schemas import StatusBody, TaskBody, message
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings
from alchimia.logs import TEXT_FORMAT

HOSTILE_VALUES = [-1, 2**63 - 1, 1e308, "x" * 300, [], {}, None, b"\x00", "a\nERROR forged"]


def payloads(n: int, rng: random.Random, seed: bytes) -> list[bytes]:
    """``n`` hostile variations of the valid message ``seed``."""
    raw = msgpack.unpackb(seed)
    out: list[bytes] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # random bytes
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:  # bit flips or a cut of a valid message
            buf = bytearray(seed[: rng.randrange(1, len(seed) + 1)])
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            out.append(bytes(buf))
        elif kind == 2:  # valid msgpack, a hostile value
            body = {**raw["body"], rng.choice(list(raw["body"])): rng.choice(HOSTILE_VALUES)}
            out.append(msgpack.packb({**raw, "body": body}))
        else:  # valid msgpack, a key that would start a fake log line
            key = f"k{i}\nERROR alchimia.coordinator: round {i} failed"
            out.append(msgpack.packb({**raw, "body": {**raw["body"], key: 1}}))
    return out


def flood(
    name: str,
    handle: Callable[[str, bytes], None],
    topics: list[str],
    messages: list[bytes],
    rejections: RejectionLog,
) -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    start = time.perf_counter()
    try:
        for i, payload in enumerate(messages):
            handle(topics[i % len(topics)], payload)
    finally:
        root.removeHandler(handler)
    seconds = time.perf_counter() - start
    lines = buf.getvalue().splitlines()
    forged = sum(not line[:4].isdigit() for line in lines)  # a record starts with its date
    print(
        f"{name}: {len(messages):,} messages in {seconds:.1f} s "
        f"({len(messages) / seconds:,.0f}/s); log: {len(lines)} lines, "
        f"{len(buf.getvalue()):,} bytes, {forged} not starting a record"
    )
    print(
        f"  rejections counted: {rejections.total:,} = {dict(rejections.counts.most_common())}"
        f"; not rejected: {len(messages) - rejections.total:,} (empty: a cleared retained "
        "message, or valid after all)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    status = message("plant-1", StatusBody(role="agent", state="online"))
    task = message(
        "coordinator",
        TaskBody(round_id=1, state="open", base_version=0, deadline_ts=0, selected=["plant-1"]),
    )
    with tempfile.TemporaryDirectory() as tmp:
        c = Coordinator(
            CoordinatorSettings.load(None, federation="bench", state_dir=Path(tmp) / "c")
        )
        try:
            t = c.topics
            topics = [
                topic(f"forged-{i}")
                for i in range(100)
                for topic in (t.agent_update, t.agent_status, t.agent_metrics)
            ]
            flood(
                "coordinator",
                c.handle,
                topics,
                payloads(args.n, random.Random(args.seed), status),
                c.rejection_log,
            )
        finally:
            c.db.close()
        settings = AgentSettings(
            agent_id="plant-1",
            history_heats=10,
            heat_interval_s=0,
            store_sensors=False,
            state_dir=Path(tmp) / "a",
        )
        agent = Agent(settings, build_heat_source(settings))
        flood(
            "agent",
            agent.handle,
            [agent.topics.model_current, agent.topics.round_current],
            payloads(args.n, random.Random(args.seed), task),
            agent.rejections,
        )


if __name__ == "__main__":
    main()
