"""The message routes: a conversation's visible history, post, and per message regenerate
(a new version), append, edit, switch, delete and its versions (specs/http.md §1a).

Thin by rule, like the conversation routes: check the request's shape (JSON types, known
fields), call the Replica (which checks every value: ids, texts, roles, times, and refuses
with InvalidArgument), shape the answer with `Message.to_json`. The conversation id is
`conversation_id`: in the query string of GET and DELETE, in the body of POST and PATCH.
A conversation outside the caller's scope, an unknown conversation and an unknown message
are all answered 404, so that a token cannot learn which ids exist elsewhere. A post or
regenerate whose client-given id is already a different message is a 409 (a retry of the
same one is answered with the message, 200).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request

from .._cli_common import positive
from ..replica import InvalidArgument, Message, Replica
from ._access import Caller
from ._envelope import ApiError, expect, query, read_json_object

__all__ = [
    "APPEND_FIELDS",
    "EDIT_FIELDS",
    "POST_FIELDS",
    "REGENERATE_FIELDS",
    "SWITCH_FIELDS",
    "append_message",
    "delete_message",
    "edit_message",
    "get_message",
    "list_messages",
    "message_versions",
    "post_message",
    "regenerate_message",
    "switch_message",
]

#: A body's fields: name -> (required, JSON type, description). Shared with the OpenAPI
#: description, so the two cannot disagree.
Fields = Mapping[str, tuple[bool, type, str]]

_CID: tuple[bool, type, str] = (True, str, "the conversation id")
POST_FIELDS: Fields = {
    "conversation_id": _CID,
    "text": (True, str, "the message text"),
    "role": (False, str, "who speaks: user (default), assistant, system, ..."),
    "reply_to": (False, str, "the message this one follows (a branch if it has a "
                             "continuation); default: the newest visible message"),
    "id": (False, str, "a client-chosen message id: a retry with it is the same message"),
    "seq": (False, int, "the server's message sequence number (raises last_seq)"),
    "at": (False, int, "the message time, ms since the epoch (default now)"),
    "author": (False, str, "who wrote it, when not this user (then it counts as unread)"),
}
REGENERATE_FIELDS: Fields = {
    "conversation_id": _CID,
    "text": (False, str, "the new version's text (default empty: append to it)"),
    "role": (False, str, "default: the role of the message it is a version of"),
    "id": (False, str, "a client-chosen id for the new version (a retry with it is the "
                       "same version)"),
}
APPEND_FIELDS: Fields = {"conversation_id": _CID,
                         "text": (True, str, "text to add at the end (a streamed reply)")}
EDIT_FIELDS: Fields = {"conversation_id": _CID, "text": (True, str, "the new text")}
SWITCH_FIELDS: Fields = {"conversation_id": _CID}


def _body_fields(body: Mapping[str, Any], fields: Fields, what: str) -> dict[str, Any]:
    """The body's values by `fields`: unknown or missing ones and wrong JSON types are 400;
    null for an optional field is the same as leaving it out."""
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(map(repr, unknown))}; {what} takes "
                            f"{', '.join(fields)}")
    out: dict[str, Any] = {}
    for name, (required, kind, description) in fields.items():
        if name not in body or (body[name] is None and not required):
            if required:
                raise ApiError(400, f"{name!r} is missing: it is {description}")
            continue
        out[name] = expect(body, name, kind, what=_JSON_NAMES[kind])
    return out


_JSON_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


async def _read_body(request: Request, fields: Fields, what: str) -> dict[str, Any]:
    query(request, {})
    return _body_fields(await read_json_object(request), fields, what)


def _conversation(replica: Replica, caller: Caller, cid: str) -> str:
    """`cid` if the caller may see it and it exists; else 404 (the same answer for both)."""
    if not caller.sees(cid) or replica.get(cid) is None:
        raise ApiError(404, f"no conversation {cid!r:.200}")
    return cid


def _known(replica: Replica, caller: Caller, cid: str, mid: str) -> Message:
    """The message `mid` of `cid`, or 404 (unknown or out of scope conversation, unknown
    message). A malformed id is the replica's 400."""
    found = replica.message(cid, mid) if caller.sees(cid) else None
    if found is None:
        raise ApiError(404, f"no message {mid!r:.200} in conversation {cid!r:.200}")
    return found


