"""The coordinator's side of a secure round (docs/PROTOCOL.md, "Secure aggregation (sync
rounds)") as a state machine without I/O, as ``coordinator.lifecycle`` is for rounds.

:class:`SecureRound` takes the agents' ``secagg_*`` messages (``on_keys``, ``on_shares``,
``on_masked``, ``on_reveal``) and the clock (``tick``); each answers a :class:`Refusal`
(count and log it: ``secagg_unexpected`` or ``bad_masked``) or the commands to execute in
order (:data:`SecureCommand`): publish the roster or the unmask on ``round/secagg``, an
inbox on ``round/secagg/{agent_id}``, and at the end :class:`Finished` (a
``coordinator.hierarchical.Partial`` to fold into the round's accumulator with
``merge_partial``, then finish it as any round) or :class:`Failed`. It never reads a
clock: ``now`` stamps the phase an event starts, and ``next_deadline`` says when ``tick``
has something to do. Phase timeouts are acted on by ``tick`` only.

Memory: the masked inputs are added into one running uint64 sum as they arrive (O(P));
the relayed ciphertexts take O(|U1|^2) x 92 bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from alchimia.broker import secagg
from alchimia.broker.schemas import (
    IncomingShare,
    RosterEntry,
    SecaggInboxBody,
    SecaggKeysBody,
    SecaggMaskedBody,
    SecaggRevealBody,
    SecaggRosterBody,
    SecaggSharesBody,
    SecaggUnmaskBody,
)
from alchimia.coordinator.hierarchical import Partial
from alchimia.coordinator.rounds import Refusal

log = logging.getLogger("alchimia.coordinator")

#: ``Partial.plant`` of a secure round's result.
PLANT = "secagg"
UNEXPECTED = "secagg_unexpected"
BAD_MASKED = "bad_masked"


class Phase(Enum):
    KEYS = "keys"  # waiting for secagg_keys
    SHARES = "shares"  # roster out, waiting for secagg_shares
    MASKED = "masked"  # inboxes out, waiting for secagg_masked
    REVEAL = "reveal"  # unmask out, waiting for secagg_reveal
    DONE = "done"  # finished or failed


@dataclass(frozen=True)
class PublishRoster:
    """``secagg_roster`` on ``round/secagg``."""

    body: SecaggRosterBody


@dataclass(frozen=True)
class PublishInbox:
    """``secagg_inbox`` on ``round/secagg/{agent_id}``."""

    agent_id: str
    body: SecaggInboxBody


@dataclass(frozen=True)
class PublishUnmask:
    """``secagg_unmask`` on ``round/secagg``."""

    body: SecaggUnmaskBody


@dataclass(frozen=True)
class Finished:
    """The round's sum: merge ``partial`` into the round's accumulator (``merge_partial``)
    and finish the round. ``metrics``: each survivor's ``secagg_masked`` metrics;
    ``dropped``: the selected agents that are not survivors."""

    partial: Partial
    metrics: dict[str, dict[str, float]]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class Failed:
    """The round cannot produce a sum: close it without a version."""

    reason: str


SecureCommand = PublishRoster | PublishInbox | PublishUnmask | Finished | Failed
Answer = Refusal | list[SecureCommand]


class SecureRound:
    """One secure round, from the open task to its sum (or failure).

    ``shared``: the base model's shared weights in canonical order (only names and shapes
    are read). ``quorum``: fewest survivors for a version (with ``threshold``, the more of
    the two). ``phase_timeout_s``: how long the keys, shares and reveal phases wait for
    stragglers; the masked phase waits until ``deadline_ts``. ``unit_weights``: the round
    has differential privacy (distributed noise): a masked input must carry
    ``num_samples`` 1, else one plant's data could move the sum by more than 2 C.
    """

    def __init__(
        self,
        round_id: int,
        base_version: int,
        selected: Iterable[str],
        quorum: int,
        shared: Mapping[str, np.ndarray],
        *,
        phase_timeout_s: float,
        opened_ts: float,
        deadline_ts: float,
        unit_weights: bool = False,
    ) -> None:
        self.round_id, self.base_version = round_id, base_version
        self.unit_weights = unit_weights
        self.selected = frozenset(selected)
        if not secagg.MIN_ROSTER <= len(self.selected) <= secagg.MAX_ROSTER:
            raise ValueError(
                f"a secure round selects {secagg.MIN_ROSTER} to {secagg.MAX_ROSTER} agents, "
                f"not {len(self.selected)}"
            )
        if not 1 <= quorum <= len(self.selected):
            raise ValueError(f"quorum {quorum} must be in 1..{len(self.selected)}")
        if not shared:
            raise ValueError("a secure round needs the model's shared tensors")
        if not phase_timeout_s > 0:
            raise ValueError(f"phase timeout must be > 0, not {phase_timeout_s}")
        self.quorum = quorum
        self.shapes = {name: tuple(int(n) for n in w.shape) for name, w in shared.items()}
        self.words = secagg.input_words(self.shapes.values())
        self.phase_timeout_s = phase_timeout_s
        self.deadline_ts = deadline_ts
        self.phase = Phase.KEYS
        self._phase_started = opened_ts
        self.failure: str | None = None
        # keys
        self._keys: dict[str, tuple[bytes, bytes]] = {}  # agent -> (c_pk, s_pk)
        self._used_keys: set[bytes] = set()
        self.roster: tuple[str, ...] = ()  # U1, sorted
        self.threshold = 0
        self._index: dict[str, int] = {}  # share index: position in the roster + 1
        # shares: sender -> recipient -> ciphertext
        self._shares: dict[str, dict[str, bytes]] = {}
        self.relayed: frozenset[str] = frozenset()  # U2
        # masked inputs
        self._sum: np.ndarray | None = None
        self._weights: dict[str, int] = {}
        self._metrics: dict[str, dict[str, float]] = {}
        self.survivors: tuple[str, ...] = ()  # U3, sorted
        self._survivor_set: frozenset[str] = frozenset()
        # reveals: secret owner -> share index -> share
        self._revealed: set[str] = set()
        self._b: dict[str, dict[int, bytes]] = {}
        self._s: dict[str, dict[int, bytes]] = {}

    # -- events

    def on_keys(self, sender: str, body: SecaggKeysBody, now: float) -> Answer:
        if refusal := self._check(sender, body.round_id, Phase.KEYS, self.selected, self._keys):
            return refusal
        for key in (body.c_pk, body.s_pk):
            try:
                secagg.check_public_key(key)
            except secagg.SecaggError as exc:
                return Refusal(UNEXPECTED, f"keys of {sender}: {exc}")
        used = self._used_keys
        if body.c_pk == body.s_pk or body.c_pk in used or body.s_pk in used:
            return Refusal(UNEXPECTED, f"keys of {sender}: a public key already in the round")
        self._keys[sender] = (body.c_pk, body.s_pk)
        used.update((body.c_pk, body.s_pk))
        if len(self._keys) == len(self.selected):
            return self._publish_roster(now)
        return []

    def on_shares(self, sender: str, body: SecaggSharesBody, now: float) -> Answer:
        if refusal := self._check(sender, body.round_id, Phase.SHARES, self._index, self._shares):
            return refusal
        to = {share.to: share.ct for share in body.shares}
        expected = set(self.roster) - {sender}
        if len(to) != len(body.shares) or set(to) != expected:
            return Refusal(
                UNEXPECTED,
                f"shares of {sender} are not one for each other agent of the roster "
                f"({len(body.shares)} entries, {len(set(to) - expected)} outside it)",
            )
        self._shares[sender] = to
        if len(self._shares) == len(self.roster):
            return self._publish_inboxes(now)
        return []

    def on_masked(self, sender: str, body: SecaggMaskedBody, now: float) -> Answer:
        if refusal := self._check(sender, body.round_id, Phase.MASKED, self.relayed, self._weights):
            return refusal
        if body.base_version != self.base_version:
            return Refusal(
                BAD_MASKED,
                f"masked input of {sender} against version {body.base_version}, "
                f"round base is {self.base_version}",
            )
        if len(body.masked) != 8 * self.words:
            return Refusal(
                BAD_MASKED,
                f"masked input of {sender} has {len(body.masked)} bytes, "
                f"the model needs {8 * self.words}",
            )
        if body.num_samples > secagg.MAX_WEIGHT:
            return Refusal(
                BAD_MASKED,
                f"masked input of {sender}: num_samples {body.num_samples} over "
                f"{secagg.MAX_WEIGHT} cannot be encoded",
            )
        if self.unit_weights and body.num_samples != 1:
            return Refusal(
                BAD_MASKED,
                f"masked input of {sender}: num_samples {body.num_samples} in a round with "
                "differential privacy, where every weight is 1",
            )
        assert self._sum is not None
        np.add(self._sum, np.frombuffer(body.masked, dtype="<u8"), out=self._sum)
        self._weights[sender] = body.num_samples
        self._metrics[sender] = dict(body.metrics)
        if len(self._weights) == len(self.relayed):
            return self._publish_unmask(now)
        return []

    def on_reveal(self, sender: str, body: SecaggRevealBody, now: float) -> Answer:
        if refusal := self._check(
            sender, body.round_id, Phase.REVEAL, self._survivor_set, self._revealed
        ):
            return refusal
        survivors = self._survivor_set
        seen: set[str] = set()
        for share in body.shares:
            if share.of not in self.relayed or share.of in seen:
                return Refusal(
                    UNEXPECTED,
                    f"reveal of {sender}: a share of {share.of}, not one per agent of U2",
                )
            if (share.secret == "b") != (share.of in survivors):
                return Refusal(
                    UNEXPECTED,
                    f"reveal of {sender}: the {share.secret} share of {share.of}, "
                    f"who {'survived' if share.of in survivors else 'dropped out'}",
                )
            seen.add(share.of)
        index = self._index[sender]
        for share in body.shares:
            owner = self._b if share.secret == "b" else self._s
            owner.setdefault(share.of, {})[index] = share.share
        self._revealed.add(sender)
        if len(self._revealed) == len(self.survivors):
            return [self._finish()]
        return []

    def next_deadline(self) -> float | None:
        """When ``tick`` has something to do unless an event comes first."""
        if self.phase is Phase.DONE:
            return None
        if self.phase is Phase.MASKED:
            return self.deadline_ts
        return self._phase_started + self.phase_timeout_s

    def tick(self, now: float) -> list[SecureCommand]:
        """End the phases whose time is up at ``now``: the next phase's publications, or
        Finished or Failed."""
        out: list[SecureCommand] = []
        while (due := self.next_deadline()) is not None and now >= due:
            out += self._timeout(now)  # each moves to the next phase or ends the round
        return out

    # -- phases

    def _timeout(self, now: float) -> list[SecureCommand]:
        if self.phase is Phase.KEYS:
            if len(self._keys) < secagg.MIN_ROSTER:
                return [self._fail(f"{len(self._keys)} agents sent keys, fewer than 3")]
            return self._publish_roster(now)
        if self.phase is Phase.SHARES:
            if len(self._shares) < self.threshold:
                return [
                    self._fail(
                        f"{len(self._shares)} agents sent shares, under the threshold "
                        f"{self.threshold}"
                    )
                ]
            return self._publish_inboxes(now)
        if self.phase is Phase.MASKED:
            return self._publish_unmask(now)
        if len(self._revealed) < self.threshold:
            return [
                self._fail(
                    f"{len(self._revealed)} survivors revealed their shares, under the "
                    f"threshold {self.threshold}"
                )
            ]
        return [self._finish()]

    def _publish_roster(self, now: float) -> list[SecureCommand]:
        self.roster = tuple(sorted(self._keys, key=str.encode))
        self._index = {agent: i + 1 for i, agent in enumerate(self.roster)}
        self.threshold = secagg.threshold_for(len(self.roster))
        self._enter(Phase.SHARES, now)
        agents = [
            RosterEntry(id=a, c_pk=self._keys[a][0], s_pk=self._keys[a][1]) for a in self.roster
        ]
        return [
            PublishRoster(
                SecaggRosterBody(round_id=self.round_id, threshold=self.threshold, agents=agents)
            )
        ]

    def _publish_inboxes(self, now: float) -> list[SecureCommand]:
        self.relayed = frozenset(self._shares)
        self._enter(Phase.MASKED, now)
        self._sum = np.zeros(self.words, dtype=np.uint64)
        out: list[SecureCommand] = []
        senders = sorted(self.relayed, key=str.encode)
        for v in senders:
            shares = [IncomingShare.of(u, self._shares[u][v]) for u in senders if u != v]
            out.append(PublishInbox(v, SecaggInboxBody(round_id=self.round_id, shares=shares)))
        self._shares = {}  # relayed: no longer needed
        return out

    def _publish_unmask(self, now: float) -> list[SecureCommand]:
        needed = max(self.threshold, self.quorum)
        if len(self._weights) < needed:
            return [
                self._fail(
                    f"{len(self._weights)} masked inputs, fewer than {needed} "
                    f"(threshold {self.threshold}, quorum {self.quorum})"
                )
            ]
        self.survivors = tuple(sorted(self._weights, key=str.encode))
        self._survivor_set = frozenset(self.survivors)
        self._enter(Phase.REVEAL, now)
        return [
            PublishUnmask(SecaggUnmaskBody(round_id=self.round_id, survivors=list(self.survivors)))
        ]

    def _finish(self) -> Finished | Failed:
        try:
            sums, touched = self._unmasked_sum()
        except secagg.SecaggError as exc:
            return self._fail(str(exc))
        self.phase = Phase.DONE
        partial = Partial(
            plant=PLANT,
            round_id=self.round_id,
            base_version=self.base_version,
            sums=sums,
            touched=touched,
            total_weight=float(sum(self._weights.values())),
            count=len(self.survivors),
            contributors=self.survivors,
        )
        dropped = tuple(sorted(self.selected - set(self.survivors)))
        return Finished(partial, {a: self._metrics[a] for a in self.survivors}, dropped)

    def _unmasked_sum(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Rebuild the secrets, remove the masks and decode; SecaggError if it cannot."""
        dropped = sorted(self.relayed - self._survivor_set, key=str.encode)
        cache: dict[tuple[int, ...], secagg.Interpolator] = {}
        seeds = {v: self._rebuild(v, "b", self._b, cache) for v in self.survivors}
        keys = {v: self._rebuild(v, "s", self._s, cache) for v in dropped}
        for v, private in keys.items():
            if secagg.public_key(private) != self._keys[v][1]:
                raise secagg.SecaggError(
                    f"the s key of {v} rebuilt from the reveals does not match its public "
                    "key: a revealed share is wrong"
                )
        ring = self._sum
        assert ring is not None
        self._sum = None
        for seed in seeds.values():
            secagg.add_prg(ring, seed, -1)
        for v, private in keys.items():
            for u in self.survivors:
                seed = secagg.mask_seed(private, self._keys[u][1], self.round_id)
                secagg.add_prg(ring, seed, -secagg.pair_sign(u, v))
        return secagg.decode_sum(ring, self.shapes, sum(self._weights.values()))

    def _rebuild(
        self,
        owner: str,
        secret: str,
        revealed: dict[str, dict[int, bytes]],
        cache: dict[tuple[int, ...], secagg.Interpolator],
    ) -> bytes:
        shares = revealed.get(owner, {})
        if len(shares) < self.threshold:
            raise secagg.SecaggError(
                f"{len(shares)} shares of {owner}'s {secret}, under the threshold {self.threshold}"
            )
        indices = tuple(sorted(shares)[: self.threshold])
        if (interpolator := cache.get(indices)) is None:
            interpolator = cache[indices] = secagg.Interpolator(indices)
        return interpolator.combine([shares[i] for i in indices])

    # -- helpers

    def _check(
        self,
        sender: str,
        round_id: int,
        phase: Phase,
        allowed: Collection[str],
        taken: Collection[str],
    ) -> Refusal | None:
        """The refusal common to every message kind, or None."""
        if round_id != self.round_id:
            return Refusal(UNEXPECTED, f"{phase.value} for round {round_id}, not {self.round_id}")
        if self.phase is not phase:
            return Refusal(UNEXPECTED, f"{phase.value} of {sender} in the {self.phase.value} phase")
        if sender not in allowed:
            return Refusal(UNEXPECTED, f"{sender} is not in the {phase.value} phase's agents")
        if sender in taken:
            return Refusal(UNEXPECTED, f"a second {phase.value} message of {sender}")
        return None

    def _enter(self, phase: Phase, now: float) -> None:
        self.phase, self._phase_started = phase, now

    def _fail(self, reason: str) -> Failed:
        self.phase, self.failure = Phase.DONE, reason
        self._sum = None
        log.warning("secure round %d failed: %s", self.round_id, reason)
        return Failed(reason)
