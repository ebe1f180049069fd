"""Counting and logging refused input, without I/O beyond a ``logging.Logger``.

Every process that reads messages from others (coordinator, agent, the agent's request
service and sensor feeds) refuses some of them. Two rules hold for all of them:

* **Every refusal is counted** under its reason, a short code from a fixed set in the
  code (``malformed``, ``rate_limited``, ...; docs/PROTOCOL.md lists them), never the
  free text, so the counts stay small and can be read at any time
  (:attr:`RejectionLog.counts`, e.g. by a metrics exporter).
* **The log stays bounded and cannot be forged.** Each reason has a token bucket of log
  lines (``burst`` at once, then ``per_s``); refusals beyond it are not logged one by one
  but summed up in one line per ``summary_s`` ("N more rejections not logged ...").
  Every argument of a line goes through :func:`escape`: control characters (a newline
  that would start a fake log record, ESC sequences, bidi overrides) are written as
  escapes, and long values are cut.

So 10,000 hostile messages in a minute cost a handful of lines per reason and one
summary, while their exact counts stay in memory.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable

__all__ = ["MAX_VALUE_CHARS", "OTHER", "RejectionLog", "escape"]

#: Longest text of one argument written to a log line (longer ones are cut).
MAX_VALUE_CHARS = 500
#: Where refusals go once ``max_reasons`` distinct reasons have been counted.
OTHER = "other"

# C0 and C1 controls, DEL, line/paragraph separators, and the bidi controls that make a
# terminal show text in another order than it is written (CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(value: object, limit: int = MAX_VALUE_CHARS) -> str:
    """``value`` as text that stays on one log line: control characters as ``\\xNN`` or
    ``\\uNNNN`` escapes, cut after ``limit`` characters with the full length noted."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    out = _UNSAFE.sub(_escape_char, text[:limit] if cut else text)
    return f"{out}... ({len(text)} chars)" if cut else out


def _safe_arg(arg: object) -> object:
    """Numbers keep their type (``%d``, ``%.1f``); everything else becomes escaped text."""
    if isinstance(arg, int | float) and not isinstance(arg, bool):
        return arg
    return escape(arg)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class RejectionLog:
    """Counts refusals by reason and logs a bounded, escaped sample of them.

    Thread safe (paho callbacks and a work loop may share one). ``what`` names the things
    counted in the summary line ("rejections", "failed steps").
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 5,
        per_s: float = 1 / 60,
        summary_s: float = 60.0,
        level: int = logging.WARNING,
        what: str = "rejections",
        max_reasons: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or per_s <= 0 or summary_s <= 0 or max_reasons < 1:
            raise ValueError("need burst >= 1, per_s > 0, summary_s > 0, max_reasons >= 1")
        self.logger, self.level, self.what = logger, level, what
        self.burst, self.per_s, self.summary_s = float(burst), per_s, summary_s
        self.max_reasons = max_reasons
        self._clock = clock
        self._lock = threading.Lock()
        #: Every refusal since start, by reason.
        self.counts: Counter[str] = Counter()
        self._buckets: dict[str, _Bucket] = {}
        self._held: Counter[str] = Counter()  # not logged since the last summary
        self._summary_at: float | None = None  # when the held ones are summed up
        self.lines = 0  # lines written (refusals and summaries)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts, for a reader on another thread."""
        with self._lock:
            return dict(self.counts)

    def reject(
        self, reason: str, msg: str, *args: object, level: int | None = None, exc_info: bool = False
    ) -> bool:
        """Count one refusal under ``reason`` and log ``msg % args`` (arguments escaped, at
        ``level``, else the log's) if the reason's bucket allows; True if it was logged."""
        now = self._clock()
        with self._lock:
            if reason not in self.counts and len(self.counts) >= self.max_reasons:
                reason = OTHER
            self.counts[reason] += 1
            bucket = self._buckets.get(reason)
            if bucket is None:
                bucket = self._buckets[reason] = _Bucket(self.burst, now)
            else:
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.per_s)
                bucket.stamp = now
            logged = bucket.tokens >= 1.0
            if logged:
                bucket.tokens -= 1.0
                self.lines += 1
            else:
                self._held[reason] += 1
                if self._summary_at is None:
                    self._summary_at = now + self.summary_s
            summary = self._due_summary(now)
        if logged:
            self.logger.log(
                self.level if level is None else level,
                msg,
                *map(_safe_arg, args),
                exc_info=exc_info,
            )
        if summary is not None:
            self.logger.log(self.level, *summary)
        return logged

    def tick(self) -> None:
        """Write the summary of refusals not logged, if it is due; call it now and then
        (a work loop's step), so that a flood that stopped is still summed up."""
        with self._lock:
            summary = self._due_summary(self._clock())
        if summary is not None:
            self.logger.log(self.level, *summary)

    def _due_summary(self, now: float) -> tuple[object, ...] | None:
        """The summary line's format and arguments, if due (under the lock)."""
        if self._summary_at is None or now < self._summary_at:
            return None
        held = sum(self._held.values())
        by_reason = ", ".join(f"{r} {n}" for r, n in self._held.most_common())
        totals = ", ".join(f"{r} {n}" for r, n in self.counts.most_common())
        self._held.clear()
        self._summary_at = None
        self.lines += 1
        return (
            "%d more %s not logged in the last %.0f s (%s); since start: %s",
            held,
            self.what,
            self.summary_s,
            escape(by_reason),
            escape(totals),
        )
