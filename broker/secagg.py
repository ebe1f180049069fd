"""Secure aggregation primitives, without I/O (docs/PROTOCOL.md, "Secure aggregation (sync
rounds)"): what the agent (``agent.secagg_client``) and the coordinator
(``coordinator.secure_round``) both compute.

Bonawitz et al. 2017 with its dropout recovery: X25519 key agreement, HKDF-SHA256 for the
pairwise mask seeds and the share keys, ChaCha20-Poly1305 for the shares relayed by the
coordinator, Shamir sharing in GF(2^128) (PyCryptodome's ``Shamir``, the same field and
encoding) of the self-mask seed ``b`` and of the ``s`` private key, the ChaCha20 keystream as
the mask generator, and the fixed-point input vector in the ring of integers mod 2^64
(numpy ``uint64`` arithmetic wraps, which is exactly that ring).

Splitting uses ``Shamir.split``. Rebuilding uses :class:`Interpolator`, the same Lagrange
interpolation at 0 as ``Shamir.combine`` (tests check they agree), with the coefficients of a
set of share indices computed once: the coordinator rebuilds every secret of a round from
the same revealers, and ``Shamir.combine`` costs O(t^2) slow field products per secret.

The wire sizes (key, share and ciphertext bytes, the largest roster) are declared in
``broker.schemas``, which every client imports without this module's cryptography libraries;
they are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

import numpy as np
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alchimia.broker.schemas import (
    CIPHERTEXT_BYTES,
    KEY_BYTES,
    MASKED_BYTES_PER_ELEMENT,
    MAX_ROSTER,
    SHARE_BYTES,
)

__all__ = [
    "CIPHERTEXT_BYTES",
    "FRACTION_BITS",
    "KEY_BYTES",
    "MASKED_BYTES_PER_ELEMENT",
    "MAX_ENCODED",
    "MAX_ROSTER",
    "MAX_WEIGHT",
    "MIN_ROSTER",
    "NONCE_BYTES",
    "PLAINTEXT_BYTES",
    "SECRET_BYTES",
    "SHARE_BYTES",
    "EncodingError",
    "Interpolator",
    "RandBytes",
    "SecaggError",
    "ShareError",
    "add_prg",
    "check_public_key",
    "combine_secret",
    "decode_sum",
    "decrypt_shares",
    "encode_input",
    "encrypt_shares",
    "input_words",
    "mask_input",
    "mask_seed",
    "new_private_key",
    "pair_sign",
    "prg_words",
    "public_key",
    "share_aad",
    "share_key",
    "split_secret",
    "threshold_for",
]

#: Fractional bits of the fixed-point input: enc(r) = round_half_even(r * 2^24) mod 2^64.
FRACTION_BITS: Final = 24
#: Largest |round(r * 2^24)| an input word may hold (|r| <= 2^24): 16,384 of them cannot wrap.
MAX_ENCODED: Final = 1 << 48
#: Largest update weight (num_samples): its "touched" word w * 2^24 must fit MAX_ENCODED.
MAX_WEIGHT: Final = MAX_ENCODED >> FRACTION_BITS
#: Fewest agents in a roster.
MIN_ROSTER: Final = 3
#: A secret (self-mask seed b, an X25519 private key), a mask seed, a share key.
SECRET_BYTES: Final = 32
#: ChaCha20-Poly1305 nonce of a share ciphertext, and its plaintext share_s || share_b.
NONCE_BYTES: Final = 12
PLAINTEXT_BYTES: Final = 2 * SHARE_BYTES

_SCALE: Final = float(1 << FRACTION_BITS)
_MASK_INFO: Final = "alchimia/v1/secagg/mask/{round_id}"
_SHARE_INFO: Final = "alchimia/v1/secagg/share/{round_id}"
_HALF: Final = SECRET_BYTES // 2
_WORD: Final = np.dtype("<u8")

#: Where randomness comes from (``os.urandom``; tests may inject a seeded one).
RandBytes = Callable[[int], bytes]


class SecaggError(ValueError):
    """A secure-aggregation computation that cannot go on (the text says why)."""


class ShareError(SecaggError):
    """A share ciphertext that does not decrypt (counted as ``bad_share``)."""


class EncodingError(SecaggError):
    """An update that does not fit the fixed-point input: the agent sends nothing."""


# -- keys


def threshold_for(roster_size: int) -> int:
    """Shares needed to rebuild a secret of a roster of ``roster_size``: a majority."""
    return roster_size // 2 + 1


def new_private_key(randbytes: RandBytes = os.urandom) -> bytes:
    """A fresh X25519 private key, 32 raw bytes."""
    raw = randbytes(KEY_BYTES)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"randbytes gave {len(raw)} bytes, not {KEY_BYTES}")
    return raw


def public_key(private: bytes) -> bytes:
    """The X25519 public key (32 raw bytes) of a raw private key."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


