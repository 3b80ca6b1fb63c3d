"""`crdtim demo`: three replicas of one user -- phone, laptop, server -- replicating on
loopback, each step printed as a side-by-side table. Needs no input, writes only to a
temporary directory, and shows the behaviours a user relies on: concurrent pin and unpin
ending pinned, edits made offline merging, reading on one device clearing the badge on all,
and a message history: a reply streamed token by token, regenerated on another device and
switched back on a third, the same on every device at each step.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from .net import Node, NodeConfig
from .replica import Replica

NAMES = ("phone", "laptop", "server")
#: The messages part's conversation, question, streamed reply and regenerated reply.
CHAT = "assistant"
QUESTION = "What is a CRDT?"
TOKENS = ("Data ", "that merges ", "on every ", "device.")
REGENERATED = "A lattice: joins converge."


def _cell(r: Replica, cid: str) -> str:
    c = r.get(cid)
    if c is None:
        return "-"
    marks = ("^" if c.pinned else " ") + ("~" if c.muted else " ")
    badge = f" ({c.unread})" if c.unread else ""
    return f"{marks}{c.title or c.id}{badge}"


def _table(replicas: dict[str, Replica], cids: list[str], online: dict[str, bool]) -> str:
    heads = [f"{n}{'' if online[n] else ' (offline)'}" for n in replicas]
    rows = [[cid] + [_cell(r, cid) for r in replicas.values()] for cid in cids]
    widths = [max(len(x) for x in col)
              for col in zip(["conversation", *heads], *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [line(["conversation", *heads]), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _thread(r: Replica) -> list[str]:
    """The visible history of CHAT on `r`, oldest first, one short cell per message."""
    cells = []
    for m in reversed(r.history(CHAT).items):
        version = f" {m.version + 1}/{m.versions}" if m.versions > 1 else ""
        cells.append(f"{m.role}{version}: {'(deleted)' if m.deleted else m.text}")
    return cells


def _threads(replicas: dict[str, Replica]) -> str:
    rows = [[name, *_thread(r)] for name, r in replicas.items()]
    columns = max(len(row) for row in rows)
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    return "\n".join(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


async def _messages(replicas: dict[str, Replica], settle: Callable[[], Awaitable[None]],
                    say: Callable[[str], None]) -> bool:
    """Steps 4-6, all three online: the history is the same everywhere after each step."""
    phone, laptop, server = (replicas[n] for n in NAMES)

    def show(title: str) -> None:
        say(f"\n== {title}\n")
        say(_threads(replicas))

    phone.post(CHAT, QUESTION)
    await settle()
    say("\n== 4. The phone asks; the server streams the answer a token at a time, and the "
        "laptop shows it growing\n")
    reply = server.post(CHAT, "", role="assistant")
    for token in TOKENS:
        server.append(CHAT, reply.id, token)
        await settle()
        shown = laptop.message(CHAT, reply.id)
        say(f"   laptop: {shown.text if shown else '-'!r}")
    say(_threads(replicas))

    laptop.regenerate(CHAT, reply.id, REGENERATED)
    await settle()
    show("5. The laptop regenerates the answer: version 2 of 2, on every device")

    phone.switch(CHAT, reply.id)
    await settle()
    show("6. The phone switches back to the first version")
    threads = [[m.to_json() for m in r.history(CHAT).items] for r in replicas.values()]
    same = all(t == threads[0] for t in threads)
    say("Histories identical: " + ("yes" if same else "NO"))
    return same and _thread(phone)[-1] == f"assistant 1/2: {''.join(TOKENS)}"


async def _demo(root: str, say: Callable[[str], None]) -> bool:
    cfg = NodeConfig(poll_interval=0.05)
    replicas = {n: Replica.open(f"{root}/{n}") for n in NAMES}
    phone, laptop, server = (replicas[n] for n in NAMES)
    cids = ["family", "work", "alice"]
    online = {n: True for n in NAMES}
    bytes_sent = 0

    def show(title: str) -> None:
        say(f"\n== {title}\n")
        say(_table(replicas, cids, online))
        say("   (^ pinned, ~ muted, (n) unread)")

    async def settle(nodes: list[Node]) -> None:
        # Quiet when every node's peers have acknowledged its whole log, twice in a row with
        # no head moving (forwarded entries make new log entries on the hub).
        while True:
            heads = [n.replica.head for n in nodes]
            for n in nodes:
                await n.wait_caught_up(len(n.peers) or len(nodes) - 1)
            if heads == [n.replica.head for n in nodes]:
                return

    async with Node(server, listen=("127.0.0.1", 0), config=cfg) as hub:
        addr = [("127.0.0.1", hub.port)]
        async with Node(laptop, peers=addr, config=cfg) as laptop_node:
            async with Node(phone, peers=addr, config=cfg) as phone_node:
                say(f"phone {phone.id}, laptop {laptop.id} and server {server.id} "
                    f"replicate over 127.0.0.1:{hub.port} (LMDB in {root})")
                laptop.set_title("family", "Family")
                laptop.set_title("work", "Work")
                phone.set_title("alice", "Alice")
                phone.pin("work")
                for seq, text in enumerate(["see you at 7", "bring the cake"], start=1):
                    server.message_arrived("family", seq, text)
                server.message_arrived("alice", 1, "hi!")
                await settle([hub, laptop_node, phone_node])
                show("1. All three online: writes anywhere show up everywhere")
                bytes_sent += sum(n.stats.bytes_sent for n in (laptop_node, phone_node))

            online["phone"] = False
            phone.unpin("work")  # offline, so concurrent with the laptop's pin below
            phone.set_title("family", "Family (phone)")
            phone.mute("alice")
            # The two titles are concurrent; the later clock wins. Let the laptop's be a few
            # milliseconds later, or a tie within one millisecond would go to the larger
            # (random) replica id and the demo would tell a different story each run.
            await trio.sleep(0.005)
            laptop.pin("work")
            laptop.set_title("family", "Family <3")
            for seq in range(3, 7):
                server.message_arrived("family", seq, f"message {seq}")
            await settle([hub, laptop_node])
            laptop.mark_read("family", 6)
            await settle([hub, laptop_node])
            show("2. Phone offline: it unpins 'work' while the laptop pins it; both retitle "
                 "'family'; messages arrive at the server and are read on the laptop")
            bytes_sent += laptop_node.stats.bytes_sent

        online["phone"] = True
        async with Node(laptop, peers=addr, config=cfg) as laptop_node, \
                Node(phone, peers=addr, config=cfg) as phone_node:
            started = time.perf_counter()
            await settle([hub, laptop_node, phone_node])
            took = time.perf_counter() - started
            show("3. Phone back online: concurrent pin and unpin -> pinned (add-wins); the "
                 "later title wins; the badge read on the laptop is cleared on the phone")
            histories_ok = await _messages(
                replicas, lambda: settle([hub, laptop_node, phone_node]), say)
            bytes_sent += sum(n.stats.bytes_sent for n in (laptop_node, phone_node))
        bytes_sent += hub.stats.bytes_sent

    states = [r.state() for r in replicas.values()]
    same = all(s == states[0] for s in states)
    work = phone.get("work")
    family = phone.get("family")
    ok = (same and histories_ok and work is not None and work.pinned and family is not None
          and family.unread == 0 and family.title == "Family <3")
    say(f"\nConverged after reconnect in {took * 1000:.1f} ms; {bytes_sent} bytes sent in all "
        f"(both directions, all links, handshakes included).")
    say("All replicas identical: " + ("yes" if same else "NO"))
    for r in replicas.values():
        r.close()
    return ok


def run_demo(say: Callable[[str], None] = print) -> int:
    logging.getLogger("crdtim").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="crdtim-demo-") as root:
        ok = trio.run(_demo, root, say)
    return 0 if ok else 1
