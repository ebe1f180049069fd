"""broker.rejections: counted refusals, bounded and unforgeable log lines (issue 17 item 5,
issue 16 item 5). A fake clock, no I/O."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from alchimia.broker.rejections import OTHER, RejectionLog, escape


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stream() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing formatted lines to a buffer, as a file handler would."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("t.rejections")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, buf
    logger.removeHandler(handler)


def test_escape_keeps_a_value_on_one_line() -> None:
    assert escape("a\nERROR forged") == "a\\x0aERROR forged"
    assert escape("\r\x1b[31m\x00\x7f\x85") == "\\x0d\\x1b[31m\\x00\\x7f\\x85"
    assert escape("left\u202eright\u2028") == "left\\u202eright\\u2028"
    assert escape("plain text, ünï") == "plain text, ünï"
    assert escape(ValueError("x\ny")) == "x\\x0ay"


def test_escape_cuts_long_values_and_says_how_long_they_were() -> None:
    assert escape("x" * 1000, limit=10) == "x" * 10 + "... (1000 chars)"
    assert escape("x" * 10, limit=10) == "x" * 10


def test_a_newline_in_a_value_cannot_start_a_second_log_line(stream) -> None:
    logger, buf = stream
    rl = RejectionLog(logger, clock=Clock())
    key = "hidden\nERROR alchimia.coordinator: round 7 failed"
    assert rl.reject("schema", "rejected message on %s: %s", "t/a\r\nb", key)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("WARNING t.rejections: rejected message on t/a\\x0d\\x0ab: ")
    assert "hidden\\x0aERROR" in lines[0]


def test_numbers_keep_their_format(stream) -> None:
    logger, buf = stream
    RejectionLog(logger, clock=Clock()).reject("r", "%d from %s, %.1f", 3, 7, 2.25)
    assert buf.getvalue() == "WARNING t.rejections: 3 from 7, 2.2\n"


def test_ten_thousand_rejections_give_a_bounded_log_and_exact_counts(stream) -> None:
    logger, buf = stream
    clock = Clock()
    rl = RejectionLog(logger, burst=5, per_s=1 / 60, summary_s=60, clock=clock)
    for i in range(10_000):
        clock.now = i * 0.001  # ten seconds of flood
        rl.reject("malformed" if i % 4 else "rate_limited", "bad message %d: %s", i, "x\ny")
    clock.now = 61.0
    rl.tick()  # the flood stopped: the summary still comes
    lines = buf.getvalue().splitlines()
    assert rl.counts == {"malformed": 7500, "rate_limited": 2500}
    assert rl.total == 10_000
    assert len(lines) == 5 + 5 + 1 == rl.lines
    assert lines[-1] == (
        "WARNING t.rejections: 9990 more rejections not logged in the last 60 s "
        "(malformed 7495, rate_limited 2495); since start: malformed 7500, "
        "rate_limited 2500"
    )
    rl.tick()
    assert len(buf.getvalue().splitlines()) == 11  # nothing held: no second summary


def test_buckets_refill_per_reason_and_summaries_come_at_most_once_per_period(stream) -> None:
    logger, buf = stream
    clock = Clock()
    rl = RejectionLog(logger, burst=2, per_s=0.1, summary_s=60, clock=clock)
    logged = []
    for second in range(600):  # ten minutes, one refusal of each reason a second
        clock.now = float(second)
        logged += [rl.reject("a", "a"), rl.reject("b", "b")]
    summaries = [x for x in buf.getvalue().splitlines() if "not logged" in x]
    # per reason: the burst, then one line per 10 s; one summary per minute at most
    assert sum(logged) == 2 * (2 + 60 - 1)
    assert 9 <= len(summaries) <= 10
    assert rl.counts == {"a": 600, "b": 600}
    assert len(buf.getvalue().splitlines()) == rl.lines


def test_reasons_beyond_the_limit_are_counted_as_other(stream) -> None:
    logger, _ = stream
    rl = RejectionLog(logger, max_reasons=2, clock=Clock())
    for reason in ("a", "b", "c", "d", "a"):
        rl.reject(reason, "x")
    assert rl.counts == {"a": 2, "b": 1, OTHER: 2}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RejectionLog(logging.getLogger("t"), burst=0)
