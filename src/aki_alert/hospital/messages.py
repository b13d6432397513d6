"""The hospital's HL7 messages, byte for byte as contract §3 shows them (what the simulator
sends and what tests build)."""

from __future__ import annotations

from ..timeutil import format_hl7_time

_MSH = "MSH|^~\\&|SIMULATION|SOUTH RIVERSIDE|||{ts}||{kind}|||2.5\r"


def admission(t: int, mrn: str, name: str, birth: int, sex: str) -> bytes:
    """ADT^A01 at `t` for a patient born at `birth` (seconds), sex "M"/"F"."""
    return (_MSH.format(ts=format_hl7_time(t), kind="ADT^A01")
            + f"PID|1||{mrn}||{name}||{format_hl7_time(birth)[:8]}|{sex}\r").encode()


def discharge(t: int, mrn: str) -> bytes:
    return (_MSH.format(ts=format_hl7_time(t), kind="ADT^A03") + f"PID|1||{mrn}\r").encode()


def result(t: int, mrn: str, value: float, status: str = "", sent: int | None = None) -> bytes:
    """ORU^R01: a creatinine result sampled at `t`, sent at `sent` (default `t`); `status`:
    its OBX-11 (e.g. "C", a correction of the result sent before for `t`), none by default."""
    ts = format_hl7_time(t)
    obx11 = f"||||||{status}" if status else ""
    return (_MSH.format(ts=format_hl7_time(t if sent is None else sent), kind="ORU^R01")
            + f"PID|1||{mrn}\rOBR|1||||||{ts}\rOBX|1|SN|CREATININE||{value!r}{obx11}\r"
            ).encode()


def merge(t: int, old: str, new: str) -> bytes:
    """ADT^A40 at `t`: the patient known as `old` is `new` from now on (MRG-1)."""
    return (_MSH.format(ts=format_hl7_time(t), kind="ADT^A40")
            + f"PID|1||{new}\rMRG|{old}\r").encode()
