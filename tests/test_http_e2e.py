"""End to end: two real `crdtim serve` processes on loopback, `b` with --http and peered
with `a`. A command-line write to `a`'s directory reaches `b` by replication and appears at
an event-stream client of `b` (httpx, streaming over TCP) and in its list."""

from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("hypercorn")

import trio  # noqa: E402
from http_servers import cli, two_replicas  # noqa: E402


async def test_a_cli_write_on_a_peer_reaches_an_sse_client_and_the_list(tmp_path):
    with two_replicas(tmp_path) as (a, port):
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            with trio.fail_after(30):
                # the demo data has replicated to b once `family` is listed there
                for _ in range(200):
                    ids = [x["id"] for x in (await c.get("/api/im/conversations")).json()
                           ["data"]["conversations"]]
                    if "family" in ids:
                        break
                    await trio.sleep(0.05)
                assert set(ids) == {"work", "alice", "family", "chat"} and ids[0] == "work"
                async with c.stream("GET", "/api/im/changes",
                                    params={"feed": "eventsource", "since": "now",
                                            "heartbeat": 10_000}) as stream:
                    assert stream.headers["content-type"].startswith("text/event-stream")
                    lines = stream.aiter_lines()
                    assert (await anext(lines)).startswith("retry:")
                    await trio.to_thread.run_sync(cli, a, "title", "family", "From A")
                    event = None
                    async for line in lines:
                        if line.startswith("data: "):
                            event = json.loads(line[6:])
                            if any(x["id"] == "family" for x in event["conversations"]):
                                break
                assert event is not None and event["origin"] == "remote"
                assert event["conversations"] == [{"id": "family", "fields": ["title"],
                                                         "messages": []}]
                one = (await c.get("/api/im/conversations/family")).json()["data"]
                assert one["title"] == "From A"
                listed = (await c.get("/api/im/conversations")).json()["data"]
                assert "From A" in [x["title"] for x in listed["conversations"]]
