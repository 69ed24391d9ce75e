"""Code, tests and examples cite the repository's own documentation, and only pages that exist.

- No file under ``repartir/``, ``tests/``, ``stress/`` or ``examples/`` names a design file
  kept outside the repository (``DESIGN.md``, ``BENCHMARKS.md``, ``STYLE.md``, or ``DESIGN``
  followed by a section) or an issue number (``issue 3``): readers of the code have neither.
- Every ``docs/<name>.md`` such a file cites exists.
- Every test that ``docs/*.md`` names (``tests/<path>.py::test_name``) exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from rtsupport import REPO_ROOT

ROOT = Path(REPO_ROOT)
TREES = ("repartir", "tests", "stress", "examples")
SUFFIXES = {".py", ".md", ".txt", ".cfg", ".toml", ".ini"}
#: Citations of what is not in the repository (the file names in capitals, as they were
#: cited; ``docs/benchmarks.md`` is the repository's own page).  This file names them in its
#: docstring, so it is not scanned itself; the last test checks the patterns.
FOREIGN = re.compile(
    r"\b(?:DESIGN\.md|BENCHMARKS\.md|STYLE\.md|DESIGN(?:\s*§|:|\s+section)"
    r"|(?i:issues?)\s+#?\d+)")
SELF = Path(__file__).resolve()
DOC_PATH = re.compile(r"\bdocs/([\w.-]+\.md)\b")
TEST_NAME = re.compile(r"\b(tests/[\w/]+\.py)::(test_\w+)")


def _files():
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if (path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts
                    and path.resolve() != SELF):
                yield path


def test_no_citation_of_files_outside_the_repository_or_of_issues():
    found = []
    for path in _files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            m = FOREIGN.search(line)
            if m:
                found.append(f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r}")
    assert not found, "cite docs/*.md instead:\n" + "\n".join(found)


def test_cited_docs_pages_exist():
    missing = []
    for path in _files():
        for name in DOC_PATH.findall(path.read_text(errors="replace")):
            if not (ROOT / "docs" / name).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
    assert not missing, "cited but missing:\n" + "\n".join(missing)


def test_tests_named_by_the_docs_exist():
    named, missing = 0, []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for path, name in TEST_NAME.findall(page.read_text()):
            named += 1
            source = ROOT / path
            if not source.is_file() or not re.search(
                    rf"^(?:async )?def {name}\(", source.read_text(), re.M):
                missing.append(f"docs/{page.name}: {path}::{name}")
    assert named, "docs/architecture.md names the tests of its invariants"
    assert not missing, "named but missing:\n" + "\n".join(missing)


def test_the_checks_catch_what_they_look_for():
    for text in ["see DESIGN.md", "DESIGN §4", "DESIGN.md section 7", "(issue 3 item 3)",
                 "Issue 9", "issues 3", "BENCHMARKS.md", "STYLE.md", "DESIGN: workers"]:
        assert FOREIGN.search(text), text
    for text in ["docs/architecture.md", "docs/benchmarks.md", "the design of the arena",
                 "an issue with 3 parts"]:
        assert not FOREIGN.search(text), text
