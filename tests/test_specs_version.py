"""The protocol version the specs state is the code's (specs/protocol.md §2, §10;
specs/security.md §3; the model's header): each place that names the version in force, as
opposed to the history of what a version added, says PROTOCOL_VERSION."""

from __future__ import annotations

import re
from pathlib import Path

from crdtim.protocol import MAX_SESSION_CONVERSATIONS, MAX_SESSION_IDS, PROTOCOL_VERSION

SPECS = Path(__file__).resolve().parent.parent / "specs"


def _read(name: str) -> str:
    return (SPECS / name).read_text(encoding="utf-8")


def test_every_statement_of_the_version_in_force_is_the_codes():
    v = PROTOCOL_VERSION
    protocol, security = _read("protocol.md"), _read("security.md")
    model = _read("model/antientropy.pml")
    assert protocol.splitlines()[0] == f"# crdtim sync protocol (protocol version {v})"
    assert f"equal to `PROTOCOL_VERSION`, {v} (checked first" in protocol
    assert f"`version` is `PROTOCOL_VERSION` ({v}:" in protocol
    assert f"`protocol version V is not supported (this is {v})`" in protocol
    assert f"`PROTOCOL_VERSION = {v}`" in protocol
    assert re.findall(r"PROTOCOL_VERSION = (\d+)", protocol) == [str(v)]
    assert re.findall(r"\(protocol version (\d+)\)", security) == [str(v)]
    assert re.findall(r"HELLO\(version = (\d+)", security) == [str(v)]
    assert re.findall(r"specs/protocol\.md \(protocol version (\d+)\)", model) == [str(v)]


def test_the_session_table_limits_are_the_codes():
    protocol = _read("protocol.md")
    assert f"`MAX_SESSION_IDS = {MAX_SESSION_IDS}`" in protocol
    assert f"`MAX_SESSION_CONVERSATIONS = {MAX_SESSION_CONVERSATIONS}`" in protocol
