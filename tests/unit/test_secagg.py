"""Secure aggregation primitives (broker/secagg.py) and the secagg_* bodies
(docs/PROTOCOL.md, "Secure aggregation (sync rounds)")."""

from __future__ import annotations

import itertools
import os
import random

import msgpack
import numpy as np
import pytest
from Crypto.Protocol.SecretSharing import Shamir, _Element
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from alchimia.broker import secagg
from alchimia.broker.schemas import (
    BODIES,
    IncomingShare,
    OutgoingShare,
    RevealedShare,
    RosterEntry,
    SchemaError,
    SecaggInboxBody,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggRosterBody,
    SecaggSharesBody,
    SecaggUnmaskBody,
    TaskBody,
    decode,
    message,
)

SCALE = 2.0**24


# -- Shamir


def test_any_threshold_shares_rebuild_the_secret_and_fewer_do_not() -> None:
    secret = os.urandom(32)
    shares = secagg.split_secret(secret, 3, 6)
    assert len(shares) == 6 and all(len(s) == 32 for s in shares)
    for subset in itertools.combinations(range(6), 3):
        pairs = [(i + 1, shares[i]) for i in subset]
        assert secagg.combine_secret(pairs) == secret
        assert secagg.combine_secret(reversed(pairs)) == secret
    for subset in itertools.combinations(range(6), 2):
        assert secagg.combine_secret([(i + 1, shares[i]) for i in subset]) != secret
    # more than the threshold also works (the polynomial is the same)
    assert secagg.combine_secret([(i + 1, s) for i, s in enumerate(shares)]) == secret


def test_the_shares_are_pycryptodomes_and_its_combine_agrees() -> None:
    """Each half is shared as Shamir.split does; Shamir.combine rebuilds the halves of our
    shares and our Interpolator the halves of its shares."""
    secret = os.urandom(32)
    shares = secagg.split_secret(secret, 11, 20)
    rng = random.Random(1)
    for _ in range(5):
        idx = sorted(rng.sample(range(1, 21), 11))
        for h in (0, 16):
            half = Shamir.combine([(i, shares[i - 1][h : h + 16]) for i in idx])
            assert half == secret[h : h + 16]
    theirs = [Shamir.split(4, 9, secret[h : h + 16]) for h in (0, 16)]
    ours = [lo + hi for (_, lo), (_, hi) in zip(*theirs, strict=True)]
    assert secagg.combine_secret([(i, ours[i - 1]) for i in (9, 2, 5, 7)]) == secret


def test_field_arithmetic_matches_pycryptodome() -> None:
    rng = random.Random(2)
    for _ in range(200):
        a, b = rng.getrandbits(128), rng.choice([rng.getrandbits(128), rng.randrange(1, 400)])
        assert secagg._gf_mul(a, b) == int(_Element(a) * _Element(b))
        if a:
            assert secagg._gf_mul(a, secagg._gf_inv(a)) == 1


def test_interpolator_refuses_bad_indices_and_counts() -> None:
    for bad in ([], [1, 1], [0, 2], [1, secagg.MAX_ROSTER + 1]):
        with pytest.raises(ValueError, match="indices"):
            secagg.Interpolator(bad)
    with pytest.raises(ValueError, match="2 shares for 3"):
        secagg.Interpolator([1, 2, 3]).combine([bytes(32)] * 2)
    with pytest.raises(ValueError, match="threshold"):
        secagg.split_secret(bytes(32), 4, 3)
    with pytest.raises(ValueError, match="32 bytes"):
        secagg.split_secret(bytes(16), 2, 3)


def test_interpolator_rebuilds_many_secrets_from_one_set_of_indices() -> None:
    secrets = [os.urandom(32) for _ in range(4)]
    shares = [secagg.split_secret(s, 5, 9) for s in secrets]
    it = secagg.Interpolator([9, 3, 4, 8, 1])
    for secret, sh in zip(secrets, shares, strict=True):
        assert it.combine([sh[i - 1] for i in it.indices]) == secret


