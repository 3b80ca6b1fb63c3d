"""What the lattices mean to a user, as named scenarios on a few simulated replicas.

Each replica here is just a ConversationMap (and, where time matters, an HLC reading);
"sending" a delta is joining it into the other replica's state. The law suite says the types
are lattices; these tests say they are the right lattices.
"""

from __future__ import annotations

from functools import reduce
from itertools import permutations

import pytest

from crdtim import codec
from crdtim.crdt import (
    DEFAULT_MAX_DRIFT_MS,
    DEFAULT_SCHEMA,
    ClockDriftError,
    ConversationMap,
    Field,
    Flag,
    Hlc,
    Stamp,
)
from crdtim.crdt import hlc

CID = "chat"


def join_all(*maps: ConversationMap) -> ConversationMap:
    return reduce(ConversationMap.join, maps)


class Device:
    """A replica with its own map, clock and wall clock (which may be wrong)."""

    def __init__(self, rid: str, wall_ms: int, schema=DEFAULT_SCHEMA):
        self.rid = rid
        self.wall_ms = wall_ms
        self.clock = hlc.ZERO
        self.state = ConversationMap.bottom(schema)

    def apply(self, delta: ConversationMap) -> ConversationMap:
        self.state = self.state.join(delta)
        return delta

    def receive(self, delta: ConversationMap) -> None:
        # What a replica must do with a remote delta: advance its clock past the delta's
        # stamps (refusing readings too far ahead), then join.
        remote = delta.max_clock()
        if remote is not None:
            self.clock = hlc.receive(self.clock, remote, self.wall_ms)
        self.apply(delta)

    def stamp(self) -> Stamp:
        self.clock = hlc.tick(self.clock, self.wall_ms)
        return Stamp(self.clock.wall, self.clock.counter, self.rid)

    def set_title(self, text: str) -> ConversationMap:
        return self.apply(self.state.set_title(CID, text, self.stamp()))

    def pin(self) -> ConversationMap:
        return self.apply(self.state.enable(CID, "pinned", self.rid))

    def unpin(self) -> ConversationMap:
        return self.apply(self.state.disable(CID, "pinned"))

    def arrive(self, seq: int, preview: str = "", at: int = 0) -> ConversationMap:
        return self.apply(self.state.message_arrived(CID, seq, preview, at, self.rid))

    def read(self, seq: int) -> ConversationMap:
        return self.apply(self.state.mark_read(CID, seq))

    @property
    def view(self):
        return self.state.view(CID)


# -- add-wins pinned flag ------------------------------------------------------------------


def test_concurrent_pin_and_unpin_leave_it_pinned():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    laptop.receive(phone.pin())
    # Concurrently: the phone pins again while the laptop unpins what it has seen.
    pin, unpin = phone.pin(), laptop.unpin()
    phone.receive(unpin)
    laptop.receive(pin)
    assert phone.view.pinned and laptop.view.pinned
    assert phone.state == laptop.state


def test_concurrent_first_pin_and_unpin_leave_it_pinned():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    pin, unpin = phone.pin(), laptop.unpin()  # the laptop has seen no pin at all
    phone.receive(unpin)
    laptop.receive(pin)
    assert phone.view.pinned and laptop.view.pinned


def test_unpin_after_an_observed_pin_unpins():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    pin = phone.pin()
    laptop.receive(pin)
    unpin = laptop.unpin()
    phone.receive(unpin)
    assert not phone.view.pinned and not laptop.view.pinned
    # A late duplicate of the pin changes nothing: the unpin has seen it.
    phone.receive(pin)
    laptop.receive(pin)
    assert not phone.view.pinned and not laptop.view.pinned


def test_unpin_that_arrives_before_the_pin_it_observed_still_wins():
    phone, laptop, tablet = Device("phone", 0), Device("laptop", 0), Device("tablet", 0)
    pin = phone.pin()
    laptop.receive(pin)
    unpin = laptop.unpin()
    tablet.receive(unpin)  # out of causal order
    tablet.receive(pin)
    assert not tablet.view.pinned


def test_pin_after_an_observed_unpin_pins():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    laptop.receive(phone.pin())
    phone.receive(laptop.unpin())
    assert not phone.view.pinned
    laptop.receive(phone.pin())
    assert phone.view.pinned and laptop.view.pinned


