"""The HTTP API in-process (httpx's ASGI transport under trio): every route, the envelope,
paging, tokens and scopes, each kind of bad input, and the change feed's longpoll, resume
(Last-Event-ID) and reset. specs/http.md is the contract checked here.

Event streams never end, and httpx's ASGI transport returns only once the app has answered
in full, so they are read by `sse_events`: the app called directly, its output parsed, the
call cancelled once enough events arrived.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("hypercorn")

import trio  # noqa: E402

from crdtim.http import MAX_BODY_BYTES, create_app  # noqa: E402
from crdtim.http._changes import MAX_STREAMS  # noqa: E402

BASE = "http://127.0.0.1"
TOKENS = {"alice": "a" * 32, "bob": "b" * 32, "eve": "e" * 32}
SCOPES = {"alice": ("u1/",), "bob": ("u2/",)}


def client(app, **headers):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=BASE,
                             headers=headers)


def assert_refused(response, status, *words):
    """The error envelope with `status`, its message naming each of `words`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and body["data"] is None
    for word in words:
        assert word in body["error"], (word, body["error"])


@pytest.fixture
def replica(open_replica):
    r = open_replica("server")
    r.set_title("family", "Family")
    r.message_arrived("family", 3, "see you at 7")
    r.pin("work")
    r.set_title("alice", "Alice")
    return r


async def sse_events(app, path, count, headers=()):
    """The first `count` events ({"id", "event", "data"} or {"comment"}) of a stream."""
    send, receive = trio.open_memory_channel(100)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 5000), "root_path": "",
             "path": path.split("?")[0], "raw_path": path.split("?")[0].encode(),
             "query_string": path.partition("?")[2].encode(),
             "headers": [(b"host", b"127.0.0.1"), *((k.encode(), v.encode()) for k, v in headers)]}
    disconnect = trio.Event()

    async def asgi_receive():
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def asgi_send(message):
        if message["type"] == "http.response.body":
            await send.send(message.get("body", b"").decode())
        else:
            await send.send(message)

    events = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, asgi_receive, asgi_send)
        start = await receive.receive()
        assert start["status"] == 200, start
        buffer = ""
        while len(events) < count:
            buffer += await receive.receive()
            while "\n\n" in buffer and len(events) < count:
                block, buffer = buffer.split("\n\n", 1)
                event = {}
                for line in block.split("\n"):
                    key, _, value = line.partition(": ")
                    if key == "" and value:
                        event["comment"] = value
                    elif key in ("id", "event"):
                        event[key] = value
                    elif key == "data":
                        event["data"] = json.loads(value)
                if "event" in event or event.get("comment") == "heartbeat":
                    events.append(event)
        disconnect.set()
        nursery.cancel_scope.cancel()
    return events


# -- conversations -----------------------------------------------------------------------------


async def test_list_is_the_envelope_of_ls_json_in_list_order(replica):
    async with client(create_app(replica)) as c:
        r = await c.get("/api/im/conversations")
    assert r.status_code == 200
    body = r.json()
    assert body["status_code"] == 0
    page = replica.list()
    assert body["data"] == {"conversations": [x.as_dict() for x in page.items],
                            "cursor": None, "has_more": False}
    assert [x["id"] for x in body["data"]["conversations"]] == ["work", "family", "alice"]


async def test_list_pages_with_the_cursor(replica):
    async with client(create_app(replica)) as c:
        seen, cursor = [], None
        while True:
            params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
            data = (await c.get("/api/im/conversations", params=params)).json()["data"]
            seen += [x["id"] for x in data["conversations"]]
            if not data["has_more"]:
                assert data["cursor"] is None
                break
            cursor = data["cursor"]
    assert seen == ["work", "family", "alice"]


async def test_get_one_and_unknown_is_404(replica):
    async with client(create_app(replica)) as c:
        r = await c.get("/api/im/conversations/family")
        assert r.json() == {"data": replica.get("family").as_dict(), "status_code": 0}
        assert_refused(await c.get("/api/im/conversations/nobody"), 404, "nobody")


async def test_patch_several_fields_is_one_commit(replica):
    head = replica.head
    async with client(create_app(replica)) as c:
        r = await c.patch("/api/im/conversations/family",
                          json={"title": "Fam", "pinned": True, "muted": True, "read_seq": 3})
    assert r.status_code == 200
    assert r.json()["data"] == replica.get("family").as_dict()
    family = replica.get("family")
    assert (family.title, family.pinned, family.muted, family.unread) == ("Fam", True, True, 0)
    assert replica.head == head + 1  # one log entry: one transaction


