"""The layout the README's table promises: which folder may import which, and that the
decision logic reads no environment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder → the project packages its modules must never import
FORBIDDEN = {
    "bandit": ("workers",),
    "workers/service": ("workers.harness", "workers.cli"),
    "workers/harness": ("workers.cli",),
}
MAX_LINES = 450  # "about 400", with the README's named exceptions under this bound


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folders_import_only_what_the_layout_allows(folder: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(folder)
        for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder])
    ]
    assert not wrong, wrong


def test_the_decision_logic_reads_no_environment() -> None:
    readers = [
        str(path.relative_to(ROOT))
        for path in _modules("bandit")
        if "os.environ" in (text := path.read_text(encoding="utf-8")) or "getenv(" in text
    ]
    assert not readers, f"bandit/ must get its settings passed in: {readers}"


def test_no_module_is_long() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for folder in ("bandit", "workers", "scripts")
        for p in _modules(folder)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these (one concept per module): {long}"
