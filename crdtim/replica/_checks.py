"""Validation of what callers pass to a Replica, before any transaction starts.

Each check raises InvalidArgument naming the value and the rule (specs/storage.md §11 for
the byte bounds that LMDB keys and log framing impose). Pure functions: they read no store
and change nothing.
"""

from __future__ import annotations

from typing import Any

from .. import codec
from ..errors import CrdtimError
from ..store import MAX_CID_BYTES, MAX_ORIGIN_BYTES

MAX_CID = codec.DEFAULT_LIMITS.max_cid
MAX_TEXT = codec.DEFAULT_LIMITS.max_text
MAX_SEQ = codec.MAX_INT


class InvalidArgument(CrdtimError, ValueError):
    """A caller passed a value crdtim cannot accept (bad id, text too long, negative seq...)."""


def storable(s: str, max_bytes: int | None = None) -> bool:
    """True if `s` has a UTF-8 encoding (no lone surrogate) of at most `max_bytes` bytes."""
    if s.isascii():
        return max_bytes is None or len(s) <= max_bytes
    try:
        n = len(s.encode())
    except UnicodeEncodeError:
        return False
    return max_bytes is None or n <= max_bytes


def check_cid(cid: Any) -> None:
    if type(cid) is not str or not 1 <= len(cid) <= MAX_CID or not storable(cid, MAX_CID_BYTES):
        raise InvalidArgument(
            f"conversation id must be a string of 1 to {MAX_CID} characters and at most "
            f"{MAX_CID_BYTES} bytes in UTF-8, not {cid!r:.80}")


def check_text(text: Any, what: str) -> None:
    if type(text) is not str or len(text) > MAX_TEXT or not storable(text):
        raise InvalidArgument(
            f"{what} must be a string of at most {MAX_TEXT} characters, valid in UTF-8")


def check_peer(peer: Any) -> None:
    if type(peer) is not str or not peer or not storable(peer, MAX_ORIGIN_BYTES):
        raise InvalidArgument(f"peer must be a replica id, not {peer!r:.80}")


def check_origin(origin: Any) -> None:
    """An origin passed with a remote delta: a replica id, or None for 'unknown'."""
    if origin is not None and (type(origin) is not str
                               or not storable(origin, MAX_ORIGIN_BYTES)):
        raise InvalidArgument(f"origin must be a replica id, not {origin!r:.80}")


def check_seq(n: Any, what: str) -> int:
    if type(n) is not int or not 0 <= n <= MAX_SEQ:
        raise InvalidArgument(f"{what} must be an integer from 0 to {MAX_SEQ}, not {n!r:.40}")
    return n
