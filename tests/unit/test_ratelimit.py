from __future__ import annotations

import pytest

from alchimia.coordinator.ratelimit import RateLimiter


def test_burst_then_steady_rate_per_sender() -> None:
    rl = RateLimiter(rate_per_s=2.0, burst=3)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b", 0.0)  # another sender is not affected
    assert not rl.allow("a", 0.4)
    assert rl.allow("a", 0.5)  # one token back after 0.5 s at 2/s
    assert not rl.allow("a", 0.5)
    assert [rl.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]


def test_sender_table_is_bounded() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=1, max_senders=10)
    for i in range(1000):
        rl.allow(f"s{i}", float(i) / 1000)
    assert len(rl._buckets) <= 10


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)


def test_credit_allows_answers_on_top_of_a_full_bucket_without_piling_up() -> None:
    rl = RateLimiter(rate_per_s=1.0, burst=2)
    rl.credit("a", 3, 0.0)  # a new sender: full bucket plus the credit
    assert [rl.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    rl.credit("b", 3, 0.0)
    rl.credit("b", 3, 0.0)  # unused credit does not add up beyond one credit
    assert sum(rl.allow("b", 0.0) for _ in range(10)) == 5
    rl.credit("c", 3, 0.0)
    assert sum(rl.allow("c", 100.0) for _ in range(10)) == 5  # credit kept while unspent
    assert rl.allow("b", 1.0) and not rl.allow("b", 1.0)  # then the steady rate again
