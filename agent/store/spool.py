"""Durable on-disk spool: the agent's write-ahead log in front of InfluxDB.

Why it exists: a furnace does not stop when the plant's InfluxDB does, and DESIGN.md says
no point is lost. ``append`` returns only after the encoded points were handed to the
kernel with ``write()``, so a point the store accepted survives a crash of the agent
(kill -9 included: the kernel owns the bytes); the sender reads records back in order and
``commit`` moves the committed position past them only after InfluxDB acknowledged them.

Only a power loss (or a kernel crash) loses what the kernel had not yet written to disk,
so the fsyncs are grouped (:class:`GroupSync`): at most one ``fdatasync`` per
``fsync_interval`` seconds (default 1 s), and no record waits longer than that for one; a
power loss loses at most the last ``fsync_interval`` seconds of points. An ``append`` an
interval or more after the last fsync syncs at once; the others are synced by whoever calls
:meth:`Spool.sync_if_due` when :meth:`Spool.until_sync` says (the sender thread of
:mod:`agent.store.buffered`), or by a later ``append``. ``fsync_interval=0`` syncs every
``append`` before it returns. What a power loss tore off the last segment's tail fails its
checksum and is cut on open, like a torn record.

Layout of the directory::

    LOCK                      flock'ed by the one process that owns the spool
    00000000000000000001.seg  segments: 8-byte magic, then records
    committed                 "<segment id> <offset> <crc32>": everything before was acknowledged
    rejected/                 batches InfluxDB refused (4xx) or corrupt bytes, with a reason

A record is ``<u32 payload length><u32 point count><u32 crc32>`` + payload (line protocol,
one point per line); the crc covers the first 8 header bytes and the payload, so a torn or
zero-filled tail left by a crash is recognised and cut off on open (it was never
acknowledged to a caller: ``append`` had not returned).

The committed position is rewritten in place after every batch, without fsync: losing it,
or a torn write that fails its checksum, only means replaying batches that InfluxDB already
has, which is harmless because InfluxDB keeps one point per measurement + tag set +
timestamp (a replayed point overwrites itself with the same values).
Segments are deleted once entirely committed. The limit on pending bytes makes the spool
refuse new points with :class:`SpoolFullError` (never drop accepted ones) when full.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from alchimia.agent.store.points import StoreError

try:  # ISA-L's crc32: the same checksum as zlib's, ten times faster (a PCLMUL kernel)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal comes with the InfluxDB store
    from zlib import crc32

log = logging.getLogger(__name__)

MAGIC = b"ALCSPL01"
_HEADER = struct.Struct("<III")
HEADER_SIZE = _HEADER.size
_LENGTH_COUNT = struct.Struct("<II")
#: Buffers one writev() takes at most (Linux's IOV_MAX is 1024).
_MAX_IOV = 512
_SEGMENT_SUFFIX = ".seg"
_MARKER_BYTES = 64  # the committed marker's fixed size, so that a rewrite covers the old one
#: Bytes read at a time: a default batch (5,000 points, ~1.2 MB) fits in one read, and after an
#: outage a batch does not read a whole segment to use a fraction of it.
_READ_CHUNK = 2 << 20
#: Seconds of appended points a power loss may take at most (a process crash takes none).
DEFAULT_FSYNC_INTERVAL_S = 1.0


class SpoolFullError(StoreError):
    """The spool reached its size limit; the points of this call were NOT accepted."""


class SpoolLockedError(StoreError):
    """Another live store owns this spool directory."""


class SpoolCorruptError(StoreError):
    """A record failed its checksum; the caller should quarantine the rest of the segment."""

    def __init__(self, position: Position, reason: str) -> None:
        super().__init__(
            f"corrupt spool record at segment {position[0]} offset {position[1]}: {reason}"
        )
        self.position = position
        self.reason = reason


Position = tuple[int, int]  # (segment id, byte offset in that segment)


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive records from ``start`` up to (excluding) ``end``."""

    start: Position
    end: Position
    payload: bytes  # line protocol, newline-terminated lines
    points: int


