"""Not relaying what a peer holds (specs/protocol.md §12): HAVE frames, entries left out for
a peer that holds them, a stream held back while the peer is being sent an entry by its
origin directly -- and released, so that the entry still arrives, when that link ends.
"""

from __future__ import annotations

import pytest

from crdtim import codec
from crdtim.protocol import (
    CompactDelta,
    Delta,
    Have,
    RelayIndex,
    RemoteProtocolError,
    State,
    SyncSession,
    encode_frame,
)
from crdtim.protocol._relay import PeerRelay
from frames import frames_of
from test_protocol_sim import SIM_CONFIG, Wire, connect


def _mesh(*replicas):
    """Every pair connected, each replica with its RelayIndex, run until quiet."""
    relays = {r.id: RelayIndex() for r in replicas}
    wires = {}
    for i, x in enumerate(replicas):
        for y in replicas[i + 1:]:
            wires[x.id, y.id] = connect(x, y, relays=(relays[x.id], relays[y.id]))
    _settle(*wires.values())
    return wires, relays


def _settle(*wires: Wire) -> None:
    for _ in range(100):
        moved = 0
        for w in wires:
            moved += w.pump()
            for k in (0, 1):
                if w.queues[k]:
                    w.deliver(k)
                    moved += 1
        if not moved:
            return
    raise AssertionError("never quiet")


def _payloads_since(wire: Wire, k: int, mark: int) -> list[bytes]:
    return [m.payload for m in wire.frames[k][mark:] if isinstance(m, Delta)]


def test_an_entry_the_peer_holds_is_left_out_but_covered(a, b, open_replica):
    c = open_replica("c")
    wires, _ = _mesh(a, b, c)
    ab, ac, bc = wires[a.id, b.id], wires[a.id, c.id], wires[b.id, c.id]
    a.set_title("x", "from a")
    _settle(ab, ac)  # a's write reached b and c directly
    mark = len(bc.frames[0])
    _settle(bc)
    assert all(b"from a" not in p for p in _payloads_since(bc, 0, mark))  # not relayed
    assert c.get("x").title == "from a"
    assert b.peer_ack(c.id) == c.received_from(b.id) == b.head  # the interval is covered
    assert bc.sessions[0].caught_up


def test_held_back_while_the_origin_delivers_then_left_out(a, b, open_replica):
    c = open_replica("c")
    wires, _ = _mesh(a, b, c)
    ab, ac, bc = wires[a.id, b.id], wires[a.id, c.id], wires[b.id, c.id]
    a.set_title("x", "from a")
    _settle(ab)  # b has it; a's DELTA to c has not been sent yet
    b.set_title("y", "from b")
    _settle(bc)
    # c is linked to a (a streams to it): b waits for a to deliver rather than relay x,
    # and b's own later write waits behind it (DELTAs cover intervals in order).
    assert c.get("x") is None and c.get("y") is None
    assert not bc.sessions[0].caught_up
    mark = len(bc.frames[0])
    _settle(ac)  # a delivers; c's HAVE tells b
    _settle(bc)
    assert c.get("x").title == "from a" and c.get("y").title == "from b"
    payloads = _payloads_since(bc, 0, mark)
    assert any(b"from b" in p for p in payloads)
    assert all(b"from a" not in p for p in payloads)  # left out: c had it from a


def test_held_back_entry_is_sent_once_the_origin_link_ends(a, b, open_replica):
    # Liveness: a skipped or held-back entry must still reach every replica. Here a's link to
    # c breaks (its DELTA lost on the way) before c has x; b then relays it.
    c = open_replica("c")
    wires, _ = _mesh(a, b, c)
    ab, ac, bc = wires[a.id, b.id], wires[a.id, c.id], wires[b.id, c.id]
    a.set_title("x", "from a")
    _settle(ab)
    ac.pump()  # a's DELTA to c is queued ...
    _settle(bc)
    assert c.get("x") is None  # ... and b holds x back for it
    for s in ac.sessions:  # ... when the connection drops, the DELTA with it
        s.ended()
    _settle(bc)
    assert c.get("x").title == "from a"
    assert c.state() == b.state()


