"""Only trusted peers get in, and nothing a peer sends outside its rights changes anything
(specs/security.md).

Session-level tests drive two SyncSessions by moving their bytes by hand (no sockets): the
pre-shared-key handshake (right key, wrong key, a forged AUTH, a replayed, reflected or
relayed handshake), authorization (what a scoped peer is sent, what it may send), and the
limits that hold before authentication (handshake frame size and deadline) and after it
(frame size, a frame trickled byte by byte). Node-level tests run real Nodes on loopback:
PSK and mutual TLS between nodes (certificates made here with the `openssl` command), a
certificate from another CA, max_peers, an oversize frame, a slowloris peer under a mock
clock. CLI tests: a non-loopback listen without authentication, and bad security files,
are refused with a message and exit status 2.
"""

from __future__ import annotations

import dataclasses
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtim import codec
from crdtim.cli import main
from crdtim.crdt import ConversationMap
from crdtim.errors import ConfigError
from crdtim.net import Node, NodeConfig
from crdtim.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Delta,
    Error,
    FrameDecoder,
    HandshakeComplete,
    Hello,
    LocalProtocolError,
    Ping,
    RemoteProtocolError,
    SecurityConfig,
    SessionConfig,
    State,
    StateChunk,
    SyncSession,
    encode_frame,
)
from crdtim.replica import Replica
from frames import frames_of
from nodes import FAST, GUARD, LOCAL, read_to_eof, settle, wait_until
from crdtim.security import load_keys, load_scopes, load_tls

SECRET = b"correct horse battery staple 42"
OTHER_SECRET = b"a different secret of some length"
CONFIG = SessionConfig(max_unacked_frames=4)


# -- harness: two sessions, bytes moved by hand -------------------------------------------------


class Pipe:
    """A dialing and an accepting session (index 0 and 1), both initiated. `run()` moves
    bytes both ways until nothing moves; refusals are kept in `errors`, events in
    `events`, and everything each side sent, decoded, in `frames`."""

    def __init__(self, dialer: SyncSession, acceptor: SyncSession, now: float = 0.0):
        self.sessions = (dialer, acceptor)
        self.events: tuple[list, list] = ([], [])
        self.errors: list[RemoteProtocolError | None] = [None, None]
        self.frames: tuple[list, list] = ([], [])
        self._taps = (FrameDecoder(2**31), FrameDecoder(2**31))
        for s in self.sessions:
            s.initiate(now)

    def run(self, now: float = 0.0, rounds: int = 1000) -> Pipe:
        for _ in range(rounds):
            moved = False
            for k in (0, 1):
                self.sessions[k].pump()
                data = self.sessions[k].data_to_send()
                if not data:
                    continue
                moved = True
                self._taps[k].feed(data)
                while (m := self._taps[k].next_message()) is not None:
                    self.frames[k].append(m)
                try:
                    self.events[1 - k].extend(self.sessions[1 - k].receive_data(data, now))
                except RemoteProtocolError as e:
                    self.errors[1 - k] = e
            if not moved:
                return self
        raise AssertionError("the sessions never went quiet")

    @property
    def open(self) -> bool:
        return all(s.state is State.OPEN for s in self.sessions)


def keyed(*names: str, secret: bytes = SECRET, **kw) -> SecurityConfig:
    return SecurityConfig(keys={n: secret for n in names}, **kw)


def snapshot(r: Replica) -> tuple[int, ConversationMap]:
    return r.head, r.state()


def delta_frame(start: int, end: int, m: ConversationMap) -> bytes:
    return encode_frame(Delta(start=start, end=end, payload=codec.encode_map(m)))


def titled(*cids: str) -> ConversationMap:
    m = ConversationMap.bottom()
    for cid in cids:
        m = m.raise_to(cid, "last_seq", 3)
    return m


# -- pre-shared keys ------------------------------------------------------------------------------


def test_the_right_key_opens_the_session_and_names_the_identity(a, b):
    b.set_title("c", "from b")
    pipe = Pipe(SyncSession(b, CONFIG, keyed("alice"), dialed=True),
                SyncSession(a, CONFIG, keyed("alice", "bob"))).run()
    assert pipe.open and pipe.errors == [None, None]
    (done,) = [e for e in pipe.events[1] if isinstance(e, HandshakeComplete)]
    assert done.peer_id == b.id and done.identity == "alice" and done.scope is None
    assert a.get("c").title == "from b"
    assert any(isinstance(f, Auth) for f in pipe.frames[0])
    assert any(isinstance(f, Auth) for f in pipe.frames[1])


def test_without_keys_on_either_side_nothing_changes_for_library_users(a, b):
    b.set_title("c", "from b")
    pipe = Pipe(SyncSession(b, CONFIG), SyncSession(a, CONFIG)).run()
    assert pipe.open and a.get("c").title == "from b"
    assert not any(isinstance(f, Auth) for f in pipe.frames[0] + pipe.frames[1])


@settings(max_examples=25)
@given(wrong=st.binary(min_size=16, max_size=64))
def test_a_wrong_key_is_refused_and_nothing_is_applied(tmp_path_factory, wrong):
    """security.md §3: the acceptor computes the MAC the dialer must have sent; any other
    is refused with "authentication failed", nothing applied."""
    # The dialer names a key id the acceptor has, with another secret; it has writes of
    # its own to push. The acceptor refuses its AUTH without sending one of its own (which
    # would let the dialer test guesses of the secret offline); nothing reaches either
    # replica, and the dialer is told no more than "authentication failed".
    root = tmp_path_factory.mktemp("wrong")
    with Replica.open(root / "a", durability="nosync") as a, \
            Replica.open(root / "b", durability="nosync") as b:
        b.set_title("c", "from the impostor")
        a.set_title("d", "private")
        before_a, before_b = snapshot(a), snapshot(b)
        pipe = Pipe(SyncSession(b, CONFIG, keyed("alice", secret=wrong), dialed=True),
                    SyncSession(a, CONFIG, keyed("alice"))).run()
        if wrong == SECRET:
            assert pipe.open
            return
        assert all(s.state is State.CLOSED for s in pipe.sessions)
        assert "authentication failed" in pipe.errors[1].reason
        assert [type(f) for f in pipe.frames[1]] == [Hello, Error]
        assert pipe.frames[1][-1].reason == "authentication failed"
        assert snapshot(a) == before_a and snapshot(b) == before_b
        assert a.received_from(b.id) == 0 and not any(
            isinstance(e, HandshakeComplete) for e in pipe.events[0] + pipe.events[1])