async def test_patch_false_clears_a_flag(replica):
    async with client(create_app(replica)) as c:
        r = await c.patch("/api/im/conversations/work", json={"pinned": False})
    assert r.json()["data"]["pinned"] is False and not replica.get("work").pinned


async def test_patch_reaches_fields_an_app_added_to_its_schema(open_replica):
    import crdtim

    schema = crdtim.DEFAULT_SCHEMA.extend(crdtim.Field("starred", 64, crdtim.Flag),
                                          crdtim.Field("folder", 65, crdtim.Lww, clocked=True))
    r = open_replica("custom", schema=schema)
    r.set_title("c", "C")
    async with client(create_app(r)) as c:
        resp = await c.patch("/api/im/conversations/c", json={"starred": True, "folder": "hi"})
        spec = (await c.get("/openapi.json")).json()
    assert resp.json()["data"]["extra"] == {"starred": True, "folder": "hi"}
    patch_body = spec["paths"]["/api/im/conversations/{cid}"]["patch"]["requestBody"]
    assert {"starred", "folder"} <= set(patch_body["content"]["application/json"]["schema"]
                                        ["properties"])


async def test_arrivals_create_and_advance_a_conversation(replica):
    async with client(create_app(replica)) as c:
        r = await c.post("/api/im/conversations/u1/new/arrivals",
                         json={"seq": 2, "preview": "hello", "at": 1_700_000_000_000})
        r2 = await c.post("/api/im/conversations/family/arrivals", json={"seq": 5})
    assert r.status_code == 200
    assert r.json()["data"] == replica.get("u1/new").as_dict()
    assert replica.get("u1/new").last_preview == "hello" and replica.get("u1/new").unread == 2
    assert r2.json()["data"]["unread"] == 5


async def test_healthz_and_page(replica):
    async with client(create_app(replica)) as c:
        health = await c.get("/healthz")
        page = await c.get("/")
        script = await c.get("/static/app.js")
    assert health.json() == {"data": {"status": "ok", "head": replica.head}, "status_code": 0}
    assert page.status_code == 200 and "<ul id=\"list\"" in page.text
    assert script.status_code == 200 and "innerHTML" not in script.text


async def test_every_route_is_in_the_openapi_document(replica):
    app = create_app(replica)
    async with client(app) as c:
        spec = (await c.get("/openapi.json")).json()
    for route in app.routes:
        path = route.path.replace("{cid:path}", "{cid}").replace("{mid:path}", "{mid}")
        if not hasattr(route, "methods"):  # the static files' mount
            assert path + "/{path}" in spec["paths"]
            continue
        for method in route.methods - {"HEAD"}:
            assert method.lower() in spec["paths"][path], (method, path)


# -- bad input: a 4xx with the envelope, nothing written ---------------------------------------


BAD_PATCHES = [
    # (content type, body, status, words in the message)
    ("application/json", b"{not json", 400, ["not valid JSON"]),
    ("application/json", b"[1, 2]", 400, ["JSON object", "array"]),
    ("application/json", b"\xff\xfe", 400, ["UTF-8"]),
    ("application/json", b'{"pinned": NaN}', 400, ["NaN"]),
    ("application/json", b'{"pinned": "yes"}', 400, ["'pinned'", "boolean", "string"]),
    ("application/json", b'{"read_seq": true}', 400, ["'read_seq'", "number"]),
    ("application/json", b'{"read_seq": -1}', 400, ["seq"]),
    ("application/json", b'{"read_seq": 1.5}', 400, ["'read_seq'"]),
    ("application/json", b'{"title": 7}', 400, ["'title'", "string"]),
    ("application/json", b'{"title": "\\ud800"}', 400, ["title", "UTF-8"]),
    ("application/json", b'{"title": "ok", "colour": 1, "size": 2}', 400,
     ["'colour'", "'size'"]),
    ("application/json", b"{}", 400, ["nothing to change"]),
    ("application/json", b'{"title": "' + b"x" * 70_000 + b'"}', 413, [str(MAX_BODY_BYTES)]),
    ("text/plain", b'{"pinned": true}', 415, ["application/json"]),
    ("application/json", b'{"title": "ok", "read_seq": 99999999999999999999999}', 400,
     ["seq"]),
]


