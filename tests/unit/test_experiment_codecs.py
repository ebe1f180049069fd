"""`alchimia experiment federation --update-codec`: the federated arm runs once per codec,
its updates go through real messages, and bytes and test-MAE cost are reported."""

from __future__ import annotations

import numpy as np

from alchimia.experiment_federation import (
    Channel,
    FederationConfig,
    codec_costs,
    run_federation_experiment,
)


def test_a_raw_channel_delivers_each_delta_unchanged_and_counts_its_bytes() -> None:
    delta = {
        "a": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        "b": np.ones(2, np.float32),
    }
    channel = Channel("raw", 0.05, ["P1"])
    got = channel.send(0, 1, 0, delta, 10)
    for k in delta:
        np.testing.assert_array_equal(got[k], delta[k])
    assert channel.sent_bytes == channel.raw_bytes and channel.sent_bytes[0] > 12 * 4


def test_a_lossy_channel_keeps_each_plants_residual() -> None:
    delta = {"a": np.linspace(-1, 1, 100, dtype=np.float32)}
    channel = Channel("topk", 0.05, ["P1", "P2"])
    got = channel.send(1, 1, 0, delta, 10)
    assert np.count_nonzero(got["a"]) == 5
    assert channel.compressors[0].residual is None
    residual = channel.compressors[1].residual
    assert residual is not None
    np.testing.assert_allclose(got["a"] + residual["a"], delta["a"])
    assert channel.sent_bytes[0] < 0.5 * channel.raw_bytes[0]


def test_every_codec_gets_its_arm_bytes_and_cost() -> None:
    cfg = FederationConfig(sizes=(40, 30), rounds=2, epochs=1)
    result = run_federation_experiment(
        cfg, ("fed_hybrid", "local_ridge"), codecs=("raw", "int8", "sign")
    )
    assert set(result.mae) == {"fed_hybrid", "fed_hybrid:int8", "fed_hybrid:sign", "local_ridge"}
    assert set(result.traffic) == {"fed_hybrid", "fed_hybrid:int8", "fed_hybrid:sign"}
    sent, raw = result.traffic["fed_hybrid"]
    assert sent == raw
    assert result.traffic["fed_hybrid:sign"][0] < result.traffic["fed_hybrid:int8"][0] < raw
    table, criteria = codec_costs(result)
    assert len(table.splitlines()) == 2 + 3
    assert [name.split(",")[-1].split(":")[0].strip() for name, _, _ in criteria] == [
        "int8",
        "sign",
    ]
    # At the demo model's size the message's names and keys alone exceed 0.1 x float32.
    assert not any(ok for _, ok, _ in criteria)
