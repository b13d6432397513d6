"""A small stand-in hospital for end-to-end tests: an MLLP server that sends a list of messages
stop-and-wait (resuming after the last ACK on reconnect), and an HTTP pager that records pages.
Both on 127.0.0.1, in background threads, stopped by `close()`.
"""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aki_alert.mllp import FrameDecoder, frame


class MllpHospital:
    def __init__(self, messages: list[bytes], deadline: float = 10.0,
                 nack_moves_on: bool = False) -> None:
        """`nack_moves_on`: an AE/AR moves on to the next message, as an integration engine
        that files it in its error queue does (the assessment hospital resends instead)."""
        self.messages = messages
        self.nack_moves_on = nack_moves_on
        self.deadline = deadline
        self.next = 0                      # index of the first message not yet ACKed
        self.acks: list[bytes] = []
        self.connections = 0
        self.done = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._closing = False
        self._conn: socket.socket | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            self._conn = conn
            try:
                self._talk(conn)
            except OSError:
                pass
            finally:
                conn.close()

    def _talk(self, conn: socket.socket) -> None:
        conn.settimeout(self.deadline)
        decoder = FrameDecoder()
        while self.next < len(self.messages) and not self._closing:
            conn.sendall(frame(self.messages[self.next]))
            replies: list = []
            while not replies:
                data = conn.recv(65536)
                if not data:
                    return
                replies = decoder.feed(data)
            if len(replies) != 1 or not replies[0].startswith(b"MSH|"):
                return  # strict: one ACK, an HL7 message
            self.acks.append(replies[0])
            if b"\rMSA|AA" in replies[0] or self.nack_moves_on:
                self.next += 1
        if self.next >= len(self.messages):
            self.done.set()
            while not self._closing and conn.recv(65536):
                pass

    def drop(self) -> None:
        """Cut the current connection, as an operator pressing "disconnect"."""
        if self._conn is not None:
            self._conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing = True
        self._sock.close()
        if self._conn is not None:
            try:
                self._conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Pager:
    """Records every POST /page body; answers 200 `ok\\n`, or `fail_status` while set."""

    def __init__(self) -> None:
        self.pages: list[tuple[str, float]] = []
        self.fail_status: int | None = None
        pager = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:       # the sender died mid-request (a kill -9): no page
                    self.close_connection = True
                    return
                body = raw.decode()
                status = pager.fail_status or 200
                if status == 200:
                    pager.pages.append((body, time.monotonic()))
                reply = b"ok\n" if status == 200 else b"failed\n"
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[str]:
        return [b for b, _ in self.pages]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
