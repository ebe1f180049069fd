"""One keep-alive HTTP/1.1 connection for the store's sender thread: a socket and httptools.

Why not httpx, as for queries, nor the stdlib's ``http.client``, nor h11: a furnace's store
POSTs every few seconds, with its code and caches cold after seconds of sleep, and measured
so against a local influxd (``bench/bench_store.py --paced``) one POST and its answer took
0.7 ms of CPU with ``http.client`` (its header parsing goes through the ``email``
package), as much with h11 (pure Python) and more with httpx, against 0.25 ms for the
request written here in one ``sendall`` and the answer parsed by ``httptools`` (the C
llhttp parser of Node.js, as uvicorn uses it). At a furnace's rate that difference is a
tenth of the store's whole budget of 0.1 % of a core. The sender needs nothing more: one
host, one request at a time, no proxy, no redirects, and no retry policy, since the spool
decides what is sent again.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import threading
from collections.abc import Mapping
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import httptools

_RECV_BYTES = 64 * 1024


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


class _NoAnswer(ConnectionError):
    """The server closed the connection before the first byte of an answer (as
    ``http.client.RemoteDisconnected``: a keep-alive connection it had closed while idle)."""


class _BadAnswer(Exception):
    """What came back is not a whole HTTP/1.x answer."""


#: How a connection the server closed while idle fails (over TLS: closed with or without a
#: close_notify); sending again on a new connection is then safe.
_STALE = (_NoAnswer, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)
#: Statuses whose answer has no body whatever its headers say (RFC 9112, 6.3).
_NO_BODY = frozenset({204, 304})


class _Answer:
    """httptools' callbacks for one exchange: the final answer's status and body, interim
    (1xx) answers skipped."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.chunks: list[bytes] = []
        self.framed = False  # a Content-Length or Transfer-Encoding: not ended by a close
        self.complete = False
        self.keep_alive = False  # as the final answer says (its version, Connection)
        self.extra = False  # bytes after the answer, which nothing asked for

    def on_message_begin(self) -> None:
        self.extra = self.complete  # what follows the answer is ignored, then dropped

    def on_header(self, name: bytes, _value: bytes) -> None:
        if not self.extra:
            self.framed |= name.lower() in (b"content-length", b"transfer-encoding")

    def on_headers_complete(self) -> None:
        if not self.extra:
            self.status = self.parser.get_status_code()
            self.framed |= self.status in _NO_BODY

    def on_body(self, body: bytes) -> None:
        if not self.extra:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.extra:
            return
        if 100 <= self.status < 200:  # interim: the final answer follows
            self.status, self.chunks, self.framed = 0, [], False
        else:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise _BadAnswer("the server switched protocols") from None
        except httptools.HttpParserError as exc:
            raise _BadAnswer(str(exc) or type(exc).__name__) from None

    def closed(self) -> None:
        """The server closed the connection: the end of an answer without framing."""
        if not self.status:
            raise _BadAnswer("the connection closed inside the answer's headers")
        if self.framed:
            raise _BadAnswer("the connection closed inside the answer's body")
        self.complete = True


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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"InfluxDB URL must be http(s)://host[:port][/path], got {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        if not self._prefix.isascii() or any(c <= " " or c == "\x7f" for c in self._prefix):
            raise ValueError(
                f"InfluxDB URL must be http(s)://host[:port][/path] with a path of printable "
                f"ASCII without spaces (percent-encode the rest), got {url!r}"
            )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        try:
            host = self._host.encode("ascii")
        except UnicodeEncodeError:
            host = self._host.encode("idna")
        if b":" in host:  # an IPv6 literal, in brackets, without its zone
            host = b"[" + host.partition(b"%")[0] + b"]"
        if self._port != (443 if self._https else 80):
            host += b":%d" % self._port
        # Every request's fixed headers, as http.client sends them.
        fixed = [b"Host: " + host, b"Accept-Encoding: identity"]
        if username:
            token = base64.b64encode(f"{username}:{password or ''}".encode())
            fixed.append(b"Authorization: Basic " + token)
        self._fixed = b"\r\n".join(fixed) + b"\r\n"
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def post(
        self, path: str, query: Mapping[str, str], body: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """(status, response body). A connection the server closed while idle is reopened
        and the request sent once more; every other failure raises :class:`PostError`."""
        target = f"{self._prefix}{path}?{urlencode(query)}" if query else self._prefix + path
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
            raise ValueError(f"a header holds a line break: {headers!r}")
        request = b"".join(
            (
                f"POST {target} HTTP/1.1\r\n".encode("ascii"),
                self._fixed,
                b"Content-Length: %d\r\n" % len(body),
                f"{extra}\r\n".encode("latin-1"),
                body,
            )
        )
        with self._lock:
            retry_stale = self._sock is not None
            while True:
                sock = self._sock or self._connect()
                try:
                    # InfluxDB answers some errors (401, 404 database not found) before it
                    # reads a large body, then closes: sending fails, but the answer waits.
                    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                        sock.sendall(request)
                    answer = self._answer(sock)
                except _STALE as exc:
                    self._drop()
                    if retry_stale:
                        # The server closed the idle connection; sending again is safe
                        # (InfluxDB writes are idempotent, see agent.store.influx).
                        retry_stale = False
                        continue
                    name = "RemoteDisconnected" if isinstance(exc, _NoAnswer) else None
                    raise PostError(f"{name or type(exc).__name__}: {exc}") from exc
                except (OSError, _BadAnswer) as exc:
                    self._drop()
                    name = "BadStatusLine" if isinstance(exc, _BadAnswer) else None
                    raise PostError(f"{name or type(exc).__name__}: {exc}") from exc
                if answer.extra or not answer.framed or not answer.keep_alive:
                    self._drop()
                return answer.status, b"".join(answer.chunks)

    @staticmethod
    def _answer(sock: socket.socket) -> _Answer:
        """Read the answer to the request just sent."""
        answer = _Answer()
        received = False
        while not answer.complete:
            data = sock.recv(_RECV_BYTES)
            if not data:
                if not received:
                    raise _NoAnswer("the server closed the connection without an answer")
                answer.closed()
                break
            received = True
            answer.feed(data)
        return answer

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self._host, self._port), self._connect_timeout)
        except OSError as exc:
            raise PostError(f"{type(exc).__name__}: {exc}") from exc
        try:
            with contextlib.suppress(OSError):  # as http.client: a POST is sent at once
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                context = self._ssl_context or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._timeout)
        except OSError as exc:
            sock.close()
            raise PostError(f"{type(exc).__name__}: {exc}") from exc
        self._sock = sock
        return sock

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
