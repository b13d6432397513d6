"""What a merge of two patient numbers does (ADT^A40, A34, A47: the patient once known as `old` is
`new` from now on), as the service (ingest.py and the state's merge_patient) and the offline
reference (offline.py) both apply it.

`aliases` maps every number merged away to the number it lives on as; a message still sent under
an old number is filed under that one (`aliases.get(mrn, mrn)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def retired(aliases: Mapping[str, str], old: str, new: str) -> str | None:
    """The number a merge of `old` into `new` (a live number) retires: the one `old` lives on
    as; None when that is `new` already (the same patient: nothing to merge)."""
    old = aliases.get(old, old)
    return None if old == new else old


def record_merge(aliases: dict[str, str], old: str, new: str) -> None:
    """`old` lives on as `new` from now on, and so does every number that lived on as `old`."""
    for number, live in aliases.items():
        if live == old:
            aliases[number] = new
    aliases[old] = new


def merged_fields(new: Sequence[T | None], old: Sequence[T | None]) -> list[T | None]:
    """The merged patient's demographics (name, birth, sex, ...): the surviving number's where
    it has them, the retired one's otherwise."""
    return [n if n is not None else o for n, o in zip(new, old, strict=True)]


def merged_episode(new: int | None, old: int | None) -> int | None:
    """The merged patient's episode start: the later of the two (None: neither had one)."""
    return max((s for s in (new, old) if s is not None), default=None)
