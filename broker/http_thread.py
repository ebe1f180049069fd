"""An HTTP server answering from a thread of its own: what ``/metrics`` and the admin web
page both are."""

from __future__ import annotations

import threading
from http.server import HTTPServer


class ServedInThread:
    """``server`` answering on ``thread`` (already started) until ``close``."""

    def __init__(self, server: HTTPServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
