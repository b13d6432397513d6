"""The operations endpoint on METRICS_PORT: `/metrics` (Prometheus), `/healthz` (the process
answers) and `/readyz` (state open, history loaded, detector loaded).

It runs in its own thread from the start of start-up, so a probe sees a slow history import
as "alive, not ready" rather than as a dead process, and scrapes never wait on the feed.
"""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app


class Readiness:
    """What must be true before the service is ready; each check set by the start-up step."""

    CHECKS = ("state", "history", "detector")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = {c: "pending" for c in self.CHECKS}

    def set(self, check: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            self._status[check] = "ok" if ok else f"failed: {detail}" if detail else "failed"

    @property
    def ready(self) -> bool:
        with self._lock:
            return all(v == "ok" for v in self._status.values())

    def report(self) -> str:
        with self._lock:
            return "".join(f"{c}: {v}\n" for c, v in self._status.items())


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _app(readiness: Readiness):
    metrics_app = make_wsgi_app()

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            status = "200 OK" if readiness.ready else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain")])
            return [readiness.report().encode()]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz or /readyz\n"]

    return app


def start(port: int, readiness: Readiness, host: str = "0.0.0.0") -> _Server:
    server = make_server(host, port, _app(readiness), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="ops-http", daemon=True).start()
    return server
