"""The wire protocol under hostile input, at the frame decoder and at a session after a real
handshake over real replicas (the machinery and the properties are in tests/session_fuzz.py).

Inputs: (a) well-formed messages of every type with edge field values, after a valid prefix
of a recorded exchange; (b) mutations of the frames a real peer sent in recorded exchanges
(bit flips, truncation, splicing, lying and huge length prefixes, garbage and deeply nested
msgpack, wrong types and arities, out-of-range sequence numbers, DELTA and STATE_CHUNK payloads
with invalid CRDT content from the codec fuzzer's strategies); (c) random bytes. Every input is
split at drawn offsets between receive_data calls, and runs without authentication, with a
pre-shared key, and with a key and an authorization scope.

The decoder yields messages or RemoteProtocolError. The session yields valid events, or
refuses with RemoteProtocolError, an ERROR frame queued, and stays closed and deaf; the
refused frame changed nothing, and the replica equals a twin fed only the frames accepted
before it. `make fuzz` runs the same properties over a million seeded inputs.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

import message_strategies as ms
import session_fuzz as fz
import strategies as s
from crdtim import codec, protocol
from crdtim.crdt import ConversationMap, Stamp
from crdtim.protocol import (
    MAX_REPLICA_ID_BYTES,
    Ack,
    ChunkAck,
    Delta,
    DeltaApplied,
    Error,
    Ping,
    Pong,
    RemoteProtocolError,
    StateChunk,
    StateEnd,
    encode_frame,
)
from crdtim.protocol._inbound import Inbound

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SCENARIO_NAMES = [name for name, _, _ in fz.SCENARIOS]

_lab: fz.Lab | None = None


def lab() -> fz.Lab:
    """Scenario templates and recordings, made once for the module (a few hundred ms)."""
    global _lab
    if _lab is None:
        _lab = fz.Lab()
    return _lab


@pytest.fixture(scope="module", autouse=True)
def _close_lab():
    yield
    global _lab
    if _lab is not None:
        _lab.close()
        _lab = None


def session_property(name: str, data: bytes, cuts: list[int]) -> fz.SessionOutcome | None:
    """check_session_input; an input that trips a known, reported bug is set aside."""
    try:
        return fz.check_session_input(lab(), lab().by_name[name], data, cuts)
    except fz.FuzzFailure as e:
        if fz.known_bug(e):
            reject()
        raise


# -- strategies -----------------------------------------------------------------------------


@st.composite
def split_points(draw: Callable, data: bytes) -> list[int]:
    """Where the bytes are split between receive_data calls: nowhere, a few random offsets,
    frame boundaries, or every byte."""
    if not data:
        return []
    kind = draw(st.sampled_from(("whole", "random", "random", "frames", "bytes")))
    if kind == "whole":
        return []
    if kind == "frames":
        return [end for _, end in fz.frame_spans(data)]
    if kind == "bytes":
        return list(range(1, len(data)))
    return draw(st.lists(st.integers(1, len(data)), min_size=1, max_size=6))


SEQS = st.one_of(st.integers(0, 16), st.sampled_from([fz.MAX_SEQ, fz.MAX_SEQ - 1]),
                 st.integers(0, fz.MAX_SEQ))


def mutator(name: str, handshake: bool = False) -> fz.Mutator:
    return fz.Mutator(lab().by_name[name], lab().scenarios, handshake=handshake)


def history_encodings() -> st.SearchStrategy[bytes]:
    """Deltas holding message histories (specs/crdt.md §8): any valid one, or one reached by
    the mutators, in a conversation the receiver has (with its own messages) or a new one."""
    return st.builds(
        lambda cid, h: codec.encode_map(ConversationMap({cid: {"messages": h}})),
        st.sampled_from(["a1", "p3", "shared", "new"]), ms.encodable_histories())


def payloads(name: str) -> st.SearchStrategy[bytes]:
    """Valid encodings (the strategies' small alphabets), message histories, the payloads of
    the recorded exchanges, crafted hostile content (future stamps, forged dots of the
    receiver, ids too long for the store, top values, forged history shapes...), and the
    codec fuzzer's mutants."""
    return st.one_of(
        s.valid_encodings(),
        history_encodings(),
        st.deferred(lambda: st.sampled_from(mutator(name).payloads)),
        st.deferred(lambda: st.sampled_from(mutator(name).crafted)),
        s.byte_mutants(),
        s.object_mutants(),
    )


@st.composite
def intervals(draw: Callable) -> tuple[int, int]:
    start = draw(SEQS.filter(lambda x: x < fz.MAX_SEQ))
    end = draw(st.one_of(st.integers(start + 1, min(start + 20, fz.MAX_SEQ)),
                         st.integers(start + 1, fz.MAX_SEQ)))
    return start, end


def replica_ids() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(s.REPLICA_IDS),
                     st.text(min_size=1, max_size=64).filter(
                         lambda t: len(t.encode()) <= MAX_REPLICA_ID_BYTES
                         and t.isprintable()))


