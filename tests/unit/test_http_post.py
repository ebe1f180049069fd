"""The sender's HTTP connection against a real (stdlib) HTTP server on a loopback port, and
against scripted answers: lengths, chunks, interim answers, an answer ended by a close,
malformed answers, TLS."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from alchimia.agent.store.http_post import PostConnection, PostError
from alchimia.deploy import pki
from tests.fixtures.influxd import free_port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, bytes, str | None]]


class _Handler(BaseHTTPRequestHandler):
    """Answers 204 but hangs up after each answer without saying so, like a server that
    closes idle keep-alive connections."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append((self.path, body, self.headers.get("Authorization")))
        self.send_response(204)
        self.end_headers()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_connection_closed_by_the_server_is_reopened_once(server: _Server) -> None:
    port = server.server_address[1]
    conn = PostConnection(f"http://127.0.0.1:{port}/prefix/", username="u", password="p w")
    for i in range(3):
        assert conn.post("/write", {"db": "x y"}, b"line %d" % i, {}) == (204, b"")
    conn.close()
    assert [r[:2] for r in server.requests] == [
        ("/prefix/write?db=x+y", b"line %d" % i) for i in range(3)
    ]
    assert {r[2] for r in server.requests} == {"Basic dTpwIHc="}  # base64 of "u:p w"


def test_no_server_is_a_post_error() -> None:
    conn = PostConnection(f"http://127.0.0.1:{free_port()}", timeout=1.0)
    with pytest.raises(PostError, match="ConnectionRefused"):
        conn.post("/write", {}, b"x", {})


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8086", "http://"])
def test_bad_urls_are_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        PostConnection(url)


# -- the answer's framing, against a scripted server ------------------------------------------


class _Scripted:
    """A loopback server that reads each request whole and sends the next scripted answer
    (bytes, or None: hang up without one); it records requests and connections."""

    def __init__(self, answers: list[bytes | None], wrap: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._wrap = wrap
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            conn = raw
            if self._wrap is not None:
                try:
                    conn = self._wrap.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError):
                    raw.close()
                    continue
            with conn:
                self._talk(conn, self.connections)

    def _talk(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        while self.answers:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                if not line:
                    return
                head += line
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            self.requests.append((number, head, reader.read(length)))
            answer = self.answers.pop(0)
            if answer is None:
                return
            conn.sendall(answer)
            # Without a length, chunks or 204, the answer ends when the connection does.
            framed = any(mark in answer for mark in (b"Content-Length", b"chunked", b" 204 "))
            if b"Connection: close" in answer or not framed:
                return

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., _Scripted]]:
    servers: list[_Scripted] = []

    def start(answers: list[bytes | None], wrap: ssl.SSLContext | None = None) -> _Scripted:
        servers.append(_Scripted(answers, wrap))
        return servers[-1]

    yield start
    for srv in servers:
        srv.close()


