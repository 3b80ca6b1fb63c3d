"""Authentication and authorization of a session: the pre-shared keys and scopes
(SecurityConfig), key id validation, the handshake MAC and scope filters (specs/security.md).

Pure: no I/O, no clock, no session state; a MAC is computed from what the caller passes in.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeGuard

from ..crdt import ConversationMap

__all__ = ["MAC_BYTES", "MAX_KEY_ID", "MIN_SECRET_BYTES", "SecurityConfig", "covers",
           "handshake_mac", "outside_scope", "valid_key_id", "within_scope"]

MAX_KEY_ID = 64  # code points in a key id
MIN_SECRET_BYTES = 16  # a shorter pre-shared key could be guessed offline from one handshake
_AUTH_LABEL = b"crdtim AUTH v2\x00"  # domain separation: this MAC means nothing elsewhere
MAC_BYTES = hashlib.sha256().digest_size  # what an AUTH carries


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityConfig:
    """Who may connect and what each may replicate (specs/security.md).

    `keys` maps key id -> pre-shared secret: when it is not empty, every peer must prove one
    of them in the handshake. The dialing side names the key: `key_id`, or the only key if
    there is one. `scopes` maps a peer identity (the key id it proved, else the subject of its
    TLS certificate) to the conversation id prefixes it may replicate ("" is everything); a
    peer whose identity is not listed is refused. None: every authenticated peer may
    replicate everything.
    """

    keys: Mapping[str, bytes] = field(default_factory=dict)
    key_id: str | None = None
    scopes: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        for kid, secret in self.keys.items():
            if not valid_key_id(kid):
                raise ValueError(f"key id {kid!r:.80} is not 1..{MAX_KEY_ID} printable "
                                 "characters without spaces")
            if type(secret) is not bytes or len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"the secret of key {kid!r} is shorter than "
                                 f"{MIN_SECRET_BYTES} bytes")
        if self.key_id is not None and self.key_id not in self.keys:
            raise ValueError(f"key id {self.key_id!r} is not among the keys")
        if self.scopes is not None:
            for identity, prefixes in self.scopes.items():
                if (type(identity) is not str or type(prefixes) is not tuple
                        or not all(type(p) is str for p in prefixes)):
                    raise ValueError(f"scope of {identity!r:.80}: expected a tuple of prefixes")

    @property
    def dial_key_id(self) -> str | None:
        """The key named when we dial: `key_id`, else the only key, else None."""
        if self.key_id is not None:
            return self.key_id
        return next(iter(self.keys)) if len(self.keys) == 1 else None


def covers(old: tuple[str, ...] | None, new: tuple[str, ...] | None) -> bool:
    """True if every conversation id in scope `new` was in scope `old` (None: everything)."""
    if old is None:
        return True
    if new is None:
        return False
    return all(p.startswith(old) for p in new)


def outside_scope(delta: ConversationMap, scope: tuple[str, ...] | None) -> str | None:
    """A conversation id of `delta` outside `scope` (id prefixes; None: all), or None."""
    if scope is None:
        return None
    for cid in delta:
        if not cid.startswith(scope):
            return cid
    return None


def within_scope(delta: ConversationMap, scope: tuple[str, ...] | None) -> ConversationMap:
    """`delta` less the conversations outside `scope`."""
    if scope is None or outside_scope(delta, scope) is None:
        return delta
    return ConversationMap({cid: delta.fields(cid) for cid in delta if cid.startswith(scope)},
                           delta.schema)


def valid_key_id(kid: object) -> TypeGuard[str]:
    """1..MAX_KEY_ID printable characters without spaces: a key id is logged and named in a
    HELLO."""
    return (type(kid) is str and 1 <= len(kid) <= MAX_KEY_ID and kid.isprintable()
            and not any(c.isspace() for c in kid))



def handshake_mac(secret: bytes, *, key_id: str, sender: str, receiver: str,
                  sender_dialed: bool, sender_nonce: bytes, receiver_nonce: bytes) -> bytes:
    """HMAC-SHA256(secret, label, key id, sender id, receiver id, sender role, sender
    nonce, receiver nonce), as specs/security.md §3 spells it out: bound to the connection's
    two fresh nonces (a recorded AUTH never verifies again), to its direction and to the
    sender's role (an AUTH cannot be reflected back, nor relayed from a connection on which
    the sender accepted to one on which it must have dialed)."""
    text = b"".join(_length_prefixed(x.encode()) for x in (key_id, sender, receiver))
    message = (_AUTH_LABEL + text + (b"D" if sender_dialed else b"A")
               + sender_nonce + receiver_nonce)
    return hmac.new(secret, message, hashlib.sha256).digest()


def _length_prefixed(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b