@settings(max_examples=40)
@given(bit=st.integers(0, 255))
def test_a_forged_auth_is_refused_before_any_delta(tmp_path_factory, bit):
    """security.md §3: one bit off the MAC the dialer must have sent is refused."""
    # An attacker with no key sends HELLO, an AUTH with one bit off the right one (it cannot
    # compute the right one), its resume ACK and a DELTA in one write: the DELTA is never
    # applied, and the ERROR says why.
    root = tmp_path_factory.mktemp("forged")
    with Replica.open(root / "a", durability="nosync") as a, \
            Replica.open(root / "m", durability="nosync") as mallory:
        acceptor = SyncSession(a, CONFIG, keyed("alice"))
        acceptor.initiate()
        (hello,) = frames_of(acceptor.data_to_send())
        # What the key holder would send (computed by a real dialing session)...
        honest = SyncSession(mallory, CONFIG, keyed("alice"), dialed=True)
        honest.initiate()
        hello_m = honest.data_to_send()
        honest.receive_data(encode_frame(hello))
        (auth,) = frames_of(honest.data_to_send())
        forged = bytearray(auth.mac)
        forged[bit // 8] ^= 1 << (bit % 8)
        before = snapshot(a)
        with pytest.raises(RemoteProtocolError, match="authentication failed"):
            acceptor.receive_data(hello_m + encode_frame(Auth(mac=bytes(forged)))
                                  + encode_frame(Ack(seq=0))
                                  + delta_frame(0, 1, titled("stolen")))
        assert snapshot(a) == before and a.received_from(mallory.id) == 0
        assert acceptor.state is State.CLOSED and acceptor.peer_identity is None


def test_a_replayed_handshake_is_refused(a, b):
    """protocol.md §2: the peer's AUTH must cover our fresh nonce (security.md §3)."""
    # A recorded, successful handshake (HELLO and AUTH of the key holder b) replayed on a new
    # connection, followed by a DELTA of the attacker's: the acceptor's nonce is new, so the
    # old AUTH does not verify.
    pipe = Pipe(SyncSession(b, CONFIG, keyed("alice"), dialed=True),
                SyncSession(a, CONFIG, keyed("alice"))).run()
    assert pipe.open
    recorded = b"".join(encode_frame(f) for f in pipe.frames[0][:2])
    assert [type(f) for f in pipe.frames[0][:2]] == [Hello, Auth]
    replay = SyncSession(a, CONFIG, keyed("alice"))
    replay.initiate()
    before = snapshot(a)
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        replay.receive_data(recorded + encode_frame(Ack(seq=0))
                            + delta_frame(b.head, b.head + 1, titled("replayed")))
    assert snapshot(a) == before and replay.state is State.CLOSED


def test_an_auth_reflected_back_to_its_sender_is_refused(a, b):
    # Mallory, at an address b dials, takes b's AUTH and sends it straight back as hers.
    dialer = SyncSession(b, CONFIG, keyed("alice"), dialed=True)
    dialer.initiate()
    dialer.data_to_send()
    dialer.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="mallory")))
    (auth,) = frames_of(dialer.data_to_send())
    with pytest.raises(RemoteProtocolError, match="authentication failed"):
        dialer.receive_data(encode_frame(auth))
    assert dialer.state is State.CLOSED and dialer.peer_identity is None


def test_an_acceptor_proves_nothing_to_a_peer_that_has_not_proved_the_key(open_replica):
    # Were an acceptor to send its AUTH on HELLO, anyone who can reach the port would get an
    # HMAC under the key for guessing the secret offline, or relay it between two acceptors
    # that share a key (each expecting the dialer's). It sends only its HELLO until the
    # dialer's AUTH verifies, and answers an unknown key id as it answers a wrong secret.
    s = open_replica("s")
    for key in ("alice", "no-such-key"):
        acceptor = SyncSession(s, CONFIG, keyed("alice"))
        acceptor.initiate()
        acceptor.data_to_send()
        acceptor.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION,
                                                 replica_id="mallory", key_id=key)))
        assert acceptor.data_to_send() == b"" and acceptor.state is State.AWAIT_AUTH
        with pytest.raises(RemoteProtocolError) as refused:
            acceptor.receive_data(encode_frame(Auth(mac=bytes(32))))
        (error,) = frames_of(acceptor.data_to_send())
        assert error.reason == "authentication failed" == refused.value.told


@pytest.mark.parametrize("dialer_keys, acceptor_keys, reason", [
    (None, keyed("alice"), "authentication required"),
    (keyed("alice"), None, "no keys are configured here"),
    (keyed("carol"), keyed("alice"), "key 'carol' (no such key here)"),
])
def test_key_mismatches_are_refused_with_a_clear_reason(a, b, dialer_keys, acceptor_keys,
                                                        reason):
    pipe = Pipe(SyncSession(b, CONFIG, dialer_keys, dialed=True),
                SyncSession(a, CONFIG, acceptor_keys)).run()
    assert pipe.errors[1] is not None and reason in pipe.errors[1].reason
    assert pipe.sessions[0].state is State.CLOSED  # it got the ERROR
    assert not pipe.open


def test_nothing_but_auth_is_accepted_before_the_peer_is_authenticated(a, b):
    s = SyncSession(a, CONFIG, keyed("alice"))
    s.initiate()
    s.data_to_send()
    before = snapshot(a)
    with pytest.raises(RemoteProtocolError, match="unexpected DELTA in state await_auth"):
        s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=b.id,
                                          key_id="alice"))
                       + delta_frame(0, 1, titled("early")))
    assert snapshot(a) == before


def test_the_handshake_deadline_covers_auth(a, b):
    """security.md §3, security.md §7: the whole handshake, AUTH included, must finish
    within handshake_timeout of initiate()."""
    s = SyncSession(a, CONFIG, keyed("alice"))
    s.initiate(now=0.0)
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=b.id,
                                      key_id="alice")), now=1.0)
    assert s.state is State.AWAIT_AUTH
    s.tick(CONFIG.handshake_timeout)
    with pytest.raises(RemoteProtocolError, match="no AUTH within"):
        s.tick(CONFIG.handshake_timeout + 0.1)


