"""pyproject.toml's dependencies match what ``repartir/`` imports.

- Every third-party module that ``repartir/`` imports (at module level or inside a function)
  comes from a declared distribution: a core dependency or an optional extra.
- Every core dependency is imported by ``repartir/``: the library does not make users install
  what it never uses (what only the tests or the benchmark harness import lives in the
  ``test`` and ``bench`` extras).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from rtsupport import REPO_ROOT

ROOT = Path(REPO_ROOT)
#: Import name -> distribution name, where they differ or the import is optional.
DISTRIBUTION = {"pynvml": "nvidia-ml-py", "zmq": "pyzmq"}


def _declared() -> tuple[set[str], set[str]]:
    """(core dependencies, distributions of every extra), as lower-case names."""
    text = (ROOT / "pyproject.toml").read_text()

    def names(block: str) -> set[str]:
        return {re.match(r"[A-Za-z0-9_.-]+", s).group(0).lower()
                for s in re.findall(r'"([^"]+)"', block) if not s.startswith("repartir")}

    core = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M)
    extras = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?:^\[|\Z)", text, re.S | re.M)
    assert core and extras, "pyproject.toml: no dependencies or optional-dependencies"
    return names(core.group(1)), names(extras.group(1))


def _imported() -> set[str]:
    """Top-level names of the third-party modules that repartir/ imports."""
    found = set()
    for path in (ROOT / "repartir").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found
            if m not in sys.stdlib_module_names and m not in ("repartir", "__future__")}


def test_every_third_party_import_is_declared():
    core, extras = _declared()
    missing = {DISTRIBUTION.get(m, m) for m in _imported()} - core - extras
    assert not missing, f"imported by repartir/ but not declared in pyproject.toml: {missing}"


def test_every_core_dependency_is_imported():
    core, _ = _declared()
    used = {DISTRIBUTION.get(m, m) for m in _imported()}
    assert not core - used, f"core dependencies repartir/ never imports: {core - used}"
