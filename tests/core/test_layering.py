"""Core knows no domain; domains never import each other."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "sslkit"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_never_imports_domains():
    for path in (SRC / "core").rglob("*.py"):
        bad = [m for m in _imports(path) if m.startswith("sslkit.domains")]
        assert not bad, f"{path} imports {bad}"


def test_domains_do_not_import_each_other():
    for domain in (p for p in (SRC / "domains").iterdir() if p.is_dir() and not p.name.startswith("_")):
        for path in domain.rglob("*.py"):
            bad = [m for m in _imports(path) if m.startswith("sslkit.domains.")
                   and not m.startswith(f"sslkit.domains.{domain.name}")]
            assert not bad, f"{path} imports {bad}"