def test_a_dialer_with_several_keys_must_say_which(a):
    with pytest.raises(LocalProtocolError, match="key_id"):
        SyncSession(a, CONFIG, keyed("alice", "bob"), dialed=True)
    SyncSession(a, CONFIG, keyed("alice", "bob", key_id="bob"), dialed=True)


def test_short_secrets_and_bad_key_ids_are_refused():
    """security.md §1: secrets must be at least MIN_SECRET_BYTES (16) long."""
    with pytest.raises(ValueError, match="shorter than 16"):
        SecurityConfig(keys={"alice": b"short"})
    with pytest.raises(ValueError, match="shorter than 16"):
        SecurityConfig(keys={"alice": b"x" * 15})
    SecurityConfig(keys={"alice": b"x" * 16})  # the bound itself is enough
    with pytest.raises(ValueError, match="key id"):
        SecurityConfig(keys={"has space": SECRET})


def test_with_keys_over_tls_a_wrong_key_is_refused_though_tls_passed(a, b):
    """security.md §2: with both keys and TLS, both must pass: a peer whose certificate the
    transport accepted (its identity is given) still needs the key."""
    before = snapshot(a)
    b.set_title("c", "over TLS, wrong key")
    pipe = Pipe(SyncSession(b, CONFIG, keyed("alice", secret=OTHER_SECRET), dialed=True,
                            tls_identity="server"),
                SyncSession(a, CONFIG, keyed("alice"), tls_identity="device-cert")).run()
    assert not pipe.open and "authentication failed" in pipe.errors[1].reason
    assert pipe.sessions[1].peer_identity is None and snapshot(a) == before


def test_the_key_id_is_the_identity_even_over_tls(a, b):
    pipe = Pipe(SyncSession(b, CONFIG, keyed("alice"), dialed=True, tls_identity="server"),
                SyncSession(a, CONFIG, keyed("alice"), tls_identity="device-cert")).run()
    assert pipe.sessions[1].peer_identity == "alice"
    pipe = Pipe(SyncSession(b, CONFIG, dialed=True, tls_identity="server"),
                SyncSession(a, CONFIG, tls_identity="device-cert")).run()
    assert pipe.sessions[1].peer_identity == "device-cert"
    assert pipe.sessions[0].peer_identity == "server"


# -- authorization --------------------------------------------------------------------------------


SCOPES = {"alice": ("u1/",), "bob": ("u2/",), "backup": ("",)}


def serve_alice(server: Replica, device: Replica, scopes=SCOPES, key: str = "alice") -> Pipe:
    keys = {k: SECRET for k in scopes}
    return Pipe(SyncSession(device, CONFIG, SecurityConfig(keys={key: SECRET}), dialed=True),
                SyncSession(server, CONFIG, SecurityConfig(keys=keys, scopes=scopes)))


def test_a_peer_is_sent_only_the_conversations_in_its_scope(open_replica):
    """security.md §1, security.md §5: a scoped peer is sent only its scope, and the DELTAs
    still cover the whole interval (its ACK must cover entries it may not see)."""
    server, phone = open_replica("server"), open_replica("phone")
    for cid in ("u1/family", "u2/secret", "u1x/not-a-prefix-match", "u1/work"):
        server.set_title(cid, "t")
    pipe = serve_alice(server, phone).run()
    assert pipe.open and pipe.errors == [None, None]
    assert set(phone.state()) == {"u1/family", "u1/work"}
    # The acks cover the whole interval: the server's log is not pinned by what alice
    # may not see, and it counts her as caught up.
    assert server.peer_ack(phone.id) == server.head and pipe.sessions[1].caught_up


def test_a_scoped_peer_behind_the_log_floor_gets_only_its_scope_by_state_transfer(
        open_replica):
    server, phone = open_replica("server", log_retention=2), open_replica("phone")
    for i in range(10):
        server.set_title(f"u1/c{i}", "mine")
        server.set_title(f"u2/c{i}", "not mine")
    server.trim_log()
    assert server.log_floor > 0
    pipe = serve_alice(server, phone).run()
    assert pipe.open
    assert set(phone.state()) == {f"u1/c{i}" for i in range(10)}
    server.set_title("u1/after", "delta again")
    server.set_title("u2/after", "not mine")
    pipe.run()
    assert "u1/after" in set(phone.state()) and "u2/after" not in set(phone.state())


def test_widening_a_scope_delivers_what_was_filtered_out_before(open_replica):
    # Regression (review): DELTAs to a scoped peer cover whole intervals, so its ack passed
    # entries it was never sent. Once its scope was widened, nothing resent them: the peer
    # lacked shared/x for good. A wider scope now gets a state transfer first.
    server, phone = open_replica("server"), open_replica("phone")
    server.set_title("u1/a", "mine")
    server.set_title("shared/x", "not yet mine")
    narrow = {"alice": ("u1/",)}
    assert serve_alice(server, phone, scopes=narrow).run().open
    assert set(phone.state()) == {"u1/a"} and server.peer_ack(phone.id) == server.head
    assert server.sent_scope(phone.id) == ("u1/",)
    wide = {"alice": ("u1/", "shared/")}
    # The transfer reaches the phone, but the connection is cut before its ACK of the
    # transfer's end reaches the server: nothing is recorded, the next connection transfers
    # again.
    dialer, acceptor = serve_alice(server, phone, scopes=wide).sessions
    for src, dst in [(dialer, acceptor), (acceptor, dialer)] * 3:
        src.pump()
        if data := src.data_to_send():
            dst.receive_data(data)
    assert set(phone.state()) == {"u1/a", "shared/x"}
    assert server.sent_scope(phone.id) == ("u1/",)
    pipe = serve_alice(server, phone, scopes=wide).run()
    assert any(isinstance(f, StateChunk) for f in pipe.frames[1])
    assert server.sent_scope(phone.id) == ("u1/", "shared/")
    # Same or narrower scope: no transfer, and the narrower one is what is recorded.
    for scopes, recorded in ((wide, ("u1/", "shared/")), (narrow, ("u1/",))):
        pipe = serve_alice(server, phone, scopes=scopes).run()
        assert not any(isinstance(f, StateChunk) for f in pipe.frames[1])
        assert server.sent_scope(phone.id) == recorded


