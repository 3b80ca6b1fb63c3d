"""What an operator does with a replica whose data file was damaged (specs/faults.md §4.2),
and what the real-process run learns from it: which acknowledged writes the damage may
legitimately lose, whether the damage hit live data, and whether crdtim detected it.

The damaged replica never serves before the operator's flow has run: its server and
workload are stopped, its file is damaged (disk.py), a one-shot read (`crdtim ls`) must
fail cleanly or succeed, then `crdtim verify`; on damage, `verify --repair`, verify again,
and if that still fails the directory is replaced by a new replica. Only then is the server
started again. (A server reading a damaged page may be aborted by liblmdb itself, an
assertion: specs/storage.md §6; the flow does not depend on how long a server runs on the
file, so it cannot flake on that.)
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
import random
from typing import TYPE_CHECKING

import trio

from crdtim import maintenance
from crdtim.replica import Replica

from .checker import plain, reached
from .disk import damage_data_file, live_values
from .processes import Server, Workload, child_env, log_note, read_states, wipe

if TYPE_CHECKING:
    from .cluster import ClusterReport

__all__ = ["damage_and_recover"]

#: Of the damages, every this many-th (the 2nd, 6th, ...) is to LMDB's page structure; the
#: others to stored values (specs/faults.md §4.2).
STRUCTURE_EVERY = 4


async def damage_and_recover(s: Server, w: Workload, paths: Sequence[str],
                             rng: random.Random, report: ClusterReport, serve_log: str,
                             start_server: Callable[[Server], Awaitable[None]],
                             start_workload: Callable[[Workload], Awaitable[None]]) -> None:
    """Between rounds: damage the stopped server `s`'s data file, do what an operator would,
    and note which acknowledged writes it may lose (`report.at_risk`), what the damage hit
    and what detected it (`report.damages`, `report.damage`, `report.problems`)."""
    await w.kill9()  # paused: no call in progress; it must not read the damaged file
    others = await trio.to_thread.run_sync(read_states, [p for p in paths if p != s.path])
    held = [{cid: plain(st.fields(cid)) for cid in st.convs} for st in others.values()]
    mine = [op for op in w.ops if op.replica == w.replica_id]
    unreached = [op for op in mine if not any(reached(op, h.get(op.cid, {})) for h in held)]
    structure = report.damages["tried"] % STRUCTURE_EVERY == 1
    values = await trio.to_thread.run_sync(live_values, s.path, rng)
    damage = await trio.to_thread.run_sync(damage_data_file, s.path, rng, values, structure)
    report.faults["damage_structure" if structure else "damage_value"] += 1
    report.damages["tried"] += 1
    report.damages["hit_live_data"] += damage.live
    log_note(serve_log, damage.describe())
    report.damage_notes.append(f"server {s.index}: {damage.describe()}")
    # 1. A one-shot read on the damaged file: it may work (the damage is elsewhere), or
    #    refuse with one clear line; liblmdb may abort it (a crash, counted).
    read = await trio.to_thread.run_sync(_read_once, s)
    detected = read == "refused"
    if read == "crashed":
        report.damages["crashed"] += 1
    elif read not in ("ok", "refused"):
        report.problems.append(f"`crdtim ls` on the damaged file of server {s.index}: {read}")
    # 2. verify (a child: damage that aborts liblmdb ends the child only).
    found = await trio.to_thread.run_sync(maintenance.verify, s.path)
    if found.crashed:
        report.damage["verify_walk_crashed"] += 1
        report.damages["crashed"] += 1
    elif not found.ok:
        report.damage["verify_found_damage"] += 1
    if found.ok:
        report.damage["no_damage_seen"] += 1
        if damage.live:  # a live value damaged and no check saw it: crdtim's bug
            report.problems.append(f"server {s.index}: {damage.describe()}, but verify found "
                                   f"nothing" + (" (ls refused)" if detected else ""))
        if detected:
            report.damages["detected"] += 1
        await start_server(s)
        return await _restart_workload(w, start_workload)
    report.damages["detected"] += 1
    # 3. repair, verify again; a walk that cannot mend it: replace the directory by a new
    #    replica, which its peers fill (specs/storage.md §8a).
    repair = await trio.to_thread.run_sync(
        functools.partial(maintenance.verify, s.path, repair=True))
    after = await trio.to_thread.run_sync(maintenance.verify, s.path)
    damaged: set[str] | None = set()  # conversations whose state may be lost; None: all
    if after.ok:
        done = repair.repaired or {}
        report.damage["repaired_new_id" if "new_id" in done else "repaired_same_id"] += 1
        damaged = _damaged_conversations(found.problems + repair.problems)
        if not (done.get("conversations_dropped") or done.get("message_records_dropped")):
            damaged = set()  # nothing of the state was dropped: nothing can be lost
    else:
        report.damage["replaced_by_new_replica"] += 1
        await trio.to_thread.run_sync(wipe, s.path)
        damaged = None
    report.at_risk.extend(op for op in unreached if damaged is None or op.cid in damaged)
    await start_server(s)
    await _restart_workload(w, start_workload)


def _damaged_conversations(problems: Sequence[maintenance.Problem]) -> set[str] | None:
    """The conversations whose records a repair may have dropped (None: any)."""
    damaged: set[str] = set()
    for p in problems:
        if p.database in ("convs", "messages"):  # their records may be dropped
            cid = re.match(r"'([^']*)'", p.key)
            if cid is None:
                return None
            damaged.add(cid.group(1))
        elif p.database not in ("order", "log", "mindex", "acks"):  # these drop no state
            return None
    return damaged


def _read_once(s: Server) -> str:
    """`crdtim ls` on the stopped server's directory: "ok", "refused" (exit 1, one
    `crdtim: error:` line naming the directory), "crashed" (a signal), or what was wrong."""
    done = subprocess.run([sys.executable, "-m", "crdtim", "--data", s.path, "ls"],
                          env=child_env(s.offset_ms), capture_output=True, text=True,
                          check=False, timeout=60)
    if done.returncode < 0:
        return "crashed"
    if done.returncode == 0:
        return "ok"
    lines = done.stderr.strip().splitlines()
    if (done.returncode == 1 and len(lines) == 1 and lines[0].startswith("crdtim: error: ")
            and s.path in lines[0] and "Traceback" not in done.stderr):
        return "refused"
    return f"exit {done.returncode}, stderr {done.stderr.strip()[-300:]!r}"


async def _restart_workload(w: Workload,
                            start_workload: Callable[[Workload], Awaitable[None]]) -> None:
    with Replica.open(w.path, create=False) as r:  # a repair gives it a new id
        w.replica_id = r.id
    await start_workload(w)
    await w.pause()

