"""Fuzzing the JSON routes with hypothesis: random JSON bodies (and raw bytes), query strings,
conversation and message ids, on the conversation and the message routes, with and without
a token. Whatever is sent, the answer is the
envelope with a status below 500, and a refused request writes nothing.
"""

from __future__ import annotations

import json
import urllib.parse

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

import trio  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from crdtim.http import create_app  # noqa: E402

KEYS = ["title", "pinned", "muted", "read_seq", "seq", "preview", "at", "limit", "cursor",
        "since", "feed", "timeout", "heartbeat", "x", "conversation_id", "text", "role",
        "reply_to", "id", "author"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8)
bodies = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4).map(
        lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200))
query_values = st.one_of(st.text(max_size=12), st.integers(-5, 10**12).map(str),
                         st.sampled_from(["now", "longpoll", "normal", "eventsource", ""]))
queries = st.lists(st.tuples(st.sampled_from(KEYS), query_values), max_size=4)
cids = st.one_of(st.sampled_from(["family", "u1/a", "nobody"]),
                 st.text(min_size=1, max_size=20).filter(lambda s: "?" not in s and "#" not in s))
mids = st.one_of(st.sampled_from(["m1", "m2", "nobody"]),
                 st.text(min_size=1, max_size=20).filter(lambda s: "?" not in s and "#" not in s))
# Message bodies: mostly the right fields with values of any type, so that requests get past
# the shape checks to the replica (a conversation id that is often a real one).
message_bodies = st.fixed_dictionaries(
    {"conversation_id": st.one_of(st.sampled_from(["family", "u1/a"]), json_values)},
    optional={k: json_values for k in ("text", "role", "reply_to", "id", "seq", "at",
                                       "author", "x")},
).map(lambda d: json.dumps(d).encode())
ROUTES = ["GET list", "GET one", "PATCH one", "POST arrivals", "GET changes",
          "GET messages", "POST messages", "GET message", "PATCH message", "DELETE message",
          "GET versions", "POST versions", "POST appends", "POST switch"]
requests = st.tuples(
    st.sampled_from(ROUTES), st.tuples(cids, mids), queries, st.one_of(bodies, message_bodies),
    st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8"]),
    st.sampled_from([None, "Bearer " + "a" * 32, "Bearer wrong", "garbage"]))


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    from crdtim import Replica

    r = Replica.open(tmp_path_factory.mktemp("fuzz") / "r", durability="nosync")
    r.set_title("family", "Family")
    r.message_arrived("u1/a", 2, "hi")
    r.post("u1/a", "hello", id="m1")
    r.post("u1/a", "hi there", role="assistant", id="m2")
    yield r
    r.close()


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests, authenticated=st.booleans())
def test_no_request_gets_a_500(replicas, request, authenticated):
    route, (cid, mid), params, body, kind, auth = request
    app = create_app(replicas, tokens={"alice": "a" * 32} if authenticated else None,
                     scopes={"alice": ("u1/",)} if authenticated else None)
    method, what = route.split()
    cid = urllib.parse.quote(cid, safe="/")
    mid = urllib.parse.quote(mid, safe="/")
    path = {"list": "/api/im/conversations", "changes": "/api/im/changes",
            "one": f"/api/im/conversations/{cid}",
            "arrivals": f"/api/im/conversations/{cid}/arrivals",
            "messages": "/api/im/messages", "message": f"/api/im/messages/{mid}",
            "versions": f"/api/im/messages/{mid}/versions",
            "appends": f"/api/im/messages/{mid}/appends",
            "switch": f"/api/im/messages/{mid}/switch"}[what]
    if what == "changes":  # a longpoll would wait: keep the fuzz to answers given at once
        params = [(k, v) for k, v in params if k != "feed"]
    headers = {"content-type": kind} | ({"authorization": auth} if auth else {})

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://127.0.0.1") as c:
            return await c.request(method, path, params=params, headers=headers,
                                   content=body if method not in ("GET", "DELETE") else None)

    head = replicas.head
    response = trio.run(run)
    assert response.status_code < 500, response.text
    answer = response.json()
    if response.status_code >= 400:
        assert answer["status_code"] == response.status_code and answer["error"]
        assert replicas.head == head
    else:
        assert answer["status_code"] == 0
