"""Opens damaged copies of a replica directory and reads everything in them, for
tests/test_damage.py. Not a test module itself.

    python tests/damage_child.py
        Reads directory paths from stdin, one per line. For each it prints one JSON line once
        done, and flushes: {"outcome": "refused", "error": E} when Replica.open raised a
        CrdtimError, {"outcome": "reported", "error": E} when a read did, {"outcome": "read",
        "digest": D} when everything read back (D: every conversation, the listing order, the
        head, the log floor and the decoded log, and every message record: each message as
        Replica.message shows it, each choice, each history page), {"outcome": "uncaught", "error": E} for any
        other exception. A signal ends the process: the parent sees that as a crash of the
        case it sent last, and starts another child for the rest.
"""

from __future__ import annotations

import hashlib
import json
import sys

from crdtim import Replica
from crdtim.errors import CrdtimError


def digest(r: Replica) -> str:
    listed = [c.id for c in r]
    parts = [repr(r.get(cid)) for cid in listed]
    parts += [repr(sorted(r.state().convs)), repr(listed), repr((r.head, r.log_floor))]
    # (sorted: a frozenset's repr follows the process's string hashing)
    parts += [repr((seq, c.conversation, sorted(c.fields), c.origin, c.peer))
              for seq, c in r.changes_since(r.log_floor)]
    for cid, fields in sorted(r.state().convs.items()):
        history = fields.get("messages")
        if history is None:
            continue
        parts += [json.dumps(r.message(cid, mid).to_json(), sort_keys=True)
                  for mid in sorted(history.messages)]
        parts += [repr((g, tuple(c.stamp), c.value)) for g, c in sorted(history.choices.items())]
        parts.append(repr([m.id for m in r.history(cid, limit=10_000).items]))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def read_all(path: str) -> dict[str, str]:
    try:
        r = Replica.open(path, create=False)
    except CrdtimError as e:
        return {"outcome": "refused", "error": str(e)}
    except Exception as e:  # noqa: BLE001 -- what the test counts as a defect
        return {"outcome": "uncaught", "error": f"{type(e).__name__}: {e}"}
    try:
        return {"outcome": "read", "digest": digest(r)}
    except CrdtimError as e:
        return {"outcome": "reported", "error": str(e)}
    except Exception as e:  # noqa: BLE001
        return {"outcome": "uncaught", "error": f"{type(e).__name__}: {e}"}
    finally:
        try:
            r.close()
        except CrdtimError:
            pass


if __name__ == "__main__":
    for line in sys.stdin:
        sys.stdout.write(json.dumps(read_all(line.rstrip("\n"))) + "\n")
        sys.stdout.flush()