def test_pinned_and_muted_are_independent():
    phone = Device("phone", 0)
    phone.pin()
    phone.apply(phone.state.enable(CID, "muted", phone.rid))
    phone.apply(phone.state.disable(CID, "muted"))
    assert phone.view.pinned and not phone.view.muted


def test_disable_of_an_unset_flag_is_an_empty_delta():
    assert ConversationMap().disable(CID, "pinned").is_bottom()
    assert Flag.bottom().disable() == Flag.bottom()


# -- title: last writer wins by hybrid logical clock ------------------------------------------


def test_causally_later_title_wins_even_when_its_wall_clock_is_behind():
    # "a" sorts before "z": if the tie-break on replica id decided, A's title would win.
    a = Device("z-phone", wall_ms=1_000_000)
    b = Device("a-laptop", wall_ms=1_000_000 - 60_000)  # a minute behind
    first = a.set_title("from A")
    b.receive(first)
    second = b.set_title("from B, after reading A's")
    a.receive(second)
    for device in (a, b):
        assert device.view.title == "from B, after reading A's"
    assert second.fields(CID)["title"].stamp > first.fields(CID)["title"].stamp
    # Without the receive step, B's own clock would have stamped it behind A's title.
    naive = hlc.tick(hlc.ZERO, b.wall_ms)
    assert Stamp(naive.wall, naive.counter, b.rid) < first.fields(CID)["title"].stamp


def test_concurrent_titles_break_ties_by_stamp_then_replica():
    a, b = Device("A", 5_000), Device("B", 5_000)
    da, db = a.set_title("mine"), b.set_title("yours")  # same wall, same counter
    a.receive(db)
    b.receive(da)
    assert a.view.title == b.view.title == "yours"  # "B" > "A"


def test_equal_stamps_break_ties_on_the_value():
    # Stamps are unique while replicas behave; a replayed or forged stamp carrying another
    # value must still give every replica the same answer, whatever the order of arrival.
    a = ConversationMap().set_title(CID, "apple", Stamp(7, 0, "A"))
    b = ConversationMap().set_title(CID, "banana", Stamp(7, 0, "A"))
    assert a.join(b) == b.join(a)
    assert a.join(b).view(CID).title == "banana"
    # The same for last_message: one message (same time, seq, replica) told with two previews.
    x = ConversationMap().message_arrived(CID, 4, "draft", 100, "A")
    y = ConversationMap().message_arrived(CID, 4, "final", 100, "A")
    assert x.join(y) == y.join(x)
    assert x.join(y).view(CID).last_preview == "final"


def test_hlc_refuses_a_remote_reading_more_than_five_minutes_ahead():
    now = 10_000_000
    last = Hlc(now, 3)
    ahead = Hlc(now + DEFAULT_MAX_DRIFT_MS + 1, 0)
    with pytest.raises(ClockDriftError, match="ahead of the local wall clock"):
        hlc.receive(last, ahead, now)
    # Exactly at the bound is still accepted, and the clock moves past the remote reading.
    at_bound = Hlc(now + DEFAULT_MAX_DRIFT_MS, 7)
    assert hlc.receive(last, at_bound, now) == Hlc(at_bound.wall, 8)
    # The bound is configurable.
    with pytest.raises(ClockDriftError):
        hlc.receive(last, Hlc(now + 11, 0), now, max_drift_ms=10)
    assert DEFAULT_MAX_DRIFT_MS == 5 * 60 * 1000


def test_hlc_never_goes_backwards_when_the_wall_clock_does():
    clock = hlc.tick(hlc.ZERO, 1_000)
    later = hlc.tick(clock, 400)  # the wall clock jumped back
    assert later > clock
    assert hlc.receive(later, Hlc(900, 5), 300) > later


# -- unread: two max registers ---------------------------------------------------------------


