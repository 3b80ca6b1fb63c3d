"""The decoded work one frame may cost (specs/security.md §7, specs/protocol.md §2): at most
`MAX_FRAME_CONVERSATIONS` conversations and `MAX_FRAME_ITEMS` items per DELTA or STATE_CHUNK
payload, whatever its size in bytes.

A frame's byte limit alone does not bound what it decodes to: a conversation of one counter
is 13 bytes on the wire and about 1.4 KiB of Python objects and work by the time it is
applied, so one 8 MiB DELTA of them once cost a server over 600 MiB and many seconds of its
event loop. Both counts are read before anything is decoded (codec.count_conversations,
count_items). They are protocol constants, not settings: a sender must know what every
receiver accepts, and HELLO announces only the frame's bytes. Senders keep to them
(_outbound.py); a receiver refuses a payload over them. No I/O here.
"""

from __future__ import annotations

from .. import codec

__all__ = ["MAX_FRAME_CONVERSATIONS", "MAX_FRAME_ITEMS", "over_budget"]

#: Conversations in one DELTA or STATE_CHUNK payload; DELTAs applied together (group commit)
#: are joined only up to this many. Honest frames hold far fewer: a DELTA joins at most
#: `max_entries_per_delta` (256) log entries, a STATE_CHUNK `max_conversations_per_chunk`
#: (512) conversations. About 70 ms of a receiver's time at most.
MAX_FRAME_CONVERSATIONS = 4096
#: Items (conversations, fields, and values inside fields' arrays and maps: a dot is two) in
#: one payload, unless it holds a single conversation (which must always be sendable). An
#: item takes at least a byte, so only payloads larger than this are counted.
MAX_FRAME_ITEMS = 256 * 1024


def over_budget(payload: bytes) -> str | None:
    """Why `payload` (an encoded conversation map) is over the decoded work a frame may cost,
    or None when it is not (or is malformed: the decoder then says how)."""
    conversations = codec.count_conversations(payload)
    if conversations is None:
        return None
    if conversations > MAX_FRAME_CONVERSATIONS:
        return (f"{conversations} conversations is over the limit of "
                f"{MAX_FRAME_CONVERSATIONS} per frame")
    if conversations > 1 and len(payload) > MAX_FRAME_ITEMS:
        items = codec.count_items(payload, MAX_FRAME_ITEMS)
        if items is not None and items > MAX_FRAME_ITEMS:
            return f"over {MAX_FRAME_ITEMS} items (conversations, fields, dots) per frame"
    return None
