"""`aki-alert console`, and how `serve` runs it as a child process.

The child prints one line once its port is bound, so the parent can report a port in use at
start-up; it exits when its parent does (it watches its parent's pid), so a killed service
never leaves a console serving a state nobody writes any more. The token and the state (a
postgresql:// URL may hold a password) travel in the environment, never on a command line
other users could read.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import subprocess
import sys
import time

from .. import logs
from . import start
from .server import MAX_REFRESH, REFRESH

log = logging.getLogger(__name__)

READY = "console listening on "
START_TIMEOUT = 10.0
STATE_ENV = "CONSOLE_STATE"      # the state when --state is not given (how spawn passes it)


class ConsoleStartError(OSError):
    pass


def spawn(host: str, port: int, token: str, state: str, metrics_port: int,
          refresh: int = REFRESH, patient_ids: tuple[str, str] = ("plain", "")
          ) -> tuple[subprocess.Popen, str]:
    """Start the console of `state` (a SQLite file's path or a postgresql:// URL) beside this
    process; returns it and its URL. `patient_ids`: the service's LOG_PATIENT_IDS and
    LOG_PATIENT_KEY, which the console's log lines follow too. Raises ConsoleStartError if it
    cannot serve."""
    cmd = [sys.executable, "-m", "aki_alert", "console", "--host", host, "--port", str(port),
           "--parent-pid", str(os.getpid()), "--refresh", str(refresh)]
    if metrics_port:
        cmd += ["--metrics-url", f"http://127.0.0.1:{metrics_port}/metrics"]
    env = dict(os.environ, CONSOLE_TOKEN=token, LOG_PATIENT_IDS=patient_ids[0],
               LOG_PATIENT_KEY=patient_ids[1], **{STATE_ENV: state})
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 0.1)
        if ready:
            line = child.stdout.readline()
            if line.startswith(READY):
                log.info("%s (token required)", line.strip())
                return child, line[len(READY):].strip()
            if not line:
                break
    child.kill()
    child.wait()
    raise ConsoleStartError(f"the console did not start on {host}:{port} "
                            f"(exit {child.returncode}; see its error above)")


def register(sub) -> None:
    p = sub.add_parser("console", help="serve the read-only alert console (serve starts it "
                       "itself when CONSOLE_PORT is set)",
                       description="Serve the alert console for a state. The token is read "
                                   "from CONSOLE_TOKEN.")
    p.add_argument("--state", help="the state: its SQLite file (STATE_DIR/state.db) or its "
                   f"postgresql:// URL (default: {STATE_ENV}, which keeps a password off the "
                   "command line)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics-url", help="the service's /metrics, for its live figures")
    p.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    p.add_argument("--refresh", type=int, default=None, metavar="SECONDS",
                   help="seconds between the pages' automatic reloads, 0 for none (default: "
                   f"CONSOLE_REFRESH, else {REFRESH})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    token = os.environ.get("CONSOLE_TOKEN", "")
    if not token:
        print("aki-alert console: CONSOLE_TOKEN is not set; example: CONSOLE_TOKEN=s3cret-token",
              file=sys.stderr)
        return 2
    state = args.state or os.environ.get(STATE_ENV, "")
    if not state:
        print(f"aki-alert console: no state; give --state or {STATE_ENV}, example: "
              "--state /var/lib/aki-alert/state.db", file=sys.stderr)
        return 2
    try:
        logs.set_patient_ids(os.environ.get("LOG_PATIENT_IDS", "") or "plain",
                             os.environ.get("LOG_PATIENT_KEY", ""))
    except ValueError as e:
        print(f"aki-alert console: {e}", file=sys.stderr)
        return 2
    refresh = args.refresh
    if refresh is None:
        raw = os.environ.get("CONSOLE_REFRESH", "").strip()
        refresh = int(raw) if raw.isdigit() else REFRESH
    if not 0 <= refresh <= MAX_REFRESH:
        print(f"aki-alert console: --refresh {refresh} is not 0 to {MAX_REFRESH} seconds; "
              "example: --refresh 30", file=sys.stderr)
        return 2
    try:
        server = start(args.host, args.port, token, state, args.metrics_url, refresh)
    except OSError as e:
        print(f"aki-alert console: {args.host}:{args.port} cannot be opened: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"{READY}{server.url}", flush=True)
    try:
        while args.parent_pid is None or os.getppid() == args.parent_pid:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0
