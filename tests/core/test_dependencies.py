"""pyproject.toml declares what the code imports: the core's in `dependencies`, each domain's in its extra.

The imports are read from the source (sslkit.dependencies, the same list `sslkit doctor` checks), mapped to the
distributions installed here that provide them, and each must be declared where that part of sslkit can see it.
"""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from sslkit import dependencies

ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
BASE = _names(PROJECT["dependencies"])
EXTRAS = {k: _names(v) for k, v in PROJECT["optional-dependencies"].items()}


def _undeclared(modules: set[str] | frozenset[str], declared: set[str]) -> list[str]:
    provided_by = packages_distributions()
    missing = []
    for module in sorted(modules):
        dists = {_norm(d) for d in provided_by.get(module, [])} or {_norm(dependencies.distribution(module))}
        if not dists & declared:
            missing.append(f"{module} (from {', '.join(sorted(dists))})")
    return missing


def test_core_and_cli_imports_are_base_dependencies() -> None:
    assert _undeclared(dependencies.imports_of("core"), BASE) == []


@pytest.mark.parametrize("domain", dependencies.DOMAINS)
def test_each_domain_imports_are_in_its_extra(domain: str) -> None:
    assert domain in EXTRAS, f"pyproject.toml has no [{domain}] extra"
    assert _undeclared(dependencies.imports_of(domain), BASE | EXTRAS[domain]) == []
    assert _undeclared(set(dependencies.RUNTIME_ONLY.get(domain, [])), EXTRAS[domain]) == []


def test_the_check_sees_imports_inside_functions_and_skips_optional_ones(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\nimport numpy as np\n\ndef f():\n    import pandas\n    from PIL import Image\n"
                   "try:\n    import mamba_ssm\nexcept ImportError:\n    mamba_ssm = None\n"
                   "try:\n    import openpyxl\nexcept ImportError:\n    raise SystemExit('pip install openpyxl')\n")
    assert dependencies.file_imports(src) == {"numpy", "pandas", "PIL", "openpyxl"}
    # an undeclared import is reported, with the distribution that provides it
    assert _undeclared({"pandas"}, BASE) == ["pandas (from pandas)"]


def test_doctor_prints_a_copy_pasteable_install_command() -> None:
    from sslkit.core.console import console, print_table

    with console.capture() as cap:
        print_table("t", ["domain", "hint"], [["graph", dependencies.install_hint("graph")]])
    assert "pip install 'sslkit[graph]'" in cap.get()


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] == {module!r}:
            raise ModuleNotFoundError(f"No module named '{{name}}'", name=name)
sys.meta_path.insert(0, Block())
sys.argv = ['sslkit'] + {args!r}
from sslkit.cli import main
main()
"""


def test_a_missing_library_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    code = BLOCK.format(module="networkx", args=["graph", "sample-data", str(tmp_path / "g")])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "networkx" in lines[0] and "pip install 'sslkit[graph]'" in lines[0], res.stderr
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())