def test_a_delta_with_any_conversation_out_of_scope_is_refused_whole(open_replica):
    """security.md §5: a DELTA holding any conversation out of scope is refused whole."""
    server, phone = open_replica("server"), open_replica("phone")
    pipe = serve_alice(server, phone).run()
    assert pipe.open
    before = snapshot(server)
    with pytest.raises(RemoteProtocolError, match="outside the scope of 'alice'"):
        pipe.sessions[1].receive_data(delta_frame(0, 1, titled("u1/mine", "u2/theirs")))
    assert snapshot(server) == before and server.received_from(phone.id) == 0
    (err,) = frames_of(pipe.sessions[1].data_to_send())
    assert isinstance(err, Error) and "u2/theirs" in err.reason


def test_a_device_that_wrote_outside_its_scope_is_refused_on_every_connection(open_replica):
    """security.md §5: what crdtim enforces when a device writes outside its scope: the
    DELTA holding that write is refused whole on every connection, loudly, and the device's
    later writes wait behind it; nothing of it is applied in part."""
    server, phone = open_replica("server"), open_replica("phone")
    phone.set_title("u2/not-hers", "misconfigured")
    phone.set_title("u1/hers", "later, in scope")
    for _ in range(3):  # each reconnection is refused the same way
        pipe = serve_alice(server, phone).run()
        assert "outside the scope of 'alice'" in pipe.errors[1].reason
        assert all(s.state is State.CLOSED for s in pipe.sessions)
        assert len(server) == 0 and server.received_from(phone.id) == 0


def test_an_out_of_scope_delta_in_a_burst_leaves_the_ones_before_it_applied(open_replica):
    # Group commit joins DELTAs that arrive together: the out-of-scope one is refused
    # whole, and the in-scope one before it still counts (as for any bad frame in a burst).
    server, phone = open_replica("server"), open_replica("phone")
    pipe = serve_alice(server, phone).run()
    with pytest.raises(RemoteProtocolError, match="outside the scope"):
        pipe.sessions[1].receive_data(delta_frame(0, 1, titled("u1/ok"))
                                      + delta_frame(1, 2, titled("u1/also", "u3/no"))
                                      + delta_frame(2, 3, titled("u1/after")))
    assert set(server.state()) == {"u1/ok"}
    assert server.received_from(phone.id) == 1


def test_a_state_chunk_out_of_scope_is_refused_whole(open_replica):
    server, phone = open_replica("server"), open_replica("phone")
    pipe = serve_alice(server, phone).run()
    before = snapshot(server)
    with pytest.raises(RemoteProtocolError, match="STATE_CHUNK: conversation 'u2/x'"):
        pipe.sessions[1].receive_data(encode_frame(StateChunk(
            payload=codec.encode_map(titled("u1/a", "u2/x")))))
    assert snapshot(server) == before


def test_a_peer_claiming_another_identitys_replica_id_is_refused(open_replica):
    # Bob authenticates correctly but says he is alice's phone: were he believed, his ACKs
    # and DELTA intervals would move the resume point the server keeps for her phone, and
    # her phone's next writes would be skipped.
    server, phone = open_replica("server"), open_replica("phone")
    phone.set_title("u1/a", "mine")
    assert serve_alice(server, phone).run().open
    resume, ack = server.received_from(phone.id), server.peer_ack(phone.id)
    impostor = open_replica("bob-device")
    impostor.id = phone.id
    pipe = serve_alice(server, impostor, key="bob").run()
    assert pipe.errors[1] is not None and not pipe.open
    assert "replica id" in pipe.errors[1].reason and "'alice'" in pipe.errors[1].reason
    assert "alice" not in pipe.frames[1][-1].reason  # bob is not told whose id it is
    assert (server.received_from(phone.id), server.peer_ack(phone.id)) == (resume, ack)
    # The binding is durable, and the real phone is still let in.
    server.close()
    server = open_replica("server")
    assert serve_alice(server, phone).run().open
    assert serve_alice(server, impostor, key="bob").run().errors[1] is not None
    # An operator who moves the device to another identity on purpose unbinds it first.
    server.unbind_peer(phone.id)
    assert serve_alice(server, impostor, key="bob").run().open


@pytest.mark.parametrize("scopes, key, tls, reason", [
    ({"bob": ("u2/",)}, "alice", None, "identity 'alice' is not in the authorization list"),
    ({"alice": ("u1/",)}, None, None, "the peer has no identity"),
])
def test_unlisted_or_anonymous_peers_are_refused_when_scopes_are_set(a, b, scopes, key, tls,
                                                                     reason):
    dialer = SecurityConfig(keys={key: SECRET}) if key else None
    acceptor = SecurityConfig(keys={"alice": SECRET} if key else {}, scopes=scopes)
    pipe = Pipe(SyncSession(b, CONFIG, dialer, dialed=True),
                SyncSession(a, CONFIG, acceptor, tls_identity=tls)).run()
    assert pipe.errors[1] is not None and reason in pipe.errors[1].reason
    assert not pipe.open


CIDS = st.sampled_from(["u1/a", "u1/b", "u1", "u2/a", "u2/u1/a", "u12/a", "x"])


@settings(max_examples=20)
@given(server_cids=st.sets(CIDS), phone_cids=st.sets(CIDS.filter(lambda c: c.startswith("u1/"))))
def test_replication_under_a_scope_is_the_state_restricted_to_it(tmp_path_factory,
                                                                 server_cids, phone_cids):
    # Property: after syncing, the scoped peer holds exactly the server's conversations in
    # its scope joined with its own, and the server holds everything it had plus the
    # peer's (which are all in scope).
    root = tmp_path_factory.mktemp("scope")
    with Replica.open(root / "s", durability="nosync") as server, \
            Replica.open(root / "p", durability="nosync") as phone:
        for cid in sorted(server_cids):
            server.set_title(cid, "s")
        for cid in sorted(phone_cids):
            phone.pin(cid)
        pipe = serve_alice(server, phone).run()
        assert pipe.open and pipe.errors == [None, None]
        in_scope = {c for c in server_cids if c.startswith("u1/")} | phone_cids
        assert set(phone.state()) == in_scope
        assert set(server.state()) == server_cids | phone_cids
        for cid in in_scope:
            assert phone.get(cid) == server.get(cid)