# -- keys and share encryption


def _pair() -> tuple[bytes, bytes]:
    private = secagg.new_private_key()
    return private, secagg.public_key(private)


def test_key_agreement_is_symmetric_and_bound_to_the_round() -> None:
    (cu, cu_pk), (cv, cv_pk) = _pair(), _pair()
    assert secagg.share_key(cu, cv_pk, 3) == secagg.share_key(cv, cu_pk, 3)
    assert secagg.mask_seed(cu, cv_pk, 3) == secagg.mask_seed(cv, cu_pk, 3)
    assert secagg.share_key(cu, cv_pk, 3) != secagg.share_key(cu, cv_pk, 4)
    assert secagg.mask_seed(cu, cv_pk, 3) != secagg.share_key(cu, cv_pk, 3)
    assert len(secagg.mask_seed(cu, cv_pk, 3)) == 32


def test_small_order_public_keys_are_refused() -> None:
    genuine = _pair()[1]
    secagg.check_public_key(genuine)
    small = [bytes(32), (1).to_bytes(32, "little")]
    for key in small:
        with pytest.raises(secagg.SecaggError, match="small order"):
            secagg.check_public_key(key)
        with pytest.raises(secagg.SecaggError, match="small order"):
            secagg.mask_seed(secagg.new_private_key(), key, 1)
    with pytest.raises(secagg.SecaggError, match="32 bytes"):
        secagg.check_public_key(genuine[:31])


def test_shares_round_trip_and_any_tampering_is_refused() -> None:
    (cu, cu_pk), (cv, cv_pk) = _pair(), _pair()
    key_u, key_v = secagg.share_key(cu, cv_pk, 5), secagg.share_key(cv, cu_pk, 5)
    s, b = os.urandom(32), os.urandom(32)
    ct = secagg.encrypt_shares(key_u, 5, "plant-a", "plant-b", s, b)
    assert len(ct) == secagg.CIPHERTEXT_BYTES == 92
    assert secagg.decrypt_shares(key_v, 5, "plant-a", "plant-b", ct) == (s, b)
    for pos in (0, 11, 12, 50, 75, 76, 91):  # nonce, ciphertext, tag
        bad = bytearray(ct)
        bad[pos] ^= 1
        with pytest.raises(secagg.ShareError):
            secagg.decrypt_shares(key_v, 5, "plant-a", "plant-b", bytes(bad))
    # the associated data binds the round and both parties, in order
    for round_id, u, v in ((6, "plant-a", "plant-b"), (5, "plant-b", "plant-a"), (5, "x", "y")):
        with pytest.raises(secagg.ShareError, match="do not decrypt"):
            secagg.decrypt_shares(key_v, round_id, u, v, ct)
    with pytest.raises(secagg.ShareError):
        secagg.decrypt_shares(os.urandom(32), 5, "plant-a", "plant-b", ct)
    with pytest.raises(secagg.ShareError, match="92 bytes"):
        secagg.decrypt_shares(key_v, 5, "plant-a", "plant-b", ct[:-1])
    assert secagg.share_aad(5, "plant-a", "plant-b") == b"5/plant-a/plant-b"


def test_nonces_are_fresh() -> None:
    key = os.urandom(32)
    a = secagg.encrypt_shares(key, 1, "u", "v", bytes(32), bytes(32))
    b = secagg.encrypt_shares(key, 1, "u", "v", bytes(32), bytes(32))
    assert a[:12] != b[:12] and a != b


# -- PRG


def test_prg_known_answer_rfc8439_a1() -> None:
    """RFC 8439, A.1, test vector #1: all-zero key and nonce, block counter 0."""
    expected = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    words = secagg.prg_words(bytes(32), 8)
    assert words.tobytes() == expected
    assert int(words[0]) == int.from_bytes(expected[:8], "little") == 0x903DF1A0ADE0B876


