"""The console's HTTP side: authentication, security headers, routing, one reader per request.

`http.server.ThreadingHTTPServer` in a daemon thread, a thread per connection (at most
`MAX_BUSY` of them reading the state and rendering at once; more wait briefly, then get 503).
It never touches the service's own connection: each request opens its own read-only one to
the SQLite file or the PostgreSQL database (`queries.reading`), so the console cannot block or
slow the ingest transaction beyond sharing the CPU (and, on PostgreSQL, the server). A state
that cannot be read is a 503 whose page and log line never show a password.

Access: every path, even an unknown one, needs `Authorization: Bearer <token>` or HTTP basic
auth whose password is the token (any user name), so a browser can log in with its own
prompt. Token comparison is constant-time (`hmac.compare_digest` of SHA-256 digests, which
also hides the token's length). Every response, errors and 401s included, carries
`Cache-Control: no-store` and a strict CSP: the pages have no script, only inline CSS and
inline SVG.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from ..patientid import is_valid_mrn
from . import queries, render

log = logging.getLogger(__name__)

REALM = "aki-alert"
MAX_BUSY = 4              # requests reading the state and rendering at the same time
BUSY_WAIT = 5.0           # seconds a request waits for a slot before a 503

SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("Pragma", "no-cache"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def token_matches(header: str | None, token_digest: bytes) -> bool:
    """True when an Authorization header carries the token (bearer, or basic-auth password).
    The comparison is of SHA-256 digests in constant time."""
    if not header:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == "bearer":
        given = credentials.encode("utf-8", "surrogateescape")
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            return False
        _user, sep, given = decoded.partition(b":")
        if not sep:
            return False
    else:
        return False
    return hmac.compare_digest(hashlib.sha256(given).digest(), token_digest)


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 16

    def __init__(self, address: tuple[str, int], token: str, state: str,
                 metrics_url: str | None = None) -> None:
        if not token:
            raise ValueError("the console needs a token")
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.token_digest = hashlib.sha256(token.encode("utf-8")).digest()
        self.state = state            # a SQLite file's path or a postgresql:// URL
        self.metrics_url = metrics_url
        self.busy = threading.BoundedSemaphore(MAX_BUSY)
        self._thread: threading.Thread | None = None
        super().__init__(address, Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> ConsoleServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="console-http", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving and close the listening socket (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            super().shutdown()
            self._thread.join(5)
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "aki-alert-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 15                  # a silent client does not hold a thread for ever

    # --- plumbing -------------------------------------------------------------------------

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("console %s - %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        # The base class's error page (malformed requests, unsupported methods) goes through
        # our page and headers instead.
        self._send(code, render.error_page(code, message or self.responses.get(
            code, ("Error",))[0], explain or "The request could not be served."),
            close=True)

    def _send(self, status: int, page: str, headers: tuple[tuple[str, str], ...] = (),
              close: bool = False) -> None:
        data = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # --- methods --------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve()

    def _not_allowed(self) -> None:
        self._send(405, render.error_page(405, "Method not allowed",
                                          "The console is read-only: GET only."),
                   (("Allow", "GET, HEAD"),), close=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    # --- routing --------------------------------------------------------------------------

    def _serve(self) -> None:
        if not token_matches(self.headers.get("Authorization"), self.server.token_digest):
            self._send(401, render.error_page(401, "Authentication required",
                                              "Log in with the console token as the password."),
                       (("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),))
            return
        path, _, query = self.path.partition("?")
        if path == "/":
            before = parse_qs(query).get("before", [""])[0]
            if before and not before.isdigit():
                self._send(400, render.error_page(400, "Bad request", "before= takes a page id."))
                return
            self._with_state(lambda db: render.alerts_page(
                queries.alerts(db, before=int(before) if before else None), time.time(),
                int(before) if before else None))
        elif path == "/service":
            live = queries.process_metrics(queries.scrape(self.server.metrics_url))
            self._with_state(lambda db: render.service_page(queries.service(db), live))
        elif path.startswith("/patients/"):
            # What the feed may file a patient under (patientid.py), and nothing else.
            mrn = unquote(path[len("/patients/"):])
            if not is_valid_mrn(mrn):
                self._not_found("No such patient.")
                return
            self._with_state(lambda db: self._patient(db, mrn))
        else:
            self._not_found("No such page: try the alerts, a patient or the service page.")

    def _not_found(self, message: str) -> None:
        self._send(404, render.error_page(404, "Not found", message))

    def _patient(self, db: queries.Reader, mrn: str) -> str | None:
        view = queries.patient(db, mrn)
        return None if view is None else render.patient_page(view)

    def _with_state(self, build) -> None:
        """Run `build(db)` on a fresh read-only connection, under the busy limit; None from
        `build` is a 404."""
        if not self.server.busy.acquire(timeout=BUSY_WAIT):
            self._send(503, render.error_page(503, "Busy", "Too many console requests; retry."),
                       (("Retry-After", "1"),))
            return
        try:
            with queries.reading(self.server.state) as db:
                page = build(db)
        except queries.StateUnavailable as e:
            log.warning("console cannot read the state: %s", e)
            self._send(503, render.error_page(503, "State unavailable",
                                              "The service's state cannot be read right now."),
                       (("Retry-After", "2"),))
            return
        except Exception:
            log.exception("console page %s failed", self.path.partition("?")[0])
            self._send(500, render.error_page(500, "Error", "This page failed; see the log."))
            return
        finally:
            self.server.busy.release()
        if page is None:
            self._not_found("No patient with this MRN in the state.")
        else:
            self._send(200, page)