# -- limits ---------------------------------------------------------------------------------------


def test_before_authentication_frames_are_small(a):
    # An unauthenticated peer cannot make us buffer max_frame_bytes: until the handshake is
    # done only max_handshake_frame_bytes are allowed, refused from the length prefix.
    s = SyncSession(a, CONFIG)
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError, match="over the limit of 4096"):
        s.receive_data((CONFIG.max_handshake_frame_bytes + 1).to_bytes(4, "big") + b"\x00")


def test_an_oversize_frame_is_refused_from_its_prefix_without_buffering(a, b):
    config = dataclasses.replace(CONFIG, max_frame_bytes=10_000)
    pipe = Pipe(SyncSession(b, config, dialed=True), SyncSession(a, config)).run()
    s = pipe.sessions[1]
    with pytest.raises(RemoteProtocolError, match="frame of 10001 bytes is over the limit"):
        s.receive_data((10_001).to_bytes(4, "big"))  # the prefix alone
    assert s._decoder.buffered == 4  # nothing of the body was ever asked for


def test_a_frame_trickled_byte_by_byte_times_out(a, b):
    """protocol.md §10: a frame must be complete within frame_timeout of its first byte."""
    # Every byte is "activity" for the idle timeout; the frame timeout is not fooled.
    config = dataclasses.replace(CONFIG, frame_timeout=30.0, idle_timeout=20.0)
    pipe = Pipe(SyncSession(b, config, dialed=True), SyncSession(a, config)).run()
    s = pipe.sessions[1]
    s.receive_data((500).to_bytes(4, "big"), now=1.0)
    t = 1.0
    with pytest.raises(RemoteProtocolError, match="took more than 30 s"):
        while t < 100:
            t += 5.0
            s.receive_data(b"\x00", now=t)
            s.tick(t)
    assert 31.0 <= t <= 36.0
    assert isinstance(frames_of(s.data_to_send())[-1], Error)


def test_frames_that_complete_in_time_never_trip_the_frame_timeout(a, b):
    config = dataclasses.replace(CONFIG, frame_timeout=30.0, idle_timeout=1000.0)
    pipe = Pipe(SyncSession(b, config, dialed=True), SyncSession(a, config)).run()
    s = pipe.sessions[1]
    ping = encode_frame(Ping(nonce=1))
    s.receive_data(ping[:3], now=0.0)
    for t in range(20, 420, 20):  # each frame takes 20 s; the next begins as one ends
        s.receive_data(ping[3:] + ping[:3], now=float(t))
        s.tick(float(t))
    assert s.state is State.OPEN


# -- nodes on loopback: PSK, TLS, max_peers, oversize frames, slowloris ---------------------------


def node(replica: Replica, *peers: Node, listen: bool = True, config: NodeConfig = FAST) -> Node:
    return Node(replica, listen=(LOCAL, 0) if listen else None,
                peers=[(LOCAL, p.port) for p in peers], config=config)


async def test_nodes_with_a_shared_key_replicate_and_a_wrong_key_gets_nothing(open_replica):
    a, b, m = open_replica("a"), open_replica("b"), open_replica("m")
    a.set_title("c", "secret")
    good = dataclasses.replace(FAST, security=keyed("alice"))
    bad = dataclasses.replace(FAST, security=keyed("alice", secret=OTHER_SECRET))
    async with node(a, config=good) as na, node(b, na, config=good) as nb:
        await settle((na, 1), (nb, 1))
        assert b.get("c").title == "secret"
        m.set_title("x", "pushed by the impostor")
        async with node(m, na, listen=False, config=bad):
            await wait_until(na, lambda: na.stats.errors >= 1)
        assert a.get("x") is None and m.get("c") is None
        assert na.connected_peers == {b.id}


async def test_an_unauthenticated_raw_peer_of_a_keyed_node_is_refused(open_replica):
    a = open_replica("a")
    async with node(a, config=dataclasses.replace(FAST, security=keyed("alice"))) as na:
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION,
                                                     replica_id="raw"))
                                  + encode_frame(Ack(seq=0))
                                  + delta_frame(0, 1, titled("c")))
            frames = frames_of(await read_to_eof(stream))
        assert isinstance(frames[-1], Error) and "authentication required" in frames[-1].reason
        assert len(a) == 0 and na.stats.errors == 1


async def test_an_unforeseen_error_on_one_link_ends_that_link_not_the_node(open_replica,
                                                                         monkeypatch):
    # Whatever goes wrong while serving one peer (here a replica error nobody foresaw for
    # the replica id "boom"), the node logs it, drops that link and serves the others.
    a, b = open_replica("a"), open_replica("b")
    real = SyncSession.receive_data

    def receive_data(self, data, now=0.0):
        events = real(self, data, now)
        if self.peer_id == "boom":
            raise RuntimeError("unforeseen")
        return events

    monkeypatch.setattr(SyncSession, "receive_data", receive_data)
    a.set_title("c", "still served")
    async with node(a) as na:
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION,
                                                     replica_id="boom")))
            await read_to_eof(stream)  # the node closed that link
        assert na.stats.errors == 1
        async with node(b, na, listen=False) as nb:
            await settle((na, 1), (nb, 1))
        assert b.get("c").title == "still served"


async def test_running_out_of_file_descriptors_pauses_accepting_and_does_not_stop_it(
        open_replica, monkeypatch, autojump_clock):
    import errno

    class OutOfDescriptors(trio.abc.Listener):
        """A listener whose first two accepts fail as when the process has no fds left."""

        def __init__(self, real: trio.SocketListener):
            self.real, self.failures = real, 2
            self.socket = real.socket

        async def accept(self):
            if self.failures:
                self.failures -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            return await self.real.accept()

        async def aclose(self):
            await self.real.aclose()

    real_open = trio.open_tcp_listeners

    async def open_listeners(*args, **kw):
        return [OutOfDescriptors(listener) for listener in await real_open(*args, **kw)]

    monkeypatch.setattr(trio, "open_tcp_listeners", open_listeners)
    a, b = open_replica("a"), open_replica("b")
    a.set_title("c", "served after the shortage")
    async with node(a) as na:
        async with node(b, na, listen=False) as nb:
            await settle((na, 1), (nb, 1))
    assert b.get("c").title == "served after the shortage"
    assert all(listener.failures == 0 for listener in na.listeners)


