"""Logging: one line per event, as text for people or JSON for a log pipeline.

Every line written while a message is handled carries its request id: the first 16 hex digits
of the message's digest, the same key the journal stores, so a message can be followed from
receipt through its page's retries, across re-deliveries.

Patient numbers (MRNs) reach log lines only through `patient()` (and `page()` for a page's
`MRN,TIME` body), so that one setting, LOG_PATIENT_IDS, decides what a log line shows: `plain`
(the MRN, the default), `hashed` (`mrn#` and the first 12 hex digits of an HMAC-SHA256 of the
MRN under LOG_PATIENT_KEY: the same patient has the same tag in every line and every restart,
and without the key the tag cannot be turned back into the MRN by trying numbers) or `none`
(`mrn#-`). Metrics never carry an MRN; the console (behind its token) shows them.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import json
import logging
import sys
import time
import traceback

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


PATIENT_ID_MODES = ("plain", "hashed", "none")
HIDDEN = "mrn#-"
_patient_mode = "plain"
_patient_key = b""


def set_patient_ids(mode: str = "plain", key: str = "") -> None:
    """How `patient()` shows an MRN from now on (LOG_PATIENT_IDS, LOG_PATIENT_KEY)."""
    global _patient_mode, _patient_key
    if mode not in PATIENT_ID_MODES:
        raise ValueError(f"LOG_PATIENT_IDS {mode!r} is not one of {', '.join(PATIENT_ID_MODES)}")
    if mode == "hashed" and not key:
        raise ValueError("LOG_PATIENT_IDS=hashed needs LOG_PATIENT_KEY")
    _patient_mode, _patient_key = mode, key.encode()


def traceback_of(e: BaseException) -> str:
    """The stack of an exception, for a log line: its frames only, not its message (which
    may quote a patient: log it through `scrub`)."""
    return "".join(traceback.format_tb(e.__traceback__)).rstrip()


def patient(mrn: object) -> str:
    """An MRN as a log line may show it (see the module's docstring); None stays `None`."""
    if _patient_mode == "plain" or mrn is None:
        return str(mrn)
    if _patient_mode == "none":
        return HIDDEN
    digest = hmac.new(_patient_key, str(mrn).encode(), hashlib.sha256).hexdigest()
    return "mrn#" + digest[:12]


def page(body: str) -> str:
    """A page's body (`MRN,YYYYMMDDHHMMSS` or `MRN`) as a log line may show it."""
    if _patient_mode == "plain":
        return body
    mrn, sep, rest = body.partition(",")
    return patient(mrn) + sep + rest


def scrub(text: str, mrn: object) -> str:
    """`text` (a reason, an error) with `mrn` in it shown as `patient()` shows it."""
    if _patient_mode == "plain" or not mrn:
        return text
    return text.replace(str(mrn), patient(mrn))


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.request_id != "-":
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"))
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
