"""What the `crdtim` command line prints, and how: tables sized by display width, text from
other devices made safe for a terminal, local times, JSON, and the error and note lines.

Split from cli.py by concern: no argument parsing, no Replica call and no decision here, only
formatting and writing to stdout/stderr.
"""

from __future__ import annotations

import io
import json
import os
import sys
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from .replica import Change, Message

__all__ = [
    "change_json",
    "change_line",
    "cut",
    "display_width",
    "error",
    "local_time",
    "message_lines",
    "note",
    "notes",
    "print_json",
    "print_pairs",
    "print_table",
    "printable",
    "show_value",
    "silence_stdout",
    "snapshot_json",
    "snapshot_line",
    "tolerate_unencodable",
]


def error(message: str, status: int) -> int:
    print(f"crdtim: error: {message}", file=sys.stderr)
    return status


def note(message: str) -> None:
    print(f"crdtim: {message}", file=sys.stderr)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


def change_line(seq: int, change: Change) -> str:
    origin = "local" if change.origin == "local" else f"from {change.peer or 'unknown peer'}"
    return f"{seq}\t{printable(change.conversation)}\t{','.join(sorted(change.fields))}\t{origin}"


def change_json(seq: int, change: Change) -> str:
    return json.dumps({"seq": seq, "conversation": change.conversation,
                       "fields": sorted(change.fields), "origin": change.origin,
                       "peer": change.peer})


def snapshot_line(seq: int, state: Mapping[str, Any]) -> str:
    """A conversation's whole state as `watch` prints it before following the log: the
    columns of change_line, with key=value pairs for the fields and `snapshot` as origin."""
    fields = {k: v for k, v in state.items() if k not in ("id", "extra")}
    fields.update(state.get("extra", {}))
    pairs = ",".join(f"{k}={show_value(k, v)}" for k, v in fields.items())
    return f"{seq}\t{printable(str(state['id']))}\t{pairs}\tsnapshot"


def snapshot_json(seq: int, state: Mapping[str, Any]) -> str:
    return json.dumps({"seq": seq, "conversation": state["id"], "snapshot": True,
                       "state": state, "origin": "snapshot"})


def show_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "read_by":
        return ", ".join(f"{printable(m)}: {n}" for m, n in sorted(value.items())) or "-"
    if key == "muted_until":
        return "-" if not value else f"{local_time(value)} ({value} ms)"
    if key == "last_at":
        shown = local_time(value)
        return "-" if not value else shown if shown.endswith(" ms") else f"{shown} ({value} ms)"
    return printable(str(value))


def notes(c: Any) -> str:
    """The `ls` NOTES column: the conversation features that are set (specs/crdt.md §6)."""
    out = []
    if c.archived:
        out.append("archived")
    if c.marked_unread:
        out.append("marked unread")
    if c.muted and c.muted_until:
        out.append(f"muted until {local_time(c.muted_until)}")
    if c.draft:
        out.append("draft")
    if c.read_by:
        out.append(f"read by {len(c.read_by)}")
    return ", ".join(out)


def message_lines(m: Message, *, id_width: int = 0, mark: str | None = None) -> list[str]:
    """One message of `history` or `versions` as it reads in a thread: its id (padded to
    `id_width`), `mark` (versions' column for the visible one), "2/3" when it has other
    versions, its role and author, then its text, each further line of the text indented
    under the first; "(deleted)" for a deleted one, "(edited)" after an edited one."""
    head = printable(m.id)
    head += " " * (id_width - display_width(head)) + "  "
    if mark is not None:
        head = f"{mark} {head}"
    if m.versions > 1 or mark is not None:
        head += f"{m.version + 1}/{m.versions} "
    head += printable(m.role) + ("" if m.author is None else f" ({printable(m.author)})") + ": "
    lines = ["(deleted)"] if m.deleted else [printable(t) for t in m.text.splitlines()] or [""]
    if m.edited is not None and not m.deleted:
        lines[-1] += " (edited)"
    indent = " " * display_width(head)
    return [(head + lines[0]).rstrip()] + [(indent + t).rstrip() for t in lines[1:]]


def print_pairs(pairs: Mapping[str, str]) -> None:
    width = max(len(k) for k in pairs) + 1
    for key, value in pairs.items():
        print(f"{key + ':':<{width}} {value}".rstrip())


def print_table(rows: Sequence[tuple[str, ...]], right_aligned: Collection[int] = ()) -> None:
    widths = [max(display_width(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - display_width(cell))
            cells.append(pad + cell if i in right_aligned else cell + pad)
        print("  ".join(cells).rstrip())


def local_time(ms: int) -> str:
    try:
        return datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):  # beyond what the platform's clock can show
        return f"{ms} ms"


#: Bidirectional embeddings, overrides and isolates (and the marks): text from another device
#: could use them to reorder what follows on the line, so they are shown escaped.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")
#: Categories shown escaped: controls (newlines, escape sequences), line and paragraph
#: separators (they break the layout), lone surrogates (a terminal cannot show them).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _escaped(c: str) -> bool:
    return c in _BIDI_CONTROLS or unicodedata.category(c) in _ESCAPED_CATEGORIES


def printable(text: str) -> str:
    """Text from other devices, made safe for a terminal: control characters (newlines,
    escape sequences) and bidi overrides are shown escaped instead of acting on the screen
    or the layout. Other format characters stay as they are: a zero-width joiner or a
    variation selector is part of an emoji sequence, not a threat to the screen."""
    if text.isprintable():
        return text
    return "".join(repr(c)[1:-1] if _escaped(c) else c for c in text)


def _char_width(c: str) -> int:
    if unicodedata.combining(c):
        return 0
    return 2 if unicodedata.east_asian_width(c) in "WF" else 1


def display_width(text: str) -> int:
    """Columns the text takes on a terminal (CJK and emoji take two)."""
    if text.isascii():
        return len(text)
    return sum(_char_width(c) for c in text)


def cut(text: str, width: int) -> str:
    if display_width(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        w = _char_width(c)
        if used + w > width - 3:
            break
        out.append(c)
        used += w
    return "".join(out) + "..."


def tolerate_unencodable(stream: TextIO) -> None:
    # A title in a script the terminal's encoding lacks must not abort the listing.
    if not isinstance(stream, io.TextIOWrapper):
        return  # a stream replaced by the embedding program: its encoding is its own
    try:
        stream.reconfigure(errors="backslashreplace")
    except (ValueError, OSError):
        pass


def silence_stdout() -> None:
    # Python's recipe for SIGPIPE: point stdout at devnull so the flush at exit is quiet too.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