@dataclass(slots=True)
class GroupSync:
    """When appended data is fsync'd; sans-I/O: the caller passes the (monotonic) time.

    Two bounds: syncs are at least ``interval`` apart, and data waits at most ``interval``
    after its append for one. An append ``interval`` or more after the last sync is synced
    at once (with whatever waited); otherwise the data is synced at :attr:`due`, unless an
    append syncs it first. ``interval`` 0 syncs every append.
    """

    interval: float
    since: float = math.inf  # when the oldest data not yet synced was appended
    last: float = -math.inf  # when the last sync (or failed try) began

    def appended(self, now: float) -> bool:
        """Data was appended at ``now``; True: sync it now."""
        self.since = min(self.since, now)
        return now - self.last >= self.interval

    @property
    def dirty(self) -> bool:
        return self.since != math.inf

    @property
    def due(self) -> float:
        """When the appended data must be synced; infinity while everything is."""
        return max(self.since, self.last) + self.interval if self.dirty else math.inf

    def synced(self, began: float) -> None:
        """A sync that began at ``began`` covered everything appended so far."""
        self.since, self.last = math.inf, began

    def failed(self, began: float) -> None:
        """A sync failed: the data stays unsynced and is tried again an interval later."""
        self.last = began


def frame_header(payload: bytes, points: int) -> bytes:
    """The 12-byte header of a record: the payload follows it (``os.writev``, no copy)."""
    length = len(payload)
    return _HEADER.pack(length, points, crc32(payload, crc32(_LENGTH_COUNT.pack(length, points))))


def _marker_crc(seg: int, off: int) -> str:
    return f"{crc32(f'{seg} {off}'.encode()):08x}"


