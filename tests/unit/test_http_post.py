"""The sender's HTTP connection against a real (stdlib) HTTP server on a loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alchimia.agent.store.http_post import PostConnection, PostError
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
