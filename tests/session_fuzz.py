"""Machinery for fuzzing the wire protocol, shared by tests/test_fuzz_session.py (Hypothesis,
part of `make test`) and tests/fuzz_frames.py (the long seeded run behind `make fuzz`).

A *scenario* is a pair of small real replicas, A (the one under test) and P (its peer), and
the frames P sent A after the handshake in a genuine exchange, recorded once: DELTAs, ACKs of
A's deltas, PINGs and PONGs, or a whole state transfer. To fuzz, we copy A's directory
afresh, reach "after a valid handshake" by running a genuine SyncSession on P's replica
against A's and moving bytes until both report HandshakeComplete (never by hand-made HELLO
bytes, so an authentication step added to the handshake is gone through as it is), let A
send its own deltas once, and then feed A the (mutated) input in the given chunks.

The properties (`check_decoder_input`, `check_session_input`, `check_handshake_input`):
- the decoder yields messages or RemoteProtocolError, nothing else; a chunked feed yields the
  same as a whole one, and every message it yields re-encodes to a canonical frame;
- the session returns valid events or raises RemoteProtocolError with an ERROR frame naming
  the reason queued and the session CLOSED, after which it ignores everything;
- a rejected frame changes nothing: fed one frame at a time (twin replica F), the replica's full
  snapshot is the same before and after the frame that is refused, and the refusal is the
  same as when fed in the given chunks (replica T, with group commit); T's state after the
  refusal equals that of a third twin fed only the accepted prefix in the same chunks;
- with a key configured, a handshake not made for this session's fresh nonce (P's recorded
  one, mutated or not) never authenticates, and nothing reaches the replica.
Anything else raises FuzzFailure (or the unexpected exception itself). Inputs are made by
`Mutator.stream(rng)` from a random.Random: Hypothesis drives it with st.randoms(), the runner
with a seed.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import struct
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from crdtim import codec, protocol
from crdtim.protocol import _session
from crdtim.crdt import ConversationMap, History, Lww, Stamp
from crdtim.crdt.message import Append, Header, MessageState
from crdtim.protocol import (
    MAX_SESSION_CONVERSATIONS,
    MAX_SESSION_IDS,
    DeltaApplied,
    Error,
    FrameDecoder,
    HandshakeComplete,
    PeerAcked,
    PeerClosed,
    PongReceived,
    ProtocolError,
    RemoteProtocolError,
    SessionConfig,
    State,
    StateTransferFinished,
    StateTransferStarted,
    SyncSession,
    encode_frame,
)
from crdtim import replica as replica_module
from crdtim.errors import DecodeError
from crdtim.replica import Replica

NOW_MS = 1_700_000_000_000  # every replica's wall clock: runs are reproducible
#: Small batches and chunks so that a recorded exchange has many frames; a window wide enough
#: that A sends all its deltas in its one pump (what it may be ACKed does not depend on
#: when it pumps); a small frame limit so that "just over the limit" is cheap to send.
FUZZ_CONFIG = SessionConfig(
    max_frame_bytes=64 * 1024,
    max_entries_per_delta=2,
    max_conversations_per_chunk=2,
    max_unacked_frames=64,
)
_LEN = struct.Struct(">I")
_EVENTS = (HandshakeComplete, DeltaApplied, PeerAcked, StateTransferStarted,
           StateTransferFinished, PongReceived, PeerClosed)


class FuzzFailure(AssertionError):
    """A property of the protocol under hostile input does not hold."""


#: Bugs found by fuzzing and reported, not yet fixed (each has an xfail regression test in
#: tests/test_fuzz_session.py): name -> a phrase of the failure they cause. The runner counts
#: them apart from new crashes; the property tests set such inputs aside.
KNOWN_BUGS: dict[str, str] = {}


def known_bug(failure: BaseException) -> str | None:
    text = str(failure)
    return next((name for name, phrase in KNOWN_BUGS.items() if phrase in text), None)


#: Authentication: one pre-shared key; the scoped variant also limits the peer to some
#: conversation id prefixes (all of the recorded exchange's conversations are inside them).
FUZZ_KEY = {"fuzz-key": b"fuzzing secret, 32 bytes long..."}
SECURITY: dict[str, Any] = {"open": None}
if hasattr(protocol, "SecurityConfig"):
    SECURITY["auth"] = protocol.SecurityConfig(keys=FUZZ_KEY)
    SECURITY["scoped"] = protocol.SecurityConfig(keys=FUZZ_KEY,
                                                 scopes={"fuzz-key": ("a", "p", "sh")})


def make_session(replica: Any, security: str = "open", dialed: bool = False) -> SyncSession:
    if SECURITY[security] is None:
        return SyncSession(replica, FUZZ_CONFIG, relay=protocol.RelayIndex())
    return SyncSession(replica, FUZZ_CONFIG, SECURITY[security], dialed=dialed,
                       relay=protocol.RelayIndex())  # HAVE frames recorded and fed (§12)


def _open(path: Path, **kw: Any) -> Replica:
    return Replica.open(path, durability="nosync", now_ms=lambda: NOW_MS, **kw)


# -- snapshots ----------------------------------------------------------------------------------


def replica_snapshot(r: Replica, peers: tuple[str, ...]) -> tuple:
    """Everything a frame could change: conversations and the ordering index as stored, the
    message records and their index, the values held until their time, the log with origins,
    head and floor, the clock, acknowledgements (stored and pending) and what was received
    from each peer."""
    def read(t: Any) -> tuple:
        return (t.head(), t.log_floor(), t.clock(), tuple(t.log_entries(0)),
                tuple(t.conversations()), tuple(t.order_keys(None)),
                tuple(t.received(p) for p in peers),
                *(tuple(t.scan(db, b"")) for db in ("messages", "mindex", "pending")))
    return r.store.read(read), tuple(sorted(r.peers().items()))


# -- framing helpers ----------------------------------------------------------------------------


def frame_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each frame by its length prefix; the last may run past the data."""
    spans, i = [], 0
    while i < len(data):
        n = _LEN.unpack_from(data, i)[0] if i + 4 <= len(data) else 0
        spans.append((i, i + 4 + n))
        i += 4 + n
    return spans


