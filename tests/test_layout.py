"""The code keeps the layout the guide asks for: only ``nautilus._bindings``
imports the compiled ``nautilus._native`` module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nautilus"


def _native_imports(path: Path) -> list[int]:
    """The lines of ``path`` that import ``nautilus._native`` (or ``._native``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(name.split(".")[-1] == "_native" for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_bindings_import_the_compiled_module() -> None:
    bindings = PACKAGE / "_bindings"
    found = {
        str(path.relative_to(PACKAGE.parent)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _native_imports(path))
    }
    outside = {
        name: lines for name, lines in found.items() if not name.startswith("nautilus/_bindings/")
    }
    assert not outside, f"modules other than nautilus._bindings import _native: {outside}"
    # The check sees the one import that must exist.
    assert any(name.startswith(str(bindings.relative_to(PACKAGE.parent))) for name in found)
