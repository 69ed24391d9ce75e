"""The test command of README.md is true to the suite: it deselects only markers that exist.

- every marker registered in ``pyproject.toml`` is carried by at least one test, and every
  custom marker a test carries is registered;
- the test command of README.md, of ``.ci/run`` and of ``tox.ini`` is the same, and any ``-m``
  expression in it names registered markers only.
"""

from __future__ import annotations

import re
from pathlib import Path

from rtsupport import REPO_ROOT

ROOT = Path(REPO_ROOT)
#: pytest's own markers and those of its plugins that the suite uses.
BUILTIN = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings", "timeout"}


def registered() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^markers = \[(.*?)\]", text, re.S | re.M)
    assert block, "pyproject.toml has no markers list"
    return set(re.findall(r'"([A-Za-z_][\w]*)\s*:', block.group(1)))


def used() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for name in re.findall(r"pytest\.mark\.([A-Za-z_]\w*)", path.read_text()):
            if name not in BUILTIN:
                found.setdefault(name, []).append(path.name)
    return found


def test_registered_markers_are_used_and_used_markers_registered():
    reg, use = registered(), used()
    assert not reg - set(use), f"registered but carried by no test: {sorted(reg - set(use))}"
    assert not set(use) - reg, f"carried but not registered: {sorted(set(use) - reg)}"


def _command(path: str, pattern: str) -> str:
    m = re.search(pattern, (ROOT / path).read_text(), re.M)
    assert m, f"no test command in {path}"
    return m.group(1).strip()


def test_readme_ci_and_tox_run_the_same_test_command():
    readme = _command("README.md", r'^pip install "\.\[test\]" && (python -m pytest.*)$')
    ci = _command(".ci/run", r'^pip install "\.\[test\]" && (python -m pytest.*)$')
    tox = _command("tox.ini", r"^commands = (python -m pytest.*?)(?: \{posargs\})?$")
    assert readme == ci == tox, (readme, ci, tox)
    expr = re.search(r'-m "([^"]*)"', readme)
    words = set(re.findall(r"[A-Za-z_]\w*", expr.group(1))) if expr else set()
    names = words - {"not", "and", "or"}
    assert names <= registered(), f"the test command deselects markers no test carries: {names}"
