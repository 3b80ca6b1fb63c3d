"""Behaviour the specs state precisely for a second implementation, in the parts added since
test_specs_gaps.py (issue #17: message histories, conversation features, catch-up, the HTTP
API and change feed), each test naming the section that states it."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from test_protocol_sim import connect
from test_reconcile import CONFIG

from crdtim import InvalidArgument, Replica, codec
from crdtim.errors import DecodeError
from crdtim.protocol import ReconRanges, StateTransferStarted

T0 = 1_700_000_000_000


def _history_delta(rid: str, mid: str, *, counter: int = 1, at: int = T0,
                   cid: str = "c") -> bytes:
    """A delta posting message `mid` on replica `rid` (specs/crdt.md §7, "Messages")."""
    header = [None, None, "user", None, at, None, at, counter, 0]
    return msgpack.packb([1, [rid], {cid: {15: [{mid: [header, [at, counter, 0, "hi"], [],
                                                       False]}, {}]}}])


def _id_of_bytes(n: int) -> str:
    """A message id of exactly n UTF-8 bytes within 128 code points (4-byte characters)."""
    four, rest = divmod(n, 4)
    return "\U0001F600" * four + "x" * rest


# --- Message index keys: ids within their own bounds can pass LMDB's key size together -----

def test_storage_md_2_a_post_whose_index_key_is_over_511_bytes_is_invalid_argument(
        open_replica) -> None:
    """specs/storage.md §2 (`mindex`) and crdt.md §8.7: a post's group key is 23 bytes
    around its group id, its replica id and its own id; over 511 bytes the post is refused
    with InvalidArgument naming the bound (it was a StoreError, MDB_BAD_VALSIZE), and at
    511 exactly it is stored."""
    r = open_replica("r")
    rid = len(r.id.encode())
    at_bound = (511 - 23 - rid) // 2  # a plain post is its own group: its id counts twice
    over = _id_of_bytes(at_bound + 1)
    assert len(over.encode()) <= codec.MAX_MESSAGE_ID_BYTES  # within the id's own bound
    with pytest.raises(InvalidArgument, match=r"index key would be \d+ bytes, over 511"):
        r.post("c", "hi", id=over)
    assert r.head == 0
    fits = _id_of_bytes(at_bound)
    r.post("c", "hi", id=fits)
    assert [m.id for m in r.history("c").items] == [fits]


def test_crdt_md_7_refusal_order_2_message_index_key_over_511_bytes_is_a_decode_error(
        open_replica) -> None:
    """specs/crdt.md §7 "Order of refusals" 2 and storage.md §2: a remote message whose
    index key would pass 511 bytes (a 252-byte id from a 256-byte replica id, each within
    the decoder's bounds) refuses the delta whole with DecodeError, changing nothing; it
    was a StoreError that stopped the link on every retry."""
    r = open_replica("r", now_ms=lambda: T0)
    rid, mid = "\U0001F600" * 64, "\U0001F600" * 63
    with pytest.raises(DecodeError, match=r"message .*: its index key would be 783 bytes"):
        r.apply_delta(_history_delta(rid, mid))
    assert r.head == 0 and r.state().convs == {}
    # Checked before the clock counter bound (step 3): a DecodeError, not ClockDriftError.
    with pytest.raises(DecodeError, match="index key"):
        r.apply_delta(_history_delta(rid, mid, counter=2**31))
    # 23 + 1 + 2 x 244 = 512: even a one-byte replica id leaves a plain message 243 bytes.
    with pytest.raises(DecodeError, match="512 bytes, over 511"):
        r.apply_delta(_history_delta("p", _id_of_bytes(244)))
    assert r.apply_delta(_history_delta("p", _id_of_bytes(243))) == {"c"}


# --- Catch-up: a history over the records a peer decodes in one map -----------------------

def test_protocol_md_13_3_a_history_over_max_messages_falls_back_to_the_whole_transfer(
        open_replica) -> None:
    """specs/protocol.md §13.3: a conversation whose history holds more message and choice
    records than a receiver decodes in one map (`max_messages`, 10,000) is not sent whole by
    a reconciliation, even when it fits a frame: the sender falls back to the whole transfer
    of §5, which splits it across chunks. It was sent whole and refused, on every
    reconnection, so the peer never caught up."""
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    a.set_title("x", "x")
    connect(a, b, CONFIG).run_until_quiet()  # b has received from a: a reconciliation next
    for part in range(2):
        with a.batch():
            for i in range(5001):
                a.post("long", "m", id=f"m{part}-{i}")
    assert a.trim_log() > 0
    wire = connect(a, b, CONFIG)
    events_a, _ = wire.run_until_quiet()
    assert any(isinstance(m, ReconRanges) for m in wire.frames[0])  # reconciled first
    assert StateTransferStarted(outbound=True) in events_a
    assert b.state() == a.state()
    assert b.received_from(a.id) == a.head


# --- Catch-up: the digest's bytes (what both sides must compute alike) --------------------

def _digest_by_the_spec(r: Replica, cid: str) -> bytes:
    """specs/protocol.md §13.1, from the stored records alone: BLAKE2b-128 of the id, a zero
    byte and the sealed convs value; then per message or choice record, in key order, u16
    length + name (kind byte + id), u32 length of the *sealed* record + its unsealed bytes."""
    def read(t):
        h = hashlib.blake2b(cid.encode() + b"\0" + t.sealed_conversation(cid), digest_size=16)
        number = t.get("mindex", b"\xff" + cid.encode())
        if number is not None:
            for key, sealed in t.scan("messages", number):
                if not key.startswith(number):
                    break
                name = key[len(number):]
                h.update(len(name).to_bytes(2, "big") + name)
                h.update(len(sealed).to_bytes(4, "big") + sealed[:-4])
        return h.digest()

    return r.store.read(read)


def test_protocol_md_13_1_digest_bytes_name_kind_and_sealed_record_length(
        open_replica) -> None:
    """specs/protocol.md §13.1: a conversation's digest, computed from the records as the
    text says (a record's name is its kind byte, `c` choice or `m` message, and its id; the
    4-byte length is that of the sealed record, value and checksum), equals crdtim's, for a
    conversation with a title only and one with messages and a version choice."""
    r = open_replica("r")
    r.set_title("plain", "Plain")
    first = r.post("chat", "question", id="q")
    r.post("chat", "answer", role="assistant", id="a1")
    r.regenerate("chat", "a1", "better", id="a2")  # a choice record: group a1 -> a2
    assert first.id == "q"
    _, ids, digests = r.conversation_digests()
    assert ids == [b"chat", b"plain"]
    assert digests == _digest_by_the_spec(r, "chat") + _digest_by_the_spec(r, "plain")


# --- Conversation features meet messages --------------------------------------------------

def test_crdt_md_6_delete_for_me_hides_messages_it_does_not_drop_them(open_replica) -> None:
    """specs/crdt.md §6 ("Messages are not dropped by a delete") and §8.8: after
    delete_conversation the message records stay in the state, replicate, and are returned
    by message() and versions() with their text; only history() leaves out the messages at
    or before cleared_at, on every replica; a newer post shows alone."""
    a, b = open_replica("a", now_ms=lambda: T0), open_replica("b", now_ms=lambda: T0)
    old = a.post("c", "before the delete", id="old")
    a.delete_conversation("c")
    assert a.get("c").deleted and a.history("c").items == []
    assert "old" in a.state().convs["c"]["messages"].messages
    assert b.apply_delta(a.delta_since(0)) == {"c"}
    for r in (a, b):
        kept = r.message("c", "old")
        assert kept is not None and kept.text == "before the delete" and kept.at == old.at
        assert [m.id for m in r.versions("c", "old")] == ["old"]
        assert r.history("c").items == []
    a.post("c", "after", id="new", at=T0 + 5)
    assert [m.id for m in a.history("c").items] == ["new"] and not a.get("c").deleted


def test_crdt_md_8_8_a_post_in_the_millisecond_of_a_delete_is_newer_than_it(
        open_replica) -> None:
    """specs/crdt.md §8.8: a post (or regenerate) without `at`, made after a delete for me
    whose cleared_at is at or past its created wall (the same millisecond), takes
    at = cleared_at + 1: it shows, and brings the conversation back. It took the delete's
    millisecond, so the delete hid it and the conversation stayed deleted. A retry of it
    is still a retry."""
    r = open_replica("r", now_ms=lambda: T0)  # every write in one millisecond
    r.post("c", "before", id="old")
    r.delete_conversation("c")
    assert r.get("c").deleted
    posted = r.post("c", "after", id="new")
    assert posted.at == T0 + 1 and r.state().convs["c"]["cleared_at"].value == T0
    assert [m.id for m in r.history("c").items] == ["new"] and not r.get("c").deleted
    head = r.head
    assert r.post("c", "after", id="new").at == T0 + 1 and r.head == head  # a retry
    r.delete_conversation("c")
    new = r.regenerate("c", "new", "again", id="new2")
    assert new.at == T0 + 2 and [m.id for m in r.history("c").items] == ["new2"]


def test_crdt_md_8_8_own_post_draft_stamp_marked_unread_and_unseq_posts(open_replica) -> None:
    """specs/crdt.md §8.8, the exact writes of a post: this user's own post clears the draft
    with the post's created stamp (no further tick), raises read_seq only (marked_unread
    stays: it is no mark_read); a post without seq changes neither last_seq nor read_seq,
    whoever wrote it (it never counts in unread)."""
    r = open_replica("r")
    r.set_draft("c", "half-typed")
    r.mark_unread("c")
    r.post("c", "mine", id="m1", seq=3)
    fields = r.state().convs["c"]
    created = fields["messages"].messages["m1"].header.created
    assert fields["draft"].value == "" and fields["draft"].stamp == created
    conv = r.get("c")
    assert conv.read_seq == conv.last_seq == 3 and conv.marked_unread and conv.unread == 0
    r.post("d", "from bob", author="bob", id="b1")  # someone else's, no seq
    conv = r.get("d")
    assert (conv.last_seq, conv.read_seq, conv.unread) == (0, 0, 0)
    assert conv.last_preview == "from bob"
    r.post("d", "from bob", author="bob", id="b2", seq=4)
    assert (r.get("d").last_seq, r.get("d").unread) == (4, 4)


def test_crdt_md_8_8_preview_is_200_code_points_of_the_posted_text(open_replica) -> None:
    """specs/crdt.md §8.8: the last-message preview is the first PREVIEW_CHARS = 200 code
    points of the text (not UTF-16 units, not grapheme clusters), keyed (at, created
    counter, replica) when the post has no seq."""
    r = open_replica("r")
    text = "\U0001F600" * 150 + "e\u0301" * 100  # astral characters, then combining marks
    m = r.post("c", text, id="m")
    last = r.state().convs["c"]["last_message"]
    assert last.value == text[:200] and len(last.value) == 200
    assert last.value.endswith("e\u0301" * 25)
    created = r.state().convs["c"]["messages"].messages["m"].header.created
    assert (last.stamp.wall, last.stamp.counter, last.stamp.replica) == (
        m.at, created.counter, r.id)


# --- Message stamps: the decoder's counter bound and the replica's ------------------------

@pytest.mark.parametrize("counter, refused", [
    (2**31 - 1, None),
    (2**31, "ClockDriftError"),
    (2**32 - 1, "ClockDriftError"),
    (2**32, "DecodeError"),
])
def test_crdt_md_7_history_stamp_counters_decode_to_2_32_and_apply_to_2_31(
        open_replica, counter: int, refused: str | None) -> None:
    """specs/crdt.md §7 ("Messages") and §1 step 1: a history stamp's counter decodes up to
    MAX_COUNTER = 2^32-1 (DecodeError above it, "out of range 0..4294967295"), and a
    replica applying it refuses any over 2^31-1 with ClockDriftError, like every clocked
    stamp; nothing changes either way."""
    r = open_replica("r", now_ms=lambda: T0)
    data = _history_delta("p", "m", counter=counter)
    if refused is None:
        assert r.apply_delta(data) == {"c"}
        return
    with pytest.raises(Exception) as e:
        r.apply_delta(data)
    assert type(e.value).__name__ == refused
    if refused == "DecodeError":
        assert "out of range 0..4294967295" in str(e.value)
    assert r.head == 0


# --- HTTP: the JSON a client reads ---------------------------------------------------------

def _http_client(r: Replica):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("starlette")
    from crdtim.http import create_app
    return httpx.AsyncClient(transport=httpx.ASGITransport(create_app(r)),
                             base_url="http://127.0.0.1")


CONVERSATION_KEYS = ["id", "title", "pinned", "muted", "unread", "last_seq", "read_seq",
                     "last_preview", "last_at", "archived", "deleted", "marked_unread", "draft",
                     "muted_until", "read_by"]
MESSAGE_KEYS = ["id", "cid", "parent", "role", "author", "text", "at", "seq", "edited",
                "deleted", "version", "versions", "visible"]


async def test_http_md_1_conversation_and_message_json_keys(open_replica) -> None:
    """specs/http.md §1 and §1a: a conversation is exactly these keys, in this order, plus
    `extra` only when the schema has an app's fields (then every one of them, bottom values
    for those unset); a message has `visible` too."""
    import crdtim

    r = open_replica("r")
    r.set_title("c", "C")
    m = r.post("c", "hi", id="m")
    schema = crdtim.DEFAULT_SCHEMA.extend(crdtim.Field("starred", 64, crdtim.Flag))
    app = open_replica("app", schema=schema)
    app.set_title("c", "C")
    async with _http_client(r) as c:
        conversation = (await c.get("/api/im/conversations/c")).json()["data"]
        listed = (await c.get("/api/im/conversations")).json()["data"]["conversations"]
        message = (await c.get("/api/im/messages/m", params={"conversation_id": "c"})).json()
    async with _http_client(app) as c:
        with_extra = (await c.get("/api/im/conversations/c")).json()["data"]
    assert list(conversation) == CONVERSATION_KEYS and list(listed[0]) == CONVERSATION_KEYS
    assert list(with_extra) == [*CONVERSATION_KEYS, "extra"]
    assert with_extra["extra"] == {"starred": False}
    assert list(message["data"]) == MESSAGE_KEYS
    assert message["data"]["visible"] is True and message["data"]["at"] == m.at


async def test_http_md_5_feed_field_names_sorted_carried_as_hash_tag(open_replica) -> None:
    """specs/http.md §5: a result's `fields` are the schema names of the fields the entry
    changed, sorted by code point; a history is `messages`, a field of a tag the schema does
    not know `"#" + tag` (specs/crdt.md §7, "Fields of other schemas")."""
    r = open_replica("r")
    r.post("c", "hi", id="m")
    r.apply_delta(msgpack.packb([1, ["p"], {"d": {70: 5, 1: [[0, 1], [0, 1], []],
                                                  0: [T0, 0, 0, "t"]}}]))
    async with _http_client(r) as c:
        results = (await c.get("/api/im/changes")).json()["data"]["results"]
    assert [x["conversations"][0]["fields"] for x in results] == [
        ["last_message", "messages"], ["#70", "pinned", "title"]]
    assert results[0]["conversations"][0]["messages"] == ["m"]


# --- Lone surrogates: a user's mistake, not a traceback -----------------------------------

@pytest.mark.parametrize("write", [
    lambda r: r.mark_read_by("c", "bob\ud800", 1),
    lambda r: r.post("c", "hi", role="user\ud800"),
    lambda r: r.post("c", "hi", author="bob\udfff"),
    lambda r: r.regenerate("c", "m", "again", role="bot\ud800"),
], ids=["member", "role", "author", "regenerate role"])
def test_crdt_md_3a_8_7_a_lone_surrogate_in_a_name_is_invalid_argument(
        open_replica, write) -> None:
    """specs/crdt.md §3a (a member name has no surrogate) and §8.7 (role and author, like
    ids and texts, are valid Unicode): a lone surrogate, which has no UTF-8 encoding, is
    refused with InvalidArgument naming it, changing nothing. It escaped as
    UnicodeEncodeError (an HTTP 500)."""
    r = open_replica("r")
    r.message_arrived("c", 5, "p")
    r.post("c", "hi", id="m")
    head = r.head
    with pytest.raises(InvalidArgument, match="surrogate"):
        write(r)
    assert r.head == head


async def test_http_md_2_a_lone_surrogate_in_json_is_a_400_not_a_500(open_replica) -> None:
    """specs/http.md §2 ("never a 500 for a client's mistake"): JSON may spell a lone
    surrogate (`"\\ud800"`); a role or member name holding one is a 400 naming it."""
    r = open_replica("r")
    r.message_arrived("c", 5, "p")
    async with _http_client(r) as c:
        role = await c.post("/api/im/messages", content=b'{"conversation_id": "c", "text": '
                            b'"hi", "role": "a\\ud800"}',
                            headers={"Content-Type": "application/json"})
        member = await c.patch("/api/im/conversations/c", content=b'{"read_by": '
                               b'{"a\\ud800": 1}}', headers={"Content-Type": "application/json"})
    for response in (role, member):
        assert response.status_code == 400, response.text
        assert "surrogate" in response.json()["error"]
    assert r.head == 1


# --- Feature mutators on a conversation the replica does not hold -------------------------

FUTURE_MS = T0 + 3_600_000


@pytest.mark.parametrize("write, created, listed", [
    (lambda r: r.archive("c"), True, False),  # archived: left out of the default list
    (lambda r: r.archive("c", keep=True), True, False),
    (lambda r: r.delete_conversation("c"), True, False),  # deleted: get() shows it
    (lambda r: r.mark_unread("c"), True, True),
    (lambda r: r.set_draft("c", "x"), True, True),
    (lambda r: r.set_draft("c", ""), True, True),  # a clear is a register write too
    (lambda r: r.mute("c", until=FUTURE_MS), True, True),
    (lambda r: r.mark_read_by("c", "bob", 3), True, True),
    (lambda r: r.unarchive("c"), False, False),
    (lambda r: r.unmute("c"), False, False),
    (lambda r: r.mark_read("c", 0), False, False),
])
def test_crdt_md_6_feature_mutators_on_an_unknown_conversation(
        open_replica, write, created: bool, listed: bool) -> None:
    """specs/crdt.md §6 ("Replica rules"): a feature mutator on a conversation the replica
    does not hold writes its delta like any mutator, creating the conversation (one log
    entry), unless that delta is bottom; set_draft(cid, "") writes too (a clear must beat
    drafts not yet seen). The HTTP API, whose PATCH of an unknown conversation is a 404,
    never does this."""
    r = open_replica("r", now_ms=lambda: T0)
    write(r)
    assert r.head == (1 if created else 0)
    assert (r.get("c") is not None) == created
    assert any(c.id == "c" for c in r.list(10).items) == listed