_PROBE: Final = X25519PrivateKey.from_private_bytes(bytes(range(1, KEY_BYTES + 1)))


def check_public_key(public: bytes) -> None:
    """Refuse (SecaggError) a public key no agreement can use: one of small order, whose
    shared secret is all zeros whatever the private key (X25519 clamps it to a multiple
    of 8)."""
    if len(public) != KEY_BYTES:
        raise SecaggError(f"a public key has {KEY_BYTES} bytes, not {len(public)}")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise SecaggError("a public key of small order (no shared secret)") from None


def _agree(private: bytes, peer_public: bytes, info: str) -> bytes:
    try:
        shared = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(peer_public)
        )
    except ValueError:
        raise SecaggError("a public key of small order (no shared secret)") from None
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SECRET_BYTES, salt=None, info=info.encode())
    return hkdf.derive(shared)


def mask_seed(s_private: bytes, peer_s_public: bytes, round_id: int) -> bytes:
    """k_uv: the pairwise mask seed of two agents (the same from either side)."""
    return _agree(s_private, peer_s_public, _MASK_INFO.format(round_id=round_id))


def share_key(c_private: bytes, peer_c_public: bytes, round_id: int) -> bytes:
    """The ChaCha20-Poly1305 key of the shares two agents send each other."""
    return _agree(c_private, peer_c_public, _SHARE_INFO.format(round_id=round_id))


# -- share encryption


def share_aad(round_id: int, sender: str, recipient: str) -> bytes:
    """Associated data of a share ciphertext: ``"{round_id}/{u}/{v}"``, u the sender."""
    return f"{round_id}/{sender}/{recipient}".encode("ascii")


def encrypt_shares(
    key: bytes,
    round_id: int,
    sender: str,
    recipient: str,
    share_s: bytes,
    share_b: bytes,
    randbytes: RandBytes = os.urandom,
) -> bytes:
    """``nonce || ChaCha20-Poly1305(share_s || share_b)``: CIPHERTEXT_BYTES bytes."""
    if len(share_s) != SHARE_BYTES or len(share_b) != SHARE_BYTES:
        raise ValueError(f"shares have {SHARE_BYTES} bytes each")
    nonce = randbytes(NONCE_BYTES)
    sealed = ChaCha20Poly1305(key).encrypt(
        nonce, share_s + share_b, share_aad(round_id, sender, recipient)
    )
    return nonce + sealed


def decrypt_shares(
    key: bytes, round_id: int, sender: str, recipient: str, ciphertext: bytes
) -> tuple[bytes, bytes]:
    """``(share_s, share_b)`` of a ciphertext ``sender`` addressed to ``recipient``;
    ShareError if it does not decrypt (wrong key, round, parties, or tampered)."""
    if len(ciphertext) != CIPHERTEXT_BYTES:
        raise ShareError(f"a share ciphertext has {CIPHERTEXT_BYTES} bytes, not {len(ciphertext)}")
    nonce, sealed = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, sealed, share_aad(round_id, sender, recipient))
    except InvalidTag:
        raise ShareError(f"the shares {sender} sent {recipient} do not decrypt") from None
    return plain[:SHARE_BYTES], plain[SHARE_BYTES:]


# -- Shamir sharing in GF(2^128): x^128 + x^7 + x^2 + x + 1, 16 bytes big-endian, bit i = x^i

_MASK128: Final = (1 << 128) - 1


def split_secret(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """``count`` shares of a 32-byte secret, any ``threshold`` of which rebuild it; share
    ``j`` (index ``j + 1``) is the two halves' shares of that index, concatenated."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret has {SECRET_BYTES} bytes, not {len(secret)}")
    if not 1 <= threshold <= count <= MAX_ROSTER:
        raise ValueError(f"threshold {threshold} of {count} shares")
    halves = [Shamir.split(threshold, count, secret[i : i + _HALF], ssss=False) for i in (0, _HALF)]
    out: list[bytes] = []
    for (i0, lo), (i1, hi) in zip(*halves, strict=True):
        assert i0 == i1 == len(out) + 1
        out.append(lo + hi)
    return out


def _reduce(z: int) -> int:
    """z modulo x^128 + x^7 + x^2 + x + 1 (z of any degree)."""
    while hi := z >> 128:
        z = (z & _MASK128) ^ hi ^ (hi << 1) ^ (hi << 2) ^ (hi << 7)
    return z


def _gf_mul(a: int, b: int) -> int:
    """Product in GF(2^128); fast when one factor is small (share indices)."""
    if a < b:
        a, b = b, a
    z = 0
    while b:
        low = b & -b
        z ^= a << (low.bit_length() - 1)
        b ^= low
    return _reduce(z)


def _gf_inv(a: int) -> int:
    """a^-1 = a^(2^128 - 2)."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse")
    result, base, exponent = 1, a, (1 << 128) - 2
    while exponent:
        if exponent & 1:
            result = _gf_mul(result, base)
        base = _gf_mul(base, base)
        exponent >>= 1
    return result