def split_frames(data: bytes) -> list[bytes]:
    return [data[a:b] for a, b in frame_spans(data)]


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` split at the offsets in `cuts` (any order, out-of-range ones ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:])]


def body(obj: Any) -> bytes:
    """A frame around any msgpack object (its length prefix honest)."""
    b = codec.pack(obj)
    return _LEN.pack(len(b)) + b


# -- scenarios ----------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    security: str  # a key of SECURITY
    a_template: Path
    peer: Replica  # P: only ever handshakes (it is not fed anything else)
    stream: bytes  # what P sent A after the handshake, in the recorded exchange
    frames: list[bytes] = field(default_factory=list)
    a_id: str = ""
    initial: tuple = ()  # A's snapshot once handshaken and pumped
    handshake_frames: list[bytes] = field(default_factory=list)  # P's HELLO (AUTH) and ACK

    @property
    def peers(self) -> tuple[str, ...]:
        return (self.peer.id,)


def _fill_a(a: Replica) -> None:
    a.set_title("a1", "from a")
    a.pin("a1")
    a.message_arrived("a2", 3, "hi", NOW_MS - 5000)
    a.mark_read("a2", 2)
    a.mute("shared")
    a.set_title("shared", "a's title")
    # A message history of A's own, and one in the conversation both have (ids given: the
    # recorded frames must not depend on a random id).
    a.post("a1", "question", id="am1")
    a.post("a1", "", role="assistant", id="am2")
    for n in range(3):
        a.append("a1", "am2", f"part {n} ")
    a.regenerate("a1", "am2", "again", id="am3")
    a.post("shared", "from a", id="sm-a")


def _fill_p(p: Replica) -> None:
    for i in range(5):
        p.set_title(f"p{i}", f"title {i}")
    p.message_arrived("p1", 7, "preview", NOW_MS - 1000)
    p.pin("p2")
    p.unpin("p2")
    p.pin("shared")
    p.set_title("shared", "p's title")
    p.mark_read("p1", 4)
    p.message_arrived("shared", 2**40, "big seq", NOW_MS - 10)
    # Histories with every shape (specs/crdt.md §8.5): versions, a branch, streamed appends,
    # an edit, a delete, a switch back; and a reply in the conversation A has too.
    p.post("p3", "hello", id="pm1", seq=5)
    p.post("p3", "hi", role="assistant", id="pm2", author="bot")
    for n in range(4):
        p.append("p3", "pm2", f" chunk {n}")
    p.post("p3", "and then", id="pm3")
    p.regenerate("p3", "pm2", "hi again", id="pm4")
    p.post("p3", "a branch", reply_to="pm1", id="pm5")
    p.edit("p3", "pm4", "hi, edited")
    p.delete_message("p3", "pm3")
    p.switch("p3", "pm2")
    p.post("shared", "from p", id="sm-p", at=NOW_MS - 20)
    p.post("shared", "reply", reply_to="sm-p", id="sm-p2")


def handshake(a: SyncSession, p: SyncSession, now: float = 0.0,
              tap: bytearray | None = None) -> None:
    """Both sessions initiate; bytes move both ways until each reported HandshakeComplete and
    nothing more is queued (the resume ACKs delivered). Nothing is pumped. `tap` receives a
    copy of what p sent."""
    a.initiate(now)
    p.initiate(now)
    done = [False, False]
    for _ in range(50):
        to_p, to_a = a.data_to_send(), p.data_to_send()
        if not to_p and not to_a and all(done):
            return
        if tap is not None:
            tap += to_a
        for k, (s, data) in enumerate(((p, to_p), (a, to_a))):
            if data:
                done[k] |= any(isinstance(e, HandshakeComplete) for e in s.receive_data(data, now))
    raise FuzzFailure("the handshake between two genuine sessions did not finish")


#: (name, security, kind): every security variant with a DELTA stream, a state transfer, and
#: a reconciliation each way (specs/protocol.md §13: P's RECON_RANGES and chunks, and P's
#: RECON_ANSWERs to the ranges A asks).
SCENARIOS = [(f"{security}-{kind}", security, kind)
             for security in SECURITY for kind in ("deltas", "transfer", "reconcile")]


@contextlib.contextmanager
def _fixed_nonces(seed: str) -> Iterator[None]:
    """Sessions made inside draw their HELLO nonces from a seeded generator, so that the
    recorded handshakes (hence the inputs made from them) are reproducible."""
    saved = getattr(_session, "secrets", None)
    if saved is None:
        yield
        return
    rng = random.Random(seed)
    _session.secrets = types.SimpleNamespace(token_bytes=rng.randbytes)  # type: ignore
    try:
        yield
    finally:
        _session.secrets = saved  # type: ignore


@contextlib.contextmanager
def _replica_id(rid: str) -> Iterator[None]:
    saved = replica_module.new_replica_id
    replica_module.new_replica_id = lambda: rid
    try:
        yield
    finally:
        replica_module.new_replica_id = saved


class Lab:
    """Owns a temporary directory of replica templates and twins, and the scenarios."""

    def __init__(self, root: str | None = None):
        self.root = Path(tempfile.mkdtemp(prefix="crdtim-fuzz-", dir=root))
        self._opened: list[Replica] = []
        self._handshake_replicas: dict[str, tuple[Replica, tuple]] = {}
        self._n = 0
        self.scenarios = [self._record(name, security, kind != "deltas",
                                       reconcile=kind == "reconcile")
                          for name, security, kind in SCENARIOS]
        self.by_name = {sc.name: sc for sc in self.scenarios}
        atexit.register(self.close)

    def close(self) -> None:
        for r in self._opened:
            r.close()
        self._opened.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _record(self, name: str, security: str, trimmed: bool, reconcile: bool = False
                ) -> Scenario:
        base = self.root / name
        # Fixed replica ids: the recorded frames, hence every input, depend on the seed alone.
        with _replica_id("fuzza" + name):
            a = _open(base / "a", log_retention=0 if reconcile else 1_000_000)
        _fill_a(a)
        if reconcile:
            # Each has received from the other before, and each log is trimmed past that:
            # both sides reconcile (specs/protocol.md §13).
            a.store.write(lambda t: t.put_received("fuzzp" + name, 1))
            a.trim_log()
        a.close()
        with _replica_id("fuzzp" + name):
            p = _open(base / "p", log_retention=0 if trimmed else 1_000_000)
        _fill_p(p)
        if reconcile:
            p.store.write(lambda t: t.put_received("fuzza" + name, 1))
        if trimmed:
            p.trim_log()  # P's log is gone: it must send A its whole state
        p.close()
        # The recorded exchange runs on copies, so the templates stay as they were.
        a_rec, p_rec = self._copy(base / "a"), self._copy(base / "p")
        with _fixed_nonces(name):
            sa, sp = make_session(a_rec, security), make_session(p_rec, security, dialed=True)
        greeting = bytearray()  # what P sends in the handshake
        handshake(sa, sp, tap=greeting)
        sa.pump()
        stream = bytearray()
        for step in range(30):
            if step == 3:  # both sides ping once; the replies are PONGs
                sa.tick(FUZZ_CONFIG.ping_interval)
                sp.tick(FUZZ_CONFIG.ping_interval)
            sp.pump()
            to_p, to_a = sa.data_to_send(), sp.data_to_send()
            if not to_p and not to_a and step > 3:
                break
            stream += to_a
            sp.receive_data(to_p, FUZZ_CONFIG.ping_interval)
            sa.receive_data(to_a, FUZZ_CONFIG.ping_interval)
        peer = _open(base / "p")  # the untouched template: handshakes only
        self._opened.append(peer)
        self.release(a_rec)
        self.release(p_rec)
        sc = Scenario(name, security, base / "a", peer, bytes(stream),
                      split_frames(bytes(stream)), handshake_frames=split_frames(bytes(greeting)))
        r, _ = self.attach(sc)
        sc.a_id, sc.initial = r.id, replica_snapshot(r, sc.peers)
        self.release(r)
        return sc

    def _copy(self, template: Path) -> Replica:
        self._n += 1
        dest = self.root / f"twin{self._n}"
        shutil.copytree(template, dest)
        r = _open(dest)
        self._opened.append(r)
        return r

    def attach(self, sc: Scenario) -> tuple[Replica, SyncSession]:
        """A fresh copy of A, handshaken with a genuine session on P, its deltas sent."""
        r = self._copy(sc.a_template)
        s = make_session(r, sc.security)
        handshake(s, make_session(sc.peer, sc.security, dialed=True))
        s.pump()
        s.data_to_send()
        return r, s

    def unauthenticated(self, sc: Scenario) -> tuple[Replica, SyncSession, tuple]:
        """A session on a long-lived copy of A that has sent its HELLO and nothing else, and
        the replica's snapshot, which no input may change (nothing is applied before the
        peer is authenticated)."""
        if sc.name not in self._handshake_replicas:
            r = self._copy(sc.a_template)
            self._handshake_replicas[sc.name] = (r, replica_snapshot(r, sc.peers))
        r, snapshot = self._handshake_replicas[sc.name]
        s = make_session(r, sc.security)
        s.initiate(0.0)
        s.data_to_send()
        return r, s, snapshot

    def release(self, r: Replica) -> None:
        path = r.path
        r.close()
        self._opened.remove(r)
        shutil.rmtree(path, ignore_errors=True)


# -- the properties -----------------------------------------------------------------------------


def decode_all(pieces: list[bytes], max_frame_bytes: int = FUZZ_CONFIG.max_frame_bytes
               ) -> tuple[list[Any], RemoteProtocolError | None]:
    """Messages a FrameDecoder yields for the pieces fed in turn, and its refusal if any."""
    dec = FrameDecoder(max_frame_bytes)
    out: list[Any] = []
    try:
        for piece in pieces:
            dec.feed(piece)
            while (m := dec.next_message()) is not None:
                out.append(m)
    except RemoteProtocolError as e:
        return out, e
    return out, None


def check_decoder_input(data: bytes, cuts: list[int]) -> tuple[int, str | None]:
    """The decoder property; returns (messages decoded, refusal reason or None)."""
    whole, error = decode_all([data])
    split, split_error = decode_all(chunks(data, cuts))
    if [encode_frame(m) for m in whole] != [encode_frame(m) for m in split] \
            or (error is None) != (split_error is None):
        raise FuzzFailure(f"chunked feed decoded {split} / {split_error!r}, "
                          f"whole feed {whole} / {error!r}")
    if error is not None and not error.reason:
        raise FuzzFailure("a refusal without a reason")
    for m in whole:
        frame = encode_frame(m)
        (again,), err = decode_all([frame], 2**32)
        if err is not None or encode_frame(again) != frame:
            raise FuzzFailure(f"{m!r:.200} does not survive a re-encoding round trip")
    return len(whole), None if error is None else error.reason


def check_events(events: list[Any]) -> None:
    for e in events:
        if not isinstance(e, _EVENTS) or isinstance(e, HandshakeComplete):
            raise FuzzFailure(f"unexpected event after the handshake: {e!r:.200}")
        if isinstance(e, DeltaApplied) and not (0 <= e.start <= e.end and e.nbytes >= 0):
            raise FuzzFailure(f"malformed event {e!r:.200}")


def check_refusal(s: SyncSession, e: ProtocolError) -> None:
    """After a refusal: a RemoteProtocolError with a reason, the session CLOSED and the last
    frame it wants sent an ERROR with that reason."""
    if type(e) is not RemoteProtocolError or not e.reason:
        raise FuzzFailure(f"refused with {type(e).__name__}({e.reason!r:.200})")
    if s.state is not State.CLOSED:
        raise FuzzFailure(f"still {s.state} after refusing: {e.reason}")
    sent, err = decode_all([s.data_to_send()], 2**32)
    if err is not None or not sent or not isinstance(sent[-1], Error) \
            or sent[-1].reason != getattr(e, "told", e.reason)[:1000]:
        raise FuzzFailure(f"no ERROR frame saying {e.reason!r:.200} queued, but {sent!r:.300}")


def check_dead(s: SyncSession, r: Replica, sc: Scenario, more: bytes) -> None:
    """A closed session ignores whatever else arrives, sends nothing, changes nothing."""
    before = replica_snapshot(r, sc.peers)
    if s.receive_data(more, 2.0) or s.receive_data(sc.stream, 2.0):
        raise FuzzFailure("a closed session reported events")
    s.tick(1e9)
    if s.pump() or s.data_to_send() or replica_snapshot(r, sc.peers) != before:
        raise FuzzFailure("a closed session kept going")


def feed(s: SyncSession, pieces: list[bytes]) -> tuple[list[Any], ProtocolError | None, int]:
    """Feed the pieces in turn; (events, the refusal or None, pieces fed)."""
    events: list[Any] = []
    for i, piece in enumerate(pieces):
        try:
            events += s.receive_data(piece, 1.0)
        except ProtocolError as e:
            return events, e, i + 1
    return events, None, len(pieces)


def check_handshake_input(lab: Lab, sc: Scenario, data: bytes, cuts: list[int]
                          ) -> str | None:
    """The handshake property, for a scenario with a key: input that is not the genuine
    peer's answer to this session's own fresh nonce never authenticates; the session stays
    in the handshake (no event but PeerClosed) or refuses cleanly; the replica is untouched.
    Returns the refusal reason or None."""
    assert SECURITY[sc.security] is not None, "the handshake target needs a keyed scenario"
    r, s, snapshot = lab.unauthenticated(sc)
    events, error, fed = feed(s, chunks(data, cuts))
    if any(not isinstance(e, PeerClosed) for e in events) or s.state is State.OPEN:
        raise FuzzFailure(f"authenticated by input not made for this session: {events!r:.300}")
    if error is not None:
        check_refusal(s, error)
    if s.state is State.CLOSED:
        s.data_to_send()
        check_dead(s, r, sc, b"".join(chunks(data, cuts)[fed:]))
    if replica_snapshot(r, sc.peers) != snapshot:
        raise FuzzFailure("the replica changed before the peer was authenticated")
    return None if error is None else error.reason


def _one_by_one_cuts(data: bytes, cuts: list[int], spans: list[tuple[int, int]], k: int
                     ) -> list[int]:
    """Cuts that make each DELTA decoded in the same receive_data call as frame k, and
    directly before it, arrive alone."""
    edges = sorted({c for c in cuts if 0 < c < len(data)})
    call_start = max([0, *(c for c in edges if c < spans[k][1])])
    out = []
    for j in range(k - 1, -1, -1):
        start, end = spans[j]
        m = _unpacked(data[start:end])
        if end <= call_start or m is None or m[0] != 2:
            break
        out += [start, end]
    return out


@dataclass
class SessionOutcome:
    events: list[Any]
    reason: str | None  # why the input was refused (None: it was not)
    accepted_frames: int  # frames before the refused one (all complete ones if none)


def check_session_input(lab: Lab, sc: Scenario, data: bytes, cuts: list[int]) -> SessionOutcome:
    """The session property for one input split at `cuts` (see the module docstring)."""
    pieces = chunks(data, cuts)
    r, s = lab.attach(sc)
    twins: list[Replica] = [r]
    try:
        if replica_snapshot(r, sc.peers) != sc.initial:
            raise FuzzFailure("a fresh copy of A differs from the template (not reproducible)")
        events, error, fed = feed(s, pieces)
        check_events(events)
        if error is not None:
            check_refusal(s, error)
        elif any(isinstance(e, PeerClosed) for e in events) != (s.state is State.CLOSED):
            raise FuzzFailure(f"state {s.state} after events {events!r:.300}")
        if s.state is State.CLOSED:
            s.data_to_send()  # what it queued before the peer's ERROR arrived
            check_dead(s, r, sc, b"".join(pieces[fed:]))
        else:
            s.pump()  # whatever it holds now must still be sendable
            s.data_to_send()
        spans = frame_spans(data)
        if error is None:
            complete = sum(1 for _, end in spans if end <= len(data))
            return SessionOutcome(events, None, complete)
        after = replica_snapshot(r, sc.peers)

        # Twin F, one frame per call: which frame is refused, and it must change nothing.
        rf, sf = lab.attach(sc)
        twins.append(rf)
        for k, frame in enumerate(split_frames(data)):
            before = replica_snapshot(rf, sc.peers)
            try:
                sf.receive_data(frame, 1.0)
            except ProtocolError as e:
                check_refusal(sf, e)
                if replica_snapshot(rf, sc.peers) != before:
                    raise FuzzFailure(f"frame {k} was refused ({e.reason}) but changed the "
                                      f"replica") from None
                if e.reason != error.reason:
                    raise FuzzFailure(f"refused in chunks: {error.reason}; frame by frame, "
                                      f"frame {k}: {e.reason}") from None
                break
            if sf.state is State.CLOSED:
                raise FuzzFailure(f"refused in chunks ({error.reason}) but frame by frame the "
                                  f"peer's ERROR at frame {k} closed the session")
        else:
            raise FuzzFailure(f"refused in chunks ({error.reason}) but accepted frame by frame")

        # Twin P, fed only the frames before the refused one, in the same chunks. When the
        # replica refused the join of the DELTAs that arrived together with the bad one,
        # the session applies them one by one instead: then the twin must be fed those
        # one by one to match (same log entries, same clock readings).
        if k == 0:
            expected = [sc.initial]
        else:
            expected = []
            for extra_cuts in ([], _one_by_one_cuts(data, cuts, spans, k)):
                if expected and not extra_cuts:
                    break
                rp, sp = lab.attach(sc)
                twins.append(rp)
                _, prefix_error, _ = feed(sp, chunks(data[: spans[k][0]], cuts + extra_cuts))
                if prefix_error is not None:
                    raise FuzzFailure(f"the accepted prefix (frames 0..{k - 1}) is refused "
                                      f"alone: {prefix_error.reason}")
                expected.append(replica_snapshot(rp, sc.peers))
                if after == expected[-1]:
                    break
        if after not in expected:
            raise FuzzFailure(f"after refusing frame {k} ({error.reason}) the replica differs "
                              f"from one fed only the {k} frames before it")
        return SessionOutcome(events, error.reason, k)
    finally:
        for twin in twins:
            lab.release(twin)


# -- mutations (seeded: driven by a random.Random, from Hypothesis or from the runner) ----------

MAX_SEQ = codec.MAX_INT
NASTY = [None, True, False, -1, 0, 1, MAX_SEQ, MAX_SEQ + 1, 2**64 - 1, -(2**63), 1.5,
         float("nan"), float("inf"), "", "x", "\U0001F600" * 300, "x" * 2000, b"", b"x",
         [], {}, [1, 2], {1: 2}, [[[]]], [2, 0, 1, b""]]
NASTY_KEYS = [x for x in NASTY if type(x) not in (list, dict)]
_SEQ_TAGS = {2: (1, 2), 3: (1,), 5: (1,), 6: (1,), 7: (1,), 9: (1,),
             11: (1, 2)}  # tag -> seq fields
# tag -> payload field (a COMPACT_DELTA's body; RECON_RANGES' ranges and RECON_ANSWER's
# bitmaps are binary too)
_PAYLOAD_TAGS = {2: 3, 4: 1, 11: 4, 16: 2, 17: 2}
_COMPACT_DELTA = 11  # its new replica ids are field 3 (specs/protocol.md §11)


def _unpacked(frame: bytes) -> list | None:
    """The message list inside a well-framed frame, or None."""
    if len(frame) < 5:
        return None
    try:
        obj = codec.unpack(frame[4:])
    except Exception:
        return None
    return obj if type(obj) is list and obj and type(obj[0]) is int else None


def random_object(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, nested a little."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(NASTY)
    if kind == 1:
        return rng.choice([rng.randrange(-2**63, 2**64), rng.randrange(-3, 300)])
    if kind == 2:
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x80, 0x3000)]))
                       for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.randbytes(rng.randrange(8))
    if kind == 4:
        return rng.random() * 10 ** rng.randrange(-5, 30)
    if kind == 5:
        return rng.choice([None, True, False])
    if kind in (6, 7):
        return [random_object(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(NASTY_KEYS + [rng.randrange(-3, 300)]): random_object(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def _encodable(obj: Any) -> bool:
    try:
        codec.pack(obj)
    except Exception:
        return False
    return True


def garbage_body(rng: random.Random) -> bytes:
    """A frame body that is no valid message: deep nesting, odd msgpack, random bytes."""
    kind = rng.randrange(6)
    if kind == 0:  # arrays or maps nested deeper than any decoder should recurse
        depth = rng.choice([64, 500, 5000, 100_000])
        return rng.choice([b"\x91", b"\x81\x00"]) * depth + b"\xc0"
    if kind == 1:
        obj = random_object(rng)
        return codec.pack(obj) if _encodable(obj) else b"\xc0"
    if kind == 2:  # a message list with a random tag and random fields
        obj = [rng.randrange(-2, 12), *(random_object(rng, 1) for _ in range(rng.randrange(5)))]
        return codec.pack(obj) if _encodable(obj) else b"\x90"
    if kind == 3:  # an ext type, a reserved byte, a declared length far past the data
        return rng.choice([b"\xd4\x05\x00", b"\xc1", b"\xdd\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff",
                           b"\x94\x02\x00\x01\xc6\xff\xff\xff\xff", b"\xdf\x00\x01\x00\x00"])
    if kind == 4:
        return rng.randbytes(rng.randrange(40))
    return b""


def crafted_histories(peer: str, a_id: str) -> list[ConversationMap]:
    """Message histories (specs/crdt.md §8) that test each of a receiver's checks: stamps
    from the future or at the top, a forged cycle, a header of another shape for an id the
    receiver holds (its index is rebuilt), choices naming nothing or another group's
    message, appends on a base not yet seen, tombstones, a message A never made under A's
    id, edge times and sequence numbers, a message larger than the frame limit."""
    def msg(parent: str | None, stamp: Stamp, text: str = "t", origin: str | None = None,
            role: str = "user", at: int | None = None, seq: int | None = None,
            deleted: bool = False, appends: tuple[Append, ...] = ()) -> MessageState:
        header = Header(parent, origin, role, None, stamp.wall if at is None else at, seq, stamp)
        return MessageState.make(header, Lww(stamp, text), appends, deleted)

    def one(cid: str, messages: dict[str, MessageState],
            choices: dict[str, Lww] | None = None) -> ConversationMap:
        return ConversationMap({cid: {"messages": History.make(messages, choices)}})

    now = Stamp(NOW_MS - 50, 0, peer)
    later = Stamp(NOW_MS - 40, 0, peer)
    future = Stamp(NOW_MS + 10**9, 0, peer)
    return [
        one("p3", {"x": msg("pm1", future)}),
        one("c", {"x": msg(None, Stamp(NOW_MS - 1, MAX_SEQ, peer))}),
        one("c", {"x": msg(None, Stamp(MAX_SEQ, MAX_SEQ, peer))}),
        one("c", {"x": msg("y", now), "y": msg("x", later)}),  # a cycle: never visible
        one("a1", {"am1": msg("am3", Stamp(1, 0, peer))}),  # another shape for A's message
        one("p3", {}, {"pm2": Lww(later, "nobody")}),
        one("p3", {}, {"pm2": Lww(later, "sm-p")}),
        one("a1", {"am2": MessageState(None, Lww.bottom(), frozenset(
            {Append(later, Stamp(NOW_MS + 5, 0, peer), "pending")}), False)}),
        one("a1", {"am2": MessageState.make(None, Lww.bottom(), (), True)}),
        one("a1", {"forged": msg("am1", Stamp(NOW_MS - 30, 0, a_id))}),
        one("c", {"x": msg(None, now, at=MAX_SEQ, seq=MAX_SEQ, role="r" * 64)}),
        one("c", {"x": msg(None, now, "z" * 70_000)}),
        one("c", {"x": msg("x", now, origin="x")}),
        one("shared", {"sm-x": msg("sm-a", now, appends=(Append(later, now, "more"),)),
                       "sm-y": msg("sm-a", later, origin="sm-x")}, {"sm-x": Lww(later, "sm-y")}),
    ]


class Mutator:
    """Mutations of a scenario's recorded frames; `stream(rng)` makes one input."""

    def __init__(self, sc: Scenario, others: list[Scenario], handshake: bool = False):
        self.sc = sc
        #: What is mutated: the frames after the handshake, or (handshake=True) P's side of
        #: the handshake followed by them.
        self.frames = sc.handshake_frames + sc.frames if handshake else sc.frames
        self.pool = [f for o in others for f in o.handshake_frames + o.frames]
        self.payloads = [m[_PAYLOAD_TAGS[m[0]]] for f in self.pool
                         if (m := _unpacked(f)) is not None and m[0] in _PAYLOAD_TAGS]
        peer = sc.peer.id
        bottom = ConversationMap.bottom()
        # CRDT content every check of which a receiver makes must refuse (or accept) safely.
        self.crafted = [codec.encode_map(m) for m in [
            bottom,
            bottom.set_title("c", "from the future", Stamp(NOW_MS + 10**9, 0, peer)),
            bottom.set_title("c", "counter at the top", Stamp(NOW_MS - 1, MAX_SEQ, peer)),
            bottom.set_title("c", "wall at the top", Stamp(MAX_SEQ, MAX_SEQ, peer)),
            bottom.enable("forged", "pinned", sc.a_id),  # a dot A never made
            bottom.enable("a1", "pinned", sc.a_id).enable("a1", "pinned", sc.a_id),
            bottom.raise_to("\U0001F600" * 256, "last_seq", 3),  # over the store's key bytes
            bottom.raise_to("c", "last_seq", MAX_SEQ),
            bottom.message_arrived("c", MAX_SEQ, "x" * 16384, NOW_MS, peer),
            bottom.message_arrived("c", 1, "y", NOW_MS + 10**9, peer),
            bottom.set_title("", "empty id", Stamp(1, 0, peer)),
            bottom.set_title("shared", "again", Stamp(NOW_MS - 2000, 0, sc.a_id)),
            *crafted_histories(peer, sc.a_id),
        ]]
        self.ops: list[Callable[[random.Random, list[bytes]], list[bytes]]] = [
            self.flip_bits, self.set_byte, self.insert_delete_bytes, self.truncate,
            self.length_lie, self.huge_frame, self.garbage_frame, self.wrong_type,
            self.wrong_arity, self.seq_edge, self.seq_edge, self.payload, self.payload,
            self.payload, self.splice, self.reorder, self.random_message, self.crossover,
            self.random_tail, self.session_table, self.session_table,
            self.conversation_keys, self.conversation_keys,
        ]

    def stream(self, rng: random.Random) -> bytes:
        frames = list(self.frames)
        if rng.random() < 0.3:  # a shorter exchange: the mutation lands early
            frames = frames[: rng.randrange(len(frames) + 1)]
        for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
            frames = rng.choice(self.ops)(rng, frames)
        return b"".join(frames)

    @staticmethod
    def _pick(rng: random.Random, frames: list[bytes]) -> int:
        return rng.randrange(len(frames)) if frames else -1

    def _change(self, rng: random.Random, frames: list[bytes],
                how: Callable[[bytes], bytes]) -> list[bytes]:
        i = self._pick(rng, frames)
        if i < 0:
            return [how(rng.choice(self.pool))]
        return frames[:i] + [how(frames[i])] + frames[i + 1:]

    def _change_message(self, rng: random.Random, frames: list[bytes],
                        how: Callable[[list], list | None]) -> list[bytes]:
        """Apply `how` to the message list of a well-formed frame (one it accepts)."""
        order = list(range(len(frames)))
        rng.shuffle(order)
        for i in order:
            m = _unpacked(frames[i])
            if m is not None and (new := how(m)) is not None:
                return frames[:i] + [body(new) if _encodable(new) else frames[i]] + frames[i + 1:]
        return frames

    def flip_bits(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def flip(f: bytes) -> bytes:
            b = bytearray(f)
            for _ in range(rng.randrange(1, 5)):
                if b:
                    b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b)
        return self._change(rng, frames, flip)

    def set_byte(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def put(f: bytes) -> bytes:
            if not f:
                return f
            i = rng.randrange(len(f))
            v = rng.choice([0x00, 0x01, 0x7f, 0x80, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xca,
                            0xcf, 0xd3, 0xd4, 0xdc, 0xdd, 0xde, 0xdf, 0xff, rng.randrange(256)])
            return f[:i] + bytes([v]) + f[i + 1:]
        return self._change(rng, frames, put)

    def insert_delete_bytes(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def edit(f: bytes) -> bytes:
            i = rng.randrange(len(f) + 1)
            if rng.random() < 0.5:
                return f[:i] + rng.randbytes(rng.randrange(1, 6)) + f[i:]
            return f[:i] + f[i + rng.randrange(1, 6):]
        return self._change(rng, frames, edit)

    def truncate(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        data = b"".join(frames)
        return [data[: rng.randrange(len(data) + 1)]]

    def length_lie(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        limit = FUZZ_CONFIG.max_frame_bytes

        def lie(f: bytes) -> bytes:
            n = len(f) - 4
            new = rng.choice([0, 1, 2, 3, n - 1, n + 1, n + 2, n + 8, 2 * n, limit, limit + 1,
                              2**31, 2**32 - 1, rng.randrange(2**32)])
            return _LEN.pack(max(0, new) % 2**32) + f[4:]
        return self._change(rng, frames, lie)

    def huge_frame(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        n = rng.choice([FUZZ_CONFIG.max_frame_bytes + 1, 2**31, 2**32 - 1])
        i = rng.randrange(len(frames) + 1)
        return frames[:i] + [_LEN.pack(n) + rng.randbytes(rng.randrange(16))] + frames[i:]

    def garbage_frame(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def garbage(_: bytes) -> bytes:
            b = garbage_body(rng)
            return _LEN.pack(len(b)) + b
        return self._change(rng, frames, garbage)

    def wrong_type(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def retype(m: list) -> list:
            i = rng.randrange(len(m))
            return m[:i] + [rng.choice(NASTY + [random_object(rng)])] + m[i + 1:]
        return self._change_message(rng, frames, retype)

    def wrong_arity(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def arity(m: list) -> list:
            return m[:-1] if rng.random() < 0.5 else m + [random_object(rng, 2)]
        return self._change_message(rng, frames, arity)

    def seq_edge(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def edge(m: list) -> list | None:
            fields = _SEQ_TAGS.get(m[0])
            if not fields or len(m) <= max(fields) or any(type(m[i]) is not int for i in fields):
                return None
            i = rng.choice(fields)
            v = m[i]
            m = list(m)
            m[i] = rng.choice([0, 1, v - 1, v + 1, v + 2, v - 2, 2 * v, MAX_SEQ, MAX_SEQ - 1,
                               MAX_SEQ + 1, -1, 2**64 - 1, rng.randrange(MAX_SEQ)])
            return m
        return self._change_message(rng, frames, edge)

    def payload(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        def repay(m: list) -> list | None:
            i = _PAYLOAD_TAGS.get(m[0])
            if i is None or i >= len(m) or type(m[i]) is not bytes:
                return None
            m = list(m)
            m[i] = self.mutate_payload(rng, m[i])
            return m
        return self._change_message(rng, frames, repay)

    def session_table(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        """A COMPACT_DELTA's new replica ids changed: one dropped (its indexes then point
        past the table), repeated, renamed, made hostile, or the table flooded to its limit
        and past it (specs/protocol.md §11)."""
        def retable(m: list) -> list | None:
            if m[0] != _COMPACT_DELTA or len(m) != 5 or type(m[3]) is not list:
                return None
            ids, m = list(m[3]), list(m)
            kind = rng.randrange(6)
            if kind == 0 and ids:
                del ids[rng.randrange(len(ids))]
            elif kind == 1 and ids:
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(ids))
            elif kind == 2:
                ids.insert(0, rng.choice([self.sc.a_id, self.sc.peer.id, "z", "y" * 64]))
            elif kind == 3:
                ids.append(rng.choice(["", "a\x00b", "x" * 65, 7, None, b"id"]))
            else:  # flood: up to and past what a table may hold
                n = rng.choice([MAX_SESSION_IDS - len(ids), MAX_SESSION_IDS + 1 - len(ids),
                                MAX_SESSION_IDS * 2])
                ids += [f"flood-{i}" for i in range(max(n, 0))]
            m[3] = ids
            return m
        return self._change_message(rng, frames, retable)

    def conversation_keys(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        """A COMPACT_DELTA body's conversation keys changed (specs/protocol.md §15): a key
        made an index (in the table, past it, negative, huge) or a hostile scalar, a string
        key repeated within the body, or the body flooded with new ids to the table's
        limit and past it. The field maps stay as sent."""
        def rekey(m: list) -> list | None:
            if m[0] != _COMPACT_DELTA or len(m) != 5 or type(m[4]) is not bytes:
                return None
            try:
                body = codec.unpack(m[4])
            except DecodeError:
                return None
            if type(body) is not dict or not body:
                return None
            items, m = list(body.items()), list(m)
            kind = rng.randrange(4)
            i = rng.randrange(len(items))
            if kind == 0:
                items[i] = (rng.choice([0, 1, 2, 5, MAX_SESSION_CONVERSATIONS, -1, 2**63]),
                            items[i][1])
            elif kind == 1:
                items[i] = (rng.choice(NASTY_KEYS), items[i][1])
            elif kind == 2:
                items.append((items[i][0], items[i][1]))  # the same key twice: the map hides it
            else:  # flood: up to and past what a table may hold
                n = rng.choice([MAX_SESSION_CONVERSATIONS, MAX_SESSION_CONVERSATIONS + 1,
                                MAX_SESSION_CONVERSATIONS * 2])
                items += [(f"flood-{k}", items[i][1]) for k in range(n)]
            raw = [codec.pack_map_header(len(items))]
            for key, value in items:
                raw += (codec.pack(key), codec.pack(value))
            m[4] = b"".join(raw)
            return m
        return self._change_message(rng, frames, rekey)

    def mutate_payload(self, rng: random.Random, payload: bytes) -> bytes:
        kind = rng.randrange(5)
        if kind == 0:
            return rng.choice(self.crafted)
        if kind == 1:
            return rng.choice(self.payloads) if self.payloads else payload
        if kind == 2:  # bytes
            b = bytearray(payload)
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(b) + 1)
                if rng.random() < 0.5 and b and i < len(b):
                    b[i] ^= rng.randrange(1, 256)
                else:
                    b[i:i] = rng.randbytes(rng.randrange(1, 4))
            return bytes(b)
        try:
            obj = codec.unpack(payload)
        except Exception:
            return payload
        from strategies import positions, replaced  # the codec fuzzer's tree surgery

        for _ in range(rng.randrange(1, 3)):
            path = rng.choice(positions(obj))
            if path and path[-1][0] == "key":
                new = rng.choice(NASTY_KEYS)
            else:
                new = rng.choice(NASTY) if kind == 3 else random_object(rng, 2)
            obj = replaced(obj, path, lambda _: new)
        return codec.pack(obj) if _encodable(obj) else payload

    def splice(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        i = rng.randrange(len(frames) + 1)
        return frames[:i] + [rng.choice(self.pool)] + frames[i:]

    def reorder(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        if not frames:
            return frames
        i, j = rng.randrange(len(frames)), rng.randrange(len(frames))
        frames = list(frames)
        how = rng.randrange(3)
        if how == 0:  # the same frame twice (a replayed DELTA)
            frames.insert(j, frames[i])
        elif how == 1:  # one left out (a gap)
            del frames[i]
        else:
            frames[i], frames[j] = frames[j], frames[i]
        return frames

    def random_message(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        i = rng.randrange(len(frames) + 1)
        return frames[:i] + [encode_frame(self.well_formed(rng))] + frames[i:]

    def well_formed(self, rng: random.Random) -> Any:
        """A message the decoder accepts, with edge values in its fields."""
        from crdtim import protocol as p

        def seq() -> int:
            return rng.choice([0, 1, 2, 3, 5, 8, 13, MAX_SEQ, MAX_SEQ - 1, rng.randrange(MAX_SEQ)])

        def payload() -> bytes:
            return rng.choice([rng.choice(self.crafted), rng.choice(self.payloads or [b""])])

        kind = rng.randrange(12)
        if kind == 10:
            return self.recon_ranges(rng)
        if kind == 11:
            return p.ReconAnswer(differs=rng.randbytes(rng.choice([0, 1, 2, 64])),
                                 needed=rng.randbytes(rng.choice([0, 1, 3, 512])))
        if kind == 0:
            hello: dict[str, Any] = {
                "version": rng.choice([p.PROTOCOL_VERSION, 0, 1, 2, 3, 2**64 - 1, -1]),
                "replica_id": rng.choice([self.sc.peer.id, self.sc.a_id, "x", "y" * 64])}
            fields = p.Hello.__dataclass_fields__
            if "nonce" in fields:
                hello["nonce"] = rng.randbytes(32)
            if "key_id" in fields:
                hello["key_id"] = rng.choice([None, "fuzz-key", "other"])
            return p.Hello(**hello)
        if kind == 9 and hasattr(p, "Auth"):
            return p.Auth(mac=rng.randbytes(32))
        if kind == 1:
            start = min(seq(), MAX_SEQ - 1)
            end = min(MAX_SEQ, start + rng.choice([1, 2, 100, MAX_SEQ]))
            if rng.random() < 0.5:
                return p.CompactDelta(
                    start=start, end=end, body=rng.choice([b"\x80", payload()]),
                    new_ids=tuple(rng.sample([self.sc.peer.id, self.sc.a_id, "x", "y" * 64],
                                             rng.randrange(3))))
            return p.Delta(start=start, end=end, payload=payload())
        if kind == 2 and rng.random() < 0.5:  # HAVE (specs/protocol.md §12)
            n = rng.randrange(4)
            return p.Have(filtered=rng.random() < 0.3,
                          new_ids=tuple(rng.sample(["x", "y" * 64, self.sc.a_id], rng.randrange(3))),
                          linked=tuple(x for _ in range(n) for x in (rng.randrange(4), seq())),
                          unlinked=tuple(rng.randrange(MAX_SESSION_IDS) for _ in range(n)))
        if kind == 2:
            return p.Ack(seq=seq())
        if kind == 3:
            return p.StateChunk(payload=payload())
        if kind == 4:
            return p.StateEnd(seq=seq())
        if kind == 5:
            return p.Ping(nonce=seq())
        if kind == 6:
            return p.Pong(nonce=seq())
        if kind == 7:
            return p.ChunkAck(count=seq())
        return p.Error(reason=rng.choice(["bye", "", "\U0001F600" * 10, "r" * 1000]))

    def recon_ranges(self, rng: random.Random) -> Any:
        """A well-formed RECON_RANGES (specs/protocol.md §13) with edge bounds and sizes."""
        from crdtim import protocol as p

        bounds = sorted({rng.choice([b"", b"a", b"a1", b"p", b"p3", b"s", b"shared", b"\xff",
                                     b"\x00", b"z" * 502, rng.randbytes(rng.randrange(1, 8))])
                         for _ in range(rng.randrange(1, 6))})
        ranges = []
        for lower, upper in zip([b"", *bounds], [*bounds, None]):
            if upper is not None and upper <= lower:
                continue
            if rng.random() < 0.5:
                ranges.append(p.RangeQuery(lower, upper, 0, rng.randbytes(8)))
            else:
                count = rng.choice([0, 1, 2, 3, 100, 16384])
                ranges.append(p.RangeQuery(lower, upper, 1, rng.randbytes(8 * count)))
        while sum(r.count for r in ranges) > 16384:
            ranges.pop()
        return p.ReconRanges(salt=rng.randbytes(16), ranges=tuple(ranges or [
            p.RangeQuery(b"", None, 0, bytes(8))]))

    def crossover(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        mine, other = b"".join(frames), b"".join(rng.sample(self.pool, min(3, len(self.pool))))
        return [mine[: rng.randrange(len(mine) + 1)] + other[rng.randrange(len(other) + 1):]]

    def random_tail(self, rng: random.Random, frames: list[bytes]) -> list[bytes]:
        return frames + [rng.randbytes(rng.randrange(1, 64))]


def random_cuts(rng: random.Random, data: bytes) -> list[int]:
    """Where to split an input between receive_data calls: nowhere, at frame boundaries, at
    a few random offsets, or after every byte."""
    kind = rng.randrange(10)
    if kind < 3 or not data:
        return []
    if kind < 5:
        return [end for _, end in frame_spans(data)]
    if kind < 9:
        return [rng.randrange(1, len(data) + 1) for _ in range(rng.randrange(1, 6))]
    return list(range(1, min(len(data), 600)))
