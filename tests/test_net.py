"""trio transport: real Nodes on loopback TCP (port 0), with no sleeps to wait for things.

Waiting is done on the node's own signals (`wait_connected`, `wait_caught_up`, and the
condition they use); `trio.fail_after` only guards against a hang. `settle` calls every
node's `wait_caught_up` in turn until no log grew meanwhile: then every link has
acknowledged every entry of every log, and all the states are equal.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from crdtim.net import Node, NodeConfig
from crdtim.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Delta,
    Error,
    Hello,
    SessionConfig,
    encode_frame,
)
from crdtim.replica import Replica
from frames import frames_of
from nodes import FAST, GUARD, LOCAL, read_to_eof, settle, wait_until


def node(replica: Replica, *peers: Node, listen: bool = True, config: NodeConfig = FAST) -> Node:
    return Node(replica, listen=(LOCAL, 0) if listen else None,
                peers=[(LOCAL, p.port) for p in peers], config=config)


# -- convergence ------------------------------------------------------------------------------


async def test_three_nodes_converge(open_replica):
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    a.set_title("c1", "written offline at a")
    async with node(a) as na, node(b, na) as nb, node(c, na, nb) as nc:
        b.pin("c1")
        c.message_arrived("c2", 7, "hello", at=1000)
        a.message_arrived("c2", 5, "earlier", at=900)  # a read is of a message seen here
        a.mark_read("c2", 5)
        with b.batch():
            for i in range(50):
                b.set_title(f"b{i}", "batch")
        await settle((na, 2), (nb, 2), (nc, 2))
        assert a.state() == b.state() == c.state()
        c1, c2 = c.get("c1"), a.get("c2")
        assert (c1.title, c1.pinned) == ("written offline at a", True)
        assert (c2.last_preview, c2.unread) == ("hello", 2)
        assert len(a) == 52
        assert na.connected_peers == {b.id, c.id}
        assert nb.stats.deltas_received > 0 and na.stats.errors == 0


async def test_stopped_node_catches_up_after_restart(open_replica, tmp_path):
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    async with node(a) as na, node(b, na) as nb:
        async with node(c, na, listen=False) as nc:
            await nc.wait_connected()
            for i in range(30):  # writes while replicating; the node stops in the middle
                c.set_title(f"c{i}", "from c")
                a.message_arrived(f"c{i}", i + 1, "from a", at=i)
                await trio.sleep(0)  # a checkpoint, so the node's tasks run between writes
        c_id = c.id
        c.close()
        for i in range(30):  # more writes elsewhere while c is down
            b.pin(f"c{i}")
        c = open_replica("c")  # the same directory: the same replica
        assert c.id == c_id
        async with node(c, na, listen=False) as nc:
            await settle((na, 2), (nb, 1), (nc, 1))
            assert a.state() == b.state() == c.state()
            assert all(conv.title == "from c" and conv.pinned for conv in a)
            assert nc.stats.state_transfers_received == 0  # it resumed from its acks


async def test_peer_behind_trimmed_logs_gets_a_state_transfer(open_replica):
    a, b = open_replica("a", log_retention=3), open_replica("b")
    async with node(a) as na:
        async with node(b, na, listen=False) as nb:
            a.set_title("x", "before")
            await settle((na, 1), (nb, 1))
        sent_before = na.stats.state_transfers_sent
        for i in range(20):  # b is down; a writes on and drops what b has not seen
            a.set_title(f"c{i}", "while b was away")
        a.trim_log()
        assert a.log_floor > a.peer_ack(b.id)
        async with node(b, na, listen=False) as nb:
            await settle((na, 1), (nb, 1))
            assert nb.stats.state_transfers_received == 1
            assert na.stats.state_transfers_sent == sent_before + 1
            assert b.state() == a.state()
            a.set_title("x", "after")  # and then deltas again
            await settle((na, 1), (nb, 1))
            assert b.get("x").title == "after"
            assert nb.stats.state_transfers_received == 1


async def test_writes_by_another_process_are_replicated(open_replica):
    a, b = open_replica("a"), open_replica("b")
    script = (
        "import sys, crdtim\n"
        "with crdtim.Replica.open(sys.argv[1]) as r:\n"
        "    r.set_title('from-cli', 'written by another process')\n"
        "    r.pin('from-cli')\n"
    )
    async with node(a) as na, node(b, na) as nb:
        await settle((na, 1), (nb, 1))
        head = a.head
        with trio.fail_after(GUARD):
            await trio.run_process([sys.executable, "-c", script, a.path],
                                   cwd=str(Path(__file__).resolve().parents[1]))
        assert a.head == head + 2  # the other process's commits, in our log
        await settle((na, 1), (nb, 1))
        conv = b.get("from-cli")
        assert conv is not None and (conv.title, conv.pinned) == ("written by another process", True)


# -- connections ------------------------------------------------------------------------------


async def test_two_nodes_dialing_each_other_keep_one_link(open_replica):
    a, b = open_replica("a"), open_replica("b")
    async with node(a) as na, node(b) as nb:
        na.add_peer((LOCAL, nb.port))
        nb.add_peer((LOCAL, na.port))
        await settle((na, 1), (nb, 1))
        await wait_until(na, lambda: len(na._all_links) == 1)
        await wait_until(nb, lambda: len(nb._all_links) == 1)
        assert na.connected_peers == {b.id} and nb.connected_peers == {a.id}
        # Both sides kept the same TCP connection: the one dialed by the smaller id.
        kept_a, kept_b = na._links[b.id], nb._links[a.id]
        assert kept_a.dialer == kept_b.dialer == min(a.id, b.id)
        assert na.stats.connections_open == nb.stats.connections_open == 1
        a.set_title("c", "one link is enough")
        await settle((na, 1), (nb, 1))
        assert b.get("c").title == "one link is enough"


GARBAGE = {
    "http request": b"GET / HTTP/1.1\r\nHost: crdtim\r\n\r\n",  # "GET " is a 1.2 GB length
    "not msgpack": b"\x00\x00\x00\x02\xc1\xc1",
    "delta before hello": encode_frame(Delta(start=0, end=1, payload=b"\x93\x01\x90\x80")),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
async def test_garbage_gets_an_error_frame_and_the_node_keeps_serving(open_replica, name):
    a, b = open_replica("a"), open_replica("b")
    async with node(a) as na, node(b, na) as nb:
        await settle((na, 1), (nb, 1))
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            await stream.send_all(GARBAGE[name])
            frames = frames_of(await read_to_eof(stream))  # ...and then it closes
        assert isinstance(frames[0], Hello) and isinstance(frames[-1], Error)
        assert frames[-1].reason
        assert na.stats.errors == 1
        b.set_title("c", "still served")
        await settle((na, 1), (nb, 1))
        assert a.get("c").title == "still served"
        assert na.connected_peers == {b.id}


async def test_unstorable_peer_id_refused_without_harming_the_node(open_replica):
    # Regression: 64 characters passed HELLO, but they are 256 bytes in UTF-8, more than a
    # log entry can name as its origin; the first DELTA then raised InvalidArgument out of
    # the session and killed the whole node.
    from crdtim import codec
    from crdtim.crdt import ConversationMap

    a, b = open_replica("a"), open_replica("b")
    payload = codec.encode_map(ConversationMap.bottom().raise_to("c", "last_seq", 3))
    async with node(a) as na, node(b, na) as nb:
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            await stream.send_all(
                encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="\U0001F600" * 64))
                + encode_frame(Ack(seq=0))
                + encode_frame(Delta(start=0, end=1, payload=payload)))
            frames = frames_of(await read_to_eof(stream))
        assert isinstance(frames[-1], Error) and "replica id" in frames[-1].reason
        assert na.stats.errors == 1 and len(a) == 0
        b.set_title("c", "still served")
        await settle((na, 1), (nb, 1))
        assert a.get("c").title == "still served"


async def test_unstorable_conversation_id_refused_without_harming_the_node(open_replica):
    # Regression: a DELTA whose conversation id is within the codec's character limit but
    # over LMDB's key size used to escape the session as a non-protocol error and kill the
    # whole node.
    from crdtim import codec
    from crdtim.crdt import ConversationMap

    a, b = open_replica("a"), open_replica("b")
    cid = "\U0001F600" * 256
    payload = codec.encode_map(ConversationMap.bottom().raise_to(cid, "last_seq", 3))
    async with node(a) as na, node(b, na) as nb:
        await settle((na, 1), (nb, 1))
        stream = await trio.open_tcp_stream(LOCAL, na.port)
        async with stream:
            await stream.send_all(
                encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="rawpeer"))
                + encode_frame(Ack(seq=0))
                + encode_frame(Delta(start=0, end=1, payload=payload)))
            frames = frames_of(await read_to_eof(stream))
        assert isinstance(frames[-1], Error) and "refused" in frames[-1].reason
        assert a.received_from("rawpeer") == 0 and len(a) == 0
        b.set_title("c", "still served")
        await settle((na, 1), (nb, 1))
        assert a.get("c").title == "still served"


async def test_garbage_while_the_sender_is_blocked_does_not_crash_the_node(open_replica):
    # Regression: on bad input the receiver task wrote the ERROR frame itself while the
    # sender task was stuck in send_all to a peer that does not read: trio raised
    # BusyResourceError and the whole node died.
    a = open_replica("a")
    for i in range(200):  # ~8 MB in 200 log entries: far more than the socket buffers hold
        with a.batch():
            for j in range(10):
                a.message_arrived(f"c{i}-{j}", 1, "x" * 4000, at=1)
    config = NodeConfig(poll_interval=60, linger=0,
                        session=SessionConfig(max_entries_per_delta=25))
    async with node(a, config=config) as na:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # before connect
        await sock.connect((LOCAL, na.port))
        stream = trio.SocketStream(sock)
        async with stream:
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION,
                                                     replica_id="slowpeer"))
                                  + encode_frame(Ack(seq=0)))
            with trio.fail_after(GUARD):
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            (link,) = na._all_links
            if not link.send_lock.locked():  # the sender is not stuck in send_all
                pytest.skip("this machine's socket buffers took all 8 MB at once")
            await stream.send_all(b"\x00\x00\x00\x02\xc1\xc1")
            frames = frames_of(await read_to_eof(stream))
        assert any(isinstance(m, Delta) for m in frames)
        assert isinstance(frames[-1], Error) and "malformed" in frames[-1].reason
        assert na.stats.errors == 1
        assert not na._all_links