def _table(coefficient: int) -> list[int]:
    """coefficient x c (carry-less, unreduced) for every byte c."""
    table = [0] * 256
    for c in range(1, 256):
        table[c] = (table[c >> 1] << 1) ^ (coefficient if c & 1 else 0)
    return table


class Interpolator:
    """Lagrange interpolation at 0 for one set of share indices: rebuilds any number of
    secrets shared among the same indices at the cost of ``threshold`` field products per
    half (the coefficients are computed once, with a single field inversion). Not constant
    time: the coordinator runs it on shares it is meant to see."""

    def __init__(self, indices: Sequence[int]) -> None:
        xs = list(indices)
        if not xs or len(set(xs)) != len(xs) or not all(1 <= x <= MAX_ROSTER for x in xs):
            raise ValueError(f"share indices must be distinct, in 1..{MAX_ROSTER}: {xs}")
        self.indices = tuple(xs)
        # l_j(0) = prod_{m != j} x_m / (x_j + x_m)  (in GF(2^k), minus is plus)
        dens = []
        for j, xj in enumerate(xs):
            den = 1
            for m, xm in enumerate(xs):
                if m != j:
                    den = _gf_mul(den, xj ^ xm)
            dens.append(den)
        nums = []
        prefix = 1
        for x in xs:  # numerator of j: the product of the others (prefix x suffix)
            nums.append(prefix)
            prefix = _gf_mul(prefix, x)
        suffix = 1
        for j in range(len(xs) - 1, -1, -1):
            nums[j] = _gf_mul(nums[j], suffix)
            suffix = _gf_mul(suffix, xs[j])
        inverses = _batch_inverse(dens)
        self._tables = [_table(_gf_mul(n, i)) for n, i in zip(nums, inverses, strict=True)]

    def combine(self, shares: Sequence[bytes]) -> bytes:
        """The secret of the 32-byte ``shares``, given in the order of ``indices``."""
        if len(shares) != len(self._tables):
            raise ValueError(f"{len(shares)} shares for {len(self._tables)} indices")
        out = b""
        for start in (0, _HALF):
            z = 0
            for table, share in zip(self._tables, shares, strict=True):
                if len(share) != SHARE_BYTES:
                    raise ValueError(f"a share has {SHARE_BYTES} bytes, not {len(share)}")
                y = int.from_bytes(share[start : start + _HALF], "big")
                shift = 0
                while y:
                    z ^= table[y & 0xFF] << shift
                    y >>= 8
                    shift += 8
            out += _reduce(z).to_bytes(_HALF, "big")
        return out


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Every value's inverse with one field inversion (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(_gf_mul(prefix[-1], v))
    inv = _gf_inv(prefix[-1])
    out = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        out[k] = _gf_mul(inv, prefix[k])
        inv = _gf_mul(inv, values[k])
    return out


def combine_secret(shares: Iterable[tuple[int, bytes]]) -> bytes:
    """The 32-byte secret of ``(index, share)`` pairs (as many as the threshold, or more)."""
    pairs = list(shares)
    return Interpolator([i for i, _ in pairs]).combine([s for _, s in pairs])


# -- masks


def prg_words(seed: bytes, count: int) -> np.ndarray:
    """PRG(seed): the first ``count`` little-endian uint64 words of the ChaCha20 keystream
    under key ``seed``, nonce 0, block counter 0 (read-only)."""
    if len(seed) != SECRET_BYTES:
        raise ValueError(f"a seed has {SECRET_BYTES} bytes, not {len(seed)}")
    # cryptography's 16-byte ChaCha20 nonce: 4-byte little-endian counter, 12-byte nonce.
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * count)), dtype=_WORD)


def add_prg(acc: np.ndarray, seed: bytes, sign: int) -> None:
    """``acc += sign * PRG(seed)`` in the ring (mod 2^64), in place; sign is +1 or -1."""
    words = prg_words(seed, acc.size)
    if sign == 1:
        np.add(acc, words, out=acc)
    elif sign == -1:
        np.subtract(acc, words, out=acc)
    else:
        raise ValueError(f"sign must be +1 or -1, not {sign}")