def _refused_as_conflict(error: InvalidArgument, mid: str | None) -> ApiError | InvalidArgument:
    """A post or regenerate refused because its client-given id is already another message:
    409. The replica's wording (crdt/history_ops.py) is the one place that says so."""
    if mid is not None and str(error).startswith(f"message {mid!r} exists"):
        return ApiError(409, str(error))
    return error


def _cid_query(request: Request, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    params = query(request, {"conversation_id": str, **(extra or {})})
    if "conversation_id" not in params:
        raise ApiError(400, "query parameter 'conversation_id' is missing")
    return params


# -- routes ------------------------------------------------------------------------------------


async def list_messages(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """The visible history (the active path), newest first, a page at a time."""
    params = _cid_query(request, {"limit": positive, "cursor": str})
    cid = _conversation(replica, caller, params["conversation_id"])
    page = replica.history(cid, params.get("limit", 50), params.get("cursor"))
    return {"messages": [m.to_json() for m in page.items], "cursor": page.cursor,
            "has_more": page.has_more}


async def post_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """Post (creates the conversation if new); a retry with the same id is the same message."""
    args = await _read_body(request, POST_FIELDS, "a post")
    cid = args.pop("conversation_id")
    text = args.pop("text")
    if not caller.sees(cid):
        raise ApiError(404, f"no conversation {cid!r:.200}")
    try:
        message = replica.post(cid, text, **args)
    except InvalidArgument as e:
        raise _refused_as_conflict(e, args.get("id")) from None
    return message.to_json()


async def get_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    cid = _cid_query(request)["conversation_id"]
    return _known(replica, caller, cid, request.path_params["mid"]).to_json()


async def regenerate_message(replica: Replica, caller: Caller,
                             request: Request) -> dict[str, Any]:
    """A new version of the message, made active; answers the new version."""
    args = await _read_body(request, REGENERATE_FIELDS, "a new version")
    cid = args.pop("conversation_id")
    mid = _known(replica, caller, cid, request.path_params["mid"]).id
    try:
        message = replica.regenerate(cid, mid, args.pop("text", ""), **args)
    except InvalidArgument as e:
        raise _refused_as_conflict(e, args.get("id")) from None
    return message.to_json()


async def _change_known_message(replica: Replica, caller: Caller, request: Request,
                                 fields: Any, what: str,
                                 change: Callable[[str, str, dict[str, Any]], None]
                                 ) -> dict[str, Any]:
    """Read the body, check the message is known to the caller, change it, answer with it."""
    args = await _read_body(request, fields, what)
    cid, mid = args["conversation_id"], request.path_params["mid"]
    _known(replica, caller, cid, mid)
    change(cid, mid, args)
    return _known(replica, caller, cid, mid).to_json()


async def append_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """Text added at the end of the message (not idempotent: a retry appends again)."""
    return await _change_known_message(replica, caller, request, APPEND_FIELDS, "an append",
                                       lambda cid, mid, a: replica.append(cid, mid, a["text"]))


async def edit_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    return await _change_known_message(replica, caller, request, EDIT_FIELDS, "PATCH",
                                       lambda cid, mid, a: replica.edit(cid, mid, a["text"]))


async def switch_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """Make this version (and the branch it is on) the visible one."""
    return await _change_known_message(replica, caller, request, SWITCH_FIELDS, "switch",
                                       lambda cid, mid, a: replica.switch(cid, mid))


async def delete_message(replica: Replica, caller: Caller, request: Request) -> dict[str, Any]:
    """Delete for everyone: the text goes, the place stays (deleted). Idempotent."""
    cid, mid = _cid_query(request)["conversation_id"], request.path_params["mid"]
    _known(replica, caller, cid, mid)
    replica.delete_message(cid, mid)
    return _known(replica, caller, cid, mid).to_json()


async def message_versions(replica: Replica, caller: Caller,
                           request: Request) -> dict[str, Any]:
    """The message's versions (its group), oldest first."""
    cid, mid = _cid_query(request)["conversation_id"], request.path_params["mid"]
    _known(replica, caller, cid, mid)
    return {"versions": [m.to_json() for m in replica.versions(cid, mid)]}
