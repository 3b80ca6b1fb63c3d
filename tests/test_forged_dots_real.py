"""The forged-dot attack of the hardening issue (finding 1), against a real `crdtim serve`.

An authenticated peer whose scope is only `shared/` sends the server a pin of a shared
conversation whose causal context claims dot (X, 1000000) of another device X (X's id is in
every delta of a shared conversation). Before the fix the server logged it, X then refused
every delta from the server ("claims enable 1000000 of this replica, which made only 1"),
its private conversations included, and replication between the two stopped for good. Now
the claim is joined where it arrives and at X (confined to that one flag and healed by X's
next enable, specs/security.md §1): both directions keep replicating, private writes too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

from crdtim import codec
from crdtim.protocol import Delta, encode_frame
from crdtim.replica import Replica
from http_servers import cli, free_port, serve
from test_hardening import forged_claim
from test_memory_amplification import (
    GUARD,
    LOCAL,
    SECRET,
    Attacker,
    honest_node,
    wait_listening,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="subprocesses")

AUTHZ = '[scopes]\nhonest = [""]\nattacker = ["shared/"]\n'


async def until(replica: Replica, predicate) -> None:  # type: ignore[no-untyped-def]
    """Until `predicate()` holds, woken by the replica's change events (GUARD bounds it)."""
    with replica.subscribe() as changes, trio.fail_after(GUARD):
        while not predicate():
            await changes.receive_channel.receive()  # type: ignore[union-attr]


async def test_a_forged_claim_on_a_third_replicas_dot_does_not_cut_it_off(tmp_path: Path):
    port = free_port()
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(f"honest {SECRET}\nattacker {SECRET}\n")
    secrets_file.chmod(0o600)
    (tmp_path / "authz.toml").write_text(AUTHZ)
    server_dir = tmp_path / "server"
    cli(server_dir, "init")
    with serve(server_dir, "--listen", f"{LOCAL}:{port}", "--quiet",
               "--secret-file", str(secrets_file), "--authz", str(tmp_path / "authz.toml")
               ) as child, Replica.open(tmp_path / "x") as x, \
            Replica.open(tmp_path / "mallory") as mallory:
        wait_listening(port, child)
        async with honest_node(x, port) as node:
            x.pin("shared/a")
            await node.wait_caught_up(1, timeout=GUARD)

            attacker = await Attacker.connect(port, mallory)
            forged = codec.encode_map(forged_claim("shared/a", x.id, 1_000_000))
            await attacker.stream.send_all(encode_frame(Delta(start=0, end=1, payload=forged)))

            # The server accepted it and forwards it to X, which joins it too.
            await until(x, lambda: x.state().fields("shared/a")["pinned"].context
                        .next_dot(x.id)[1] > 1_000_000)
            # Both directions still replicate, outside the attacker's scope too.
            x.set_title("private/from-x", "x")
            await node.wait_caught_up(1, timeout=GUARD)
            assert "x" in cli(server_dir, "show", "private/from-x")
            cli(server_dir, "title", "private/from-server", "s")
            await until(x, lambda: x.get("private/from-server") is not None)
            # X's next enable of that flag lands past the claim: no counter is reused.
            x.unpin("shared/a")
            x.pin("shared/a")
            dots = x.state().fields("shared/a")["pinned"].dots
            assert max(n for r, n in dots if r == x.id) > 1_000_000
            await node.wait_caught_up(1, timeout=GUARD)
            await attacker.stream.aclose()