@pytest.mark.parametrize(("kind", "body", "status", "words"), BAD_PATCHES)
async def test_bad_patch_is_refused_and_writes_nothing(replica, kind, body, status, words):
    head, before = replica.head, replica.state()
    async with client(create_app(replica)) as c:
        r = await c.patch("/api/im/conversations/family", content=body,
                          headers={"content-type": kind})
    assert_refused(r, status, *words)
    assert replica.head == head and replica.state() == before


async def test_oversized_body_is_refused_without_a_content_length(replica):
    async def chunks():
        for _ in range(20):
            yield b" " * 8192

    async with client(create_app(replica)) as c:
        r = await c.post("/api/im/conversations/family/arrivals", content=chunks(),
                         headers={"content-type": "application/json"})
    assert_refused(r, 413, str(MAX_BODY_BYTES))


@pytest.mark.parametrize(("body", "words"), [
    ({}, ["'seq' is missing"]),
    ({"seq": "1"}, ["'seq'", "string"]),
    ({"seq": 1, "preview": 3}, ["'preview'"]),
    ({"seq": 1, "at": 99_999_999_999_999}, ["future"]),
    ({"seq": 1, "sender": "x"}, ["'sender'"]),
    ({"seq": 1, "preview": "x" * 17_000}, ["preview", "characters"]),
])
async def test_bad_arrival_is_refused_and_writes_nothing(replica, body, words):
    head = replica.head
    async with client(create_app(replica)) as c:
        r = await c.post("/api/im/conversations/family/arrivals", json=body)
    assert_refused(r, 400, *words)
    assert replica.head == head


@pytest.mark.parametrize(("url", "words"), [
    ("/api/im/conversations?limit=0", ["'limit'"]),
    ("/api/im/conversations?limit=abc", ["'limit'"]),
    ("/api/im/conversations?limit=20000", ["limit"]),
    ("/api/im/conversations?cursor=zzz", ["cursor"]),
    ("/api/im/conversations?limit=1&limit=2", ["2 times"]),
    ("/api/im/conversations?archived=1", ["'archived'"]),
    ("/api/im/changes?feed=continuous", ["'feed'", "eventsource"]),
    ("/api/im/changes?since=-1", ["'since'"]),
    ("/api/im/changes?heartbeat=5", ["'heartbeat'", "100"]),
    ("/api/im/changes?limit=5000", ["'limit'"]),
    ("/api/im/conversations/" + "x" * 300, ["conversation id"]),
])
async def test_bad_query_is_a_400_naming_it(replica, url, words):
    async with client(create_app(replica)) as c:
        assert_refused(await c.get(url), 400, *words)


async def test_unknown_route_and_method_use_the_envelope(replica):
    async with client(create_app(replica)) as c:
        assert_refused(await c.get("/api/im/nothing"), 404, "/api/im/nothing")
        assert_refused(await c.delete("/api/im/conversations/family"), 405, "DELETE")


# http.md §4: without tokens only requests whose Host is a loopback name are answered.
async def test_without_tokens_only_loopback_host_names_are_served(replica):
    async with client(create_app(replica)) as c:
        r = await c.get("/api/im/conversations", headers={"host": "rebound.example:8080"})
        ok = await c.get("/api/im/conversations", headers={"host": "localhost:8080"})
    assert_refused(r, 403, "localhost")
    assert ok.status_code == 200


# -- tokens and scopes -------------------------------------------------------------------------


@pytest.fixture
def scoped(open_replica):
    r = open_replica("scoped")
    for cid in ("u1/a", "u2/b", "u1/c", "u2/d", "u1/e"):
        r.message_arrived(cid, 1, cid)
    return r


async def test_missing_or_wrong_token_is_401_and_writes_nothing(scoped):
    app = create_app(scoped, tokens=TOKENS, scopes=SCOPES)
    head = scoped.head
    async with client(app) as c:
        r = await c.get("/api/im/conversations")
        assert_refused(r, 401, "Bearer")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_refused(await c.patch("/api/im/conversations/u1/a", json={"pinned": True},
                                     headers={"authorization": "Bearer " + "x" * 32}),
                       401, "unknown token")
        assert_refused(await c.get("/api/im/conversations",
                                   headers={"authorization": "Basic abc"}), 401, "Bearer")
        assert_refused(await c.get("/api/im/conversations",
                                   headers={"authorization": "Bearer " + TOKENS["eve"]}),
                       403, "'eve'")
    assert scoped.head == head


