"""The conversation routes: list, get, change (PATCH) and message arrivals.

Thin by rule, like the command line: parse and check the request's shape, call the Replica
(which checks every value: ids, texts, sequence numbers, message times), shape the answer.
A conversation outside the caller's scope is answered exactly as an unknown one (404), so
that a token cannot learn which ids exist elsewhere.

PATCH is a table, `patch_operations(schema)`: one row per JSON key, naming the JSON type it
takes and the Replica call it makes. A field the replica gains is one row here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .._cli_common import positive
from ..crdt import DEFAULT_SCHEMA, Flag, Lww, Schema
from ..crdt.conversation import FIRST_APP_TAG
from ..replica import InvalidArgument, Replica
from ._access import Caller
from ._envelope import ApiError, expect, query, read_json_object
from ._page_cache import PageCache

__all__ = [
    "MAX_SCAN_PAGES",
    "Operation",
    "arrive",
    "get_conversation",
    "list_conversations",
    "patch_conversation",
    "patch_operations",
]

#: A scoped caller's page is filled from at most this many pages of the replica's list; a
#: page may so hold fewer items than asked (`has_more` still says whether to go on).
MAX_SCAN_PAGES = 20


@dataclass(frozen=True, slots=True)
class Operation:
    """One PATCH key: the JSON value it takes, and what it does to the replica."""

    kind: type  # bool, str or int: the JSON type of the value
    what: str  # for messages: "a boolean", ...
    apply: Callable[[Replica, str, Any], object]


def _flag(name: str) -> Operation:
    return Operation(bool, "a boolean (true sets, false clears)",
                     lambda r, cid, on: r.enable(cid, name) if on else r.disable(cid, name))


def _register(name: str) -> Operation:
    return Operation(str, "a string", lambda r, cid, text: r.set_register(cid, name, text))


def _true_only(name: str, what: str, call: Callable[[Replica, str], None]) -> Operation:
    """A key that only sets: what clears it is another operation (a read, a new message)."""
    def apply(replica: Replica, cid: str, on: bool) -> None:
        if not on:
            raise InvalidArgument(f"{name} takes only true ({what}): it is cleared by "
                                  "another operation")
        call(replica, cid)
    return Operation(bool, f"true ({what})", apply)


#: The keys every replica has. New Replica operations (archive, draft, mute until, ...) are
#: rows here; fields an app adds to its schema get rows from `patch_operations`.
BUILTIN_OPERATIONS: Mapping[str, Operation] = {
    "title": Operation(str, "a string", lambda r, cid, text: r.set_title(cid, text)),
    "pinned": _flag("pinned"),
    "muted": Operation(bool, "a boolean (true mutes, false unmutes)",
                       lambda r, cid, on: r.mute(cid) if on else r.unmute(cid)),
    "muted_until": Operation(int, "a time in ms since the epoch (muted until then)",
                             lambda r, cid, until: r.mute(cid, until=until)),
    "read_seq": Operation(int, "a message sequence number (marks read up to it)",
                          lambda r, cid, seq: r.mark_read(cid, seq)),
    "archived": Operation(bool, "a boolean (true archives until a new message, false "
                          "unarchives)",
                          lambda r, cid, on: r.archive(cid) if on else r.unarchive(cid)),
    "archived_keep": _true_only("archived_keep", "archives it until unarchived",
                                lambda r, cid: r.archive(cid, keep=True)),
    "marked_unread": _true_only("marked_unread", "a later read clears it",
                                lambda r, cid: r.mark_unread(cid)),
    "deleted": _true_only("deleted", "delete for me, on all my devices",
                          lambda r, cid: r.delete_conversation(cid)),
    "draft": Operation(str, "a string (\"\" clears it)",
                       lambda r, cid, text: r.set_draft(cid, text)),
    "read_by": Operation(dict, "an object of member name -> message sequence number",
                         lambda r, cid, marks: _read_by(r, cid, marks)),
}


#: Keys that write the same field: in one PATCH they would contradict each other or say one
#: thing twice (muted: true with muted_until), so both together are refused (specs/http.md §3).
ONE_FIELD_TWICE: tuple[frozenset[str], ...] = (
    frozenset({"muted", "muted_until"}),
    frozenset({"archived", "archived_keep"}),
)


def _read_by(replica: Replica, cid: str, marks: dict[str, Any]) -> None:
    for member, seq in marks.items():
        if type(seq) is not int:
            raise InvalidArgument(f"read_by[{member!r:.80}] must be a message sequence number")
        replica.mark_read_by(cid, member, seq)


def patch_operations(schema: Schema = DEFAULT_SCHEMA) -> dict[str, Operation]:
    """BUILTIN_OPERATIONS, plus a row for each flag and clocked text field an app added to
    `schema` (Schema.extend; tags 64..127). crdtim's own fields are written only through
    their operations above: a raw flag write would skip what they keep beside it (the
    position an archive was made at, specs/crdt.md §6)."""
    ops = dict(BUILTIN_OPERATIONS)
    for field in schema.fields:
        if field.name in ops or field.tag < FIRST_APP_TAG:
            continue
        if field.lattice is Flag:
            ops[field.name] = _flag(field.name)
        elif field.lattice is Lww and field.clocked:
            ops[field.name] = _register(field.name)
    return ops


def _boolean(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, not {text!r:.40}")
    return text == "true"


def _cursor(text: str) -> str:
    return text  # the replica checks it (InvalidArgument names a bad one)


def _visible(replica: Replica, caller: Caller, cid: str) -> dict[str, Any]:
    """The conversation as `crdtim show --json` prints it, or 404 if unknown or out of scope."""
    conversation = replica.get(cid) if caller.sees(cid) else None
    if conversation is None:
        raise ApiError(404, f"no conversation {cid!r:.200}")
    return conversation.as_dict()


async def list_conversations(replica: Replica, caller: Caller, request: Request) -> Response:
    params = query(request, {"limit": positive, "cursor": _cursor, "archived": _boolean,
                             "unread": _boolean, "pinned": _boolean})
    cache: PageCache = request.app.state.page_cache
    return cache.answer(caller, request.scope.get("query_string", b""),
                        lambda: _list_page(replica, caller, params))


def _list_page(replica: Replica, caller: Caller, params: dict[str, Any]) -> dict[str, Any]:
    limit = params.get("limit", 50)
    cursor = params.get("cursor")
    # The filters of `crdtim ls` (specs/storage.md §4, "Filters").
    filters: dict[str, Any] = {name: params[name] for name in ("archived", "unread", "pinned")
                               if name in params}
    if caller.scope is None:
        page = replica.list(limit, cursor, **filters)
        return {"conversations": [c.as_dict() for c in page.items], "cursor": page.cursor,
                "has_more": page.has_more}
    # Scoped: ask for no more than are still missing, so the replica's cursor (after the
    # last one read) is never past an item that was left off this page.
    items: list[dict[str, Any]] = []
    has_more = True
    for _ in range(MAX_SCAN_PAGES):
        page = replica.list(limit - len(items), cursor, **filters)
        items += [c.as_dict() for c in page.items if caller.sees(c.id)]
        cursor, has_more = page.cursor, page.has_more
        if not has_more or len(items) == limit:
            break
    return {"conversations": items, "cursor": cursor if has_more else None,
            "has_more": has_more}


async def get_conversation(replica: Replica, caller: Caller,
                           request: Request) -> dict[str, Any]:
    query(request, {})
    return _visible(replica, caller, request.path_params["cid"])


async def patch_conversation(replica: Replica, caller: Caller,
                             request: Request) -> dict[str, Any]:
    query(request, {})
    cid = request.path_params["cid"]
    ops: Mapping[str, Operation] = request.app.state.patch_operations
    body = await read_json_object(request)
    unknown = sorted(set(body) - set(ops))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; PATCH takes "
                            f"{', '.join(sorted(ops))}")
    if not body:
        raise ApiError(400, f"nothing to change: give one or more of {', '.join(sorted(ops))}")
    for pair in ONE_FIELD_TWICE:
        if pair <= body.keys():
            first, second = sorted(pair)
            raise ApiError(400, f"{first!r} and {second!r} both set one field: give one")
    # In the table's order, not the body's, so that one JSON object means one change whatever
    # order its keys came in (a read then marked_unread leaves it marked: specs/http.md §3).
    values = {name: expect(body, name, ops[name].kind, what=ops[name].what)
              for name in ops if name in body}
    _visible(replica, caller, cid)  # 404 before anything is written
    with replica.batch():  # one commit; an operation that raises leaves nothing written
        for name, value in values.items():
            ops[name].apply(replica, cid, value)
    return _visible(replica, caller, cid)


#: The body of POST .../arrivals: key -> (required, JSON type, description).
ARRIVAL_FIELDS: Mapping[str, tuple[bool, type, str]] = {
    "seq": (True, int, "a message sequence number"),
    "preview": (False, str, "a string"),
    "at": (False, int, "a time in ms since the epoch"),
}


async def arrive(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """message_arrived: creates the conversation if it is new (this is how one starts)."""
    query(request, {})
    cid = request.path_params["cid"]
    body = await read_json_object(request)
    unknown = sorted(set(body) - set(ARRIVAL_FIELDS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; arrivals take "
                            f"{', '.join(ARRIVAL_FIELDS)}")
    args: dict[str, Any] = {}
    for name, (required, kind, what) in ARRIVAL_FIELDS.items():
        if name not in body or (body[name] is None and not required):
            if required:
                raise ApiError(400, f"{name!r} is missing: it is {what}")
            continue
        args[name] = expect(body, name, kind, what=what)
    if not caller.sees(cid):
        raise ApiError(404, f"no conversation {cid!r:.200}")
    replica.message_arrived(cid, args["seq"], args.get("preview", ""), args.get("at"))
    return _visible(replica, caller, cid)
