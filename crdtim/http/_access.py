"""Who is calling: bearer tokens, the scopes they map to, and the Host rule without tokens.

Without tokens the API serves loopback only (crdtim serve refuses any other address), and
then accepts only requests addressed to a loopback name, so that a web page elsewhere cannot
reach it by pointing a DNS name of its own at 127.0.0.1 (DNS rebinding). With tokens, each
request carries `Authorization: Bearer TOKEN`; the token's id is the caller's identity and
maps, like a peer's key id, to conversation id prefixes (specs/security.md, `--authz`).
Tokens are compared by digest, in constant time. Nothing here reads the replica.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from ._envelope import ApiError

__all__ = ["LOOPBACK_HOSTS", "Access", "Caller"]

#: Host header names (without port) accepted when the API runs without tokens.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The caller of one request: its token id (None without tokens) and the conversation
    id prefixes it may see (None: all)."""

    identity: str | None
    scope: tuple[str, ...] | None

    def sees(self, cid: str) -> bool:
        return self.scope is None or cid.startswith(self.scope)


class Access:
    """Authenticates requests; one per app."""

    def __init__(self, tokens: Mapping[str, str | bytes] | None,
                 scopes: Mapping[str, tuple[str, ...]] | None):
        if scopes is not None and tokens is None:
            raise ValueError("scopes map token ids to what they may see: give tokens too")
        # sha256(token) -> token id: found without comparing the secret byte by byte.
        self._by_digest: dict[bytes, str] | None = None
        if tokens is not None:
            self._by_digest = {}
            for tid, token in tokens.items():
                raw = token.encode() if isinstance(token, str) else bytes(token)
                self._by_digest[hashlib.sha256(raw).digest()] = tid
        self._scopes = dict(scopes) if scopes is not None else None

    @property
    def authenticated(self) -> bool:
        return self._by_digest is not None

    def caller(self, request: Request) -> Caller:
        if self._by_digest is None:
            host = request.headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.lower() not in LOOPBACK_HOSTS:
                raise ApiError(403, f"this server has no tokens and answers only requests "
                                    f"addressed to localhost or 127.0.0.1, not {host!r:.80}")
            return Caller(None, None)
        challenge = {"WWW-Authenticate": 'Bearer realm="crdtim"'}
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, "missing token: send `Authorization: Bearer TOKEN`", challenge)
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "the Authorization header must be `Bearer TOKEN`", challenge)
        digest = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        tid = None
        for known, candidate in self._by_digest.items():  # every one: constant time
            if hmac.compare_digest(known, digest):
                tid = candidate
        if tid is None:
            raise ApiError(401, "unknown token", challenge)
        if self._scopes is None:
            return Caller(tid, None)
        scope = self._scopes.get(tid)
        if scope is None:
            raise ApiError(403, f"token {tid!r} has no scope in the authorization file")
        return Caller(tid, scope)