def test_read_marker_on_one_replica_and_arrivals_on_another_converge_to_the_right_unread():
    server, phone, laptop = Device("server", 0), Device("phone", 0), Device("laptop", 0)
    arrivals = [server.arrive(seq, f"m{seq}", at=seq) for seq in (1, 2, 3, 4, 5)]
    for d in arrivals[:3]:
        phone.receive(d)
    read = phone.read(3)  # the phone has shown messages 1..3
    assert phone.view.unread == 0
    laptop.receive(read)  # the laptop learns of the read before any message
    assert laptop.view.unread == 0  # never negative
    for d in reversed(arrivals):
        laptop.receive(d)
    for d in arrivals[3:]:
        phone.receive(d)
    server.receive(read)
    for device in (server, phone, laptop):
        assert (device.view.last_seq, device.view.read_seq, device.view.unread) == (5, 3, 2)
    assert server.state == phone.state == laptop.state


def test_reading_everything_on_one_device_clears_the_badge_on_all():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    for seq in (1, 2, 3):
        laptop.receive(phone.arrive(seq))
    assert laptop.view.unread == 3
    phone.receive(laptop.read(3))
    assert phone.view.unread == laptop.view.unread == 0


def test_last_message_is_the_newest_by_message_time_whatever_the_arrival_order():
    phone, laptop = Device("phone", 0), Device("laptop", 0)
    deltas = [
        phone.arrive(1, "old", at=100),
        laptop.arrive(3, "newest", at=300),
        phone.arrive(2, "middle", at=200),
    ]
    for order in permutations(deltas):
        state = join_all(ConversationMap(), *order)
        view = state.view(CID)
        assert (view.last_preview, view.last_at, view.last_seq) == ("newest", 300, 3)


def test_a_late_older_message_does_not_replace_the_preview():
    phone = Device("phone", 0)
    phone.arrive(5, "newest", at=500)
    assert phone.state.message_arrived(CID, 4, "older", 400, phone.rid).is_bottom()


# -- user-extended schema --------------------------------------------------------------------


def test_user_extended_schema_works_through_mutators_join_view_and_codec():
    schema = DEFAULT_SCHEMA.extend(Field("starred", 64, Flag))
    phone, laptop = Device("phone", 0, schema), Device("laptop", 0, schema)
    assert phone.state.view(CID) is None

    star = phone.apply(phone.state.enable(CID, "starred", phone.rid))
    assert phone.view.extra == {"starred": True}
    assert phone.view.as_dict()["extra"] == {"starred": True}

    # The delta travels through the codec, decoded with the same schema.
    wire = codec.encode_map(star)
    laptop.receive(codec.decode_map(wire, schema))
    assert laptop.view.extra == {"starred": True}

    # Add-wins like pinned: a concurrent unstar loses against a fresh star.
    unstar = laptop.apply(laptop.state.disable(CID, "starred"))
    restar = phone.apply(phone.state.enable(CID, "starred", phone.rid))
    phone.receive(unstar)
    laptop.receive(restar)
    assert phone.state == laptop.state
    assert phone.view.extra == {"starred": True}

    # Per-conversation storage encoding too.
    fields = phone.state.fields(CID)
    assert codec.decode_fields(codec.encode_fields(fields, schema), schema) == fields

    # A conversation with other fields shows the extra field's bottom value.
    laptop.set_title("hello")
    other = laptop.state.set_title("other", "x", laptop.stamp())
    assert laptop.state.join(other).view("other").extra == {"starred": False}

    # A replica on the default schema carries the unknown field (specs/crdt.md §7): not
    # shown, and written back intact for replicas that know it.
    carried = codec.decode_map(wire)
    assert carried.view(CID).extra == {}
    assert codec.decode_map(codec.encode_map(carried), schema) == codec.decode_map(wire, schema)


def test_schema_refuses_a_field_declared_twice():
    with pytest.raises(ValueError, match="declared twice"):
        DEFAULT_SCHEMA.extend(Field("pinned", 70, Flag))
    with pytest.raises(ValueError, match="declared twice"):
        DEFAULT_SCHEMA.extend(Field("starred", 64, Flag), Field("starred2", 64, Flag))


def test_schema_extension_refuses_a_tag_reserved_for_crdtim():
    # Tags 0..63 are crdtim's own fields (specs/crdt.md §6); an app's take 64..127.
    with pytest.raises(ValueError, match="reserved for crdtim"):
        DEFAULT_SCHEMA.extend(Field("starred", 63, Flag))
