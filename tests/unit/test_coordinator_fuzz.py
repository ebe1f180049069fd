"""Thousands of random and mutated payloads through ``Coordinator.handle`` (no broker);
afterwards the coordinator still aggregates honest updates exactly."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import numpy as np

from alchimia.broker.schemas import StatusBody, UpdateBody, message
from alchimia.coordinator.lifecycle import BuildModel
from alchimia.coordinator.service import Coordinator
from alchimia.coordinator.settings import CoordinatorSettings


def _mutations(seed_payload: bytes, rng: random.Random, n: int) -> list[bytes]:
    out: list[bytes] = []
    raw = msgpack.unpackb(seed_payload)
    for i in range(n):
        kind = i % 5
        if kind == 0:  # random bytes
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:  # bit flips in a valid message
            buf = bytearray(seed_payload)
            for _ in range(rng.randrange(1, 8)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            out.append(bytes(buf))
        elif kind == 2:  # truncation
            out.append(seed_payload[: rng.randrange(len(seed_payload))])
        elif kind == 3:  # structurally valid msgpack with hostile values
            body = dict(raw["body"])
            key = rng.choice(["round_id", "base_version", "num_samples", "delta", "metrics"])
            body[key] = rng.choice([-1, 2**63 - 1, 1e308, "x" * 100, [], {}, None, b"\x00"])
            out.append(
                msgpack.packb({**raw, "body": body, "msg_id": f"{i:032x}"}, use_bin_type=True)
            )
        else:  # random msgpack trees
            out.append(
                msgpack.packb(
                    {
                        rng.choice(["v", "kind", "body", "sender"]): rng.choice(
                            [1, "update", {}, []]
                        )
                        for _ in range(rng.randrange(1, 5))
                    },
                    use_bin_type=True,
                )
            )
    return out


def test_fuzzed_updates_do_not_disturb_honest_aggregation(tmp_path: Path) -> None:
    c = Coordinator(
        CoordinatorSettings.load(
            None,
            federation="fuzz",
            state_dir=tmp_path,
            min_agents=2,
            rate_limit_per_s=1000,
            rate_limit_burst=1000,
        )
    )
    rng = random.Random(7)
    try:
        for agent in ("plant-1", "plant-2"):
            c.handle(
                c.topics.agent_status(agent),
                message(agent, StatusBody(role="agent", state="online")),
            )
        c.lifecycle.tick(1.0)  # opens round 1 (its publications are not needed here)
        assert c.window is not None and c.window.window_id == 1
        w0 = {k: v.copy() for k, v in c.weights.items()}
        template = message(
            "fuzz-0",
            UpdateBody(
                round_id=1,
                base_version=0,
                num_samples=5,
                delta={k: np.zeros_like(v) for k, v in w0.items()},
            ),
        )
        for i, payload in enumerate(_mutations(template, rng, 3000)):
            c.handle(c.topics.agent_update(f"fuzz-{i % 40}"), payload)
        assert len(c.rejections) == 1000  # the most recent ones are kept
        assert sum(c.rejection_log.counts.values()) >= 2900
        honest = {
            agent: UpdateBody(
                round_id=1,
                base_version=0,
                num_samples=n,
                delta={k: rng.normalvariate(0, 1) * np.ones_like(v) for k, v in w0.items()},
            )
            for agent, n in (("plant-1", 10), ("plant-2", 30))
        }
        for agent, body in honest.items():
            c.handle(c.topics.agent_update(agent), message(agent, body))
        assert c.window.contributors == ["plant-1", "plant-2"]
        [build] = c.lifecycle.tick(2.0)
    finally:
        c.db.close()
    assert isinstance(build, BuildModel)
    assert build.metadata["contributors"] == ["plant-1", "plant-2"]
    for k, w in w0.items():
        expected = w + sum(b.num_samples * b.delta[k] for b in honest.values()) / 40
        np.testing.assert_allclose(build.weights[k], expected, rtol=1e-5, atol=1e-6)
