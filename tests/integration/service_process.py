"""Start and stop the real `aki-alert serve` process for end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from aki_alert.hospital.process import terminate


def start(mllp_port: int, pager_port: int, state_dir, history, **extra: str) -> subprocess.Popen:
    """The service, its log going to a file beside the state (a pipe nobody reads would fill
    and block it)."""
    env = dict(os.environ)
    env.update({
        "MLLP_ADDRESS": f"127.0.0.1:{mllp_port}",
        "PAGER_ADDRESS": f"127.0.0.1:{pager_port}",
        "STATE_DIR": str(state_dir),
        "HISTORY_PATH": str(history),
        "METRICS_PORT": "0",
        "DETECTOR": "nhs",
        "LOG_LEVEL": "INFO",
    })
    env.update(extra)
    log = tempfile.NamedTemporaryFile("w+", prefix="aki-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "aki_alert", "serve"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log.name
    log.close()
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> tuple[int, str]:
    """SIGTERM, wait; returns (exit code, stderr)."""
    return terminate(proc, timeout), log_text(proc)


def log_text(proc: subprocess.Popen) -> str:
    with open(proc.log_path) as f:
        return f.read()


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