def well_formed_messages(name: str) -> st.SearchStrategy[Any]:
    """Every message type, each field within what the decoder accepts, edge values drawn.
    (A HELLO of another protocol version is refused by the decoder: the mutations make
    those.)"""
    hello_fields = protocol.Hello.__dataclass_fields__
    hello = {"version": st.just(protocol.PROTOCOL_VERSION),
             "replica_id": replica_ids()}
    if "nonce" in hello_fields:
        hello["nonce"] = st.binary(min_size=32, max_size=32)
    if "key_id" in hello_fields:
        hello["key_id"] = st.sampled_from([None, "fuzz-key", "other-key"])
    messages = [
        st.fixed_dictionaries(hello).map(lambda kw: protocol.Hello(**kw)),
        st.builds(lambda iv, p: Delta(start=iv[0], end=iv[1], payload=p), intervals(),
                  payloads(name)),
        # COMPACT_DELTA (specs/protocol.md §11): ids into the sender's session table.
        st.builds(lambda iv, ids, p: protocol.CompactDelta(start=iv[0], end=iv[1],
                                                           new_ids=tuple(ids), body=p),
                  intervals(), st.lists(replica_ids().filter(lambda t: "\x00" not in t),
                                        max_size=3, unique=True),
                  st.one_of(st.just(b"\x80"), payloads(name))),
        # HAVE (specs/protocol.md §12): indexes into the sender's session table.
        st.builds(lambda f, ids, linked, gone: protocol.Have(
                      filtered=f, new_ids=tuple(ids), linked=tuple(linked), unlinked=tuple(gone)),
                  st.booleans(), st.lists(st.sampled_from(["x", "y", "q" * 64]), max_size=2,
                                          unique=True),
                  st.lists(st.integers(0, 3), max_size=3).map(lambda xs: [v for x in xs
                                                                          for v in (x, 7)]),
                  st.lists(st.integers(0, 1023), max_size=3)),
        st.builds(Ack, seq=SEQS),
        st.builds(StateChunk, payload=payloads(name)),
        st.builds(StateEnd, seq=SEQS),
        st.builds(Ping, nonce=SEQS),
        st.builds(Pong, nonce=SEQS),
        st.builds(ChunkAck, count=SEQS),
        st.builds(Error, reason=st.text(max_size=1000)),
    ]
    if hasattr(protocol, "Auth"):
        messages.append(st.builds(protocol.Auth, mac=st.binary(min_size=32, max_size=32)))
    return st.one_of(messages)


@st.composite
def well_formed_inputs(draw: Callable) -> tuple[str, bytes]:
    """A valid prefix of a recorded exchange, then well-formed messages, some of them
    DELTAs that continue the prefix's intervals (so their content is what is judged)."""
    name = draw(st.sampled_from(SCENARIO_NAMES))
    frames = lab().by_name[name].frames
    prefix = frames[: draw(st.integers(0, len(frames)))]
    expected = max([0, *(m[2] for f in prefix
                         if (m := fz._unpacked(f)) and m[0] in (2, 11))])
    out = list(prefix)
    for _ in range(draw(st.integers(1, 4))):
        if draw(st.booleans()):
            end = draw(st.integers(expected + 1, expected + 5))
            out.append(encode_frame(Delta(start=expected, end=end,
                                          payload=draw(payloads(name)))))
            expected = end
        else:
            out.append(encode_frame(draw(well_formed_messages(name))))
    return name, b"".join(out)


@st.composite
def mutated_inputs(draw: Callable) -> tuple[str, bytes]:
    name = draw(st.sampled_from(SCENARIO_NAMES))
    rng = draw(st.randoms(use_true_random=False))
    return name, mutator(name).stream(rng)


@st.composite
def payload_mutated_inputs(draw: Callable) -> tuple[str, bytes]:
    """A recorded exchange whose k-th DELTA or STATE_CHUNK carries other content."""
    name = draw(st.sampled_from(SCENARIO_NAMES))
    frames = list(lab().by_name[name].frames)
    carriers = [i for i, f in enumerate(frames) if fz._unpacked(f)[0] in (2, 4, 11)]
    i = draw(st.sampled_from(carriers))
    m = fz._unpacked(frames[i])
    m[-1] = draw(payloads(name))
    frames[i] = fz.body(m)
    return name, b"".join(frames[: draw(st.integers(i + 1, len(frames)))])


@st.composite
def random_inputs(draw: Callable) -> tuple[str, bytes]:
    name = draw(st.sampled_from(SCENARIO_NAMES))
    frames = lab().by_name[name].frames
    prefix = b"".join(frames[: draw(st.integers(0, len(frames)))])
    return name, prefix + draw(st.binary(min_size=1, max_size=300))


