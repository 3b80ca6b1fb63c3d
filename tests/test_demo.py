"""The demo is the README's first command: it must run, converge and say so. The README's
message history example must run as it is written and print what it says it prints."""

import re
import subprocess
import sys
from pathlib import Path

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


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_example(marker: str) -> tuple[str, list[str]]:
    """The README's ```python block holding `marker`, and the output it shows: the trailing
    `# ` comment lines of the block."""
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    (code,) = [b for b in blocks if marker in b]
    lines = code.rstrip("\n").splitlines()
    shown: list[str] = []
    while lines[-1].startswith("# "):
        shown.insert(0, lines.pop()[2:])
    return code, shown


def test_the_readme_message_history_example_runs_verbatim(tmp_path):
    code, shown = _readme_example("regenerate(")
    assert len(shown) == 3
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == shown
    phone, laptop = (line.split(" ", 1) for line in shown[:2])
    assert (phone[0], laptop[0]) == ("phone", "laptop") and phone[1] == laptop[1]
    assert list(tmp_path.iterdir()) == [script]  # it cleans up after itself
