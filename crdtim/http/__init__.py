"""crdtim over HTTP: a JSON API, a change feed (CouchDB-style, Server-Sent Events) and a
web page, for clients that do not speak the sync protocol (specs/http.md).

`create_app(replica)` is an ASGI app (Starlette) that an embedding application can mount or
serve; `serve_http(app, host, port)` runs it with Hypercorn's trio worker inside a trio
nursery, beside a Node (`crdtim serve --http`). Needs the `http` extra (starlette,
hypercorn); `import crdtim` never imports this package. The routes call the Replica as the
command line does and never touch the store.
"""

from __future__ import annotations

from ._access import Access, Caller
from ._app import STATIC_DIR, create_app
from ._changes import MAX_FEED_LIMIT, MAX_STREAMS, read_changes
from ._conversations import BUILTIN_OPERATIONS, Operation, patch_operations
from ._envelope import MAX_BODY_BYTES, MAX_QUERY_BYTES, ApiError
from ._serve import serve_http

__all__ = [
    "BUILTIN_OPERATIONS",
    "MAX_BODY_BYTES",
    "MAX_FEED_LIMIT",
    "MAX_QUERY_BYTES",
    "MAX_STREAMS",
    "STATIC_DIR",
    "Access",
    "ApiError",
    "Caller",
    "Operation",
    "create_app",
    "patch_operations",
    "read_changes",
    "serve_http",
]
