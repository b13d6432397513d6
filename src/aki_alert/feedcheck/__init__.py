"""`aki-alert feed check FILE`: what the service would do with a trust's messages, offline.

The onboarding tool (docs/integration.md). It reads a file of messages, as `aki-alert replay`
does (an `.mllp` file, or text: one message per line or per blank-line block), parses each one
with the feed profile the service would run with (`--feed-profile` / FEED_PROFILE, default the
assessment hospital's contract) and reports, with counts:

- per message type: applied, ignored (why) or dead-lettered (why, reasons grouped);
- per OBX code × unit × OBX-11 status: judged as creatinine (converted from which unit), what
  the status does, ignored (why), NOT JUDGED although it looks like creatinine, dead letter;
- how PID-3 was read: which repetition was chosen, NHS number first, normalised. Counts only:
  patient numbers are never printed;
- the profile used.

No state, no network, no pager: each message is judged on its own, so what depends on the
state (a duplicate, a correction of a result the state holds) is described, not decided.

Exit codes: 0 every creatinine-looking result would be judged; 1 at least one would not (a code
the profile does not name, or a creatinine result that would be a dead letter: unknown unit,
not a number, no sample time, unusable patient number …); 2 the command could not run
(unreadable file, no messages, bad profile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import hl7
from .check import Report, UsageError, check_file, check_items
from .report import as_json, as_text

__all__ = ["Report", "UsageError", "check_file", "check_items", "as_json", "as_text", "run",
           "register"]

def run(args: argparse.Namespace) -> int:
    try:
        path = args.feed_profile
        try:
            profile = hl7.load_profile(path)
        except hl7.ProfileError as e:
            raise UsageError(str(e)) from None
        report = check_file(args.file, profile, path)
    except UsageError as e:
        print(f"aki-alert feed check: {e}", file=sys.stderr)
        return 2
    print(json.dumps(as_json(report), indent=2, ensure_ascii=False) if args.json
          else as_text(report))
    return report.exit_code


def register(sub) -> None:
    feed = sub.add_parser(
        "feed", help="check a hospital's feed against a feed profile (onboarding)",
        description="Tools for onboarding a hospital's HL7 feed (docs/integration.md).")
    feed_sub = feed.add_subparsers(dest="feed_command", metavar="SUBCOMMAND", required=True)
    p = feed_sub.add_parser(
        "check", help="what the service would do with a file of messages, offline",
        description="Read a file of HL7 messages (.mllp frames, or text: one message per line or "
                    "per blank-line block) and report, per message type and per OBX code × unit "
                    "× status, what the service would do with them under the feed profile. "
                    "Offline: no state, no network. Exit 0 when every creatinine-looking result "
                    "would be judged, 1 when one would not, 2 when the check cannot run.")
    p.add_argument("file", help="messages file")
    p.add_argument("--feed-profile", default=os.environ.get("FEED_PROFILE", ""),
                   help="the feed profile (TOML) to check with (default: the contract's); "
                        "env FEED_PROFILE")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
