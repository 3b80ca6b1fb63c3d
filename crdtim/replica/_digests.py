"""Per-conversation digests for range-based set reconciliation, and the states of chosen
conversations for the sync session (specs/protocol.md §13).

A conversation's digest is a 16-byte BLAKE2b of its id, its stored `convs` record and its
message and choice records (unsealed: their checksums cover a local number), in key order.
Equal digests mean equal stored bytes, hence equal states; different bytes for one state
(a conversation stored as a STATE_CHUNK brought it, specs/storage.md §2) only make a range
look different, which costs bytes, never a write: what is then sent is joined. Reads only,
each in one read transaction (a consistent snapshot, specs/storage.md §4).
"""

from __future__ import annotations

import hashlib

from .. import codec
from ..crdt.conversation import Fields
from ..errors import CorruptStoreError, DecodeError
from ..store import Txn
from ._core import ReplicaCore
from ._message_index import MessageIndex
from ._subscriptions import MESSAGES

__all__ = ["DIGEST_BYTES", "Digests"]

DIGEST_BYTES = 16
_CHECKSUM_BYTES = 4  # the seal after every value (specs/storage.md "Checksums")
_CIDS = b"\xff"  # mindex: 0xFF cid -> the conversation's message number


class Digests(ReplicaCore):
    """The reads behind reconciliation (crdtim/protocol/_reconcile.py)."""

    def conversation_digests(self, scope: tuple[str, ...] | None = None
                             ) -> tuple[int, list[bytes], bytes]:
        """(head, the ids in `scope` in key order as UTF-8, their digests concatenated),
        read in one transaction: the state read holds every log entry up to `head`.

        One pass over `convs` and one over the message numbers (the ids with messages); a
        conversation with messages adds a range read of its records."""
        prefixes = None if scope is None else tuple(p.encode() for p in scope)
        # Copying an empty hash is a third of the cost of constructing one with its
        # parameters, once per conversation; the digests are the same.
        empty = hashlib.blake2b(digest_size=DIGEST_BYTES)

        def read(t: Txn) -> tuple[int, list[bytes], bytes]:
            head = t.head()
            ids: list[bytes] = []
            digests = bytearray()
            # The conversations with messages, by id: most have none, and a set lookup is
            # cheaper than a merge step per record.
            numbered = {k[1:] for k, _ in t.scan("mindex", _CIDS + b"\x00")}
            append = ids.append
            for key, sealed in t.scan("convs", b""):
                if prefixes is not None and not key.startswith(prefixes):
                    continue
                # The sealed value's checksum covers the id and the value only: the same
                # bytes on every replica that stores the same value.
                h = empty.copy()
                h.update(key)
                h.update(b"\x00")
                h.update(sealed)
                if key in numbered:
                    for name, raw in MessageIndex(t, key.decode()).records():
                        h.update(len(name).to_bytes(2, "big"))
                        h.update(name)
                        h.update(len(raw).to_bytes(4, "big"))
                        h.update(raw[:-_CHECKSUM_BYTES])
                digests += h.digest()
                append(key)
            return head, ids, bytes(digests)

        return self.store.read(read)

    def encoded_conversations(self, cids: list[bytes], max_conversations: int,
                              max_bytes: int | None) -> tuple[bytes | None, int]:
        """(codec.encode_map of the whole states, messages included, of the first of `cids`
        within `max_conversations` and, but for the first, `max_bytes` of stored records;
        how many were taken). Ids with no stored conversation are skipped (counted taken);
        None when none of those taken is stored."""
        def read(t: Txn) -> tuple[dict[str, Fields], int]:
            convs: dict[str, Fields] = {}
            size = taken = 0
            for cid_bytes in cids:
                if taken == max_conversations:
                    break
                cid = cid_bytes.decode()
                raw = t.conversation(cid)
                if raw is None:
                    taken += 1
                    continue
                index = MessageIndex(t, cid)
                history = index.state()
                size += len(raw)
                if not history.is_bottom():
                    size += sum(len(v) for _, v in index.records())
                if convs and max_bytes is not None and size > max_bytes:
                    break
                fields = self._decode(cid, raw)
                convs[cid] = {**fields, MESSAGES: history} if not history.is_bottom() else fields
                taken += 1
            return convs, taken

        try:
            convs, taken = self.store.read(read)
            if not convs:
                return None, taken
            return codec.encode_map(codec.trusted_map(convs, self.schema)), taken
        except DecodeError as e:
            raise CorruptStoreError(f"{self.store.path}: cannot read a stored conversation "
                                    f"({e}): the file is damaged") from None
