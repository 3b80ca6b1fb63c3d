"""The JSON envelope of every API answer, the errors that become its failures, and the
reading of what a client sends (query strings and JSON bodies) with their limits.

`{"data": {...}, "status_code": 0}` on success; `{"data": null, "status_code": S, "error":
"..."}` with HTTP status S otherwise (specs/http.md §2). Errors are mapped in one table,
`ERROR_STATUS`, from the exceptions the Replica raises (the same ones the command line turns
into exit statuses); nothing here calls the replica.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ConfigError, CrdtimError, ReplicaClosedError
from ..replica import InvalidArgument

__all__ = [
    "ERROR_STATUS",
    "MAX_BODY_BYTES",
    "MAX_QUERY_BYTES",
    "ApiError",
    "envelope",
    "expect",
    "failure",
    "query",
    "read_json_object",
    "status_of",
]

#: A request body larger than this is refused (413) before it is parsed: an API body is a
#: few fields, and a limit keeps one request from holding the server's memory.
MAX_BODY_BYTES = 64 * 1024
#: A query string longer than this is refused (414).
MAX_QUERY_BYTES = 4096


class ApiError(Exception):
    """A request the API refuses: `status` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


#: Exceptions the replica raises, by the HTTP status they are answered with; the first
#: matching row wins. InvalidArgument is the command line's exit 2 (bad input); the rest are
#: the server's trouble, never the client's.
ERROR_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (InvalidArgument, 400),
    (ConfigError, 400),
    (ReplicaClosedError, 503),
    (CrdtimError, 500),
)


def status_of(error: BaseException) -> int | None:
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return status
    return None


def envelope(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": data, "status_code": 0}, status_code=status)


def failure(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"data": None, "status_code": status, "error": message},
                        status_code=status, headers=dict(headers or {}))


# -- what the client sends ---------------------------------------------------------------------


def query(request: Request, known: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The query parameters, each parsed by its row of `known` (which raises ValueError or
    argparse.ArgumentTypeError naming what it wanted); any other parameter, or one given
    twice, is a 400 naming it."""
    if len(request.scope.get("query_string", b"")) > MAX_QUERY_BYTES:
        raise ApiError(414, f"the query string is over {MAX_QUERY_BYTES} bytes")
    params = request.query_params
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s) {', '.join(map(repr, unknown))}; "
                            f"this route takes {', '.join(sorted(known)) or 'none'}")
    out: dict[str, Any] = {}
    for name, parse in known.items():
        values = params.getlist(name)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {name!r} is given {len(values)} times")
        if values:
            try:
                out[name] = parse(values[0])
            except (ValueError, argparse.ArgumentTypeError) as e:
                raise ApiError(400, f"query parameter {name!r}: {e}") from None
    return out


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object: 415 unless it is declared JSON (which also keeps a
    web page elsewhere from posting here with a form), 413 over MAX_BODY_BYTES (read no
    further), 400 for anything that is not one JSON object."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, "the body must be JSON, sent with Content-Type: application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"the body is not valid JSON: {e}"[:200]) from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_json_type(value)}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def expect(body: Mapping[str, Any], name: str, kind: type, *, what: str) -> Any:
    """body[name] if it is of JSON type `kind` (bool is not a number here), else a 400."""
    value = body[name]
    if type(value) is not kind:
        raise ApiError(400, f"{name!r} must be {what}, not {_json_type(value)}")
    return value
