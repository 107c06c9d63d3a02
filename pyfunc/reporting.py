"""How much of a bad input an error message shows, so that it stays short whatever was sent.

A batch with ten thousand bad rows, ten thousand unknown columns or a megabyte column name
gets an answer of a few kilobytes: the first few cases, each cut, and how many more there are.
"""

from __future__ import annotations

from collections.abc import Sequence

ROWS_SHOWN_PER_PROBLEM = 5
NAMES_SHOWN = 5
CHARS_SHOWN = 40


def cut(text: str) -> str:
    """`text`, cut to CHARS_SHOWN characters."""
    return text if len(text) <= CHARS_SHOWN else text[:CHARS_SHOWN - 3] + "..."


def shown(value: object) -> str:
    """The repr of a value a client sent, cut."""
    return cut(repr(value))


def first_names(names: Sequence[object]) -> tuple[list[str], int]:
    """The first NAMES_SHOWN of `names`, each cut, and how many more there are."""
    return [cut(str(n)) for n in names[:NAMES_SHOWN]], max(0, len(names) - NAMES_SHOWN)