def test_prg_is_the_chacha20_keystream_of_the_seed() -> None:
    seed = os.urandom(32)
    n = 1000  # crosses many 64-byte blocks
    direct = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = direct.update(bytes(8 * n))
    words = secagg.prg_words(seed, n)
    assert words.dtype == np.dtype("<u8") and words.shape == (n,)
    assert words.tobytes() == stream
    assert [int(w) for w in words[:3]] == [
        int.from_bytes(stream[i : i + 8], "little") for i in (0, 8, 16)
    ]
    assert np.array_equal(secagg.prg_words(seed, 10), words[:10])  # a prefix of the stream
    assert not np.array_equal(secagg.prg_words(os.urandom(32), 10), words[:10])


def test_add_prg_wraps_in_the_ring() -> None:
    seed = os.urandom(32)
    acc = np.full(5, np.iinfo(np.uint64).max, dtype=np.uint64)
    secagg.add_prg(acc, seed, 1)
    secagg.add_prg(acc, seed, -1)
    assert (acc == np.iinfo(np.uint64).max).all()
    with pytest.raises(ValueError, match="sign"):
        secagg.add_prg(acc, seed, 2)


# -- fixed point


def test_encoding_layout_and_round_half_even() -> None:
    e = 2.0**-25  # w * d * 2^24 = 0.5
    d = [np.array([e, 3 * e, -e, -3 * e, 0.0, 1.25], np.float32), np.array([[0.0, -2.0]])]
    x = secagg.encode_input(d, 1)
    assert x.dtype == np.uint64 and x.shape == (2 * 8,)
    ints = x.view(np.int64)
    assert list(ints[:6]) == [0, 2, 0, -2, 0, int(1.25 * SCALE)]  # half to even
    assert list(ints[6:12]) == [1 << 24] * 4 + [0, 1 << 24]  # touched: w where d != 0
    assert list(ints[12:14]) == [0, int(-2 * SCALE)]
    assert list(ints[14:16]) == [0, 1 << 24]
    assert int(x[3]) == 2**64 - 2  # two's complement in the ring
    x3 = secagg.encode_input([np.array([0.5], np.float32)], 3)
    assert list(x3.view(np.int64)) == [int(1.5 * SCALE), 3 << 24]


def test_encoding_refuses_what_does_not_fit() -> None:
    secagg.encode_input([np.array([2.0**24], np.float32)], 1)  # exactly 2^48: fits
    secagg.encode_input([np.array([1.0], np.float32)], secagg.MAX_WEIGHT)
    cases = [
        ([np.array([2.0**24 + 2], np.float32)], 1, "fixed-point range"),
        ([np.array([1.0], np.float32)], 2 * 2**23 + 1, "outside 1.."),  # weight 2^24 + 1
        ([np.array([2.0**23], np.float32)], 3, "fixed-point range"),
        ([np.array([np.nan], np.float32)], 1, "not finite"),
        ([np.array([np.inf], np.float32)], 1, "not finite"),
        ([np.array([1], np.int32)], 1, "dtype"),
        ([np.array([1.0], np.float32)], 0, "outside 1.."),
        ([np.array([1.0], np.float32)], True, "must be an int"),
        ([np.array([1.0], np.float32)], 1.0, "must be an int"),
    ]
    for delta, weight, match in cases:
        with pytest.raises(secagg.EncodingError, match=match):
            secagg.encode_input(delta, weight)


