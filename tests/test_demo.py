"""The demo is the README's first command: it must run, converge and say so."""

from crdtim.demo import run_demo


def test_demo_converges_and_shows_every_step():
    lines: list[str] = []
    assert run_demo(lines.append) == 0
    text = "\n".join(lines)
    for step in ("== 1.", "== 2.", "== 3.", "All replicas identical: yes"):
        assert step in text
    # Step 3's table: 'work' pinned on all three replicas (concurrent pin and unpin).
    step3 = text.split("== 3.")[1]
    work_row = next(line for line in step3.splitlines() if line.startswith("work"))
    assert work_row.count("^ Work") == 3
