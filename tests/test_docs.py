"""The documents stay true to the code: every test they cite exists, and the
state table in docs/protocol.md is the one generated from nautilus/protocol/state.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nautilus.protocol.state import diagram

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"`(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")


@pytest.mark.parametrize("doc", ["docs/protocol.md", "docs/sessions.md"])
def test_cited_tests_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    cited = CITED.findall(text)
    assert len(cited) >= 20, "the security properties should cite their tests"
    missing = []
    for file, name in cited:
        source = (ROOT / "tests" / file).read_text()
        if not re.search(rf"^(async )?def {name}\(", source, re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc} cites tests that do not exist: {missing}"


def test_protocol_state_table_is_current() -> None:
    text = (ROOT / "docs/protocol.md").read_text()
    assert diagram() in text, "regenerate with: python -m nautilus.protocol.state"
