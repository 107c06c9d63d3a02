"""The commands of README.md's ```bash blocks, as bash reads them, and its list of exceptions."""

from __future__ import annotations

import re

FENCE = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
EXCEPTIONS_HEADING = "### Commands checked otherwise"
EXCEPTION_ITEM = re.compile(r"^- `(?P<command>[^`]+)`: (?P<reason>.+)$")


def split_commands(block: str) -> list[str]:
    """Commands of a bash block: `\\` continuations joined, quoted newlines kept, comments gone."""
    commands, current, quote, i = [], "", "", 0
    while i < len(block):
        char = block[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "\\" and block[i + 1 : i + 2] == "\n":
            current, i = current.rstrip() + " ", i + 2
            continue
        elif char == "#" and (not current or current[-1].isspace()):
            i = block.find("\n", i) if "\n" in block[i:] else len(block)
            continue
        elif char == "\n":
            commands.append(current.strip())
            current, i = "", i + 1
            continue
        current += char
        i += 1
    commands.append(current.strip())
    return [re.sub(r" {2,}", " ", c) if "\n" not in c else c for c in commands if c]


def bash_commands(markdown: str) -> list[str]:
    """Every command of the ```bash blocks, in the order they appear."""
    return [c for block in FENCE.findall(markdown) for c in split_commands(block)]


def checked_otherwise(markdown: str) -> dict[str, str]:
    """The bullets `- \\`command\\`: reason` under the heading "Commands checked otherwise"."""
    section = markdown.split(EXCEPTIONS_HEADING, 1)[1].split("\n#", 1)[0]
    return {m["command"]: m["reason"] for m in map(EXCEPTION_ITEM.match, section.splitlines()) if m}