async def test_more_than_max_peers_get_an_error_and_the_node_serves_on(open_replica):
    # Peers count against max_peers once authenticated (specs/security.md §7): the second
    # is refused at the end of its handshake, and the node serves the first on.
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    config = dataclasses.replace(FAST, max_peers=1)
    async with node(a, config=config) as na, node(b, na, listen=False) as nb:
        await settle((na, 1), (nb, 1))
        async with node(c, na, listen=False):
            await wait_until(na, lambda: na.stats.refused >= 1)
        assert na.connected_peers == {b.id}
        b.set_title("c", "served after")
        await settle((na, 1), (nb, 1))
        assert a.get("c").title == "served after" and c.get("c") is None


async def test_handshakes_in_progress_are_limited_per_address_and_in_all(open_replica):
    a = open_replica("a")
    config = dataclasses.replace(FAST, max_handshakes=3, max_handshakes_per_address=2)
    async with node(a, config=config) as na:
        held = []
        for source in ("127.0.0.2", "127.0.0.2", "127.0.0.3"):
            stream = await trio.open_tcp_stream(LOCAL, na.port, local_address=source)
            with trio.fail_after(GUARD):  # the node's HELLO: the handshake holds a slot
                assert await stream.receive_some(1 << 16)
            held.append(stream)
        for source, reason in (("127.0.0.2", "from this address"), ("127.0.0.4", "handshake")):
            stream = await trio.open_tcp_stream(LOCAL, na.port, local_address=source)
            async with stream:
                frames = frames_of(await read_to_eof(stream))
            assert len(frames) == 1 and reason in frames[0].reason
        assert na.stats.refused == 2
        for stream in held:
            await stream.aclose()


async def test_a_connection_flood_does_not_keep_a_restarted_peer_out(open_replica):
    # Regression (issue 12, finding 7): idle connections took every one of max_peers' slots,
    # and a restarted honest peer was refused for as long as the flood lasted.
    server, phone = open_replica("server"), open_replica("phone")
    config = dataclasses.replace(FAST, max_peers=4)
    async with node(server, config=config) as ns:
        async with node(phone, ns, listen=False) as np:
            await settle((ns, 1), (np, 1))
        stop = trio.Event()

        async def flood() -> None:
            held: list[trio.SocketStream] = []
            i = 0
            while not stop.is_set():
                try:  # idle connections, never a byte sent, from three addresses
                    held.append(await trio.open_tcp_stream(
                        LOCAL, ns.port, local_address=f"127.0.0.{2 + i % 3}"))
                except OSError:
                    pass
                i += 1
                if len(held) > 200:
                    await held.pop(0).aclose()
            for stream in held:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(flood)
            await wait_until(ns, lambda: ns.stats.refused >= 100)  # the flood is on
            started = trio.current_time()
            phone.set_title("c", "after the restart")
            with trio.fail_after(2):
                async with node(phone, ns, listen=False) as np:
                    await settle((ns, 1), (np, 1))
            waited = trio.current_time() - started
            stop.set()
        assert server.get("c").title == "after the restart"
        print(f"restarted peer waited {waited:.3f} s under a flood of "
              f"{ns.stats.refused} refused connections")


async def test_an_oversize_frame_gets_an_error_before_its_body_is_sent(open_replica):
    a = open_replica("a")
    config = dataclasses.replace(FAST, session=SessionConfig(max_frame_bytes=100_000))
    async with node(a, config=config) as na:
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            # The prefix of a 1 GB frame, after a good handshake: the node refuses at once,
            # though the body never comes.
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="raw"))
                                  + encode_frame(Ack(seq=0)) + (10**9).to_bytes(4, "big"))
            frames = frames_of(await read_to_eof(stream))
        assert "frame of 1000000000 bytes is over the limit of 100000" in frames[-1].reason
        assert na.stats.errors == 1


async def test_a_slowloris_peer_is_cut_off_and_others_are_served(open_replica, autojump_clock):
    a, b = open_replica("a"), open_replica("b")
    config = dataclasses.replace(FAST, session=SessionConfig(frame_timeout=30.0,
                                                             idle_timeout=20.0))
    async with node(a, config=config) as na, node(b, na, config=config) as nb:
        await settle((na, 1), (nb, 1))
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        received = bytearray()
        started = trio.current_time()

        async def trickle() -> None:
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="slow"))
                                  + encode_frame(Ack(seq=0)) + (1000).to_bytes(4, "big"))
            try:
                while True:  # a byte every 5 s: well inside the idle timeout
                    await trio.sleep(5)
                    await stream.send_all(b"\x00")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async with stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                received += await read_to_eof(stream, guard=100)  # (mock seconds)
                nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started
        frames = frames_of(bytes(received))
        assert isinstance(frames[-1], Error) and "trickled" in frames[-1].reason
        assert 30 <= elapsed < 40
        b.set_title("c", "still served")
        await settle((na, 1), (nb, 1))
        assert a.get("c").title == "still served"


# -- TLS ------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _make_leaf(d: Path, ca: str, cn: str) -> None:
    (d / "leaf.ext").write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                "extendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{cn}.pem", "-days", "2", "-extfile", "leaf.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """ca (trusted) with leaves server, phone; rogue-ca with leaf mallory."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path_factory.mktemp("pki")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    for cn in ("server", "phone"):
        _make_leaf(d, "ca", cn)
    _make_leaf(d, "rogue-ca", "mallory")
    return d


def tls_for(pki: Path, cn: str, ca: str = "ca") -> NodeConfig:
    return dataclasses.replace(FAST, tls=load_tls(str(pki / f"{cn}.pem"),
                                                  str(pki / f"{cn}.key"), str(pki / f"{ca}.pem")))


async def test_mutual_tls_nodes_replicate_and_identify_each_other_by_certificate(
        open_replica, pki):
    server, phone = open_replica("server"), open_replica("phone")
    server.set_title("u1/a", "mine")
    server.set_title("u2/b", "not mine")
    scoped = dataclasses.replace(tls_for(pki, "server"),
                                 security=SecurityConfig(scopes={"phone": ("u1/",)}))
    async with node(server, config=scoped) as ns, \
            node(phone, ns, listen=False, config=tls_for(pki, "phone")) as np:
        await settle((ns, 1), (np, 1))
        assert set(phone.state()) == {"u1/a"}
        assert ns._links[phone.id].session.peer_identity == "phone"
        assert np._links[server.id].session.peer_identity == "server"


