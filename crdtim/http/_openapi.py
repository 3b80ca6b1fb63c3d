"""The OpenAPI 3.1 description of the routes (GET /openapi.json), written by hand and kept
true by a test that every route of the app is in it. The PATCH body's properties come from
the same operation table the route dispatches on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import __version__
from ._conversations import ARRIVAL_FIELDS, Operation
from ._envelope import MAX_BODY_BYTES
from ._messages import (
    APPEND_FIELDS,
    EDIT_FIELDS,
    POST_FIELDS,
    REGENERATE_FIELDS,
    SWITCH_FIELDS,
    Fields,
)

__all__ = ["openapi_document"]

_JSON_TYPES = {bool: "boolean", int: "integer", str: "string", dict: "object"}

_CONVERSATION = {
    "type": "object",
    "description": "The fields of `crdtim show --json`",
    "properties": {
        "id": {"type": "string"}, "title": {"type": "string"},
        "pinned": {"type": "boolean"}, "muted": {"type": "boolean"},
        "unread": {"type": "integer"}, "last_seq": {"type": "integer"},
        "read_seq": {"type": "integer"}, "last_preview": {"type": "string"},
        "last_at": {"type": "integer"},
        "extra": {"type": "object", "description": "fields an app added to its schema"},
    },
}


_MESSAGE = {
    "type": "object",
    "description": "One message (Message.to_json): `version` is its index among its "
                   "versions (oldest first), `versions` their number; `edited` the time of "
                   "the last edit (ms) or null; a deleted message has lost its text",
    "properties": {
        "id": {"type": "string"}, "cid": {"type": "string"},
        "parent": {"type": ["string", "null"]}, "role": {"type": "string"},
        "author": {"type": ["string", "null"]}, "text": {"type": "string"},
        "at": {"type": "integer"}, "seq": {"type": ["integer", "null"]},
        "edited": {"type": ["integer", "null"]}, "deleted": {"type": "boolean"},
        "version": {"type": "integer"}, "versions": {"type": "integer"},
    },
}


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["data", "status_code"], "properties": {
        "data": data, "status_code": {"const": 0}}}


def _answer(description: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _envelope(data)}}}


_ERROR = {"description": "refused: `status_code` is the HTTP status, `error` says why",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_ERRORS = {str(s): _ERROR for s in (400, 401, 403, 404, 413, 415)}
_CONFLICT = {"409": {**_ERROR, "description": "the client-given id is already another "
                                              "message (a retry of the same one is a 200)"}}
_MID = {"name": "mid", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "message id (may hold slashes)"}
_CID_QUERY = {"name": "conversation_id", "in": "query", "required": True,
              "schema": {"type": "string"}, "description": "the conversation id"}
_CID = {"name": "cid", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "conversation id (may hold slashes)"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": schema}


def _body(fields: Fields, note: str) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False,
              "required": [name for name, (required, _, _) in fields.items() if required],
              "properties": {name: {"type": _JSON_TYPES[kind], "description": what}
                             for name, (_, kind, what) in fields.items()}}
    return {"required": True, "description": note,
            "content": {"application/json": {"schema": schema}}}


def _message_paths(body_note: str) -> dict[str, Any]:
    """The message routes: the conversation id is `conversation_id`, in the query of GET
    and DELETE, in the body of POST and PATCH."""
    one = _answer("the message", {"$ref": "#/components/schemas/Message"})
    many = {"type": "array", "items": {"$ref": "#/components/schemas/Message"}}
    return {
        "/api/im/messages": {
            "get": {"summary": "a page of the visible history (the active versions), newest "
                               "first; 404 for an unknown conversation",
                    "parameters": [
                        _CID_QUERY,
                        _query("limit", "page size, 1 to 10000 (default 50)",
                               {"type": "integer"}),
                        _query("cursor", "from a previous page: older messages",
                               {"type": "string"})],
                    "responses": {"200": _answer("a page", {"type": "object", "properties": {
                        "messages": many, "cursor": {"type": ["string", "null"]},
                        "has_more": {"type": "boolean"}}}), **_ERRORS}},
            "post": {"summary": "post a message (creates the conversation if new); "
                                "idempotent on a client-given id",
                     "requestBody": _body(POST_FIELDS, body_note),
                     "responses": {"200": one, **_ERRORS, **_CONFLICT}},
        },
        "/api/im/messages/{mid}": {
            "get": {"summary": "one message (any version, visible or not)",
                    "parameters": [_MID, _CID_QUERY], "responses": {"200": one, **_ERRORS}},
            "patch": {"summary": "edit the text (last writer wins)", "parameters": [_MID],
                      "requestBody": _body(EDIT_FIELDS, body_note),
                      "responses": {"200": one, **_ERRORS}},
            "delete": {"summary": "delete for everyone: the text goes, the place stays",
                       "parameters": [_MID, _CID_QUERY],
                       "responses": {"200": one, **_ERRORS}},
        },
        "/api/im/messages/{mid}/versions": {
            "get": {"summary": "the message's versions, oldest first",
                    "parameters": [_MID, _CID_QUERY],
                    "responses": {"200": _answer("its versions", {
                        "type": "object", "properties": {"versions": many}}), **_ERRORS}},
            "post": {"summary": "regenerate: a new version, made active (answers it)",
                     "parameters": [_MID], "requestBody": _body(REGENERATE_FIELDS, body_note),
                     "responses": {"200": one, **_ERRORS, **_CONFLICT}},
        },
        "/api/im/messages/{mid}/appends": {"post": {
            "summary": "add text at the end (a streamed reply); a retry appends again",
            "parameters": [_MID], "requestBody": _body(APPEND_FIELDS, body_note),
            "responses": {"200": one, **_ERRORS}}},
        "/api/im/messages/{mid}/switch": {"post": {
            "summary": "make this version, and the branch it is on, the visible one",
            "parameters": [_MID], "requestBody": _body(SWITCH_FIELDS, body_note),
            "responses": {"200": one, **_ERRORS}}},
    }


def openapi_document(operations: Mapping[str, Operation]) -> dict[str, Any]:
    patch_body = {"type": "object", "additionalProperties": False, "minProperties": 1,
                  "properties": {name: {"type": _JSON_TYPES[op.kind], "description": op.what}
                                 for name, op in operations.items()}}
    arrival_body = {"type": "object", "additionalProperties": False, "required": ["seq"],
                    "properties": {name: {"type": _JSON_TYPES[kind], "description": what}
                                   for name, (_, kind, what) in ARRIVAL_FIELDS.items()}}
    body_note = f"JSON object, Content-Type: application/json, at most {MAX_BODY_BYTES} bytes"
    one = _answer("the conversation", {"$ref": "#/components/schemas/Conversation"})
    return {
        "openapi": "3.1.0",
        "info": {"title": "crdtim HTTP API", "version": __version__,
                 "description": "specs/http.md is the full contract"},
        "components": {
            "schemas": {
                "Conversation": _CONVERSATION,
                "Message": _MESSAGE,
                "Error": {"type": "object", "required": ["data", "status_code", "error"],
                          "properties": {"data": {"type": "null"},
                                         "status_code": {"type": "integer"},
                                         "error": {"type": "string"}}},
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/": {"get": {"summary": "the web page", "security": [],
                          "responses": {"200": {"description": "HTML"}}}},
            "/static/{path}": {"get": {"summary": "the page's files", "security": [],
                                       "parameters": [{"name": "path", "in": "path",
                                                       "required": True,
                                                       "schema": {"type": "string"}}],
                                       "responses": {"200": {"description": "a file"}}}},
            "/healthz": {"get": {"summary": "liveness", "security": [], "responses": {
                "200": _answer("serving", {"type": "object"})}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [],
                                      "responses": {"200": {"description": "OpenAPI"}}}},
            "/api/im/conversations": {"get": {
                "summary": "a page of conversations: pinned first, then newest message",
                "parameters": [
                    _query("limit", "page size, 1 to 10000 (default 50)", {"type": "integer"}),
                    _query("cursor", "from a previous page", {"type": "string"}),
                    _query("archived", "true lists the archive instead (default false)",
                           {"type": "boolean"}),
                    _query("unread", "only (true) or no (false) unread or marked unread ones",
                           {"type": "boolean"}),
                    _query("pinned", "only (true) or no (false) pinned ones",
                           {"type": "boolean"})],
                "responses": {"200": _answer("a page", {"type": "object", "properties": {
                    "conversations": {"type": "array",
                                      "items": {"$ref": "#/components/schemas/Conversation"}},
                    "cursor": {"type": ["string", "null"]},
                    "has_more": {"type": "boolean"}}}), **_ERRORS}}},
            "/api/im/conversations/{cid}": {
                "get": {"summary": "one conversation", "parameters": [_CID],
                        "responses": {"200": one, **_ERRORS}},
                "patch": {"summary": "change fields; several keys are one commit",
                          "parameters": [_CID],
                          "requestBody": {"required": True, "description": body_note,
                                          "content": {"application/json": {
                                              "schema": patch_body}}},
                          "responses": {"200": one, **_ERRORS}},
            },
            "/api/im/conversations/{cid}/arrivals": {"post": {
                "summary": "a message arrived (creates the conversation if new)",
                "parameters": [_CID],
                "requestBody": {"required": True, "description": body_note,
                                "content": {"application/json": {"schema": arrival_body}}},
                "responses": {"200": one, **_ERRORS}}},
            **_message_paths(body_note),
            "/api/im/changes": {"get": {
                "summary": "the change feed (CouchDB _changes style)",
                "parameters": [
                    _query("since", "log sequence number, or `now`", {"type": "string"}),
                    _query("feed", "normal, longpoll or eventsource",
                           {"enum": ["normal", "longpoll", "eventsource"]}),
                    _query("heartbeat", "eventsource: ms of silence before a comment line",
                           {"type": "integer"}),
                    _query("timeout", "longpoll: ms to wait for a change",
                           {"type": "integer"}),
                    _query("limit", "log entries per answer, 1 to 1000", {"type": "integer"}),
                    {"name": "Last-Event-ID", "in": "header", "required": False,
                     "schema": {"type": "string"},
                     "description": "eventsource: resume after this sequence number"}],
                "responses": {"200": {
                    "description": "normal and longpoll: {results, last_seq, has_more, "
                                   "reset, replica}, each result {seq, origin, peer, "
                                   "conversations: [{id, fields, messages}]}; "
                                   "eventsource: text/event-stream of `change` and "
                                   "`reset` events",
                    "content": {"application/json": {}, "text/event-stream": {}}},
                    **_ERRORS}}},
        },
    }
