"""Requirements of specs/ that no other test pinned: one test each, named by its section."""

from __future__ import annotations

import msgpack

from crdtim import DEFAULT_SCHEMA, Field, Flag, Replica, codec

STARRED = DEFAULT_SCHEMA.extend(Field("starred", 64, Flag))


def test_a_stored_field_of_another_schema_is_carried_through_a_reopen_and_a_write(tmp_path):
    """storage.md §9: a process opening a directory with a schema lacking a stored tag
    carries the field (crdt.md §7): not shown, kept through its own writes, and read back by
    a process with the schema that has it."""
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync", schema=STARRED) as r:
        r.enable("c", "starred")
        r.set_title("c", "t")
    with Replica.open(path, durability="nosync") as r:  # the default schema: no tag 64
        assert r.get("c").extra == {} and r.get("c").title == "t"
        r.set_title("c", "u")
    with Replica.open(path, durability="nosync", schema=STARRED) as r:
        assert r.get("c").extra == {"starred": True} and r.get("c").title == "u"


def test_a_reader_accepts_a_replica_table_in_any_order_with_ids_no_one_refers_to():
    """crdt.md §7: a reader must not depend on the order of the replica table and must
    accept ids that are not referred to."""
    written = msgpack.packb([1, ["p"], {"c": {1: [[0, 1], [0, 1], []]}}])
    shuffled = msgpack.packb([1, ["zz", "q", "p"], {"c": {1: [[2, 1], [2, 1], []]}}])
    assert codec.decode_map(shuffled, DEFAULT_SCHEMA) == codec.decode_map(written, DEFAULT_SCHEMA)
    assert codec.decode_map(shuffled, DEFAULT_SCHEMA).convs["c"]["pinned"].value
