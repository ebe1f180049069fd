"""Compressed updates over a real Mosquitto (issue 15 §3, issue 16 item 2): the task names
the codec, agents send top-k int8 deltas with error feedback and the bitmap of what they
trained, rounds complete; an `f8` delta is refused with its reason, and a delta in reverse
order with a partial `trained` bitmap is accepted (names match, not order)."""

from __future__ import annotations

from pathlib import Path

import msgpack
import numpy as np

from alchimia.broker.codec import Encoded
from alchimia.broker.compression import compress
from alchimia.broker.schemas import StatusBody, TaskBody, UpdateBody, decode, message
from alchimia.broker.topics import Topics
from alchimia.local import LocalFederation
from alchimia.monitor import Monitor
from tests.integration.helpers import RawClient, wait_for

FED = "compressed"


def _update(task: TaskBody, delta: dict) -> bytes:
    return message(
        "plant-3",
        UpdateBody(
            round_id=task.round_id, base_version=task.base_version, num_samples=50, delta=delta
        ),
    )


def test_a_top_k_int8_federation_completes_rounds(mosquitto, tmp_path: Path) -> None:
    topics = Topics(FED)
    fed = LocalFederation(
        mosquitto.url,
        FED,
        2,
        tmp_path / "coord",
        coordinator={
            "min_agents": 3,
            "rounds": 2,
            "round_timeout_s": 120,
            "epochs": 1,
            "update_codec": "topk_int8",
            "update_topk_fraction": 0.1,
        },
        agent={"history_heats": 60, "heat_interval_s": 0, "signal_period_s": 10.0},
    )
    # A third participant written against the document alone, as another client would be.
    other = RawClient(mosquitto.host, mosquitto.port, f"{FED}-plant-3")
    for topic in (topics.all_agents("update"), topics.round_current):
        other.subscribe(topic)
    other.publish(
        topics.agent_status("plant-3"),
        message("plant-3", StatusBody(role="agent", state="online")),
        retain=True,
    )
    monitor = Monitor(mosquitto.url, FED, f"{FED}-monitor").start()
    mine, honest = topics.agent_update("plant-3"), topics.agent_update("plant-1")
    try:
        coordinator = fed.start_coordinator()
        fed.start_agents()
        answered: set[int] = set()
        for round_no in (1, 2):
            wait_for(
                lambda n=round_no: len(other.received(honest)) >= n,
                90,
                f"plant-1's update {round_no}",
            )
            task: TaskBody = decode(other.received(topics.round_current)[-1], TaskBody).body
            assert task.state == "open" and task.round_id not in answered
            assert (task.update_codec, task.update_topk_fraction) == ("topk_int8", 0.1)
            sent = msgpack.unpackb(other.received(honest)[-1])["body"]["delta"]
            assert {t["codec"] for t in sent.values()} == {"topk_int8"}
            # what the agent trained, as a bitmap or true (every element)
            assert all(
                t["trained"] is True or isinstance(t["trained"], bytes) for t in sent.values()
            )
            shapes = {k: tuple(t["shape"]) for k, t in sent.items()}
            rng = np.random.default_rng(round_no)
            mine_delta = {
                k: (1e-3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()
            }
            # f8 is not float32: refused with the reason, whatever the codec.
            other.publish(
                mine, _update(task, {k: v.astype(np.float64) for k, v in mine_delta.items()})
            )
            # Reverse order, top-k int8 coded, trained about half: names match, so it counts.
            other.publish(
                mine,
                _update(
                    task,
                    {
                        k: Encoded(
                            compress(
                                mine_delta[k], "topk_int8", trained=rng.random(shapes[k]) < 0.5
                            )
                        )
                        for k in reversed(list(shapes))
                    },
                ),
            )
            answered.add(task.round_id)
            assert monitor.wait_validation(round_no, {"plant-1", "plant-2"}, 90)
        assert coordinator.error is None
        reasons = [r.reason for r in coordinator.coordinator.rejections]
        assert sum("raw tensors here carry dtype f4, not 'f8'" in r for r in reasons) == 2, reasons
        model = monitor.model
        assert model is not None and model.version == 2
        assert sorted(model.metadata["contributors"]) == ["plant-1", "plant-2", "plant-3"]
        for agent in fed.agents:  # error feedback: each holds what it has not sent yet
            residual = agent.agent.compressor.residual
            assert residual is not None and any(np.abs(v).max() > 0 for v in residual.values())
    finally:
        fed.stop()
        monitor.stop()
        other.close()
