"""Loading what a server authenticates and authorizes with: the secrets file, the
authorization file and the TLS certificates (specs/security.md).

This is the configuration edge: it reads files and builds `protocol.SecurityConfig` and
`TlsConfig`; the handshake itself is in the protocol package (pre-shared keys) and net.py
(TLS). It must never reach into a session: it imports only the settings of
`protocol._auth`. Every problem with a file is a `ConfigError` naming the file and what is
wrong with it, never a traceback.
"""

from __future__ import annotations

import os
import ssl
import stat
import tomllib
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError
from .protocol._auth import MIN_SECRET_BYTES, SecurityConfig, valid_key_id

__all__ = ["DEFAULT_KEY_ID", "TlsConfig", "certificate_identity", "load_keys", "load_scopes",
           "load_security", "load_tls"]

#: The key id of a secrets file that holds a single secret and no key id.
DEFAULT_KEY_ID = "default"
#: A secrets file larger than this is refused rather than read in part (about 10,000 keys).
MAX_SECRETS_FILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS: `server` for connections we accept, `client` for those we dial. Both
    require the peer's certificate to chain to the CA (CERT_REQUIRED)."""

    server: ssl.SSLContext
    client: ssl.SSLContext


def load_tls(cert: str, key: str, ca: str) -> TlsConfig:
    """Contexts presenting `cert` (with its private `key`) and trusting only `ca`.

    Host names are not checked: peers are identified by their certificate's subject, which
    the authorization file maps to what they may replicate, and the CA is the trust root --
    issue certificates from it only to peers that belong.
    """
    contexts = []
    for purpose in (ssl.Purpose.CLIENT_AUTH, ssl.Purpose.SERVER_AUTH):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"--tls-ca {ca}: cannot load the CA certificate "
                              f"({_why(e)})") from None
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"--tls-cert {cert} / --tls-key {key}: cannot load the "
                              f"certificate and its key ({_why(e)})") from None
        contexts.append(ctx)
    return TlsConfig(server=contexts[0], client=contexts[1])


def certificate_identity(cert: dict[str, Any] | None) -> str | None:
    """The identity of a verified peer certificate (`SSLObject.getpeercert()`): its subject's
    common name, else its whole subject as `k=v,k=v`."""
    if not cert:
        return None
    pairs = [pair for rdn in cert.get("subject", ()) for pair in rdn]
    for name, value in pairs:
        if name == "commonName" and isinstance(value, str) and value:
            return value
    return ",".join(f"{k}={v}" for k, v in pairs if v) or None


def load_keys(path: str) -> dict[str, bytes]:
    """Read a secrets file: one `KEY_ID SECRET` per line (blank lines and `#` comments
    ignored), or a single line holding only a secret (key id "default"). Refused: a file
    others can read, an empty one, a malformed line, a repeated key id, a secret shorter
    than MIN_SECRET_BYTES."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(MAX_SECRETS_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"secrets file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_SECRETS_FILE_BYTES:
        raise ConfigError(f"secrets file {path} is over {MAX_SECRETS_FILE_BYTES} bytes: is it "
                          "the right file?")
    if os.name == "posix" and mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"secrets file {path} can be read or written by other users: "
                          f"run `chmod 600 {path}` (or 640 to share it with a service group)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"secrets file {path} is not UTF-8 text") from None
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if not lines:
        raise ConfigError(f"secrets file {path} holds no key")
    if len(lines) == 1 and len(lines[0][1].split()) == 1:
        lines = [(lines[0][0], f"{DEFAULT_KEY_ID} {lines[0][1]}")]
    keys: dict[str, bytes] = {}
    for n, line in lines:
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"secrets file {path}, line {n}: expected `KEY_ID SECRET`")
        kid, secret = parts[0], parts[1].encode()
        if not valid_key_id(kid):
            raise ConfigError(f"secrets file {path}, line {n}: key id {kid!r:.80} is too long "
                              "or not printable")
        if kid in keys:
            raise ConfigError(f"secrets file {path}, line {n}: key id {kid!r} appears twice")
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(f"secrets file {path}, line {n}: the secret of {kid!r} is "
                              f"shorter than {MIN_SECRET_BYTES} bytes in UTF-8 (make one with "
                              "`openssl rand -hex 32`)")
        keys[kid] = secret
    return keys


def load_scopes(path: str) -> dict[str, tuple[str, ...]]:
    """Read an authorization file (TOML): a `[scopes]` table mapping each identity to the
    list of conversation id prefixes it may replicate, e.g. `alice-phone = ["u123/"]`."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"authorization file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"authorization file {path} is not valid TOML: {e}") from None
    extra = set(doc) - {"scopes"}
    if extra:
        raise ConfigError(f"authorization file {path}: unknown table or key "
                          f"{sorted(extra)[0]!r} (only [scopes] is read)")
    table = doc.get("scopes")
    if not isinstance(table, dict):
        raise ConfigError(f"authorization file {path} has no [scopes] table")
    scopes: dict[str, tuple[str, ...]] = {}
    for identity, prefixes in table.items():
        if not identity or not identity.isprintable():
            raise ConfigError(f"authorization file {path}: identity {identity!r:.80} is empty "
                              "or holds control characters")
        if not isinstance(prefixes, list) or not all(isinstance(p, str) for p in prefixes):
            raise ConfigError(f"authorization file {path}: the scope of {identity!r} must be "
                              'a list of conversation id prefixes, e.g. ["u123/"]')
        scopes[identity] = tuple(prefixes)
    return scopes


def load_security(secret_file: str | None, authz_file: str | None,
                  key_id: str | None = None) -> SecurityConfig | None:
    """The SecurityConfig for `crdtim serve` (None when neither file is given)."""
    if secret_file is None and authz_file is None:
        return None
    keys = load_keys(secret_file) if secret_file is not None else {}
    if key_id is not None and key_id not in keys:
        raise ConfigError(f"--key-id {key_id!r} is not in the secrets file")
    scopes = load_scopes(authz_file) if authz_file is not None else None
    try:
        return SecurityConfig(keys=keys, key_id=key_id, scopes=scopes)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or getattr(e, "reason", None) or str(e)
