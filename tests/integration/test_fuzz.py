"""Thousands of random and mutated payloads on the coordinator's update topics over a
real Mosquitto; afterwards the coordinator still aggregates honest updates exactly."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import numpy as np

from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from broker.schemas import UpdateBody, decode, message
from broker.topics import Topics
from tests.integration.helpers import RawClient, wait_for

FED = "fuzz"


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
            out.append(msgpack.packb({**raw, "body": body, "msg_id": f"{i:032x}"},
                                     use_bin_type=True))
        else:  # random msgpack trees
            out.append(msgpack.packb(
                {rng.choice(["v", "kind", "body", "sender"]): rng.choice([1, "update", {}, []])
                 for _ in range(rng.randrange(1, 5))}, use_bin_type=True))
    return out


def test_fuzzed_updates_do_not_disturb_honest_aggregation(mosquitto, tmp_path: Path) -> None:
    topics = Topics(FED)
    fed = LocalFederation(mosquitto.url, FED, 2, tmp_path / "coord",
                          coordinator={"min_agents": 2, "rounds": 1, "epochs": 1,
                                       "rate_limit_per_s": 1000, "rate_limit_burst": 1000},
                          agent={"history_heats": 60, "heat_interval_s": 0,
               "signal_period_s": 10.0})
    spy = RawClient(mosquitto.host, mosquitto.port, f"{FED}-spy")
    spy.subscribe(topics.all_agents("update"))
    spy.subscribe(topics.model_current)
    fuzzer = RawClient(mosquitto.host, mosquitto.port, f"{FED}-fuzzer")
    monitor = Monitor(mosquitto.url, FED, f"{FED}-monitor").start()
    rng = random.Random(7)
    try:
        coordinator = fed.start_coordinator()
        wait_for(lambda: spy.received(topics.model_current), 30, "initial model")
        initial = decode(spy.received(topics.model_current)[0]).body
        template = message("fuzz-0", UpdateBody(
            round_id=1, base_version=0, num_samples=5,
            delta={k: np.zeros_like(v) for k, v in initial.weights.items()}))
        payloads = _mutations(template, rng, 3000)
        for i, payload in enumerate(payloads):
            fuzzer.client.publish(topics.agent_update(f"fuzz-{i % 40}"), payload, qos=0)
        wait_for(lambda: len(coordinator.coordinator.rejections) >= 900, 60,
                 "the coordinator to work through the fuzz")
        fed.start_agents()
        assert monitor.wait_validation(1, {"plant-1", "plant-2"}, 120)
    finally:
        fed.stop()
        monitor.stop()
        fuzzer.close()
    assert coordinator.error is None
    honest = [decode(p, UpdateBody) for t in (topics.agent_update("plant-1"),
                                              topics.agent_update("plant-2"))
              for p in spy.received(t)]
    assert len(honest) == 2
    final = decode(spy.received(topics.model_current)[-1]).body
    assert final.version == 1 and final.metadata["contributors"] == ["plant-1", "plant-2"]
    for k, w0 in initial.weights.items():
        # FedAvg with submodel averaging: a coordinate an agent left at 0 (a grade it never
        # charges) is averaged over the agents that trained it.
        total = sum(u.body.num_samples * (u.body.delta[k] != 0) for u in honest)
        summed = sum(u.body.num_samples * u.body.delta[k].astype(np.float64) for u in honest)
        expected = w0 + np.divide(summed, total, out=np.zeros_like(summed), where=total > 0)
        np.testing.assert_allclose(final.weights[k], expected, rtol=1e-5, atol=1e-6)
    spy.close()