ANY_INPUT = st.one_of(well_formed_inputs(), mutated_inputs(), payload_mutated_inputs(),
                      random_inputs())


# -- the decoder ----------------------------------------------------------------------------


DECODER = settings(FUZZ, max_examples=400)  # a decoder example costs well under a millisecond


@DECODER
@given(data=st.data(), raw=st.binary(max_size=400))
def test_decoder_random_bytes_yield_messages_or_protocol_error(data, raw: bytes) -> None:
    fz.check_decoder_input(raw, data.draw(split_points(raw)))


@DECODER
@given(data=st.data(), case=ANY_INPUT)
def test_decoder_mutated_frames_yield_messages_or_protocol_error(data, case) -> None:
    _, raw = case
    fz.check_decoder_input(raw, data.draw(split_points(raw)))


@DECODER
@given(data=st.data())
def test_well_formed_messages_decode_to_themselves(data) -> None:
    m = data.draw(well_formed_messages(data.draw(st.sampled_from(SCENARIO_NAMES))))
    frame = encode_frame(m)
    (decoded,), error = fz.decode_all([frame], 2**32)
    assert error is None and encode_frame(decoded) == frame


# -- the session after a real handshake -------------------------------------------------------


@FUZZ
@given(data=st.data(), case=well_formed_inputs())
def test_session_well_formed_messages_are_applied_or_refused_cleanly(data, case) -> None:
    name, raw = case
    session_property(name, raw, data.draw(split_points(raw)))


@settings(FUZZ, max_examples=300)
@given(data=st.data(), case=mutated_inputs())
def test_session_mutated_frames_are_refused_cleanly_changing_nothing(data, case) -> None:
    name, raw = case
    session_property(name, raw, data.draw(split_points(raw)))


@FUZZ
@given(data=st.data(), case=payload_mutated_inputs())
def test_session_deltas_with_invalid_crdt_content_change_nothing(data, case) -> None:
    name, raw = case
    session_property(name, raw, data.draw(split_points(raw)))


@FUZZ
@given(data=st.data(), case=random_inputs())
def test_session_random_bytes_are_refused_cleanly(data, case) -> None:
    name, raw = case
    session_property(name, raw, data.draw(split_points(raw)))


KEYED_NAMES = [name for name, security, _ in fz.SCENARIOS if fz.SECURITY[security] is not None]


@st.composite
def handshake_inputs(draw: Callable) -> tuple[str, bytes]:
    """The peer's side of a recorded keyed handshake (HELLO, AUTH, ACK, then traffic),
    mutated; or replayed as it was."""
    name = draw(st.sampled_from(KEYED_NAMES))
    m = mutator(name, handshake=True)
    if draw(st.integers(0, 9)) == 0:
        return name, b"".join(m.frames)
    return name, m.stream(draw(st.randoms(use_true_random=False)))


@pytest.mark.skipif(not KEYED_NAMES, reason="no authentication in this protocol version")
@FUZZ
@given(data=st.data(), case=handshake_inputs())
def test_handshake_not_made_for_this_session_never_authenticates(data, case) -> None:
    name, raw = case
    fz.check_handshake_input(lab(), lab().by_name[name], raw, data.draw(split_points(raw)))


# -- named cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_the_recorded_exchange_is_accepted_whole_and_split_at_every_byte(name) -> None:
    # The corpus itself must be valid, or every mutation of it would prove nothing.
    stream = lab().by_name[name].stream
    for cuts in ([], list(range(1, len(stream)))):
        outcome = fz.check_session_input(lab(), lab().by_name[name], stream, cuts)
        assert outcome.reason is None
        assert outcome.accepted_frames == len(lab().by_name[name].frames)
        assert any(isinstance(e, DeltaApplied) for e in outcome.events)


@pytest.mark.parametrize("name", ["open-deltas", "open-transfer"])
def test_the_recorded_exchange_carries_the_message_histories(name) -> None:
    # The corpus must hold histories (DELTAs or STATE_CHUNKs), or no mutation reaches them.
    sc = lab().by_name[name]
    r, s = lab().attach(sc)
    try:
        fz.feed(s, [sc.stream])
        mine, theirs = r.history("p3", limit=100), sc.peer.history("p3", limit=100)
        assert [m.to_json() for m in mine.items] == [m.to_json() for m in theirs.items]
        assert [m.id for m in r.versions("p3", "pm2")] == ["pm2", "pm4", "pm5"]
        assert r.message("p3", "pm3").deleted
        assert {m.id for m in r.history("shared").items} >= {"sm-a", "sm-p", "sm-p2"}
    finally:
        lab().release(r)