def test_lengths_chunks_and_interim_answers_keep_one_connection(
    scripted: Callable[..., _Scripted],
) -> None:
    srv = scripted(
        [
            b"HTTP/1.1 204 No Content\r\nX-Influxdb-Version: 1.6\r\n\r\n",
            b'HTTP/1.1 400 Bad Request\r\nContent-Length: 17\r\n\r\n{"error":"nope"}\n',
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
            b"\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]
    )
    conn = PostConnection(f"http://127.0.0.1:{srv.port}/p", username="u", password="x")
    query = {"db": "d", "precision": "ns"}
    assert conn.post("/write", query, b"m f=1.0 1\n", {"Content-Type": "text/plain"}) == (204, b"")
    assert conn.post("/write", query, b"bad", {}) == (400, b'{"error":"nope"}\n')
    assert conn.post("/query", {}, b"q=x", {}) == (200, b"hello world")
    assert conn.post("/query", {}, b"q=y", {}) == (200, b"ok")
    conn.close()
    assert srv.connections == 1
    heads = [head.decode() for _, head, _ in srv.requests]
    assert heads[0] == (
        "POST /p/write?db=d&precision=ns HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{srv.port}\r\nAccept-Encoding: identity\r\n"
        "Authorization: Basic dTp4\r\nContent-Length: 10\r\nContent-Type: text/plain\r\n\r\n"
    )
    assert heads[2].startswith("POST /p/query HTTP/1.1\r\n")
    assert [body for _, _, body in srv.requests] == [b"m f=1.0 1\n", b"bad", b"q=x", b"q=y"]


def test_an_answer_until_the_server_closes_and_connection_close_reconnect(
    scripted: Callable[..., _Scripted],
) -> None:
    srv = scripted(
        [
            b"HTTP/1.0 200 OK\r\n\r\nthe rest",
            b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
    )
    conn = PostConnection(f"http://127.0.0.1:{srv.port}")
    assert conn.post("/write", {}, b"a", {}) == (200, b"the rest")
    assert conn.post("/write", {}, b"b", {}) == (503, b"busy")
    assert conn.post("/write", {}, b"c", {}) == (204, b"")
    conn.close()
    assert [number for number, _, _ in srv.requests] == [1, 2, 3]


def test_bytes_after_an_answer_are_not_taken_for_the_next_one(
    scripted: Callable[..., _Scripted],
) -> None:
    srv = scripted(
        [
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 500 Stale\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ]
    )
    conn = PostConnection(f"http://127.0.0.1:{srv.port}")
    assert conn.post("/write", {}, b"a", {}) == (204, b"")
    assert conn.post("/write", {}, b"b", {}) == (204, b"")  # not the stray 500
    conn.close()
    assert [number for number, _, _ in srv.requests] == [1, 2]  # on a new connection


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
        # Allowed by RFC 9110/9112 but never sent by InfluxDB; llhttp refuses them.
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nFolded: a\r\n b\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
        None,  # no answer at all on a new connection
    ],
)
def test_what_is_not_an_http_answer_is_a_post_error(
    scripted: Callable[..., _Scripted], answer: bytes | None
) -> None:
    srv = scripted([answer])
    conn = PostConnection(f"http://127.0.0.1:{srv.port}", timeout=2.0)
    with pytest.raises(PostError):
        conn.post("/write", {}, b"x", {})
    conn.close()


def test_a_server_that_does_not_answer_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts, never answers
        conn = PostConnection(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        with pytest.raises(PostError, match="TimeoutError"):
            conn.post("/write", {}, b"x", {})
        conn.close()


def test_line_breaks_in_headers_and_odd_paths_are_refused() -> None:
    conn = PostConnection("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="line break"):
        conn.post("/write", {}, b"x", {"X-A": "1\r\nX-B: 2"})
    with pytest.raises(ValueError, match="printable"):
        PostConnection("http://127.0.0.1:1/a b")


def test_https_checks_the_server_certificate(
    scripted: Callable[..., _Scripted], tmp_path: Path
) -> None:
    ca = pki.CertificateAuthority.create("test", days=1)
    key = pki.new_key()
    cert = ca.issue("localhost", key, days=1, server_names=["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(pki.cert_pem(cert))
    (tmp_path / "key.pem").write_bytes(pki.key_pem(key))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    answer = b"HTTP/1.1 204 No Content\r\n\r\n"
    srv = scripted([answer, answer], server_context)
    trusting = ssl.create_default_context(cadata=pki.cert_pem(ca.cert).decode())
    conn = PostConnection(f"https://127.0.0.1:{srv.port}", ssl_context=trusting)
    assert conn.post("/write", {"db": "d"}, b"x", {}) == (204, b"")
    assert conn.post("/write", {"db": "d"}, b"y", {}) == (204, b"")
    conn.close()
    assert [(n, body) for n, _, body in srv.requests] == [(1, b"x"), (1, b"y")]
    # The system's CA store does not know this CA: the handshake fails, nothing is sent.
    srv = scripted([answer], server_context)
    untrusting = PostConnection(f"https://127.0.0.1:{srv.port}", timeout=2.0)
    with pytest.raises(PostError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.post("/write", {}, b"z", {})