async def test_a_token_sees_and_changes_only_its_scope(scoped):
    app = create_app(scoped, tokens=TOKENS, scopes=SCOPES)
    head = scoped.head
    async with client(app, authorization="Bearer " + TOKENS["alice"]) as c:
        ids, cursor = [], None
        while True:  # pages of 2 from a list where u2/ conversations are interleaved
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            data = (await c.get("/api/im/conversations", params=params)).json()["data"]
            ids += [x["id"] for x in data["conversations"]]
            if not data["has_more"]:
                break
            cursor = data["cursor"]
        assert sorted(ids) == ["u1/a", "u1/c", "u1/e"]
        # Out of scope is answered as unknown: 404, whether it exists or not.
        assert_refused(await c.get("/api/im/conversations/u2/b"), 404, "no conversation")
        assert_refused(await c.patch("/api/im/conversations/u2/b", json={"pinned": True}),
                       404, "no conversation")
        assert_refused(await c.post("/api/im/conversations/u2/z/arrivals", json={"seq": 1}),
                       404, "no conversation")
        assert scoped.head == head
        assert (await c.patch("/api/im/conversations/u1/a",
                              json={"pinned": True})).status_code == 200
        feed = (await c.get("/api/im/changes")).json()["data"]
    touched = {x["id"] for result in feed["results"] for x in result["conversations"]}
    assert touched == {"u1/a", "u1/c", "u1/e"}
    assert feed["last_seq"] == scoped.head  # entries it may not see still move it on


async def test_tokens_without_scopes_see_everything(scoped):
    async with client(create_app(scoped, tokens={"ops": "o" * 32}),
                      authorization="Bearer " + "o" * 32) as c:
        data = (await c.get("/api/im/conversations")).json()["data"]
    assert len(data["conversations"]) == 5


# -- the change feed ---------------------------------------------------------------------------


async def test_normal_feed_lists_entries_after_since_with_their_fields(replica):
    async with client(create_app(replica)) as c:
        data = (await c.get("/api/im/changes", params={"since": 1, "limit": 2})).json()["data"]
        now = (await c.get("/api/im/changes", params={"since": "now"})).json()["data"]
    assert [r["seq"] for r in data["results"]] == [2, 3]
    assert data["results"][0]["conversations"] == [
        {"id": "family", "fields": ["last_message", "last_seq"],
         "messages": []}]
    assert data["results"][0]["origin"] == "local"
    assert data["last_seq"] == 3 and data["has_more"] and not data["reset"]
    assert data["replica"] == replica.id
    assert now["results"] == [] and now["last_seq"] == replica.head


async def test_longpoll_waits_for_the_next_change(replica, autojump_clock):
    app = create_app(replica)
    head = replica.head
    async with client(app) as c, trio.open_nursery() as nursery:
        async def write_later():
            await trio.sleep(5)
            replica.mute("alice")

        nursery.start_soon(write_later)
        started = trio.current_time()
        data = (await c.get("/api/im/changes", params={"since": "now", "feed": "longpoll",
                                                        "timeout": 60_000})).json()["data"]
        assert 5 <= trio.current_time() - started < 6
    assert [r["seq"] for r in data["results"]] == [head + 1]


async def test_longpoll_sees_another_process_write_by_polling_the_head(replica, tmp_path,
                                                                        autojump_clock):
    # A write that this process's subscription never reports: another Replica object on
    # the same directory stands for another process (the command line).
    app = create_app(replica, poll_interval=0.1)
    head = replica.head
    async with client(app) as c, trio.open_nursery() as nursery:
        async def other_process_writes():
            await trio.sleep(2)
            # Blocking on purpose: the (virtual) clock stands still until the write is done.
            subprocess.run([sys.executable, "-m", "crdtim", "--data", replica.path, "title",
                            "work", "Work"], check=True, capture_output=True)

        nursery.start_soon(other_process_writes)
        data = (await c.get("/api/im/changes", params={"since": head, "feed": "longpoll",
                                                        "timeout": 60_000})).json()["data"]
    assert data["results"][0]["conversations"] == [{"id": "work", "fields": ["title"],
                                                     "messages": []}]


async def test_longpoll_times_out_empty(replica, autojump_clock):
    async with client(create_app(replica)) as c:
        data = (await c.get("/api/im/changes", params={"since": "now", "feed": "longpoll",
                                                        "timeout": 1000})).json()["data"]
    assert data["results"] == [] and data["last_seq"] == replica.head