def test_decoding_a_ring_sum_gives_the_weighted_sums_and_weights() -> None:
    rng = np.random.default_rng(3)
    shapes = {"w": (4, 3), "b": (3,)}
    deltas = [[rng.normal(size=s).astype(np.float32) for s in shapes.values()] for _ in range(4)]
    for d in deltas:
        d[0][0, 0] = 0.0  # untrained here
    deltas[0][1][1] = 0.0
    weights = [3, 10, 1, 7]
    ring = np.zeros(secagg.input_words(shapes.values()), np.uint64)
    for d, w in zip(deltas, weights, strict=True):
        ring += secagg.encode_input(d, w)
    sums, touched = secagg.decode_sum(ring, shapes, sum(weights))
    for k, name in enumerate(shapes):
        exact = sum(w * d[k].astype(np.float64) for d, w in zip(deltas, weights, strict=True))
        assert sums[name].shape == shapes[name] and sums[name].dtype == np.float64
        np.testing.assert_allclose(sums[name], exact, rtol=0, atol=4 * 2.0**-25)
        tw = sum(w * (d[k] != 0) for d, w in zip(deltas, weights, strict=True))
        assert np.array_equal(touched[name], tw.astype(np.float64))
    assert touched["w"][0, 0] == 0.0 and touched["b"][1] == 18.0


def test_decoding_refuses_a_sum_with_a_mask_left_in() -> None:
    shapes = {"w": (50,)}
    x = secagg.encode_input([np.ones(50, np.float32)], 2)
    secagg.decode_sum(x.copy(), shapes, 2)
    with pytest.raises(secagg.SecaggError, match="mask was left in"):
        secagg.decode_sum(x.copy(), shapes, 1)  # a weight over the total
    masked = x.copy()
    secagg.add_prg(masked, os.urandom(32), 1)
    with pytest.raises(secagg.SecaggError, match="mask was left in"):
        secagg.decode_sum(masked, shapes, 2)
    with pytest.raises(secagg.SecaggError, match="100 uint64"):
        secagg.decode_sum(x[:-1], shapes, 2)


# -- masks


def test_pairwise_masks_cancel_in_the_sum() -> None:
    ids = ["plant-a", "plant-b", "plant-c", "plant-d"]
    keys = {a: _pair() for a in ids}
    rng = np.random.default_rng(4)
    xs = {a: secagg.encode_input([rng.normal(size=30).astype(np.float32)], 5) for a in ids}
    bs = {a: os.urandom(32) for a in ids}
    total = np.zeros(60, np.uint64)
    for u in ids:
        pairs = [
            (secagg.pair_sign(u, v), secagg.mask_seed(keys[u][0], keys[v][1], 9))
            for v in ids
            if v != u
        ]
        y = secagg.mask_input(xs[u], bs[u], pairs)
        assert not np.array_equal(y, xs[u])
        total += y
    for u in ids:
        secagg.add_prg(total, bs[u], -1)
    assert np.array_equal(total, sum(xs.values()))
    # one pair alone: u's mask and v's mask are opposite
    (su, su_pk), (sv, sv_pk) = keys["plant-a"], keys["plant-b"]
    zero = np.zeros(8, np.uint64)
    mu = secagg.mask_input(zero, bytes(32), [(1, secagg.mask_seed(su, sv_pk, 9))])
    mv = secagg.mask_input(zero, bytes(32), [(-1, secagg.mask_seed(sv, su_pk, 9))])
    prg0 = secagg.prg_words(bytes(32), 8)
    assert np.array_equal(mu + mv, prg0 + prg0)
    assert secagg.pair_sign("a", "b") == 1 and secagg.pair_sign("b", "a") == -1
    with pytest.raises(ValueError, match="itself"):
        secagg.pair_sign("a", "a")


def test_constants() -> None:
    assert secagg.FRACTION_BITS == 24
    assert (secagg.MIN_ROSTER, secagg.MAX_ROSTER) == (3, 16_384)
    assert secagg.MAX_ROSTER * secagg.MAX_ENCODED <= 2**63 - 1
    assert [secagg.threshold_for(n) for n in (3, 4, 5, 100)] == [2, 3, 3, 51]


# -- bodies