def pair_sign(u: str, v: str) -> int:
    """sign(u, v): +1 if u < v, -1 if u > v (ids compared as bytes)."""
    a, b = u.encode(), v.encode()
    if a == b:
        raise ValueError(f"no pairwise mask of {u} with itself")
    return 1 if a < b else -1


def mask_input(x: np.ndarray, self_seed: bytes, pairs: Iterable[tuple[int, bytes]]) -> np.ndarray:
    """y = x + PRG(b) + sum of sign * PRG(k) over ``(sign, k)`` pairs (mod 2^64): a new
    uint64 array; ``x`` is left as it is."""
    y = np.array(x, dtype=np.uint64, copy=True)
    add_prg(y, self_seed, 1)
    for sign, seed in pairs:
        add_prg(y, seed, sign)
    return y


# -- fixed-point input


def input_words(shapes: Iterable[tuple[int, ...]]) -> int:
    """2P: the words of an input vector for tensors of these shapes."""
    return 2 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes)


def encode_input(delta: Sequence[np.ndarray], weight: int) -> np.ndarray:
    """The input vector x (2P uint64 words) of a delta (its tensors in canonical order)
    weighted by ``weight``: per tensor, enc(w * d) then enc(w * (d != 0)).

    EncodingError if the weight is not an int in 1..MAX_WEIGHT, a value is not finite or
    |round(w * d * 2^24)| > 2^48. Exact for float32 deltas (w * d * 2^24 is a float64).
    """
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer):
        raise EncodingError(f"the weight must be an int, not {type(weight).__name__}")
    if not 1 <= weight <= MAX_WEIGHT:
        raise EncodingError(f"weight {weight} outside 1..{MAX_WEIGHT} (2^24)")
    sizes = [int(np.asarray(d).size) for d in delta]
    out = np.empty(2 * sum(sizes), dtype=np.uint64)
    factor, touched = float(weight) * _SCALE, np.uint64(int(weight) << FRACTION_BITS)
    pos = 0
    for k, (d, n) in enumerate(zip(delta, sizes, strict=True)):
        flat = np.asarray(d).reshape(-1)
        if flat.dtype.kind != "f":
            raise EncodingError(f"delta tensor {k} has dtype {flat.dtype}, not a float")
        scaled = np.rint(flat.astype(np.float64) * factor)
        if not np.isfinite(scaled).all():
            raise EncodingError(f"delta tensor {k} holds a value that is not finite")
        if n and float(np.abs(scaled).max()) > MAX_ENCODED:
            raise EncodingError(
                f"delta tensor {k}: weight x delta reaches {float(np.abs(flat).max()) * weight:g}"
                f", over the fixed-point range 2^24"
            )
        out[pos : pos + n] = scaled.astype(np.int64).view(np.uint64)
        out[pos + n : pos + 2 * n] = np.where(flat != 0, touched, np.uint64(0))
        pos += 2 * n
    return out


def decode_sum(
    ring: np.ndarray, shapes: Mapping[str, tuple[int, ...]], total_weight: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per tensor (``shapes`` in canonical order) the float64 sums of w * d and of the weights
    behind each coordinate, from an unmasked ring sum of inputs.

    SecaggError unless every weight word is a whole number in [0, total_weight] (a sum of
    weights must be; a wrong mask left in, from a wrong share or input, is not, but for a
    chance of (total_weight + 1) / 2^64 per coordinate)."""
    if ring.dtype != np.uint64 or ring.shape != (input_words(shapes.values()),):
        raise SecaggError(f"a ring sum of {input_words(shapes.values())} uint64 words expected")
    words = ring.view(np.int64)
    low_bits = np.int64((1 << FRACTION_BITS) - 1)
    ceiling = np.int64(int(total_weight) << FRACTION_BITS)
    sums: dict[str, np.ndarray] = {}
    touched: dict[str, np.ndarray] = {}
    pos = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape, dtype=np.int64))
        value, weight = words[pos : pos + n], words[pos + n : pos + 2 * n]
        if n and (
            (weight & low_bits).any() or int(weight.min()) < 0 or int(weight.max()) > ceiling
        ):
            raise SecaggError(
                f"the unmasked sum of {name!r} does not hold weights in [0, {total_weight}]: "
                "a mask was left in (a wrong revealed share or masked input)"
            )
        sums[name] = (value.astype(np.float64) / _SCALE).reshape(shape)
        touched[name] = (weight.astype(np.float64) / _SCALE).reshape(shape)
        pos += 2 * n
    return sums, touched
