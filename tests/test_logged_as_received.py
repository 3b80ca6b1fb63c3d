"""apply_delta logs the bytes it received when all of them are novel (specs/storage.md §3),
and the re-encoded novel part otherwise: either way the entry decodes to the novel part."""

from __future__ import annotations

from crdtim import Replica, codec
from crdtim.crdt import ConversationMap, Lww, MaxReg, Stamp

T0 = 1_700_000_000_000


def _log(r: Replica) -> list[bytes]:
    return [payload for _, _, payload in r.store.read(lambda t: list(t.log_entries(0)))]


def _title(cid: str, wall: int, text: str) -> bytes:
    return codec.encode_map(ConversationMap({cid: {"title": Lww(Stamp(T0 + wall, 0, "peer"), text)}}))


def test_a_wholly_novel_delta_is_logged_as_received(tmp_path):
    # Valid, but not as crdtim would encode it (an unused id in the replica table): the
    # entry holds these very bytes, not a re-encoding.
    data = codec.pack([codec.FORMAT_VERSION, ["unused", "peer"],
                       {"c": {0: [T0 + 1, 0, 1, "new"]}}])
    assert data != _title("c", 1, "new")
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        r.apply_delta(data, origin="peer")
        assert r.get("c").title == "new"
        assert _log(r) == [data]


def test_a_partly_novel_delta_is_logged_as_its_novel_part(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        r.apply_delta(_title("c", 5, "newer"), origin="peer")
        both = ConversationMap({"c": {"title": Lww(Stamp(T0 + 1, 0, "peer"), "older"),
                                      "read_seq": MaxReg(3)}})
        r.apply_delta(codec.encode_map(both), origin="peer")
        logged = codec.decode_map(_log(r)[-1])
        assert logged == ConversationMap({"c": {"read_seq": MaxReg(3)}})
