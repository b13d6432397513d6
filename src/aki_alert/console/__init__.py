"""The read-only alert console: a small web UI served by the service on its own port.

- `/`: the latest pages, newest first, with their explanation and delivery status.
- `/patients/<mrn>`: the patient's creatinine chart (inline SVG), baseline, NHS windows, the
  paged results, admissions, demographics and results.
- `/service`: MLLP connection, message rate, outbox, dead letters, state provenance, errors.

It runs in its own daemon thread(s) with its own read-only SQLite connections (WAL lets them
read beside the writer) and needs a token; see docs/console.md. Layout: `queries` (SQL →
dataclasses), `render` (dataclasses → HTML, pure), `server` (HTTP, auth, routing).
"""

from __future__ import annotations

import logging

from .server import ConsoleServer

__all__ = ["ConsoleServer", "start"]

log = logging.getLogger(__name__)


def start(host: str, port: int, token: str | None, state_path: str) -> ConsoleServer:
    """Serve the console on host:port (0: any free port) in a daemon thread; returns the server
    (`.port`, `.url`, `shutdown()`). Raises OSError when the port cannot be opened and
    ValueError without a token."""
    server = ConsoleServer((host, port), token or "", state_path).start()
    log.info("console serving on %s (token required)", server.url)
    return server