def test_a_partition_heals_and_everything_arrives(a, b, open_replica):
    c, d = open_replica("c"), open_replica("d")
    wires, relays = _mesh(a, b, c, d)
    # {a, b} | {c, d}: the links across are dropped, writes on both sides.
    across = [w for (x, y), w in wires.items() if {x, y} not in ({a.id, b.id}, {c.id, d.id})]
    for w in across:
        for s in w.sessions:
            s.ended()
    a.set_title("p", "left")
    c.set_title("q", "right")
    _settle(wires[a.id, b.id], wires[c.id, d.id])
    healed = [connect(x, y, relays=(relays[x.id], relays[y.id]))
              for x, y in ((a, c), (a, d), (b, c), (b, d))]
    _settle(wires[a.id, b.id], wires[c.id, d.id], *healed)
    assert a.state() == b.state() == c.state() == d.state()
    assert d.get("p").title == "left" and b.get("q").title == "right"


def test_a_filtered_stream_does_not_link():
    index = RelayIndex()
    relay = PeerRelay(index)
    relay.open("p", filtered=False)
    relay.on_have(True, {}, [])  # p sends us only its scope: we may lack what it has
    assert index.linked == {}
    relay.on_have(False, {"q": 3}, [])
    assert index.linked == {"p": 0} and relay.peer_linked == {"q": 3}
    relay.on_have(False, {}, ["q"])
    assert relay.peer_linked == {}
    relay.close()
    relay.close()  # idempotent
    assert index.linked == {}


def test_relay_index_is_bounded():
    index = RelayIndex(max_entries=3)
    for seq in range(1, 6):
        index.logged(seq, "p", seq)
    assert list(index.via) == [3, 4, 5]


def _open(a, b) -> SyncSession:
    wire = connect(a, b, relays=(RelayIndex(), RelayIndex()))
    for _ in range(2):
        wire.deliver(0)
        wire.deliver(1)
    return wire.sessions[1]


@pytest.mark.parametrize("have, reason", [
    (Have(filtered=False, new_ids=(), linked=(0, 5), unlinked=()),
     "HAVE: replica index 0 is not in the session table of 0"),
    (Have(filtered=False, new_ids=("x",), linked=(), unlinked=(1,)),
     "HAVE: replica index 1 is not in the session table of 1"),
    (Have(filtered=False, new_ids=("x", "x"), linked=(), unlinked=()),
     "HAVE: replica id 'x' is already in the session table"),
    (Have(filtered=False, new_ids=("",), linked=(), unlinked=()),
     "HAVE new ids: a replica id"),
])
def test_bad_have_refused(a, b, have, reason):
    s = _open(a, b)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(encode_frame(have))
    assert info.value.reason.startswith(reason)
    assert s.state is State.CLOSED


@pytest.mark.parametrize("body, reason", [
    ([12, 1, [], [], []], "HAVE filtered: expected true or false"),
    ([12, False, [], [0], []], "HAVE linked: expected a flat array of [index, seq] pairs"),
    ([12, False, [], [-1, 0], []], "HAVE linked: -1 is not a session table index"),
    ([12, False, [], [0, -1], []], "HAVE linked: -1 is not a sequence number"),
    ([12, False, [], [], [1024]], "HAVE unlinked: 1024 is not a session table index"),
    ([12, False, [], [], {}], ("malformed frame: a frame field holds a map; fields are scalars, strings, bytes "
                                  "or arrays of them")),
])
def test_malformed_have_refused(a, b, body, reason):
    s = _open(a, b)
    frame = codec.pack(body)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(len(frame).to_bytes(4, "big") + frame)
    assert info.value.reason == reason


def test_have_before_hello_refused(a):
    s = SyncSession(a, SIM_CONFIG, relay=RelayIndex())
    s.initiate()
    with pytest.raises(RemoteProtocolError, match="unexpected HAVE in state await_hello"):
        s.receive_data(encode_frame(Have(filtered=False, new_ids=(), linked=(), unlinked=())))


def test_have_and_compact_delta_share_the_table(a, b):
    # A HAVE's new ids take indexes that a later COMPACT_DELTA refers to.
    s = _open(a, b)
    s.receive_data(encode_frame(Have(filtered=False, new_ids=("q", a.id), linked=(0, 1),
                                     unlinked=())))
    body = codec.pack({"c": {0: [1_700_000_000_000, 0, 1, "t"]}})
    s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(), body=body)))
    assert b.get("c").title == "t"
    assert b.state().fields("c")["title"].stamp.replica == a.id


def test_sessions_without_a_relay_index_ignore_haves(a, b):
    wire = connect(a, b)  # no RelayIndex: relays everything, as version 3 did
    wire.run_until_quiet()
    assert not any(isinstance(m, Have) for m in frames_of(bytes(wire.sent_bytes[0])))
    s = wire.sessions[1]
    s.receive_data(encode_frame(Have(filtered=False, new_ids=("q",), linked=(0, 1),
                                     unlinked=())))
    assert s.state is State.OPEN
