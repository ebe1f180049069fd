"""Benchmark of the update codecs: bytes per update and encode/decode times.

For each codec and model size, an ``update`` message is built as an agent builds it
(``agent.learn.compression.UpdateCompressor.encode``, error feedback included, then
``broker.schemas.message``) and decoded as the coordinator decodes it
(``broker.schemas.decode`` with the coordinator's limits, to float32). Reported: bytes of
the whole msgpack message, the ratio to the same update sent raw (float32), the relative
L2 error of one decoded update (before error feedback makes up for it over the next
rounds), and the median encode and decode times.

Models: the shared part of ``eaf-hybrid-v1`` as the demo runs it (500 parameters in 11
tensors) and an ``mlp-v1`` with hidden layers (1024, 956): 1,009,060 parameters in 6
tensors. Deltas are Gaussian with the scale of a training step (1e-3); sizes do not depend
on the values (top-k sends ``ceil(fraction * n)`` entries of each tensor), except that a
top-k tensor's ``trained`` is ``true`` when every coordinate is non-zero and a bitmap
(``n / 8`` bytes) otherwise: ``--untrained 0.01`` leaves that share of each tensor at
exactly 0 (coordinates the site did not train), so that the bitmap is sent.

Run: ``.venv/bin/python bench/bench_codec.py [--topk-fraction 0.05] [--untrained 0]
[--repeats 20]``.

``--unpacker`` measures instead the two paths of ``broker.unpacker.unpack_views`` on raw
update messages of growing size: msgpack's C decoder with bins copied (the fast path, taken
up to ``SMALL_MESSAGE_BYTES``) and the zero-copy walk, the median time of each; where the
second wins is where the threshold belongs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alchimia.agent.learn.compression import UpdateCompressor
from alchimia.broker.codec import Limits
from alchimia.broker.codec_names import CODECS, DEFAULT_TOPK_FRACTION
from alchimia.broker.schemas import UpdateBody, decode, message
from alchimia.broker.unpacker import SMALL_MESSAGE_BYTES, _unpack_small, _unpack_walk
from alchimia.models.spec import ModelSpec

MODELS = {
    "demo (eaf-hybrid-v1 shared part)": ModelSpec(architecture="eaf-hybrid-v1"),
    "1M (mlp-v1, hidden 1024, 956)": ModelSpec(architecture="mlp-v1", hidden=(1024, 956)),
}


def _update(delta: dict, codec: str, fraction: float) -> bytes:
    tensors = UpdateCompressor().encode(delta, codec, fraction)
    return message(
        "plant-1",
        UpdateBody(
            round_id=1, base_version=0, num_samples=100, delta=tensors, metrics={"train_loss": 0.01}
        ),
    )


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def unpacker_paths(repeats: int) -> None:
    """Median microseconds of each unpacker path over raw update messages."""
    rng = np.random.default_rng(0)
    limits = Limits()
    demo = MODELS["demo (eaf-hybrid-v1 shared part)"].parameter_shapes("shared")
    cases = {"demo, 11 tensors": demo}
    for tensors in (1, 11):
        for kib in (4, 16, 64, 256, 1024):
            n = kib * 1024 // 4 // tensors
            cases[f"{tensors} tensor{'s' * (tensors > 1)}, {kib} KiB"] = {
                f"t{i}": (n,) for i in range(tensors)
            }
    print(f"fast path up to {SMALL_MESSAGE_BYTES:,} B; medians of {repeats} runs")
    print("| delta | message bytes | fast path us | walk us | walk / fast |")
    print("|---|---|---|---|---|")
    for name, shapes in cases.items():
        delta = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
        payload = _update(delta, "raw", 1.0)
        fast = _median_ms(partial(_unpack_small, payload, limits), repeats) * 1e3
        walk = _median_ms(partial(_unpack_walk, payload, limits), repeats) * 1e3
        print(f"| {name} | {len(payload):,} | {fast:.1f} | {walk:.1f} | {walk / fast:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topk-fraction", type=float, default=DEFAULT_TOPK_FRACTION)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--untrained", type=float, default=0.0, help="share of each delta left at exactly 0"
    )
    parser.add_argument("--unpacker", action="store_true", help="time the unpacker's two paths")
    args = parser.parse_args()
    if args.unpacker:
        unpacker_paths(max(args.repeats, 200))
        return
    rng = np.random.default_rng(0)
    print(
        f"top-k keeps {args.topk_fraction:g} of each tensor; int8 and sign blocks of 64; "
        f"{args.untrained:g} of each delta untrained (0); "
        f"times are medians of {args.repeats} runs on one core"
    )
    print(
        "| model | parameters | codec | bytes/update | x float32 | rel. L2 error | "
        "encode ms | decode ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, spec in MODELS.items():
        shapes = spec.parameter_shapes("shared")
        delta = {k: (1e-3 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
        for v in delta.values() if args.untrained > 0 else ():
            v[rng.random(v.shape) < args.untrained] = 0.0
        params = sum(v.size for v in delta.values())
        limits = Limits(max_total_elements=params)  # the coordinator's: its model's size
        raw_bytes = len(_update(delta, "raw", args.topk_fraction))
        norm = np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in delta.values()))
        for codec in CODECS:
            payload = _update(delta, codec, args.topk_fraction)
            back = decode(payload, UpdateBody, limits, check_finite=False).body.delta
            err = (
                np.sqrt(
                    sum(float(((back[k] - delta[k]).astype(np.float64) ** 2).sum()) for k in delta)
                )
                / norm
            )
            enc = _median_ms(partial(_update, delta, codec, args.topk_fraction), args.repeats)
            dec = _median_ms(
                partial(decode, payload, UpdateBody, limits, check_finite=False), args.repeats
            )
            print(
                f"| {name} | {params:,} | {codec} | {len(payload):,} | "
                f"{len(payload) / raw_bytes:.3f} | {err:.2e} | {enc:.2f} | {dec:.2f} |"
            )


if __name__ == "__main__":
    main()