async def test_eventsource_streams_heartbeats_and_new_writes(replica, autojump_clock):
    app = create_app(replica)
    async with trio.open_nursery() as nursery:
        async def write_later():
            await trio.sleep(2.5)
            replica.pin("alice")

        nursery.start_soon(write_later)
        events = await sse_events(app, "/api/im/changes?feed=eventsource&since=2&heartbeat=1000",
                                  5)
    assert events[0] == {"id": "3", "event": "change", "data": {
        "seq": 3, "origin": "local", "peer": None,
        "conversations": [{"id": "work", "fields": ["pinned"], "messages": []}]}}
    assert [e.get("event", e.get("comment")) for e in events] == [
        "change", "change", "heartbeat", "heartbeat", "change"]
    assert events[-1]["data"]["conversations"] == [{"id": "alice", "fields": ["pinned"],
                                                     "messages": []}]


async def test_eventsource_resumes_after_last_event_id(replica, autojump_clock):
    app = create_app(replica)
    events = await sse_events(app, "/api/im/changes?feed=eventsource&since=0", 2,
                              headers=[("last-event-id", "2")])
    assert [e["id"] for e in events] == ["3", "4"]


async def test_feed_says_reset_when_the_log_was_trimmed_below_since(open_replica,
                                                                     autojump_clock):
    r = open_replica("trimmed", log_retention=2)
    for seq in range(1, 7):
        r.message_arrived("family", seq)
    r.trim_log()  # keeps the newest 2 entries: floor 4
    assert r.log_floor == 4
    app = create_app(r)
    async with client(app) as c:
        data = (await c.get("/api/im/changes", params={"since": 1})).json()["data"]
        fine = (await c.get("/api/im/changes", params={"since": 5})).json()["data"]
        ahead = (await c.get("/api/im/changes", params={"since": 99})).json()["data"]
    assert data["reset"] and data["log_floor"] == 4
    assert [x["seq"] for x in data["results"]] == [5, 6]
    assert not fine["reset"] and [x["seq"] for x in fine["results"]] == [6]
    assert ahead["reset"] and ahead["results"] == [] and ahead["last_seq"] == 6
    events = await sse_events(app, "/api/im/changes?feed=eventsource", 3,
                              headers=[("last-event-id", "2")])
    assert events[0]["event"] == "reset" and events[0]["id"] == "4"
    assert events[0]["data"] == {"reset": True, "log_floor": 4, "replica": r.id}
    assert [e["id"] for e in events[1:]] == ["5", "6"]


async def test_eventsource_refuses_a_bad_last_event_id(replica):
    async with client(create_app(replica)) as c:
        r = await c.get("/api/im/changes", params={"feed": "eventsource"},
                        headers={"last-event-id": "yesterday"})
    assert_refused(r, 400, "Last-Event-ID")


async def test_event_streams_are_bounded(replica):
    app = create_app(replica)
    app.state.log_waiter.streams = MAX_STREAMS
    async with client(app) as c:
        r = await c.get("/api/im/changes", params={"feed": "eventsource"})
    assert_refused(r, 503, str(MAX_STREAMS))


def test_importing_crdtim_does_not_import_the_http_libraries():
    code = ("import sys, crdtim, crdtim.crdt, crdtim.cli; "
            "print([m for m in ('starlette', 'hypercorn', 'httpx', 'crdtim.http') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": ""}).stdout
    assert out.strip() == "[]"


# -- crdtim serve --http: what it refuses, before any replica is made --------------------------


# http.md §4: without tokens the API must be served on loopback, --insecure or not.
@pytest.mark.parametrize(("flags", "message"), [
    (["--http", "0.0.0.0:0"], "without --http-tokens"),
    (["--http", "0.0.0.0:0", "--insecure"], "without --http-tokens"),
    (["--listen", "127.0.0.1:0", "--http-tokens", "t"], "--http-tokens is for --http"),
    ([], "needs --listen"),
    (["--http", "0.0.0.0:0", "--http-tokens", "TOKENS_644"], "other users"),
])
def test_serve_http_refuses_what_would_leave_it_open(tmp_path, capsys, flags, message):
    from crdtim import cli

    tokens = tmp_path / "tokens"
    tokens.write_text("alice " + "a" * 32 + "\n")
    tokens.chmod(0o644)
    flags = [str(tokens) if f == "TOKENS_644" else f for f in flags]
    status = cli.main(["--data", str(tmp_path / "r"), "serve", *flags])
    assert status == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


