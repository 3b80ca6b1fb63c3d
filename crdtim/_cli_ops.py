"""The `crdtim` commands for running a replica as a service: `verify` (and `--repair`),
`backup`, `restore` and `unbind-peer` (specs/storage.md §8a, §8b).

Thin: each parses its arguments, calls one function of crdtim/maintenance.py or one Replica
method, and prints the outcome. `verify` never opens the replica in this process: the walk
runs in a child, so that damage inside liblmdb cannot take the command down.
"""

from __future__ import annotations

import argparse
import json

from . import maintenance
from ._cli_common import EXIT_FAILURE, EXIT_OK, Subcommand, arg, data_dir, existing_replica

__all__ = ["OPS_COMMANDS"]


def cmd_verify(args: argparse.Namespace) -> int:
    report = maintenance.verify(data_dir(args), repair=args.repair)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif report.crashed is not None:
        print(f"{report.path}: the store is damaged: liblmdb aborted reading it "
              f"({report.crashed}); restore it from a backup, or remove it and let its "
              f"peers fill a new replica")
    else:
        for p in report.problems:
            print(f"{p.database} {p.key}: {p.problem}" if p.key else f"{p.database}: {p.problem}")
        counts = ", ".join(f"{n} {db}" for db, n in report.checked.items())
        print(f"{report.path}: {'ok' if report.ok else f'{len(report.problems)} problem(s)'}"
              f" ({counts or 'nothing'} checked)")
        if report.repaired:
            print("repaired: " + ", ".join(f"{k} {v}" for k, v in report.repaired.items()))
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_backup(args: argparse.Namespace) -> int:
    maintenance.backup(data_dir(args), args.dest)
    print(f"backed up {data_dir(args)} to {args.dest}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    new_id = maintenance.restore(args.src, data_dir(args))
    print(f"restored {args.src} to {data_dir(args)} as a new replica {new_id}")
    return EXIT_OK


def cmd_unbind_peer(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        replica.unbind_peer(args.replica_id)
    print(f"unbound {args.replica_id}")
    return EXIT_OK


OPS_COMMANDS: dict[str, Subcommand] = {
    "verify": Subcommand(cmd_verify, "check every record (checksums, encoding, index) in a "
                         "child process; exit 0 only when all is well", (
        arg("--json", action="store_true", help="print the report as JSON"),
        arg("--repair", action="store_true",
            help="drop damaged records, rebuild the index, and let peers send the rest again"),
    )),
    "backup": Subcommand(cmd_backup, "a consistent, compacted copy of the replica, also while "
                         "it is being served", (
        arg("dest", metavar="DEST", help="new (or empty) directory for the copy"),
    )),
    "restore": Subcommand(cmd_restore, "make the --data directory a new replica (new id) from "
                          "a backup; peers fill in what happened since", (
        arg("src", metavar="SRC", help="the backup directory"),
    )),
    "unbind-peer": Subcommand(cmd_unbind_peer, "forget the identity a peer's replica id is "
                              "bound to", (
        arg("replica_id", metavar="REPLICA_ID"),
    )),
}
