"""The ASGI app: routes, their wrapping (caller, errors, envelope), the page and its files.

`create_app(replica)` returns a Starlette app that an embedding application can mount or
serve (`serve_http`). Every API route is a handler `(replica, caller, request) -> data`
wrapped by `_endpoint`, which authenticates the caller and maps errors to the envelope in
one place, so that a handler holds only its own parsing and its Replica call. Nothing here
touches the store: the Replica is the only way in.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..replica import Replica
from ._access import Access, Caller
from ._changes import LogWaiter, changes
from ._conversations import (
    arrive,
    get_conversation,
    list_conversations,
    patch_conversation,
    patch_operations,
)
from ._envelope import ApiError, envelope, failure, query, status_of
from ._messages import (
    append_message,
    delete_message,
    edit_message,
    get_message,
    list_messages,
    message_versions,
    post_message,
    regenerate_message,
    switch_message,
)
from ._openapi import openapi_document
from ._page_cache import PageCache

__all__ = ["STATIC_DIR", "create_app"]

log = logging.getLogger("crdtim.http")

#: The web page's files (package data: plain HTML, JS and CSS, no build step).
STATIC_DIR = Path(__file__).parent / "static"

Handler = Callable[[Replica, Caller, Request], Awaitable[dict[str, Any] | Response]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        state = request.app.state
        try:
            caller = state.access.caller(request)
            result = await handler(state.replica, caller, request)
        except ApiError as e:
            return failure(e.status, str(e), e.headers)
        except Exception as e:
            status = status_of(e)
            if status is None:
                raise
            if status < 500:
                return failure(status, str(e))
            log.exception("%s %s failed", request.method, request.url.path)
            return failure(status, f"the server could not do it ({type(e).__name__}); "
                                   "its log says why")
        return result if isinstance(result, Response) else envelope(result)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


async def _healthz(request: Request) -> Response:
    query(request, {})
    state = request.app.state
    return envelope({"status": "ok", "head": state.replica.head})


async def _openapi(request: Request) -> Response:
    return JSONResponse(openapi_document(request.app.state.patch_operations))


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return failure(404, f"no route {request.url.path!r:.200}")
    if exc.status_code == 405:
        return failure(405, f"{request.method} is not allowed on {request.url.path!r:.200}",
                       exc.headers)
    return failure(exc.status_code, str(exc.detail), exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    # Reached only by a bug: the client gets the envelope, the log gets the traceback.
    return failure(500, "internal error: the server's log says what went wrong")


def routes() -> list[BaseRoute]:
    """The app's routes. Paths with a conversation or message id take any id, slashes
    included; the routes with a suffix come first, since the plain one would take
    ".../arrivals" or ".../versions" as an id."""
    conversation = "/api/im/conversations/{cid:path}"
    message = "/api/im/messages/{mid:path}"
    return [
        Route("/", _page, methods=["GET"]),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/api/im/conversations", _endpoint(list_conversations), methods=["GET"]),
        Route(conversation + "/arrivals", _endpoint(arrive), methods=["POST"]),
        Route(conversation, _endpoint(get_conversation), methods=["GET"]),
        Route(conversation, _endpoint(patch_conversation), methods=["PATCH"]),
        Route("/api/im/messages", _endpoint(list_messages), methods=["GET"]),
        Route("/api/im/messages", _endpoint(post_message), methods=["POST"]),
        Route(message + "/versions", _endpoint(message_versions), methods=["GET"]),
        Route(message + "/versions", _endpoint(regenerate_message), methods=["POST"]),
        Route(message + "/appends", _endpoint(append_message), methods=["POST"]),
        Route(message + "/switch", _endpoint(switch_message), methods=["POST"]),
        Route(message, _endpoint(get_message), methods=["GET"]),
        Route(message, _endpoint(edit_message), methods=["PATCH"]),
        Route(message, _endpoint(delete_message), methods=["DELETE"]),
        Route("/api/im/changes", _endpoint(changes), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def create_app(replica: Replica, *, tokens: Mapping[str, str | bytes] | None = None,
               scopes: Mapping[str, tuple[str, ...]] | None = None,
               poll_interval: float = 0.1) -> Starlette:
    """The HTTP API, change feed and web page of `replica` (specs/http.md).

    `tokens`: token id -> bearer token; None serves without authentication, and then only
    requests addressed to a loopback name (serve it on loopback only). `scopes`: token id
    -> conversation id prefixes it may see (as `--authz`); None: every token sees all.
    `poll_interval`: seconds between looks at the log for other processes' writes.
    """
    waiter = LogWaiter(replica, poll_interval)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            waiter.close()

    app = Starlette(routes=routes(), lifespan=lifespan, exception_handlers={
        HTTPException: _http_error, Exception: _server_error})
    app.state.replica = replica
    app.state.access = Access(tokens, scopes)
    app.state.patch_operations = patch_operations(replica.schema)
    app.state.log_waiter = waiter
    app.state.page_cache = PageCache(replica)
    waiter.start()  # here, not in the lifespan: an app mounted elsewhere may not get one
    return app