async def test_patch_and_list_reach_the_conversation_features(open_replica):
    """The features of specs/crdt.md §6 go through their Replica operations (an archive
    keeps its position, so a later message brings the conversation back), and the list
    takes the filters of `crdtim ls`."""
    r = open_replica("features")
    r.message_arrived("a", 3, "hi")
    r.message_arrived("b", 1, "yo")
    async with client(create_app(r)) as c:
        archived = await c.patch("/api/im/conversations/a",
                                 json={"archived": True, "draft": "d", "read_by": {"bob": 2}})
        refused = await c.patch("/api/im/conversations/a", json={"marked_unread": False})
        listed = (await c.get("/api/im/conversations")).json()["data"]["conversations"]
        archive = (await c.get("/api/im/conversations?archived=true")).json()["data"]
        bad = await c.get("/api/im/conversations?pinned=maybe")
    assert archived.status_code == 200
    data = archived.json()["data"]
    assert data["archived"] and data["draft"] == "d" and data["read_by"] == {"bob": 2}
    assert refused.status_code == 400 and "only true" in refused.json()["error"]
    assert [x["id"] for x in listed] == ["b"]
    assert [x["id"] for x in archive["conversations"]] == ["a"]
    assert bad.status_code == 400 and "true or false" in bad.json()["error"]
    r.message_arrived("a", 4, "back")  # a newer message unarchives it (specs/crdt.md §6)
    assert not r.get("a").archived


async def test_one_patch_body_means_one_change_whatever_the_order_of_its_keys(open_replica):
    """specs/http.md §3: the operations apply in the table's order, so a read and a mark
    unread in one body leave it marked whichever key came first."""
    body = {"read_seq": 2, "marked_unread": True, "archived": True, "draft": "x"}
    results = []
    for n, keys in enumerate(itertools.permutations(body)):
        r = open_replica(f"order{n}")
        r.message_arrived("a", 3, "hi")
        async with client(create_app(r)) as c:
            answer = await c.patch("/api/im/conversations/a", json={k: body[k] for k in keys})
        assert answer.status_code == 200, answer.text
        got = r.get("a")
        results.append((got.read_seq, got.marked_unread, got.archived, got.draft))
    assert set(results) == {(2, True, True, "x")}


@pytest.mark.parametrize("body", [{"muted": True, "muted_until": 2**40},
                                  {"archived_keep": True, "archived": False}])
async def test_two_keys_writing_one_field_are_refused_together(replica, body):
    """specs/http.md §3: muted with muted_until, archived with archived_keep: refused, both
    named, nothing written."""
    head = replica.head
    async with client(create_app(replica)) as c:
        r = await c.patch("/api/im/conversations/family", json=body)
    assert_refused(r, 400, *(repr(k) for k in body))
    assert replica.head == head


# -- the list's answers kept while the head stands still ---------------------------------------


async def test_a_kept_list_answer_is_dropped_by_any_write_even_another_process(replica):
    app = create_app(replica)
    cache = app.state.page_cache
    async with client(app) as c:
        first = (await c.get("/api/im/conversations")).json()
        assert (await c.get("/api/im/conversations")).json() == first and cache.hits == 1
        replica.set_title("alice", "Alice B.")
        titles = {x["id"]: x["title"] for x in
                  (await c.get("/api/im/conversations")).json()["data"]["conversations"]}
        assert titles["alice"] == "Alice B."
        subprocess.run([sys.executable, "-m", "crdtim", "--data", replica.path, "title",
                        "alice", "Alice C."], check=True, capture_output=True)
        titles = {x["id"]: x["title"] for x in
                  (await c.get("/api/im/conversations")).json()["data"]["conversations"]}
    assert titles["alice"] == "Alice C."
    assert cache.hits == 1


async def test_kept_list_answers_are_per_scope(scoped):
    app = create_app(scoped, tokens=TOKENS, scopes=SCOPES)
    ids = {}
    for who in ("alice", "bob", "alice"):
        async with client(app, authorization="Bearer " + TOKENS[who]) as c:
            data = (await c.get("/api/im/conversations")).json()["data"]
        ids[who] = sorted(x["id"] for x in data["conversations"])
    assert ids == {"alice": ["u1/a", "u1/c", "u1/e"], "bob": ["u2/b", "u2/d"]}
    assert app.state.page_cache.hits == 1  # alice's second request


async def test_a_page_with_a_timed_mute_in_force_is_never_kept(replica):
    # `muted` turns false when the time passes, with no write to move the head.
    replica.mute("family", until=replica.get("family").last_at + 3_600_000)
    app = create_app(replica)
    async with client(app) as c:
        for _ in range(2):
            data = (await c.get("/api/im/conversations")).json()["data"]
    assert [x["muted"] for x in data["conversations"] if x["id"] == "family"] == [True]
    assert app.state.page_cache.hits == 0
