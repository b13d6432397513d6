"""Stopping an `aki-alert serve` child the way the demo, the benchmarks and the tests all do."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM (the service's graceful stop), SIGKILL if it is not gone within `timeout`;
    returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
