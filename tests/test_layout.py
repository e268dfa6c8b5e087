"""The code keeps the layout the guide asks for: only ``nautilus._bindings``
imports the compiled ``nautilus._native`` module."""

from __future__ import annotations

import ast
import itertools
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


def test_every_module_string_documents_the_name_just_before_it() -> None:
    """A string statement at module level is the module's docstring or the
    docstring of the assignment just before it (what documentation tools and
    readers take it for). Constants inserted between a name and its
    docstring leave the string documenting the wrong name, or none:
    RECV_BUFFER_SIZE lost its own to UNREAD_LIMIT and UNREAD_ITEMS."""
    orphans = []
    for path in sorted(PACKAGE.rglob("*.py")):
        body = ast.parse(path.read_text(), str(path)).body
        for before, node in itertools.pairwise(body):
            if (
                isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and not isinstance(before, (ast.Assign, ast.AnnAssign))
            ):
                orphans.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not orphans, f"strings that document no name: {orphans}"