def _segment_name(seg_id: int) -> str:
    return f"{seg_id:020d}{_SEGMENT_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Append-only segmented log with a committed read position; thread safe.

    One thread appends (under the owner's lock or any), one thread reads and commits.
    ``max_bytes`` bounds the bytes not yet committed; disk use can exceed it by at most one
    committed-but-not-yet-rotated segment (``segment_bytes``). With ``fsync`` off nothing
    is ever fsync'd (tests, a spool on tmpfs); ``syncs`` counts the data fsyncs.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 8 << 20,
        fsync: bool = True,
        fsync_interval: float = DEFAULT_FSYNC_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= len(MAGIC):
            raise ValueError("max_bytes and segment_bytes must be positive")
        if not fsync_interval >= 0:
            raise ValueError("fsync_interval must be >= 0")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.syncs = 0
        self._group = GroupSync(fsync_interval)
        self._clock = clock
        self.rejected_dir = self.directory / "rejected"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rejected_dir.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._lock_fd = self._take_lock()
        self._marker_fd = -1
        self._sizes: dict[int, int] = {}  # segment id -> bytes of complete records
        self._read_fds: dict[int, int] = {}
        self._write_fd: int | None = None
        self._active = 0
        self._committed: Position = (0, 0)
        self._pending_points = 0
        self._full = False
        self._refused = 0
        self._closed = False
        try:
            self._marker_fd = os.open(self.directory / "committed", os.O_RDWR | os.O_CREAT, 0o644)
            self._recover()
        except BaseException:
            self.close()
            raise

    # -- opening and recovery -------------------------------------------------------------

    def _take_lock(self) -> int:
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLockedError(
                f"spool {self.directory} is in use by another store (process or instance)"
            ) from None
        return fd

    def _recover(self) -> None:
        ids = sorted(
            int(p.name[: -len(_SEGMENT_SUFFIX)])
            for p in self.directory.glob("*" + _SEGMENT_SUFFIX)
            if p.name[: -len(_SEGMENT_SUFFIX)].isdigit()
        )
        committed = self._read_committed()
        if committed is not None and committed[0] not in ids:
            # A lost or stale marker: resume at the oldest segment after it. Replaying more
            # than needed is harmless (see the module docstring).
            later = [i for i in ids if i > committed[0]]
            committed = (later[0], len(MAGIC)) if later else None
        for seg_id in ids:
            if committed is not None and seg_id < committed[0]:
                self._delete_segment_file(seg_id)  # crashed between commit and delete
                continue
            start = committed[1] if committed and seg_id == committed[0] else len(MAGIC)
            scanned = self._scan(seg_id, start, last=seg_id == ids[-1])
            if scanned is not None:
                self._sizes[seg_id], points = scanned
                self._pending_points += points
        if committed is None or committed[0] not in self._sizes:
            committed = (min(self._sizes), len(MAGIC)) if self._sizes else None
        # Never append to an old segment: start a fresh one, the old ones stay immutable.
        self._open_segment(ids[-1] + 1 if ids else 1)
        self._committed = committed or (self._active, len(MAGIC))
        self._write_committed()
        if self._pending_points:
            log.info(
                "spool %s: %d points from a previous run await replay",
                self.directory,
                self._pending_points,
            )

    def _scan(self, seg_id: int, start: int, *, last: bool) -> tuple[int, int] | None:
        """Size and points of a segment; cuts a torn tail (invalid records) of the last one.

        None: the file is not a segment at all (moved to ``rejected/``).
        """
        path = self.directory / _segment_name(seg_id)
        data = path.read_bytes()
        if data[: len(MAGIC)] != MAGIC:
            self._quarantine_bytes(data, f"segment {path.name} has no spool header")
            self._delete_segment_file(seg_id)
            return None
        off, points = max(start, len(MAGIC)), 0
        while off < len(data):
            bad = self._check_record(data, off)
            if bad:
                if last:
                    log.warning(
                        "spool %s: cutting %d bytes of an incomplete last record (%s); "
                        "the write that produced them had not returned",
                        path.name,
                        len(data) - off,
                        bad,
                    )
                    with path.open("r+b") as f:
                        f.truncate(off)
                        os.fsync(f.fileno())
                    return off, points
                # Mid-log corruption: keep the size, let the reader quarantine it.
                return len(data), points
            length, count, _ = _HEADER.unpack_from(data, off)
            points += count
            off += HEADER_SIZE + length
        return off, points

    @staticmethod
    def _check_record(data: bytes | memoryview, off: int) -> str | None:
        if off + HEADER_SIZE > len(data):
            return "truncated header"
        length, count, crc = _HEADER.unpack_from(data, off)
        if length == 0 or count == 0:
            return "empty record"
        end = off + HEADER_SIZE + length
        if end > len(data):
            return "truncated payload"
        if crc32(data[off + HEADER_SIZE : end], crc32(data[off : off + 8])) != crc:
            return "checksum mismatch"
        return None

    def _read_committed(self) -> Position | None:
        try:
            fields = (self.directory / "committed").read_text().split()
            seg, off = int(fields[0]), int(fields[1])
        except (OSError, ValueError, IndexError):
            return None
        if len(fields) == 2:
            return seg, off  # written by an older version, with a rename: never torn
        if len(fields) == 3 and fields[2] == _marker_crc(seg, off):
            return seg, off
        return None

    def _write_committed(self) -> None:
        """One ``pwrite`` in place: a temporary file and a rename cost 100 times more CPU."""
        seg, off = self._committed
        text = f"{seg} {off} {_marker_crc(seg, off)}".ljust(_MARKER_BYTES - 1) + "\n"
        os.pwrite(self._marker_fd, text.encode(), 0)

    # -- segments ---------------------------------------------------------------------------

    def _open_segment(self, seg_id: int) -> None:
        if self._write_fd is not None:
            if self.fsync and self._group.dirty:  # a closed segment is whole on disk
                self._sync_locked(self._clock())
            os.close(self._write_fd)
        path = self.directory / _segment_name(seg_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
        os.write(fd, MAGIC)
        if self.fsync:
            os.fsync(fd)
            _fsync_dir(self.directory)
        self._write_fd = fd
        self._active = seg_id
        self._sizes[seg_id] = len(MAGIC)

    def _read_fd(self, seg_id: int) -> int:
        fd = self._read_fds.get(seg_id)
        if fd is None:
            fd = self._read_fds[seg_id] = os.open(
                self.directory / _segment_name(seg_id), os.O_RDONLY
            )
        return fd

    def _delete_segment_file(self, seg_id: int) -> None:
        fd = self._read_fds.pop(seg_id, None)
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / _segment_name(seg_id))

    # -- accounting -------------------------------------------------------------------------

    @property
    def pending_points(self) -> int:
        return self._pending_points

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._pending_bytes_locked()

    def _pending_bytes_locked(self) -> int:
        seg, off = self._committed
        return sum(size for sid, size in self._sizes.items() if sid >= seg) - off

    @property
    def end(self) -> Position:
        """Position just after the last appended record."""
        with self._lock:
            return (self._active, self._sizes[self._active])

    @property
    def committed(self) -> Position:
        return self._committed

    # -- writing ----------------------------------------------------------------------------

    def append(self, records: list[tuple[bytes, int]]) -> None:
        """Append records (payload, point count) atomically w.r.t. the size limit.

        Either all records are accepted or :class:`SpoolFullError` is raised and none is.
        """
        if not records:
            return
        # Headers and payloads as they are, in one writev(): no copy of the payloads.
        parts: list[bytes] = []
        points = size = 0
        for payload, n in records:
            parts += (frame_header(payload, n), payload)
            points += n
            size += HEADER_SIZE + len(payload)
        with self._lock:
            if self._closed:
                raise StoreError(f"spool {self.directory} is closed")
            if size > self.max_bytes:
                raise SpoolFullError(
                    f"one write of {points} points ({size} bytes) exceeds the whole spool "
                    f"limit of {self.max_bytes} bytes; write smaller batches"
                )
            pending = self._pending_bytes_locked()
            if pending + size > self.max_bytes:
                self._refused += points
                if not self._full:
                    self._full = True
                    log.warning(
                        "spool %s is FULL (%d of %d bytes pending, InfluxDB is not keeping up "
                        "or unreachable): new points are refused until it drains",
                        self.directory,
                        pending,
                        self.max_bytes,
                    )
                raise SpoolFullError(
                    f"spool {self.directory} is full: {pending} bytes pending, limit "
                    f"{self.max_bytes}; refused {points} points (nothing accepted was dropped)"
                )
            if self._full:
                log.info(
                    "spool %s accepts points again; %d points were refused while full",
                    self.directory,
                    self._refused,
                )
                self._full, self._refused = False, 0
            if self._sizes[self._active] >= self.segment_bytes:
                self._open_segment(self._active + 1)
            assert self._write_fd is not None
            if len(parts) > _MAX_IOV:
                parts = [b"".join(parts)]
            written = os.writev(self._write_fd, parts)
            if written != size:  # O_APPEND regular file: only on disk full and the like
                raise StoreError(f"short write to spool ({written} of {size} bytes)")
            self._sizes[self._active] += size
            self._pending_points += points
            if self.fsync:
                now = self._clock()
                if self._group.appended(now):
                    self._sync_locked(now)

    def until_sync(self) -> float:
        """Seconds until appended data must be fsync'd (<= 0: now); infinity if none waits."""
        return self._group.due - self._clock() if self.fsync else math.inf

    @property
    def sync_due(self) -> float:
        """When (on the spool's clock) appended data must be fsync'd; infinity if none waits."""
        return self._group.due if self.fsync else math.inf

    def sync_if_due(self) -> None:
        """fsync the appended data if it has waited its ``fsync_interval``."""
        with self._lock:
            now = self._clock()
            if self.fsync and not self._closed and now >= self._group.due:
                self._sync_locked(now)

    def _sync_locked(self, now: float) -> None:
        assert self._write_fd is not None
        try:
            os.fdatasync(self._write_fd)
        except OSError:
            self._group.failed(now)
            raise
        self.syncs += 1
        self._group.synced(now)

    # -- reading and committing -------------------------------------------------------------

    def read_batch(self, max_points: int, max_bytes: int = 16 << 20) -> Batch | None:  # noqa: C901
        """Records from the committed position: at least one, else within both limits."""
        with self._lock:
            start = self._committed
            sizes = dict(self._sizes)
            active = self._active
        seg, off = start
        # Views into the windows read: checksums and the join below copy nothing else.
        chunks: list[memoryview] = []
        points = nbytes = 0

        def batch(at: Position) -> Batch:
            return Batch(start, at, b"".join(chunks), points)

        while seg in sizes:
            end = sizes[seg]
            fd = self._read_fd(seg)
            while off < end:
                window = memoryview(os.pread(fd, min(end - off, _READ_CHUNK), off))
                pos = 0
                while pos < len(window):
                    length = count = 0
                    if pos + HEADER_SIZE <= len(window):
                        length, count, _ = _HEADER.unpack_from(window, pos)
                        if chunks and (points + count > max_points or nbytes + length > max_bytes):
                            return batch((seg, off + pos))
                    if pos + HEADER_SIZE + length > len(window) or pos + HEADER_SIZE > len(window):
                        if pos > 0:
                            break  # the record continues past the window: read from here
                        if off + HEADER_SIZE + length <= end:  # a record larger than the window
                            window = memoryview(os.pread(fd, HEADER_SIZE + length, off))
                    bad = self._check_record(window, pos)
                    if bad:
                        if chunks:
                            return batch((seg, off + pos))
                        raise SpoolCorruptError((seg, off + pos), bad)
                    chunks.append(window[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
                    points += count
                    nbytes += length
                    pos += HEADER_SIZE + length
                off += pos
            if seg == active:
                break
            later = [s for s in sizes if s > seg]
            if not later:
                break
            seg, off = min(later), len(MAGIC)
        if chunks:
            return batch((seg, off))
        if (seg, off) != start:
            # Only exhausted segments lay between: move the committed position over them so
            # that "committed >= end" means "nothing pending" for flush().
            with self._lock:
                if self._committed == start:
                    self._advance_locked((seg, off), 0)
        return None

    def commit(self, batch: Batch) -> None:
        """Mark a batch acknowledged: advance the committed position, drop finished segments."""
        with self._lock:
            if batch.start != self._committed:
                raise StoreError(
                    f"commit out of order: batch starts at {batch.start}, "
                    f"committed is {self._committed}"
                )
            self._advance_locked(batch.end, batch.points)

    def _advance_locked(self, end: Position, points: int) -> None:
        seg, off = end
        # A batch that ends exactly at the end of a closed segment commits to the next one.
        while seg != self._active and off >= self._sizes.get(seg, 0):
            later = [s for s in self._sizes if s > seg]
            seg, off = min(later), len(MAGIC)
        self._committed = (seg, off)
        self._pending_points -= points
        self._write_committed()
        for sid in [s for s in self._sizes if s < seg]:
            del self._sizes[sid]
            self._delete_segment_file(sid)

    def reject(
        self,
        batch: Batch,
        reason: str,
        status: int | None = None,
        *,
        payload: bytes | None = None,
        points: int | None = None,
    ) -> Path:
        """Write the refused lines (default: the whole batch) to ``rejected/``, then commit."""
        path = self._quarantine_bytes(
            batch.payload if payload is None else payload,
            reason,
            status=status,
            points=batch.points if points is None else points,
            position=batch.start,
        )
        self.commit(batch)
        return path

    def quarantine_rest_of_segment(self, position: Position, reason: str) -> Path:
        """Move unreadable bytes aside so the sender can go on with the next segment."""
        seg, off = position
        with self._lock:
            end = self._sizes[seg]
        data = os.pread(self._read_fd(seg), end - off, off)
        path = self._quarantine_bytes(data, reason, position=position)
        with self._lock:
            if seg != self._active:
                self._advance_locked((seg, end), 0)
            else:
                self._committed = (seg, end)
                self._write_committed()
        # The points in the quarantined bytes are unknown: recount what is still pending.
        self._recount()
        return path

    def _recount(self) -> None:
        with self._lock:
            seg, off = self._committed
            ids = sorted(s for s in self._sizes if s >= seg)
            total = 0
            for sid in ids:
                data = os.pread(self._read_fd(sid), self._sizes[sid], 0)
                pos = off if sid == seg else len(MAGIC)
                while pos + HEADER_SIZE <= len(data):
                    length, count, _ = _HEADER.unpack_from(data, pos)
                    if length == 0:
                        break
                    total += count
                    pos += HEADER_SIZE + length
            self._pending_points = total

    def _quarantine_bytes(
        self,
        data: bytes,
        reason: str,
        *,
        status: int | None = None,
        points: int | None = None,
        position: Position | None = None,
    ) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        where = f"{position[0]}-{position[1]}" if position else "x"
        base = self.rejected_dir / f"{stamp}-{where}-{time.monotonic_ns() % 1_000_000_000}"
        data_path = base.with_suffix(".lp")
        data_path.write_bytes(data)
        meta = {
            "reason": reason,
            "status": status,
            "points": points,
            "position": list(position) if position else None,
            "rejected_at": stamp,
            "spool": str(self.directory),
        }
        base.with_suffix(".reason.json").write_text(json.dumps(meta, indent=1) + "\n")
        if self.fsync:
            for p in (data_path, base.with_suffix(".reason.json")):
                with p.open("rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(self.rejected_dir)
        log.error(
            "spool %s: moved %d bytes (%s points) to %s: %s",
            self.directory,
            len(data),
            points if points is not None else "?",
            data_path,
            reason,
        )
        return data_path

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._write_fd is not None:
                if self.fsync:
                    os.fsync(self._write_fd)
                os.close(self._write_fd)
                self._write_fd = None
            for fd in self._read_fds.values():
                os.close(fd)
            self._read_fds.clear()
            if self._marker_fd >= 0:
                os.close(self._marker_fd)
                self._marker_fd = -1
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = -1
