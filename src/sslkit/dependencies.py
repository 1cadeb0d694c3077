"""What each part of sslkit imports, and which install provides it.

One list for `sslkit doctor`, for the one-line "install the extra" error and for the test that checks
pyproject.toml against the code: the third-party modules are read from the source itself (every
`import`, also those inside functions), so the list cannot drift from what the code needs. An import
inside a `try:` whose handler catches ImportError and carries on is optional (a faster kernel, TensorBoard)
and is not counted.
"""
from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DOMAINS = ("medical3d", "pathology", "audio", "graph", "lidar", "tabular")
# Import name → the distribution that provides it, where the two differ (what `pip install` needs).
DISTRIBUTIONS = {
    "PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image", "yaml": "pyyaml",
    "open3d": "open3d-cpu", "gdcm": "python-gdcm", "itk": "itk-io", "torch_geometric": "torch-geometric",
    "openslide": "openslide-python", "typer": "typer", "google": "protobuf",
}
_OPTIONAL = ("ImportError", "ModuleNotFoundError", "Exception")
# Modules a domain needs at run time that its code does not import by name (a library it calls loads them,
# or the import is guarded to give a domain-specific message): doctor checks them too.
RUNTIME_ONLY = {"medical3d": ["einops", "gdcm", "itk"], "pathology": ["imagecodecs"]}


def _optional_lines(tree: ast.AST) -> set[int]:
    """Line numbers of imports guarded by `try: ... except ImportError` whose handler carries on without the module
    (optional by design); a handler that raises (the "install X" message) marks a required import."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for handler in node.handlers:
            kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
            caught |= {k.id for k in kinds if isinstance(k, ast.Name)}
        reraises = any(isinstance(n, ast.Raise) for h in node.handlers for n in ast.walk(h))
        if caught & set(_OPTIONAL) and not reraises:      # a handler that raises a "pip install" error: required
            for stmt in node.body:
                lines |= {n.lineno for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return lines


def file_imports(path: Path) -> set[str]:
    """Top-level names of the third-party modules a file imports unconditionally (stdlib and sslkit left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    optional = _optional_lines(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in optional:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("sslkit", "__future__")}


def _files(part: str) -> list[Path]:
    if part == "core":
        return sorted((PACKAGE / "core").rglob("*.py")) + sorted(PACKAGE.glob("*.py")) + \
            sorted((PACKAGE / "domains" / "toy").rglob("*.py")) + [PACKAGE / "domains" / "__init__.py"]
    return sorted((PACKAGE / "domains" / part).rglob("*.py"))


@lru_cache(maxsize=None)
def imports_of(part: str) -> frozenset[str]:
    """Third-party modules imported by `core` (core, CLI, doctor, the toy domain) or by one domain."""
    return frozenset().union(*(file_imports(p) for p in _files(part)))


def extra_modules(domain: str) -> list[str]:
    """The modules a domain needs beyond the core's: what its extra must install (sorted)."""
    return sorted(imports_of(domain) - imports_of("core"))


def doctor_modules(domain: str) -> list[str]:
    """What `sslkit doctor` imports to say whether a domain works: its own imports plus RUNTIME_ONLY."""
    return sorted(set(extra_modules(domain)) | set(RUNTIME_ONLY.get(domain, [])))


def distribution(module: str) -> str:
    return DISTRIBUTIONS.get(module, module.replace("_", "-"))


def install_hint(domain: str | None) -> str:
    """A copy-pasteable install command for a domain's extra (or the core)."""
    return f"pip install 'sslkit[{domain}]'" if domain in DOMAINS else "pip install --force-reinstall sslkit"


def domain_of_module(module: str) -> str | None:
    """The domain whose extra provides `module` (None when the core needs it or no domain imports it)."""
    top = module.split(".")[0]
    if top in imports_of("core"):
        return None
    owners = [d for d in DOMAINS if top in imports_of(d)]
    return owners[0] if len(owners) == 1 else None
