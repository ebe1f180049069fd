"""An agent's side of a secure round (docs/PROTOCOL.md, "Secure aggregation (sync rounds)")
as a state machine without I/O.

Made on an open task with ``secure_aggregation`` that selects this agent: it draws the
round's two X25519 key pairs and holds the ``secagg_keys`` body to send (``keys``). Then
each event answers the bodies to send on ``agents/{agent_id}/secagg`` (in order):
``on_roster`` -> ``secagg_shares``; ``on_inbox`` and ``set_delta`` -> ``secagg_masked``
once both the inbox and the delta are in (the second of the two answers it);
``on_unmask`` -> ``secagg_reveal``. A message it refuses raises :class:`SecaggRefused`
(a ValueError, code ``invalid``: the agent's service counts it so). Share ciphertexts
that do not decrypt are counted in ``bad_shares``; their senders stay in U2 (their
pairwise masks are added) but their shares are never revealed.

What keeps a survivor's input hidden: the client answers at most one ``secagg_unmask`` per
round, and that answer holds, for each agent, either its ``b`` share or its ``s`` share,
never both.

Distributed differential privacy (a task with ``dp_clip_norm`` C and
``dp_noise_multiplier`` z; docs/PROTOCOL.md, "Differential privacy in a secure round"):
``set_delta`` clips the delta to L2 norm C (``agent.learn.privacy.clip``) and sets the
weight to 1 whatever the heats; when the masked input is built (the roster, hence the
threshold t, is in by then) the clipped delta gets N(0, (z C)^2 / t) on every coordinate
(``agent.learn.privacy.privatize`` with ``shares`` t), from an OS-seeded generator, before
the fixed-point encoding. The coordinator sees only the sum of at least t such inputs:
noise of std at least z C.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from enum import Enum

import numpy as np

from alchimia.agent.learn.privacy import clip, entropy_rng, privatize
from alchimia.broker import secagg
from alchimia.broker.schemas import (
    Body,
    OutgoingShare,
    RevealedShare,
    SecaggInboxBody,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggRosterBody,
    SecaggSharesBody,
    SecaggUnmaskBody,
    TaskBody,
)

log = logging.getLogger("alchimia.agent")


class SecaggRefused(ValueError):
    """A roster, inbox or unmask this agent does not follow (counted as ``code``)."""

    code = "invalid"


class Phase(Enum):
    KEYS_SENT = "keys_sent"  # waiting for the roster
    SHARES_SENT = "shares_sent"  # waiting for the inbox
    INBOX = "inbox"  # inbox in, waiting for the delta
    MASKED_SENT = "masked_sent"  # waiting for the unmask
    REVEALED = "revealed"  # answered the unmask: done
    OUT = "out"  # the delta did not fit: sends nothing more this round


class SecaggClient:
    """One agent in one secure round. ``randbytes``: the randomness of keys, seeds and
    nonces (``os.urandom``; Shamir's coefficients always come from PyCryptodome's
    generator, the operating system's). ``rng``: the DP noise's generator (default seeded
    from the operating system's entropy; only experiments and tests pass a seeded one)."""

    def __init__(
        self,
        agent_id: str,
        task: TaskBody,
        *,
        randbytes: secagg.RandBytes = os.urandom,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not task.secure_aggregation or task.state != "open":
            raise ValueError(f"task of round {task.round_id} is not an open secure round")
        if not task.selects(agent_id):
            raise ValueError(f"{agent_id} is not selected for round {task.round_id}")
        self.agent_id = agent_id
        self.round_id, self.base_version = task.round_id, task.base_version
        self._randbytes = randbytes
        self._c = secagg.new_private_key(randbytes)
        self._s = secagg.new_private_key(randbytes)
        self.keys = SecaggKeysBody(
            round_id=self.round_id,
            c_pk=secagg.public_key(self._c),
            s_pk=secagg.public_key(self._s),
        )
        self.phase = Phase.KEYS_SENT
        self.bad_shares = 0
        self.threshold = 0
        self._s_pks: dict[str, bytes] = {}  # roster: agent -> s public key
        self._c_pks: dict[str, bytes] = {}
        self._b = b""
        self._held: dict[str, tuple[bytes, bytes]] = {}  # agent -> (share_s, share_b)
        self.relayed: frozenset[str] = frozenset()  # U2
        self._x: np.ndarray | None = None
        self._num_samples = 0
        self._metrics: dict[str, float] = {}
        # Distributed DP: (C, z) from the task, the clipped delta waiting for the noise
        # (noised when the masked input is built), and why the input was not sent, if not.
        self.dp: tuple[float, float] | None = None
        if task.dp_clip_norm is not None and task.dp_noise_multiplier is not None:
            self.dp = (task.dp_clip_norm, task.dp_noise_multiplier)
        self._rng = rng if rng is not None else entropy_rng()
        self._clipped: dict[str, np.ndarray] | None = None
        self.skipped: str | None = None

    # -- events

    def on_roster(self, body: SecaggRosterBody) -> list[Body]:
        """Check the roster, share ``b`` and the ``s`` key: the ``secagg_shares`` to send."""
        self._expect(Phase.KEYS_SENT, body.round_id, "roster")
        ids = [entry.id for entry in body.agents]
        if len(ids) < secagg.MIN_ROSTER:
            raise SecaggRefused(f"a roster of {len(ids)} agents, fewer than 3")
        if any(a.encode() >= b.encode() for a, b in itertools.pairwise(ids)):
            raise SecaggRefused("a roster that is not sorted by id without repeats")
        mine = next((e for e in body.agents if e.id == self.agent_id), None)
        if mine is None or (mine.c_pk, mine.s_pk) != (self.keys.c_pk, self.keys.s_pk):
            raise SecaggRefused(f"a roster without {self.agent_id}'s keys")
        if body.threshold != secagg.threshold_for(len(ids)):
            raise SecaggRefused(
                f"threshold {body.threshold} is not the majority of {len(ids)} agents"
            )
        keys = [k for e in body.agents for k in (e.c_pk, e.s_pk)]
        if len(set(keys)) != len(keys):
            raise SecaggRefused("a roster with a public key repeated")
        try:
            for key in keys:
                secagg.check_public_key(key)
        except secagg.SecaggError as exc:
            raise SecaggRefused(f"roster: {exc}") from None
        self.threshold = body.threshold
        self._c_pks = {e.id: e.c_pk for e in body.agents}
        self._s_pks = {e.id: e.s_pk for e in body.agents}
        self._b = self._randbytes(secagg.SECRET_BYTES)
        shares_s = secagg.split_secret(self._s, self.threshold, len(ids))
        shares_b = secagg.split_secret(self._b, self.threshold, len(ids))
        out = []
        for j, v in enumerate(ids):
            if v == self.agent_id:
                self._held[v] = (shares_s[j], shares_b[j])
                continue
            key = secagg.share_key(self._c, self._c_pks[v], self.round_id)
            ct = secagg.encrypt_shares(
                key, self.round_id, self.agent_id, v, shares_s[j], shares_b[j], self._randbytes
            )
            out.append(OutgoingShare(to=v, ct=ct))
        self.phase = Phase.SHARES_SENT
        return [SecaggSharesBody(round_id=self.round_id, shares=out)]

    def on_inbox(self, body: SecaggInboxBody) -> list[Body]:
        """Take the shares relayed by U2; the ``secagg_masked`` if the delta is set."""
        self._expect(Phase.SHARES_SENT, body.round_id, "inbox")
        senders = [share.sender for share in body.shares]
        if len(set(senders)) != len(senders) or self.agent_id in senders:
            raise SecaggRefused("an inbox with a sender repeated or from this agent")
        if unknown := [u for u in senders if u not in self._s_pks]:
            raise SecaggRefused(f"an inbox with shares of agents outside the roster: {unknown}")
        if len(senders) + 1 < self.threshold:
            raise SecaggRefused(
                f"an inbox of {len(senders)} other agents, U2 under the threshold {self.threshold}"
            )
        for share in body.shares:
            key = secagg.share_key(self._c, self._c_pks[share.sender], self.round_id)
            try:
                self._held[share.sender] = secagg.decrypt_shares(
                    key, self.round_id, share.sender, self.agent_id, share.ct
                )
            except secagg.ShareError:
                self.bad_shares += 1
        self.relayed = frozenset([*senders, self.agent_id])
        self.phase = Phase.INBOX
        return self._masked_if_ready()

    def set_delta(
        self,
        delta: Sequence[np.ndarray],
        num_samples: int,
        metrics: Mapping[str, float] | None = None,
    ) -> list[Body]:
        """The trained shared delta (tensors in the base model's canonical order) and its
        weight; the ``secagg_masked`` if the inbox is in. EncodingError (a ValueError) if it
        does not fit the fixed-point input: the agent then sends nothing this round.

        With DP (the task's ``dp_*``) the delta is clipped now and noised when the masked
        input is built, and the weight is 1, whatever ``num_samples`` says (DP-FedAvg's
        uniform weighting: one plant moves the sum by at most 2 C)."""
        if (
            self._x is not None
            or self._clipped is not None
            or self.phase in (Phase.MASKED_SENT, Phase.REVEALED, Phase.OUT)
        ):
            raise ValueError(f"the delta of round {self.round_id} is already set")
        if self.dp is not None:
            num_samples = 1
        try:
            if self.dp is None:
                self._x = secagg.encode_input(delta, num_samples)
            else:
                clipped = clip({str(k): d for k, d in enumerate(delta)}, self.dp[0])
                secagg.encode_input(list(clipped.values()), 1)  # refuses what cannot fit
                self._clipped = clipped
        except secagg.EncodingError:
            self.phase = Phase.OUT
            raise
        self._num_samples, self._metrics = int(num_samples), dict(metrics or {})
        out = self._masked_if_ready()
        if self.phase is Phase.OUT:  # the noised delta did not fit
            raise secagg.EncodingError(str(self.skipped))
        return out

    def on_unmask(self, body: SecaggUnmaskBody) -> list[Body]:
        """Check U3 and answer, once: the ``secagg_reveal``."""
        if self.phase is Phase.REVEALED:
            raise SecaggRefused(f"a second unmask of round {self.round_id}")
        self._expect(Phase.MASKED_SENT, body.round_id, "unmask")
        survivors = body.survivors
        if any(a.encode() >= b.encode() for a, b in itertools.pairwise(survivors)):
            raise SecaggRefused("survivors not sorted by id without repeats")
        if outside := [v for v in survivors if v not in self.relayed]:
            raise SecaggRefused(f"survivors outside U2: {outside}")
        if self.agent_id not in survivors:
            raise SecaggRefused(f"survivors without {self.agent_id}")
        if len(survivors) < self.threshold:
            raise SecaggRefused(f"{len(survivors)} survivors, under the threshold {self.threshold}")
        self.phase = Phase.REVEALED  # before anything else: never a second answer
        alive = set(survivors)
        shares = [
            RevealedShare(of=v, secret="b", share=self._held[v][1])
            if v in alive
            else RevealedShare(of=v, secret="s", share=self._held[v][0])
            for v in sorted(self._held, key=str.encode)
        ]
        self._held = {}
        return [SecaggRevealBody(round_id=self.round_id, shares=shares)]

    # -- helpers

    def _expect(self, phase: Phase, round_id: int, what: str) -> None:
        if round_id != self.round_id:
            raise SecaggRefused(f"{what} of round {round_id}, this agent is in {self.round_id}")
        if self.phase is not phase:
            raise SecaggRefused(f"{what} of round {round_id} in phase {self.phase.value}")

    def _noised_input(self) -> np.ndarray | None:
        """DP: the clipped delta plus this agent's part of the noise, N(0, (z C)^2 / t),
        encoded with weight 1; None (and phase OUT) if the noise took it out of the
        fixed-point range (|value| > 2^24: only for an absurd z C)."""
        assert self.dp is not None and self._clipped is not None and self.threshold >= 1
        clip_norm, z = self.dp
        noised = privatize(self._clipped, clip_norm, z, self._rng, shares=self.threshold)
        self._clipped = None
        try:
            return secagg.encode_input(list(noised.values()), 1)
        except secagg.EncodingError as exc:
            self.phase, self.skipped = Phase.OUT, f"the noised delta does not fit: {exc}"
            log.warning(
                "agent %s sends nothing to secure round %d: %s (noise std %g)",
                self.agent_id,
                self.round_id,
                self.skipped,
                z * clip_norm / math.sqrt(self.threshold),
            )
            return None

    def _masked_if_ready(self) -> list[Body]:
        if self.phase is not Phase.INBOX or (self._x is None and self._clipped is None):
            return []
        if self._x is None and (x := self._noised_input()) is not None:
            self._x = x
        if self._x is None:
            return []
        pairs = [
            (
                secagg.pair_sign(self.agent_id, v),
                secagg.mask_seed(self._s, self._s_pks[v], self.round_id),
            )
            for v in sorted(self.relayed, key=str.encode)
            if v != self.agent_id
        ]
        y = secagg.mask_input(self._x, self._b, pairs)
        self._x = None
        self.phase = Phase.MASKED_SENT
        return [
            SecaggMaskedBody(
                round_id=self.round_id,
                base_version=self.base_version,
                num_samples=self._num_samples,
                masked=y.astype("<u8", copy=False).tobytes(),
                metrics=self._metrics,
            )
        ]
