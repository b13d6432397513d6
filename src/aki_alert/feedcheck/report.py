"""A feed check's report, as text for an integration engineer or as JSON."""

from __future__ import annotations

from .check import UNPARSEABLE, ObxKey, ObxOutcome, Report

def _profile_dict(report: Report) -> dict:
    p = report.profile
    return {
        "name": p.name, "path": report.profile_path or None,
        "creatinine_codes": [{"code": c.code, "system": c.system or None,
                              "default_unit": c.unit or None} for c in p.codes],
        "units": p.units,
        "patient": {"identifier_types": list(p.identifier_types),
                    "assigning_authorities": list(p.assigning_authorities),
                    "strip_leading_zeros": p.strip_leading_zeros, "upper_case": p.upper_case},
        "preliminary": p.preliminary,
    }


def _obx_rows(report: Report) -> list[tuple[ObxKey, ObxOutcome, int]]:
    """Problems first, then creatinine codes, then the rest; by count within each."""
    rows = [(k, o, n) for (k, o), n in report.obx.items()]
    rows.sort(key=lambda r: (not r[1].problem, not r[1].creatinine, -r[2], r[0].code,
                             r[0].unit, r[0].status))
    return rows


def as_json(report: Report) -> dict:
    return {
        "file": report.file, "messages": report.messages,
        "seconds": round(report.seconds, 3), "profile": _profile_dict(report),
        "message_types": [
            {"type": t, "decision": o, "reason": r, "count": n}
            for (t, o, r), n in sorted(report.decisions.items(), key=lambda x: (x[0][0], -x[1]))],
        "obx": [
            {"code": k.code, "system": k.system, "text": k.text, "alternate": k.alternate,
             "unit": k.unit, "status": k.status, "count": n, "what": o.what,
             "creatinine": o.creatinine, "judged": o.judged, "not_judged_problem": o.problem}
            for k, o, n in _obx_rows(report)],
        "patient_numbers": {
            **dict(report.ids),
            "chosen": [{"identifier_type": t or None, "assigning_authority": a or None,
                        "count": n} for (t, a), n in report.chosen.most_common()],
        },
        "creatinine_judged": report.judged,
        "creatinine_not_judged": report.not_judged,
        "exit_code": report.exit_code,
    }


def _table(rows: list[list[str]], indent: str = "  ", right: tuple[int, ...] = ()) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
                 for i, c in enumerate(r)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


def as_text(report: Report) -> str:
    p = report.profile
    lines = [f"aki-alert feed check: {report.file}: {report.messages:,} messages "
             f"({report.seconds:.1f} s)", ""]
    lines.append(f"PROFILE  {p.name}" + (f"  ({report.profile_path})" if report.profile_path
                                          else "  (built in: FEED_PROFILE not set)"))
    codes = ", ".join(f"{c.code}" + (f" [{c.system}]" if c.system else "")
                      + (f" {c.unit}" if c.unit else "") for c in p.codes)
    lines.append(f"  creatinine codes   {codes}")
    lines.append("  units (µmol/L per) " + ", ".join(f"{u} ×{f:g}" for u, f in p.units.items()))
    pat = [f"identifier types {'/'.join(p.identifier_types) or '(any)'}",
           f"assigning authorities {'/'.join(p.assigning_authorities) or '(any)'}"]
    if p.strip_leading_zeros:
        pat.append("leading zeros stripped")
    if p.upper_case:
        pat.append("upper-cased")
    lines.append("  patient number     " + "; ".join(pat))
    lines.append(f"  preliminary (P)    {p.preliminary}")
    lines.append("")

    lines.append("MESSAGES")
    rows = [["type", "count", "decision", "why"]]
    for (t, o, r), n in sorted(report.decisions.items(),
                               key=lambda x: (x[0][0] == UNPARSEABLE, x[0][0], x[0][1], -x[1])):
        rows.append([t, f"{n:,}", o, r])
    lines += _table(rows, right=(1,))
    lines.append("")

    lines.append("OBX RESULTS (code × unit × OBX-11 status)")
    if report.obx:
        rows = [["code", "system", "text", "unit", "OBX-11", "count", "what happens"]]
        for k, o, n in _obx_rows(report):
            code = k.code or "(empty)"
            if k.alternate:
                code += f" (alt {k.alternate})"
            rows.append([_cut(code, 28), k.system, _cut(k.text, 28), k.unit or "(none)",
                         k.status or "(none)", f"{n:,}", o.what])
        lines += _table(rows, right=(5,))
    else:
        lines.append("  (no OBX segments)")
    lines.append("")

    lines.append("PATIENT NUMBERS (PID-3; counts only, numbers are never printed)")
    ids = report.ids
    if ids["with PID-3"]:
        rows = [["messages with a PID segment", f"{ids['with PID-3']:,}"]]
        for (t, a), n in report.chosen.most_common():
            what = ("the plain identifier" if not (t or a) else
                    f"type {t or '(none)'}, authority {a or '(none)'}")
            rows.append([f"number taken from {what}", f"{n:,}"])
        for label in ("several identifiers in PID-3", "NHS number first in PID-3",
                      "patient number looks like an NHS number", "changed by normalisation",
                      "no usable patient number (dead letter)"):
            rows.append([label, f"{ids[label]:,}"])
        lines += _table(rows, right=(1,))
        if ids["patient number looks like an NHS number"]:
            lines.append("  ! results would be filed under NHS numbers: set identifier_types / "
                         "assigning_authorities in the profile's [patient]")
    else:
        lines.append("  (no PID segments)")
    lines.append("")

    if report.not_judged:
        lines.append(f"FAIL: {report.not_judged:,} creatinine-looking result(s) would NOT be "
                     f"judged ({report.judged:,} would). See the NOT JUDGED and DEAD LETTER "
                     "rows above; name the codes or units in the feed profile.")
    else:
        lines.append(f"OK: every creatinine result would be judged ({report.judged:,}).")
    return "\n".join(lines)
