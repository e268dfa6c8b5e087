"""The one loader for known-answer test files under tests/vectors/."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent / "vectors"


@cache
def load(relpath: str) -> dict[str, Any]:
    """Parse ``tests/vectors/<relpath>`` (JSON)."""
    with (VECTORS / relpath).open() as fh:
        return json.load(fh)  # type: ignore[no-any-return]


def cases(relpath: str, **group_filter: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Yield ``(group, test)`` pairs of an ACVP or Wycheproof file.

    Keyword arguments keep only groups whose fields equal the given values,
    e.g. ``cases("...", parameterSet="ML-KEM-768", function="encapsulation")``.
    """
    for group in load(relpath)["testGroups"]:
        if all(group.get(k) == v for k, v in group_filter.items()):
            for test in group["tests"]:
                yield group, test


def params(relpath: str, **group_filter: Any) -> list[Any]:
    """``cases`` as pytest params with readable ids (tgId/tcId)."""
    import pytest

    out = []
    for group, test in cases(relpath, **group_filter):
        gid = group.get("tgId", group.get("type", "g"))
        out.append(pytest.param(group, test, id=f"{gid}-{test['tcId']}"))
    return out


def unhex(value: str) -> bytes:
    """Bytes from a hex string of either case."""
    return bytes.fromhex(value)