async def test_a_certificate_from_another_ca_is_refused(open_replica, pki):
    """security.md §2: the peer's certificate must chain to our CA."""
    server, phone = open_replica("server"), open_replica("phone")
    async with node(server, config=tls_for(pki, "server")) as ns:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(pki / "ca.pem"))  # she trusts the server...
        ctx.load_cert_chain(str(pki / "mallory.pem"), str(pki / "mallory.key"))
        stream = trio.SSLStream(await trio.open_tcp_stream(LOCAL, ns.port), ctx)
        got = b""
        try:  # ...but it does not trust her: TLS 1.3 tells her so on her first read
            await stream.do_handshake()
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION,
                                                     replica_id="mallory"))
                                  + encode_frame(Ack(seq=0)) + delta_frame(0, 1, titled("x")))
            got = await read_to_eof(stream)
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(stream)
        assert got == b"" and ns.stats.tls_failures == 1 and len(server) == 0
        # A node whose certificate comes from the rogue CA cannot join either; a good one can.
        async with node(phone, ns, listen=False, config=tls_for(pki, "mallory", "ca")) as nm:
            await wait_until(ns, lambda: ns.stats.tls_failures >= 2)
            assert not ns.connected_peers and not nm.connected_peers
        async with node(phone, ns, listen=False, config=tls_for(pki, "phone")) as np:
            phone.set_title("c", "over TLS")
            await settle((ns, 1), (np, 1))
            assert server.get("c").title == "over TLS"


async def test_a_tls_handshake_not_done_within_the_handshake_timeout_is_dropped(
        open_replica, pki, autojump_clock):
    """protocol.md §9, security.md §7: on a TLS listener the TLS handshake must finish within
    handshake_timeout; a client that connects and says nothing is closed then, counted in
    tls_failures, and never reaches a session."""
    server = open_replica("server")
    config = dataclasses.replace(tls_for(pki, "server"),
                                 session=SessionConfig(handshake_timeout=7.0))
    async with node(server, config=config) as ns:
        stream = await trio.open_tcp_stream(LOCAL, ns.port)
        started = trio.current_time()
        async with stream:
            got = await read_to_eof(stream, guard=100)  # (mock seconds)
        elapsed = trio.current_time() - started
        assert got == b"" and 7.0 <= elapsed < 8.0
        await wait_until(ns, lambda: ns.stats.tls_failures == 1)
        assert ns.stats.connections == 0 and not ns.connected_peers


# -- configuration files and the command line -----------------------------------------------------


def _secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "secrets"
    p.write_text(text)
    p.chmod(mode)
    return p


def test_secrets_file_formats(tmp_path):
    assert load_keys(str(_secret_file(tmp_path, "0123456789abcdef0123\n"))) == {
        "default": b"0123456789abcdef0123"}
    text = "# devices\nalice 0123456789abcdef0123\n\nbob   fedcba9876543210fedc\n"
    assert load_keys(str(_secret_file(tmp_path, text))) == {
        "alice": b"0123456789abcdef0123", "bob": b"fedcba9876543210fedc"}
    # security.md §1: the bound is on the secret's UTF-8 bytes, not its characters.
    assert load_keys(str(_secret_file(tmp_path, "carol " + "é" * 8 + "\n"))) == {
        "carol": ("é" * 8).encode()}


@pytest.mark.parametrize("text, mode, message", [
    ("", 0o600, "holds no key"),
    ("# only a comment\n", 0o600, "holds no key"),
    ("alice 0123456789abcdef0123 extra\n", 0o600, "line 1: expected `KEY_ID SECRET`"),
    ("alice short\n", 0o600, "shorter than 16 bytes"),
    ("alice " + "é" * 7 + "\n", 0o600, "shorter than 16 bytes"),  # 7 characters, 14 bytes
    ("a 0123456789abcdef0123\na 0123456789abcdef0123\n", 0o600, "appears twice"),
    ("0123456789abcdef0123\n", 0o604, "chmod 600"),
    ("# padding\n" * 200_000, 0o600, "is over 1048576 bytes"),
])
def test_bad_secrets_files_are_refused_naming_the_problem(tmp_path, text, mode, message):
    with pytest.raises(ConfigError, match=message.replace("`", ".")):
        load_keys(str(_secret_file(tmp_path, text, mode)))


@pytest.mark.parametrize("text, message", [
    ('[scopes]\nalice = ["u1/"]\n', None),
    ('[scopes]\nalice = "u1/"\n', "must be a list"),
    ('[people]\n', "unknown table"),
    ('scopes = [\n', "not valid TOML"),
    ('', "no \\[scopes\\] table"),
    ('[scopes]\n"" = ["u1/"]\n', "is empty or holds control characters"),
    ('[scopes]\n"a\\nb" = ["u1/"]\n', "is empty or holds control characters"),
])
def test_authorization_files(tmp_path, text, message):
    p = tmp_path / "authz.toml"
    p.write_text(text)
    if message is None:
        assert load_scopes(str(p)) == {"alice": ("u1/",)}
    else:
        with pytest.raises(ConfigError, match=message):
            load_scopes(str(p))


@pytest.fixture
def serve(capsys, tmp_path, monkeypatch):
    """serve(*flags) -> (status, stderr) of `crdtim serve` refused before it listens."""
    async def must_not_serve(*args: object) -> None:
        raise AssertionError("serve started: the flags were not refused")

    monkeypatch.setattr("crdtim._cli_serve._serve", must_not_serve)

    def run(*flags: object) -> tuple[int, str]:
        capsys.readouterr()
        status = main(["--data", str(tmp_path / "r"), "serve", *map(str, flags)])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert not (tmp_path / "r").exists()  # refused before any replica was created
        return status, err
    return run


def test_serve_refuses_a_non_loopback_listen_without_authentication(serve):
    status, err = serve("--listen", "0.0.0.0:0")
    assert status == 2
    assert "refusing to listen on 0.0.0.0:0 without authentication" in err
    assert "--secret-file" in err and "--insecure" in err


