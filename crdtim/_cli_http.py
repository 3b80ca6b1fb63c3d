"""`crdtim serve --http`: the HTTP options of `serve`, checked before the replica is opened,
and the task that serves the API beside the Node.

The same rule as `--listen` (specs/security.md): without `--http-tokens` the API is served
on loopback only, since anyone who reaches it may read and change every conversation; with
tokens (the secrets file's format and rules), each token id is an identity that `--authz`
maps to conversation id prefixes, as it does a peer's key id. Imports crdtim.http (and so
starlette and hypercorn) only when `--http` is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from dataclasses import dataclass

import trio

from ._cli_common import EXIT_USAGE, CommandFailed
from .errors import ConfigError
from .replica import Replica
from .security import load_keys, load_scopes

__all__ = ["HttpSettings", "http_settings", "serve_http_beside"]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    address: tuple[str, int]
    tokens: dict[str, bytes] | None
    scopes: dict[str, tuple[str, ...]] | None


def http_settings(args: argparse.Namespace, is_loopback: bool) -> HttpSettings | None:
    """The checked `--http` settings (None without --http); CommandFailed (exit 2) for what
    would leave the API open or cannot run."""
    if args.http is None:
        if args.http_tokens is not None:
            raise CommandFailed("--http-tokens is for --http: give that too", EXIT_USAGE)
        return None
    host, port = args.http
    if args.http_tokens is None and not is_loopback:
        raise CommandFailed(
            f"refusing to serve HTTP on {host}:{port} without --http-tokens: anyone who can "
            "reach it could read and change this replica's conversations (and a web page "
            "could make their browser do it). Serve it on loopback, or give --http-tokens "
            "FILE (`TOKEN_ID TOKEN` per line, chmod 600)", EXIT_USAGE)
    if any(importlib.util.find_spec(m) is None for m in ("starlette", "hypercorn")):
        raise CommandFailed("--http needs starlette and hypercorn: pip install 'crdtim[http]'",
                            EXIT_USAGE)
    try:
        tokens = load_keys(args.http_tokens) if args.http_tokens is not None else None
        scopes = (load_scopes(args.authz)
                  if args.authz is not None and tokens is not None else None)
    except ConfigError as e:
        raise CommandFailed(f"--http-tokens: {e}", EXIT_USAGE) from None
    return HttpSettings((host, port), tokens, scopes)


async def serve_http_beside(nursery: trio.Nursery, replica: Replica,
                            settings: HttpSettings) -> None:
    """Start the API in `nursery` (returns once it listens) and log where."""
    from .http import create_app, serve_http  # starlette, hypercorn: only when asked for

    app = create_app(replica, tokens=settings.tokens, scopes=settings.scopes)
    host, _ = settings.address
    port = await nursery.start(serve_http, app, host, settings.address[1])
    shown = f"[{host}]" if ":" in host else host
    logging.getLogger("crdtim.serve").info(
        "HTTP API and page on http://%s:%d/%s", shown, port,
        " (bearer tokens required)" if settings.tokens is not None else "")
