"""One keep-alive HTTP/1.1 connection for the store's sender thread (stdlib ``http.client``).

Why not httpx, as for queries: a furnace's store POSTs about once a second, and per POST
httpx took 1.0 ms of CPU (1.6 ms after a second idle) where ``http.client`` took 0.3 (0.6),
measured against a local influxd; at a furnace's rate that difference alone is a whole
0.1 % of a core. The sender needs nothing more than this: one host, one request at a time,
and no retry policy, since the spool decides what is sent again.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """(the URL without ``user:password@``, user, password): credentials may be given in
    the URL, but must not reach logs and error messages with it."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(parts.username), unquote(parts.password or "")


class PostError(Exception):
    """The request got no HTTP answer (refused, reset, timed out, malformed response)."""


class PostConnection:
    """POSTs to one server over a reused connection; safe to share between threads."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"InfluxDB URL must be http(s)://host[:port][/path], got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        # Explicit: http.client would split an IPv6 literal without a port at its colons.
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._headers: dict[str, str] = {}
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def post(
        self, path: str, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """(status, response body). A connection the server closed while idle is reopened
        and the request sent once more; every other failure raises :class:`PostError`."""
        target = f"{self._prefix}{path}?{urlencode(query)}" if query else self._prefix + path
        with self._lock:
            retry_stale = self._conn is not None
            while True:
                conn = self._conn or self._connect()
                try:
                    # InfluxDB answers some errors (401, 404 database not found) before it
                    # reads a large body, then closes: sending fails, but the answer waits.
                    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                        conn.request(
                            "POST", target, body=body, headers={**self._headers, **headers}
                        )
                    response = conn.getresponse()
                    data = response.read()
                except (
                    http.client.RemoteDisconnected,
                    ConnectionResetError,
                    BrokenPipeError,
                ) as exc:
                    self._drop()
                    if retry_stale:
                        # The server closed the idle connection; sending again is safe
                        # (InfluxDB writes are idempotent, see agent.store.influx).
                        retry_stale = False
                        continue
                    raise PostError(f"{type(exc).__name__}: {exc}") from exc
                except (OSError, http.client.HTTPException) as exc:
                    self._drop()
                    raise PostError(f"{type(exc).__name__}: {exc}") from exc
                if response.will_close:
                    self._drop()
                return response.status, data

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host,
                self._port,
                timeout=self._connect_timeout,
                context=ssl.create_default_context(),
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise PostError(f"{type(exc).__name__}: {exc}") from exc
        assert conn.sock is not None
        conn.sock.settimeout(self._timeout)
        self._conn = conn
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