@pytest.mark.parametrize("flags, message", [
    (["--tls-cert", "x.pem"], "go together"),
    (["--authz", "a.toml"], "peers have no identity"),
    (["--key-id", "alice"], "--key-id names a key of --secret-file"),
    (["--secret-file", "/nonexistent/secrets"], "secrets file /nonexistent/secrets"),
    (["--metrics", "0.0.0.0:9100"], "refusing to serve metrics on 0.0.0.0:9100"),
    (["--max-frame-bytes", "1000"], "is below 65536"),
    (["--idle-timeout", "5"], "must be longer than the heartbeat interval"),
])
def test_serve_refuses_bad_security_flags(serve, flags, message):
    status, err = serve("--listen", "127.0.0.1:0", *flags)
    assert status == 2 and message in err


def test_serve_refuses_several_keys_without_key_id_when_dialing(serve, tmp_path):
    p = _secret_file(tmp_path, "a 0123456789abcdef0123\nb 0123456789abcdef0123\n")
    status, err = serve("--listen", "127.0.0.1:0", "--secret-file", p, "--peer", "127.0.0.1:1")
    assert status == 2 and "--key-id" in err


@pytest.mark.parametrize("rid", ["phone\nWARNING crdtim.net: connected to admin", "a\x1b[2J"])
def test_a_hello_whose_replica_id_could_forge_log_lines_is_refused(a, rid):
    s = SyncSession(a, CONFIG)
    s.initiate()
    with pytest.raises(RemoteProtocolError, match="replica id is not a short printable"):
        s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=rid)))
    assert s.state is State.CLOSED


def test_a_certificate_without_a_usable_name_gives_no_identity():
    from crdtim.security import certificate_identity

    assert certificate_identity({"subject": ((("commonName", ""),),)}) is None
    assert certificate_identity({"subject": ((("commonName", ""),), (("organizationName",
                                                                      "acme"),))}) == "organizationName=acme"
    assert certificate_identity({"subject": ((("commonName", "phone"),),)}) == "phone"


def test_loopback_addresses_are_recognized():
    from crdtim._cli_serve import _is_loopback

    assert all(map(_is_loopback, ["127.0.0.1", "127.8.9.1", "::1", "localhost"]))
    assert not any(map(_is_loopback, ["0.0.0.0", "::", "10.0.0.1", "example.com"]))


async def test_a_node_with_several_keys_must_say_which_one_it_dials_with(open_replica):
    a = open_replica("a")
    config = dataclasses.replace(FAST, security=keyed("alice", "bob"))
    with pytest.raises(ValueError, match="key_id"):
        Node(a, peers=[(LOCAL, 1)], config=config)
    async with node(a, config=config) as na:
        with pytest.raises(ValueError, match="key_id"):
            na.add_peer((LOCAL, 1))


async def test_one_server_serves_many_users_each_device_seeing_only_its_own(open_replica):
    server, alice, bob = open_replica("server"), open_replica("alice"), open_replica("bob")
    keys = {"alice": SECRET, "bob": OTHER_SECRET}
    on_server = dataclasses.replace(FAST, security=SecurityConfig(
        keys=keys, scopes={"alice": ("u1/",), "bob": ("u2/",)}))

    def device(key: str) -> NodeConfig:
        return dataclasses.replace(FAST, security=SecurityConfig(keys={key: keys[key]}))

    server.set_title("u1/family", "alice's")
    server.set_title("u2/work", "bob's")
    async with node(server, config=on_server) as ns, \
            node(alice, ns, listen=False, config=device("alice")) as na, \
            node(bob, ns, listen=False, config=device("bob")) as nb:
        alice.pin("u1/family")
        bob.set_title("u2/new", "from bob's phone")
        await settle((ns, 2), (na, 1), (nb, 1))
        assert set(alice.state()) == {"u1/family"} and alice.get("u1/family").pinned
        assert set(bob.state()) == {"u2/work", "u2/new"}
        assert set(server.state()) == {"u1/family", "u2/work", "u2/new"}
        assert server.get("u1/family").pinned
        assert {l.session.peer_identity for l in ns._links.values()} == {"alice", "bob"}
        assert ns.stats.errors == 0


async def test_a_peer_forging_another_devices_dots_cannot_cut_it_off(open_replica):
    # Regression (issue 12, finding 1): a peer scoped to "shared/" sent the server a pin of
    # shared/a whose context claimed dot (X, 1000000) of device X; X then refused every
    # delta from the server, its private prefix included. Now the claim is joined where it
    # lands, confined to that flag, and X's next pin comes after it (specs/security.md §1).
    from crdtim.crdt import CausalContext, Flag

    server, x, mallory = open_replica("server"), open_replica("x"), open_replica("mallory")
    keys = {"x": SECRET, "mallory": OTHER_SECRET}
    on_server = dataclasses.replace(FAST, security=SecurityConfig(
        keys=keys, scopes={"x": ("x/", "shared/"), "mallory": ("shared/",)}))

    def device(key: str) -> NodeConfig:
        return dataclasses.replace(FAST, security=SecurityConfig(keys={key: keys[key]}))

    async with node(server, config=on_server) as ns, \
            node(x, ns, listen=False, config=device("x")) as nx, \
            node(mallory, ns, listen=False, config=device("mallory")) as nm:
        x.pin("shared/a")
        await settle((ns, 2), (nx, 1), (nm, 1))
        assert mallory.get("shared/a").pinned
        mallory.apply_delta(codec.encode_map(ConversationMap({"shared/a": {"pinned": Flag(
            frozenset(), CausalContext({x.id: 1_000_000}, frozenset()))}})))
        await settle((ns, 2), (nx, 1), (nm, 1))
        server.set_title("x/private", "after the attack")
        await settle((ns, 2), (nx, 1), (nm, 1))
        assert x.get("x/private").title == "after the attack"
        assert x.get("shared/a") == server.get("shared/a") == mallory.get("shared/a")
        x.pin("shared/a")  # healed: a fresh dot past the claim
        await settle((ns, 2), (nx, 1), (nm, 1))
        assert all(r.get("shared/a").pinned for r in (x, server, mallory))
        assert (ns.stats.errors, nx.stats.errors) == (0, 0)
        assert nx.connected_peers == {server.id}