def _bodies() -> list:
    pk, ct, sh = os.urandom(32), os.urandom(92), os.urandom(32)
    return [
        SecaggKeysBody(round_id=1, c_pk=pk, s_pk=os.urandom(32)),
        SecaggRosterBody(
            round_id=1,
            threshold=2,
            agents=[RosterEntry(id=f"p{i}", c_pk=pk, s_pk=pk) for i in "abc"],
        ),
        SecaggSharesBody(round_id=1, shares=[OutgoingShare(to="pb", ct=ct)]),
        SecaggInboxBody(round_id=1, shares=[IncomingShare.of("pa", ct)]),
        SecaggMaskedBody(
            round_id=1, base_version=0, num_samples=3, masked=bytes(32), metrics={"loss": 1}
        ),
        SecaggUnmaskBody(round_id=1, survivors=["pa", "pb"]),
        SecaggRevealBody(
            round_id=1,
            shares=[
                RevealedShare(of="pa", secret="b", share=sh),
                RevealedShare(of="pb", secret="s", share=sh),
            ],
        ),
    ]


def test_secagg_bodies_round_trip_and_are_registered() -> None:
    for body in _bodies():
        assert BODIES[body.kind] is type(body)
        assert decode(message("plant-a", body), type(body)).body == body
    inbox = msgpack.unpackb(message("c", _bodies()[3]))["body"]
    assert set(inbox["shares"][0]) == {"from", "ct"}  # "from" on the wire
    masked = decode(message("plant-a", _bodies()[4])).body
    assert masked.metrics == {"loss": 1.0} and type(masked.metrics["loss"]) is float


def _wire(body) -> dict:
    return msgpack.unpackb(message("plant-a", body))


@pytest.mark.parametrize(
    ("index", "mutate", "where"),
    [
        (0, lambda b: b.update(c_pk=bytes(31)), "c_pk"),
        (0, lambda b: b.update(s_pk="x" * 32), "s_pk"),  # a str, not a bin
        (1, lambda b: b["agents"][0].update(extra=1), "agents.0.extra"),
        (2, lambda b: b["shares"][0].update(ct=bytes(93)), "shares.0.ct"),
        (2, lambda b: b["shares"][0].update(to="a/b"), "shares.0.to"),
        (3, lambda b: b["shares"][0].update(sender=b["shares"][0].pop("from")), "from"),
        (4, lambda b: b.update(masked=bytes(24)), "masked"),
        (4, lambda b: b.update(masked=b""), "masked"),
        (4, lambda b: b.update(num_samples=0), "num_samples"),
        (5, lambda b: b.update(survivors=["bad id"]), "survivors.0"),
        (6, lambda b: b["shares"][0].update(secret="x"), "shares.0.secret"),
        (6, lambda b: b["shares"][0].update(share=bytes(16)), "shares.0.share"),
    ],
)
def test_secagg_bodies_refuse_malformed_fields(index: int, mutate, where: str) -> None:
    wire = _wire(_bodies()[index])
    mutate(wire["body"])
    with pytest.raises(SchemaError) as err:
        decode(msgpack.packb(wire))
    assert where in err.value.where or where in str(err.value)


def test_the_roster_and_lists_are_bounded() -> None:
    wire = _wire(_bodies()[5])
    wire["body"]["survivors"] = [f"p{i}" for i in range(secagg.MAX_ROSTER + 1)]
    with pytest.raises(SchemaError, match="survivors"):
        decode(msgpack.packb(wire))


def test_task_secure_aggregation_flag() -> None:
    base = {"round_id": 1, "state": "open", "base_version": 0, "deadline_ts": 1.0, "selected": []}
    assert TaskBody(**base).secure_aggregation is False
    task = TaskBody(**base, secure_aggregation=True)
    assert decode(message("c", task), TaskBody).body == task
    wire = _wire(task)
    wire["body"]["secure_aggregation"] = 1  # strict: a bool only
    with pytest.raises(SchemaError, match="secure_aggregation"):
        decode(msgpack.packb(wire))
    wire["body"].update(secure_aggregation=True, mode="async")
    with pytest.raises(SchemaError, match="sync mode only"):
        decode(msgpack.packb(wire))
