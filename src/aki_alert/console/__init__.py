"""The read-only alert console: a small web UI beside the service, on its own port.

- `/`: the latest pages, newest first, with their explanation and delivery status.
- `/patients/<mrn>`: the patient's creatinine chart (inline SVG), baseline, NHS windows, the
  paged results, admissions, demographics and results.
- `/service`: MLLP connection, message rate, outbox, dead letters, state provenance, errors.

It runs as its own process (`aki-alert console`, started by `serve` when CONSOLE_PORT is set),
so rendering never competes with the feed for the interpreter: it reads the state, a SQLite
file or a PostgreSQL database, through read-only connections that never block the writer, and
the service's live figures from its /metrics. It needs a token; see docs/console.md. Layout:
`queries` (SQL → dataclasses), `render` (dataclasses → HTML, pure), `server` (HTTP, auth,
routing), `process` (the child process and its command).
"""

from __future__ import annotations

from .server import REFRESH, ConsoleServer

__all__ = ["ConsoleServer", "start"]


def start(host: str, port: int, token: str | None, state: str,
          metrics_url: str | None = None, refresh: int = REFRESH) -> ConsoleServer:
    """Serve the console of `state` (a SQLite file's path or a postgresql:// URL) on host:port
    (0: any free port) in a daemon thread of this process; returns the server (`.port`, `.url`,
    `shutdown()`). Raises OSError when the port cannot be opened and ValueError without a
    token. `refresh`: seconds between the pages' automatic reloads (0: none)."""
    return ConsoleServer((host, port), token or "", state, metrics_url, refresh).start()