def crafted_history_payloads() -> list[bytes]:
    m = mutator("open-deltas")
    return m.crafted[-len(fz.crafted_histories("p", "a")):]


@pytest.mark.parametrize("k", range(len(fz.crafted_histories("p", "a"))))
def test_crafted_histories_are_applied_or_refused_cleanly(k) -> None:
    # Each hostile history after the whole recorded exchange, as one more DELTA, whole and
    # split at every byte: applied, or refused changing nothing (check_session_input).
    sc = lab().by_name["open-deltas"]
    end = max(m[2] for f in sc.frames if (m := fz._unpacked(f)) and m[0] in (2, 11))
    data = sc.stream + encode_frame(Delta(start=end, end=end + 1,
                                          payload=crafted_history_payloads()[k]))
    for cuts in ([], list(range(len(sc.stream), len(data)))):
        outcome = fz.check_session_input(lab(), sc, data, cuts)
        assert outcome.accepted_frames >= len(sc.frames)


def test_the_checks_catch_a_refused_frame_that_changed_a_message_record(monkeypatch) -> None:
    # The snapshot must cover the message records and their index: a session that writes
    # one and then refuses the frame is caught.
    sc = lab().by_name["open-deltas"]
    real = Inbound.on_deltas

    def leaky(self, group):
        self.replica.store.write(lambda t: t.put("mindex", b"leak", b""))
        return real(self, group)

    monkeypatch.setattr(Inbound, "on_deltas", leaky)
    bad = encode_frame(Delta(start=fz.MAX_SEQ - 1, end=fz.MAX_SEQ, payload=b""))
    with pytest.raises(fz.FuzzFailure, match="changed the replica|differs"):
        fz.check_session_input(lab(), sc, bad, [])


def test_a_bad_frame_after_good_ones_keeps_exactly_the_good_ones() -> None:
    sc = lab().by_name["open-deltas"]
    bad = encode_frame(Delta(start=fz.MAX_SEQ - 1, end=fz.MAX_SEQ, payload=b""))
    for k in (0, 3, len(sc.frames)):
        data = b"".join(sc.frames[:k]) + bad + b"".join(sc.frames[k:])
        outcome = fz.check_session_input(lab(), sc, data, [])
        assert outcome.reason and "DELTA starts at" in outcome.reason
        assert outcome.accepted_frames == k


def test_the_checks_catch_a_session_that_applies_a_refused_frame(monkeypatch) -> None:
    # A test that cannot fail is a defect: make the session apply a bad STATE_CHUNK's
    # conversations before refusing it, and the property must say so.
    sc = lab().by_name["open-transfer"]
    real = Inbound.on_state_chunk

    def leaky(self, m):
        self.replica.apply_map(ConversationMap.bottom().raise_to("leak", "last_seq", 1))
        return real(self, m)

    monkeypatch.setattr(Inbound, "on_state_chunk", leaky)
    bad_chunk = encode_frame(StateChunk(payload=b"\x93\x01"))
    with pytest.raises(fz.FuzzFailure, match="changed the replica|differs"):
        fz.check_session_input(lab(), sc, bad_chunk, [])


def test_huge_clock_counter_refused_alone_but_accepted_beside_a_later_stamp(open_replica):
    # Found by the fuzzer: whether a DELTA carrying a stamp with a huge HLC counter (on an
    # older wall time) was refused depended on what else arrived in the same read, since
    # Replica.apply_map bounded the counter of delta.max_clock() only. Fed frame by frame the
    # second DELTA was refused; fed in one read with the first (group commit) it was
    # accepted, and then refused for ever by whichever replica it was forwarded to alone.
    # The outcome must not depend on how TCP split the bytes: both refuse it.
    now = fz.NOW_MS
    outcomes = []
    for split in (True, False):
        a = open_replica(f"a{split}", now_ms=lambda: now)
        b = open_replica(f"b{split}", now_ms=lambda: now)
        sa, sb = protocol.SyncSession(a), protocol.SyncSession(b)
        fz.handshake(sa, sb)
        later = ConversationMap.bottom().set_title("c1", "later", Stamp(now, 0, b.id))
        huge = ConversationMap.bottom().set_title("c2", "huge", Stamp(now - 1, fz.MAX_SEQ, b.id))
        frames = [encode_frame(Delta(start=0, end=1, payload=codec.encode_map(later))),
                  encode_frame(Delta(start=1, end=2, payload=codec.encode_map(huge)))]
        try:
            for piece in (frames if split else [b"".join(frames)]):
                sa.receive_data(piece)
            outcomes.append("accepted")
        except RemoteProtocolError as e:
            outcomes.append(f"refused: {e.reason}")
    assert outcomes[0] == outcomes[1], outcomes
    assert "clock counter" in outcomes[0], outcomes
