"""Decoding what a session or a node sent, for assertions (tests/ has no __init__.py: this is
imported as a top-level module, like `strategies`)."""

from __future__ import annotations

from crdtim.protocol import FrameDecoder, Message


def frames_of(data: bytes) -> list[Message]:
    """Every frame in `data`, which must hold whole frames only."""
    dec = FrameDecoder(2**31)
    dec.feed(data)
    out = []
    while (m := dec.next_message()) is not None:
        out.append(m)
    assert dec.buffered == 0, f"{dec.buffered} bytes of an unfinished frame"
    return out
