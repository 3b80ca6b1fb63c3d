"""The message routes in-process (httpx's ASGI transport under trio): history paging, post and
its retry and conflict, regenerate, versions, switch, append, edit, delete, each refusal
(400, 404, 409) writing nothing, token scopes on message routes, and the change feed naming
the messages a change touched. specs/http.md §1a is the contract checked here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")
pytest.importorskip("starlette")

from http_servers import write_in_another_process
from test_http import SCOPES, TOKENS, assert_refused, client, sse_events

from crdtim.http import create_app

M = "/api/im/messages"


@pytest.fixture
def replica(open_replica):
    r = open_replica("server")
    r.post("chat", "hello", id="q1", at=1_000)
    r.post("chat", "hi, how can I help?", role="assistant", id="a1", at=2_000)
    r.post("chat", "tell me a joke", id="q2", at=3_000)
    return r


async def test_history_pages_newest_first_as_the_replica_does(replica):
    async with client(create_app(replica)) as c:
        first = (await c.get(M, params={"conversation_id": "chat", "limit": 2})).json()
        assert first["status_code"] == 0
        page = replica.history("chat", 2)
        assert first["data"] == {"messages": [m.to_json() for m in page.items],
                                 "cursor": page.cursor, "has_more": True}
        assert [m["id"] for m in first["data"]["messages"]] == ["q2", "a1"]
        rest = (await c.get(M, params={"conversation_id": "chat", "limit": 2,
                                        "cursor": first["data"]["cursor"]})).json()["data"]
    assert [m["id"] for m in rest["messages"]] == ["q1"]
    assert rest["has_more"] is False and rest["cursor"] is None


async def test_post_takes_every_field_and_creates_the_conversation(replica):
    body = {"conversation_id": "new", "text": "from a bot", "role": "assistant",
            "id": "b1", "seq": 7, "at": 5_000, "author": "bot"}
    async with client(create_app(replica)) as c:
        r = await c.post(M, json=body)
        assert r.status_code == 200, r.text
        assert r.json()["data"] == replica.message("new", "b1").to_json()
        reply = (await c.post(M, json={"conversation_id": "chat", "text": "why?",
                                       "reply_to": "a1"})).json()["data"]
    m = replica.message("new", "b1")
    assert (m.role, m.author, m.seq, m.at, m.text) == ("assistant", "bot", 7, 5_000, "from a bot")
    assert replica.get("new").last_seq == 7 and replica.get("new").unread == 7
    # A reply to a message that already has a continuation is a branch: a second version.
    assert reply["parent"] == "a1" and reply["versions"] == 2


async def test_a_retried_post_is_the_same_message_and_a_conflicting_one_a_409(replica):
    body = {"conversation_id": "chat", "text": "tell me a joke", "id": "q2", "at": 3_000}
    async with client(create_app(replica)) as c:
        head = replica.head
        r = await c.post(M, json=body)
        assert r.status_code == 200 and r.json()["data"] == replica.message("chat", "q2").to_json()
        assert replica.head == head  # nothing written
        assert_refused(await c.post(M, json=body | {"role": "assistant"}), 409, "'q2'", "role")
        assert_refused(await c.post(M, json=body | {"at": 4_000}), 409, "at")
        # Bad input with an id that exists is still bad input, not a conflict.
        assert_refused(await c.post(M, json=body | {"role": ""}), 400, "role")
        assert_refused(await c.post(f"{M}/a1/versions",
                                    json={"conversation_id": "chat", "id": "q1"}), 409, "'q1'")
    assert replica.head == head


async def test_regenerate_versions_and_switch(replica):
    async with client(create_app(replica)) as c:
        r = await c.post(f"{M}/a1/versions", json={"conversation_id": "chat",
                                                   "text": "a better answer", "id": "a2"})
        assert r.status_code == 200, r.text
        assert r.json()["data"] | {"at": 0} == replica.message("chat", "a2").to_json() | {"at": 0}
        assert (r.json()["data"]["version"], r.json()["data"]["versions"]) == (1, 2)
        visible = (await c.get(M, params={"conversation_id": "chat"})).json()["data"]
        assert [m["id"] for m in visible["messages"]] == ["a2", "q1"]  # q2 was after a1
        versions = (await c.get(f"{M}/a1/versions",
                                params={"conversation_id": "chat"})).json()["data"]
        assert [m["id"] for m in versions["versions"]] == ["a1", "a2"]
        r = await c.post(f"{M}/a1/switch", json={"conversation_id": "chat"})
        assert r.status_code == 200 and r.json()["data"]["id"] == "a1"
        visible = (await c.get(M, params={"conversation_id": "chat"})).json()["data"]
    assert [m["id"] for m in visible["messages"]] == ["q2", "a1", "q1"]


async def test_append_edit_get_and_delete(replica):
    async with client(create_app(replica)) as c:
        for part in (" Sure", ", here", " it is."):
            r = await c.post(f"{M}/a1/appends", json={"conversation_id": "chat", "text": part})
            assert r.status_code == 200, r.text
        assert r.json()["data"]["text"] == "hi, how can I help? Sure, here it is."
        r = await c.patch(f"{M}/q2", json={"conversation_id": "chat", "text": "a pun, please"})
        assert r.json()["data"]["text"] == "a pun, please"
        assert r.json()["data"]["edited"] is not None
        one = (await c.get(f"{M}/q2", params={"conversation_id": "chat"})).json()["data"]
        assert one == replica.message("chat", "q2").to_json()
        r = await c.delete(f"{M}/q1", params={"conversation_id": "chat"})
        assert r.status_code == 200 and r.json()["data"]["deleted"] is True
        assert r.json()["data"]["text"] == ""
        again = await c.delete(f"{M}/q1", params={"conversation_id": "chat"})
        assert again.status_code == 200  # deleting twice is one delete
    assert replica.message("chat", "q1").deleted


async def test_message_ids_with_slashes_reach_the_message(replica):
    replica.post("chat", "x", id="ext/42")
    async with client(create_app(replica)) as c:
        r = await c.post(f"{M}/ext/42/appends", json={"conversation_id": "chat", "text": "y"})
        assert r.json()["data"]["text"] == "xy"
        r = await c.get(f"{M}/ext/42/versions", params={"conversation_id": "chat"})
    assert [m["id"] for m in r.json()["data"]["versions"]] == ["ext/42"]


UNKNOWN = [
    # (method, path, query, body): each names a message or conversation that is not there
    ("GET", M, {"conversation_id": "nobody"}, None),
    ("GET", f"{M}/zz", {"conversation_id": "chat"}, None),
    ("GET", f"{M}/zz/versions", {"conversation_id": "chat"}, None),
    ("POST", f"{M}/zz/versions", {}, {"conversation_id": "chat"}),
    ("POST", f"{M}/zz/appends", {}, {"conversation_id": "chat", "text": "x"}),
    ("POST", f"{M}/zz/switch", {}, {"conversation_id": "chat"}),
    ("PATCH", f"{M}/zz", {}, {"conversation_id": "chat", "text": "x"}),
    ("DELETE", f"{M}/zz", {"conversation_id": "chat"}, None),
    ("DELETE", f"{M}/q1", {"conversation_id": "nobody"}, None),
]


@pytest.mark.parametrize(("method", "path", "params", "body"), UNKNOWN)
async def test_unknown_messages_and_conversations_are_404(replica, method, path, params, body):
    head = replica.head
    async with client(create_app(replica)) as c:
        r = await c.request(method, path, params=params, json=body)
    assert_refused(r, 404, "no ")
    assert replica.head == head


BAD = [
    # (method, path, query, body, status, words)
    ("GET", M, {}, None, 400, ["conversation_id", "missing"]),
    ("GET", M, {"conversation_id": "chat", "limit": "0"}, None, 400, ["'limit'"]),
    ("GET", M, {"conversation_id": "chat", "cursor": "garbage"}, None, 400, ["cursor"]),
    ("GET", M, {"conversation_id": "chat", "colour": "1"}, None, 400, ["'colour'"]),
    ("POST", M, {}, {"text": "x"}, 400, ["'conversation_id'", "missing"]),
    ("POST", M, {}, {"conversation_id": "chat"}, 400, ["'text'", "missing"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": 5}, 400, ["'text'", "string"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "seq": "1"}, 400,
     ["'seq'", "integer"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "seq": True}, 400, ["'seq'"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "seq": -1}, 400, ["seq"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "at": 2**62}, 400, ["future"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "mood": 1}, 400, ["'mood'"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "reply_to": "zz"}, 400,
     ["reply_to", "no such message"]),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x", "id": "a\u0000b"}, 400, ["NUL"]),
    ("POST", M, {}, {"conversation_id": "", "text": "x"}, 400, []),
    ("POST", M, {}, {"conversation_id": "chat", "text": "x" * 65_537}, 413, []),
    ("POST", M, {}, [1], 400, ["JSON object"]),
    ("POST", f"{M}/a1/appends", {}, {"conversation_id": "chat"}, 400, ["'text'"]),
    ("POST", f"{M}/a1/appends", {"x": "1"}, {"conversation_id": "chat", "text": "y"}, 400,
     ["'x'"]),
    ("PATCH", f"{M}/a1", {}, {"conversation_id": "chat", "text": "y", "pinned": True}, 400,
     ["'pinned'"]),
    ("POST", f"{M}/a1/versions", {}, {"conversation_id": "chat", "role": 3}, 400, ["'role'"]),
    ("DELETE", f"{M}/a1", {}, None, 400, ["conversation_id"]),
    ("PUT", f"{M}/a1", {}, None, 405, ["PUT"]),
]


@pytest.mark.parametrize(("method", "path", "params", "body", "status", "words"), BAD)
async def test_bad_message_requests_are_refused_and_write_nothing(replica, method, path,
                                                                  params, body, status, words):
    head = replica.head
    async with client(create_app(replica)) as c:
        r = await c.request(method, path, params=params, json=body)
    assert_refused(r, status, *words)
    assert replica.head == head


async def test_a_deleted_message_takes_no_appends_or_edits(replica):
    replica.delete_message("chat", "a1")
    head = replica.head
    async with client(create_app(replica)) as c:
        assert_refused(await c.post(f"{M}/a1/appends", json={"conversation_id": "chat",
                                                             "text": "y"}), 400, "deleted")
        assert_refused(await c.patch(f"{M}/a1", json={"conversation_id": "chat",
                                                      "text": "y"}), 400, "deleted")
    assert replica.head == head


async def test_a_token_reaches_only_the_messages_of_its_scope(open_replica):
    r = open_replica("scoped")
    r.post("u1/a", "mine", id="m1")
    r.post("u2/b", "theirs", id="t1")
    app = create_app(r, tokens=TOKENS, scopes=SCOPES)
    head = r.head
    async with client(app, authorization="Bearer " + TOKENS["alice"]) as c:
        # Out of scope is answered as unknown, on every message route, and writes nothing.
        for method, path, params, body in [
                ("GET", M, {"conversation_id": "u2/b"}, None),
                ("POST", M, {}, {"conversation_id": "u2/b", "text": "x"}),
                ("POST", M, {}, {"conversation_id": "u2/new", "text": "x"}),
                ("GET", f"{M}/t1", {"conversation_id": "u2/b"}, None),
                ("GET", f"{M}/t1/versions", {"conversation_id": "u2/b"}, None),
                ("POST", f"{M}/t1/versions", {}, {"conversation_id": "u2/b"}),
                ("POST", f"{M}/t1/appends", {}, {"conversation_id": "u2/b", "text": "x"}),
                ("POST", f"{M}/t1/switch", {}, {"conversation_id": "u2/b"}),
                ("PATCH", f"{M}/t1", {}, {"conversation_id": "u2/b", "text": "x"}),
                ("DELETE", f"{M}/t1", {"conversation_id": "u2/b"}, None)]:
            answer = await c.request(method, path, params=params, json=body)
            assert_refused(answer, 404, "no ")
        assert r.head == head
        mine = (await c.get(M, params={"conversation_id": "u1/a"})).json()["data"]
        assert [m["id"] for m in mine["messages"]] == ["m1"]
        assert (await c.post(M, json={"conversation_id": "u1/a", "text": "more"})).is_success
        feed = (await c.get("/api/im/changes")).json()["data"]
    named = {m for result in feed["results"] for x in result["conversations"]
             for m in x["messages"]}
    assert "t1" not in named and "m1" in named
    async with client(app) as c:  # and without a token, nothing at all
        assert_refused(await c.get(M, params={"conversation_id": "u1/a"}), 401)


async def test_the_change_feed_names_the_messages_each_change_touched(replica):
    since = replica.head
    async with client(create_app(replica)) as c:
        new = (await c.post(M, json={"conversation_id": "chat", "text": "",
                                     "role": "assistant", "id": "a9"})).json()["data"]
        await c.post(f"{M}/a9/appends", json={"conversation_id": "chat", "text": "streamed"})
        await c.post(f"{M}/a1/versions", json={"conversation_id": "chat", "id": "a3"})
        replica.set_title("chat", "Chat")
        feed = (await c.get("/api/im/changes", params={"since": since})).json()["data"]
    entries = [(x["id"], x["messages"]) for result in feed["results"]
               for x in result["conversations"]]
    assert entries == [("chat", [new["id"]]), ("chat", ["a9"]), ("chat", ["a3"]), ("chat", [])]
    assert "messages" in feed["results"][0]["conversations"][0]["fields"]


async def test_the_event_stream_names_messages_written_by_another_process(replica,
                                                                          autojump_clock):
    # Another process's write reaches the feed through the log, which is where its message
    # ids come from: this process saw no change event for it.
    app = create_app(replica)
    since = replica.head
    write_in_another_process(replica.path, 'r.append("chat", "a1", " (more)")')
    events = await sse_events(app, f"/api/im/changes?feed=eventsource&since={since}", 1)
    assert events[0]["event"] == "change"
    assert events[0]["data"]["conversations"] == [
        {"id": "chat", "fields": ["messages"], "messages": ["a1"]}]
