"""Per-sender token buckets, without I/O: one flooding agent cannot starve the others.

Checked before decoding, so a flood costs the coordinator a dictionary look-up per message.
The steady rate covers what an agent sends of its own accord (per heat, on a timer); the
answers to what the coordinator publishes (a task, a model) are credited to the agent
(``credit``) as the coordinator publishes it, so fast rounds never starve an agent.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, max_senders: int = 100_000) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.max_senders = rate_per_s, float(burst), max_senders
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, sender: str, now: float) -> bool:
        bucket = self._bucket(sender, now)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def credit(self, sender: str, tokens: float, now: float) -> None:
        """Allow ``tokens`` more messages from a sender the coordinator asked to answer
        (on top of a full bucket at most, so unused credit does not pile up)."""
        bucket = self._bucket(sender, now)
        bucket.tokens = min(bucket.tokens + tokens, self.burst + tokens)

    def _bucket(self, sender: str, now: float) -> _Bucket:
        """The sender's bucket, refilled up to now (a new sender starts full)."""
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders:
                self._forget_full(now)
            bucket = self._buckets[sender] = _Bucket(self.burst, now)
        elif bucket.tokens < self.burst:  # credit above a full bucket is kept until spent
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        return bucket

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no information any more."""
        full = [
            k
            for k, b in self._buckets.items()
            if b.tokens + (now - b.stamp) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_senders:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].stamp)
            del self._buckets[oldest]
