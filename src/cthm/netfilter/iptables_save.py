"""The one reader of `iptables-save` text: its chain declarations and rules, with their table.

Every module that reads a save (iptables_parse: cthm's chains; foreign: other software's `-j CT`
rules; detect: what a namespace holds) walks the lines this yields, so the format is known in
one place: `*TABLE` opens a table, `:NAME POLICY [packets:bytes]` declares a chain, `-A CHAIN
...` appends a rule, `COMMIT` closes the table; comments (`#`) and blank lines say nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

# (table, chain, text, words): a chain declaration (words None) or a rule (words: the line split
# on blanks, `-A` and the chain first). A plain tuple: a save of thousands of rules is read on
# every apply of the iptables backend, and a named tuple per line costs it measurably.
SaveLine = tuple[str, str, str, list[str] | None]


def declared_policy(text: str) -> str:
    """A chain declaration's policy (`ACCEPT`, `DROP`; `-` for a user chain)."""
    return text[1:].partition(" ")[2].split(" ", 1)[0]


def save_lines(text: str, *, table: str | None = None) -> Iterator[SaveLine]:
    """The declarations and rules of `text` in order; with `table`, only that table's. A rule
    line needs `-A` and a chain; other lines (`COMMIT`, comments, anything unknown) are
    skipped."""
    current = ""
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        if line[0] == "*":
            current = line[1:]
            continue
        if (table is not None and current != table) or line == "COMMIT":
            continue
        if line[0] == ":":
            yield current, line[1:].split(" ", 1)[0], line, None
            continue
        words = line.split()
        if len(words) >= 2 and words[0] == "-A":
            yield current, words[1], line, words
