"""The demo is the README's first command: it must run, converge and say so."""

import pytest

from crdtim.demo import QUESTION, REGENERATED, TOKENS, run_demo


@pytest.fixture(scope="module")
def demo_text() -> str:
    """The demo's output, run once for the module (it opens three nodes on loopback)."""
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    return "\n".join(lines)


def _rows(step: str) -> dict[str, str]:
    """A messages step's side-by-side view: device -> its visible history."""
    rows = [line.split(" | ", 1) for line in step.splitlines() if " | " in line]
    return {device.strip(): history for device, history in rows}


def test_demo_converges_and_shows_every_step(demo_text):
    text = demo_text
    for step in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5.", "== 6.",
                 "Histories identical: yes", "All replicas identical: yes"):
        assert step in text
    # Step 3's table: 'work' pinned on all three replicas (concurrent pin and unpin).
    step3 = text.split("== 3.")[1]
    work_row = next(line for line in step3.splitlines() if line.startswith("work"))
    assert work_row.count("^ Work") == 3


def test_demo_streams_regenerates_and_switches_the_same_history_everywhere(demo_text):
    text = demo_text
    step4, step5, step6 = (text.split(f"== {n}.")[1].split("\n== ")[0] for n in (4, 5, 6))
    # The laptop saw the reply grow, one token more each time.
    grown = [line.split("laptop: ", 1)[1] for line in step4.splitlines()
             if line.startswith("   laptop: ")]
    assert grown == [repr("".join(TOKENS[:n])) for n in range(1, len(TOKENS) + 1)]
    streamed = "".join(TOKENS)
    for step, answer in ((step4, f"assistant: {streamed}"),
                         (step5, f"assistant 2/2: {REGENERATED}"),
                         (step6, f"assistant 1/2: {streamed}")):
        rows = _rows(step)
        assert list(rows) == ["phone", "laptop", "server"]
        assert set(rows.values()) == {f"user: {QUESTION} | {answer}"}, rows
