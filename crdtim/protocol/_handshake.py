"""Who the peer is and what it may do: its HELLO, the pre-shared-key AUTH exchange and
authorization (specs/protocol.md §3, specs/security.md §3-§5).

The dialer proves the key first; the acceptor answers only once that verified. Refusals are
RemoteProtocolErrors whose `told` says no more than an unauthenticated peer may learn. No
I/O, no clock, no randomness here: the session passes in its HELLO nonce.
"""

from __future__ import annotations

import hmac

from ..errors import PeerIdentityError
from ._auth import SecurityConfig, handshake_mac
from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import PROTOCOL_VERSION, Auth, Hello
from ._port import ReplicaPort

__all__ = ["Handshake"]


class Handshake:
    """One connection's handshake. `dialed`: we opened the connection (we name the key, and
    each AUTH is bound to its sender's role); `tls_identity`: the peer as the transport
    verified it."""

    def __init__(self, replica: ReplicaPort, security: SecurityConfig, *, dialed: bool,
                 tls_identity: str | None, nonce: bytes):
        self.replica = replica
        self.security = security
        self.dialed = dialed
        self.tls_identity = tls_identity
        self.nonce = nonce  # our HELLO's challenge
        self.key_id = security.dial_key_id if dialed else None
        if dialed and security.keys and self.key_id is None:
            raise LocalProtocolError("several keys and no SecurityConfig.key_id: which one "
                                     "should the dialing side name?")
        self.peer_id = ""  # known from the peer's HELLO
        self.to_self = False  # the peer's HELLO carried our own replica id
        self._peer_nonce = b""

    def on_hello(self, m: Hello) -> bool:
        """Check the peer's HELLO; True if it named a key (an AUTH exchange follows)."""
        if m.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"protocol version {m.version} is not supported "
                                      f"(this is {PROTOCOL_VERSION})")
        if m.replica_id == self.replica.id:
            self.to_self = True  # the owner stops dialing that address (specs/protocol.md §9)
            raise RemoteProtocolError(f"connected to itself (replica {m.replica_id})")
        self.peer_id = m.replica_id
        self._peer_nonce = m.nonce
        if self.dialed:
            if m.key_id is not None:
                raise RemoteProtocolError(f"the accepting side named key {m.key_id!r}: only "
                                          "the dialing side names the key")
        else:
            self.key_id = m.key_id
        if self.key_id is None:
            if self.security.keys:
                raise RemoteProtocolError("authentication required: the dialing side named "
                                          "no key")
            return False
        if not self.security.keys:
            raise RemoteProtocolError(f"the peer authenticates with key {self.key_id!r}, but "
                                      "no keys are configured here")
        return True

    def our_auth(self) -> Auth:
        """Our proof of the key named in the handshake."""
        assert self.key_id is not None  # on_hello returned True
        return Auth(mac=self._mac(self.security.keys[self.key_id], sent_by_us=True))

    def on_auth(self, m: Auth) -> str:
        """Verify the peer's AUTH; returns the identity it proved (the key id)."""
        key_id = self.key_id
        secret = None if key_id is None else self.security.keys.get(key_id)
        # The same answer for an unknown key id as for a wrong MAC, so that the key ids a
        # replica holds cannot be listed by asking.
        if key_id is None or secret is None or not hmac.compare_digest(
                m.mac, self._mac(secret, sent_by_us=False)):
            known = "" if secret is not None else " (no such key here)"
            raise RemoteProtocolError(f"authentication failed: the peer does not prove key "
                                      f"{key_id!r}{known} (wrong secret, or a replayed "
                                      "handshake)", told="authentication failed")
        return key_id

    def _mac(self, secret: bytes, *, sent_by_us: bool) -> bytes:
        """The AUTH MAC of this connection: ours (`sent_by_us`) or the one the peer owes."""
        assert self.key_id is not None
        ours = (self.replica.id, self.nonce, self.dialed)
        theirs = (self.peer_id, self._peer_nonce, not self.dialed)
        (sender, sender_nonce, sender_dialed), (receiver, receiver_nonce, _) = (
            (ours, theirs) if sent_by_us else (theirs, ours))
        return handshake_mac(secret, key_id=self.key_id, sender=sender, receiver=receiver,
                             sender_dialed=sender_dialed, sender_nonce=sender_nonce,
                             receiver_nonce=receiver_nonce)

    def authorize(self, identity: str | None) -> tuple[str, ...] | None:
        """The peer is who it says (or nobody asked): the conversation id prefixes it may
        replicate (None: all), or a refusal."""
        scopes = self.security.scopes
        if scopes is None:
            return None
        if identity is None:
            raise RemoteProtocolError("not authorized: the peer has no identity (no key, no "
                                      "certificate) and an authorization list is configured")
        if identity not in scopes:
            raise RemoteProtocolError(f"not authorized: identity {identity!r} is not in the "
                                      "authorization list")
        # Where identities have different rights, a replica id is bound to the identity it
        # first authenticated as, so no peer can move another's resume point. The key id we
        # named ourselves says nothing about which peer answered: only a key id the peer
        # proved to us, or its certificate, binds.
        if not (self.dialed and identity == self.key_id):
            try:
                self.replica.bind_peer(self.peer_id, identity)
            except PeerIdentityError as e:  # the peer is not told whose id it claimed
                raise RemoteProtocolError(
                    f"not authorized: {e}", told="not authorized: replica id "
                    f"{self.peer_id} belongs to another identity") from None
        return scopes[identity]
