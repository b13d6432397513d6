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
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode

from .. import logs
from ..patientid import is_valid_mrn
from . import queries, render

log = logging.getLogger(__name__)


def logged_path(path: str) -> str:
    """A request's path as a log line may show it: without its query, and a patient page's
    MRN as LOG_PATIENT_IDS says (`logs.patient`)."""
    path = path.partition("?")[0]
    if path.startswith(PATIENT_PREFIX):
        return PATIENT_PREFIX + logs.patient(unquote(path[len(PATIENT_PREFIX):]))
    return path

REALM = "aki-alert"
MAX_BUSY = 4              # requests reading the state and rendering at the same time
BUSY_WAIT = 5.0           # seconds a request waits for a slot before a 503
REFRESH = 30              # seconds between a page's automatic reloads (0: none)
MAX_REFRESH = 3600
MAX_LIMIT = 1000          # pages on one alerts page (?limit=)
MAX_ID = 2**63 - 1        # outbox ids are 64-bit (PostgreSQL's bigint)
PATIENT_PREFIX = "/patients/"

# A client that goes away mid-response (closed tab, reload, a proxy's timeout).
ABORTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class BadQuery(ValueError):
    """A query string the page does not take; its message is shown in the 400 page."""


def _whole(name: str, value: str, lo: int, hi: int, what: str) -> int:
    if not (value.isascii() and value.isdigit()) or len(value) > 19 or not lo <= int(value) <= hi:
        raise BadQuery(f"{name}= takes {what}; got {value[:40]!r}.")
    return int(value)


def _before(value: str) -> int:
    return _whole("before", value, 1, MAX_ID, "a page id (a whole number from 1)")


def _limit(value: str) -> int:
    return _whole("limit", value, 1, MAX_LIMIT, f"a number of pages from 1 to {MAX_LIMIT}")


def _refresh(value: str) -> int:
    seconds = _whole("refresh", value, 0, MAX_REFRESH,
                     f"0 (no automatic updates) or seconds from 5 to {MAX_REFRESH}")
    if 0 < seconds < 5:
        raise BadQuery(f"refresh= takes 0 (no automatic updates) or seconds from 5 to "
                       f"{MAX_REFRESH}; got {value!r}.")
    return seconds


# The query parameters each page takes, and how each is read.
ALERTS_QUERY: dict[str, Callable[[str], int]] = {"before": _before, "limit": _limit,
                                                 "refresh": _refresh}
PAGE_QUERY: dict[str, Callable[[str], int]] = {"refresh": _refresh}


def parse_query(query: str, takes: dict[str, Callable[[str], int]]) -> dict[str, int]:
    """The parameters of a query string, each read by `takes[name]`; BadQuery for anything
    else: an unknown name, one given twice, a value out of range, a malformed string."""
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True,
                          max_num_fields=len(takes) + 1, errors="strict")
    except (ValueError, UnicodeError):
        raise BadQuery("The query string cannot be read.") from None
    out: dict[str, int] = {}
    for name, value in pairs:
        if name not in takes:
            allowed = ", ".join(f"{k}=" for k in takes)
            raise BadQuery(f"Unknown query parameter {name[:40]!r}: this page takes "
                           f"{allowed} only.")
        if name in out:
            raise BadQuery(f"{name}= is given more than once.")
        out[name] = takes[name](value)
    return out

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
                 metrics_url: str | None = None, refresh: int = REFRESH) -> None:
        if not token:
            raise ValueError("the console needs a token")
        if not 0 <= refresh <= MAX_REFRESH:
            raise ValueError(f"refresh must be 0 to {MAX_REFRESH} seconds")
        self.refresh = refresh        # seconds between a page's automatic reloads
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

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-request is one DEBUG line, not a traceback on stderr;
        anything else is logged with its traceback (never printed to stderr by the base
        class)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ABORTED):
            log.debug("console client %s went away: %s", client_address[0],
                      type(exc).__name__)
            return
        log.error("console request from %s failed", client_address[0], exc_info=exc)

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
        text = format % args
        path = getattr(self, "path", "")
        if path:
            text = text.replace(path, logged_path(path))
        log.debug("console %s - %s", self.address_string(), text)

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
            takes = ALERTS_QUERY
        elif path == "/service" or path.startswith(PATIENT_PREFIX):
            takes = PAGE_QUERY
        else:
            self._not_found("No such page: try the alerts, a patient or the service page.")
            return
        try:
            params = parse_query(query, takes)
        except BadQuery as e:
            self._send(400, render.error_page(400, "Bad request", str(e)))
            return
        # The page's own URL without refresh=, for the pause/resume link.
        kept = {k: v for k, v in params.items() if k != "refresh"}
        here = path + (f"?{urlencode(kept)}" if kept else "")
        seconds = params.get("refresh", self.server.refresh)
        refresh = render.Refresh(seconds, here, paused=params.get("refresh") == 0)
        if path == "/":
            before, limit = params.get("before"), params.get("limit")
            self._with_state(lambda db: render.alerts_page(
                queries.alerts(db, limit=limit or queries.ALERTS_LIMIT, before=before),
                time.time(), before, refresh, limit))
        elif path == "/service":
            live = queries.process_metrics(queries.scrape(self.server.metrics_url))
            self._with_state(lambda db: render.service_page(queries.service(db), live, refresh))
        else:
            # What the feed may file a patient under (patientid.py), and nothing else.
            mrn = unquote(path[len(PATIENT_PREFIX):])
            if not is_valid_mrn(mrn):
                self._not_found("No such patient.")
                return
            self._with_state(lambda db: self._patient(db, mrn, refresh))

    def _not_found(self, message: str) -> None:
        self._send(404, render.error_page(404, "Not found", message))

    def _patient(self, db: queries.Reader, mrn: str, refresh: render.Refresh) -> str | None:
        view = queries.patient(db, mrn)
        return None if view is None else render.patient_page(view, time.time(), refresh)

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
            log.exception("console page %s failed", logged_path(self.path))
            self._send(500, render.error_page(500, "Error", "This page failed; see the log."))
            return
        finally:
            self.server.busy.release()
        if page is None:
            self._not_found("No patient with this MRN in the state.")
        else:
            self._send(200, page)
