"""Decoding what a session or a node sent, for assertions (tests/ has no __init__.py: this is
imported as a top-level module, like `strategies`)."""

from __future__ import annotations

from crdtim.protocol import CompactDelta, Delta, FrameDecoder, Message
from crdtim.protocol._table import ReceivedIds


class Tap:
    """Decodes one direction of a connection as its receiver reads it: a COMPACT_DELTA comes
    out as the DELTA it stands for (specs/protocol.md §11, §15), unless `as_sent` (then it
    comes out as sent, and the tables are not kept: a tap as sent may start mid-stream);
    `compact` counts them."""

    def __init__(self, as_sent: bool = False):
        self.decoder = FrameDecoder(2**31)
        self.table = ReceivedIds()
        self.as_sent = as_sent
        self.compact = 0

    def feed(self, data: bytes) -> list[Message]:
        self.decoder.feed(data)
        out: list[Message] = []
        while (m := self.decoder.next_message()) is not None:
            if isinstance(m, CompactDelta):
                self.compact += 1
                if not self.as_sent:
                    m = Delta(start=m.start, end=m.end, payload=self.table.payload(m))
            out.append(m)
        return out


def frames_of(data: bytes, as_sent: bool = False) -> list[Message]:
    """Every frame in `data`, which must hold whole frames only (one connection's direction,
    from its start: COMPACT_DELTAs read as DELTAs, unless `as_sent`)."""
    tap = Tap(as_sent)
    out = tap.feed(data)
    assert tap.decoder.buffered == 0, f"{tap.decoder.buffered} bytes of an unfinished frame"
    return out
