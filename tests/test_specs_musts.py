"""Every "must" in specs/ is pinned by a test that names its section.

A test names the section it pins as `<file> §<section>` (e.g. `storage.md §8b`, `crdt.md
§8.5`) in its name's docstring or a comment; the section is the nearest numbered heading above
the sentence (text above the first numbered heading is §0). This module checks that each
section of specs/*.md holding the word "must" is named somewhere under tests/, so a new
requirement written into the contract without a test fails here, naming the section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
TESTS = ROOT / "tests"

_HEADING = re.compile(r"^#{2,6}\s+(\d+[a-z]?(?:\.\d+)*)[.\s]")
_MUST = re.compile(r"\bmust\b", re.IGNORECASE)


def sections_with_musts(name: str, text: str) -> Iterator[tuple[str, str]]:
    """Yield (citation, sentence) for each line of `text` holding "must", the citation being
    `<name> §<section>`. Lines inside fenced code blocks are skipped: they are examples."""
    section = "0"
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(1)
        if _MUST.search(line):
            yield f"{name} §{section}", line.strip()


def cited_in_tests() -> str:
    this = Path(__file__).resolve()
    return "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(TESTS.rglob("*.py"))
        if path.resolve() != this
    )


def is_cited(citation: str, tests: str) -> bool:
    """Whether `tests` names `citation` exactly: "storage.md §8" is not named by "storage.md
    §8a", nor "faults.md §4" by "faults.md §4.2"."""
    return re.search(re.escape(citation) + r"(?![a-z0-9]|\.\d)", tests) is not None


def uncited_musts() -> dict[str, list[str]]:
    tests = cited_in_tests()
    missing: dict[str, list[str]] = {}
    for spec in sorted(SPECS.glob("*.md")):
        for citation, sentence in sections_with_musts(spec.name, spec.read_text("utf-8")):
            if not is_cited(citation, tests):
                missing.setdefault(citation, []).append(sentence)
    return missing


def test_every_section_with_a_must_is_named_by_a_test() -> None:
    missing = uncited_musts()
    report = "\n".join(
        f"{citation}: {sentences[0][:100]}" for citation, sentences in missing.items()
    )
    assert not missing, f"sections of specs/ with a 'must' that no test names:\n{report}"


def test_the_scan_finds_musts_by_section_and_skips_examples() -> None:
    # The check above passes vacuously if this parser finds nothing: pin what it finds.
    text = "\n".join([
        "A reader must accept this.",         # §0
        "## 3. Session states",
        "The receiver MUST refuse it.",        # §3
        "### 3.1 Detail",
        "Mustard is not a requirement.",       # no word "must"
        "```",
        "must (inside an example)",            # skipped
        "```",
        "## 8b. Backup",
        "DEST must not exist.",                 # §8b
    ])
    assert [c for c, _ in sections_with_musts("x.md", text)] == [
        "x.md §0", "x.md §3", "x.md §8b",
    ]
    assert sum(1 for spec in SPECS.glob("*.md")
               for _ in sections_with_musts(spec.name, spec.read_text("utf-8"))) > 40


def test_a_citation_names_its_section_exactly() -> None:
    assert is_cited("storage.md §8", "see storage.md §8.")
    assert is_cited("storage.md §8", "storage.md §8, step 7")
    assert not is_cited("storage.md §8", "storage.md §8a")
    assert not is_cited("faults.md §4", "faults.md §4.2")
    assert not is_cited("crdt.md §1", "crdt.md §10")
