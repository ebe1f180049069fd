"""The coordinator's admin web page over HTTP (``web_port``; README, "Operations").

``/`` is the page (``coordinator.dashboard``), ``/api/status`` the same snapshot as JSON.
Every request needs the token, as ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``;
others get 401. The server runs on threads of its own (the standard library's
``ThreadingHTTPServer``, as ``/metrics`` does); each request has the snapshot taken on the
coordinator's event loop, so nothing here touches the coordinator's state or its SQLite
connection from another thread. A request it cannot answer gets an error status; nothing
a client sends reaches the coordinator beyond that one snapshot call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import parse_qs, urlsplit

from alchimia.broker.http_thread import ServedInThread
from alchimia.broker.rejections import escape
from alchimia.coordinator.dashboard import (
    AgentRow,
    Dashboard,
    DriftRow,
    RejectionRow,
    RoundRow,
    latest_validation,
    render_html,
    version_rows,
)

if TYPE_CHECKING:
    from alchimia.coordinator.service import Coordinator
    from alchimia.coordinator.settings import CoordinatorSettings

log = logging.getLogger("alchimia.coordinator.web")
T = TypeVar("T")
SNAPSHOT_TIMEOUT_S = 10.0
PLOT_VERSIONS = 200  # validation history read for the page: the newest versions
DRIFT_ROWS = 1000  # drift reports read (all the database keeps); 50 are listed
RECENT_REJECTIONS = 50
# No script, no outside resource, no framing: the page is tables and inline SVG.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def authorized(authorization: str | None, query: str, token: str) -> bool:
    """Whether a request carries ``token``: an ``Authorization: Bearer`` header or a
    ``token`` query parameter (compared in constant time)."""
    offered: list[str] = parse_qs(query).get("token", [])
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
    expected = token.encode()
    return any(hmac.compare_digest(o.encode(), expected) for o in offered)


def web_token(settings: CoordinatorSettings) -> str:
    """The page's token: read from ``web_token_file``, or from ``{state_dir}/web-token``,
    which is created (mode 0600, 256 random bits) when missing."""
    path = settings.web_token_file
    if path is None:
        path = Path(settings.state_dir) / "web-token"
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            log.warning("created the web page's token in %s", path)
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the web token file {path}: {exc}") from None
    if len(token) < 16:
        raise ValueError(f"the web token in {path} is shorter than 16 characters")
    return token


def snapshot(c: Coordinator) -> Dashboard:
    """What the coordinator knows now, as a :class:`Dashboard` (on its event loop)."""
    validation = c.db.validation(max(0, c.version - PLOT_VERSIONS))
    latest = latest_validation(validation)
    drift = [DriftRow(ts, a, v, m) for ts, a, v, m in c.db.drift_events(DRIFT_ROWS)]
    rejected = c._rejected_by_sender  # what its retained status carries (_status)
    agents = [
        AgentRow(
            a.agent_id,
            a.online,
            a.last_seen,
            a.software,
            a.samples,
            a.model_version,
            latest.get(a.agent_id, (None, {}))[0],
            latest.get(a.agent_id, (None, {}))[1],
            sum(d.agent_id == a.agent_id for d in drift),
            rejected.get(a.agent_id, 0),
        )
        for a in c.registry.all()
    ]
    w = c.window
    window = (
        None
        if w is None or w.closed
        else RoundRow(
            w.window_id,
            c.settings.mode,
            w.base_version,
            sorted(w.selected),
            w.contributors,
            w.deadline_ts,
        )
    )
    return Dashboard(
        federation=c.settings.federation,
        coordinator_id=c.settings.coordinator_id,
        taken_ts=time.time(),
        version=c.version,
        activity=c.activity,
        mode=c.settings.mode,
        targets=tuple(c.spec.targets),
        round=window,
        agents=agents,
        versions=version_rows(c.db.versions()[-PLOT_VERSIONS:], validation),
        drift=drift[:50],
        rejection_counts=c.rejection_log.snapshot(),
        # Topics and reasons may hold anything a client sent: control and bidi characters
        # escaped, long ones cut, as in the log (HTML escaping is the page's).
        rejections=[
            RejectionRow(escape(r.sender), escape(r.topic), r.code, escape(r.reason))
            for r in reversed(c.rejections[-RECENT_REJECTIONS:])
        ],
    )


def on_loop(
    loop: asyncio.AbstractEventLoop, fn: Callable[[], T], timeout: float = SNAPSHOT_TIMEOUT_S
) -> T:
    """``fn()`` run on ``loop`` (from another thread), its result or its exception;
    TimeoutError when the loop does not run it in time, RuntimeError when it is closed."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the waiting thread
                future.set_exception(exc)

    loop.call_soon_threadsafe(run)
    try:
        return future.result(timeout)
    finally:
        future.cancel()


class WebServer(ServedInThread):
    """The page on ``host:port`` from threads of its own, until ``close``."""

    def __init__(
        self, take: Callable[[], Dashboard], host: str, port: int, token: str, refresh_s: int = 10
    ) -> None:
        handler = type(
            "Handler",
            (_Handler,),
            {"take": staticmethod(take), "token": token, "refresh_s": refresh_s},
        )
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:  # a settings problem: say which
            raise ValueError(f"cannot serve the web page on {host}:{port}: {exc}") from None
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        thread.start()
        super().__init__(server, thread)


class _Handler(BaseHTTPRequestHandler):
    take: Callable[[], Dashboard]
    token: str
    refresh_s: int
    server_version = "alchimia-coordinator"
    sys_version = ""

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path not in ("/", "/api/status"):
            self._send(404, "text/plain", b"not found\n")
            return
        if not authorized(self.headers.get("Authorization"), url.query, self.token):
            self._send(
                401,
                "text/plain",
                b"a token is needed: Authorization: Bearer TOKEN or ?token=TOKEN\n",
                {"WWW-Authenticate": 'Bearer realm="alchimia"'},
            )
            return
        try:
            page = self.take()
        except (TimeoutError, RuntimeError):  # the coordinator is busy or stopping
            self._send(503, "text/plain", b"the coordinator did not answer\n")
            return
        except Exception:  # a bug, or the database: this request fails, nothing else
            log.exception("the web page's snapshot failed")
            self._send(500, "text/plain", b"internal error\n")
            return
        if url.path == "/":
            body = render_html(page, self.refresh_s).encode()
            self._send(200, "text/html; charset=utf-8", body)
        else:
            body = json.dumps(page.as_json(), allow_nan=False).encode()
            self._send(200, "application/json", body)

    def _send(
        self, status: int, kind: str, body: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in {
            **HEADERS,
            "Content-Type": kind,
            "Content-Length": str(len(body)),
            **(extra or {}),
        }.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The request line holds a ?token=: never written to the log.
        log.debug("%s %s", self.address_string(), (format % args).replace(self.token, "***"))


def serve_web(c: Coordinator) -> WebServer | None:
    """The coordinator's web page, or None when ``web_port`` is 0 or unset; call it on the
    coordinator's running event loop (the snapshots are taken there)."""
    s = c.settings
    if not s.web_port:
        return None
    loop = asyncio.get_running_loop()
    server = WebServer(
        lambda: on_loop(loop, lambda: snapshot(c)), s.web_host, s.web_port, web_token(s)
    )
    log.info(
        "admin web page on http://%s:%d/ (token: %s)",
        s.web_host,
        server.port,
        s.web_token_file or Path(s.state_dir) / "web-token",
    )
    return server
