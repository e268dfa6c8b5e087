"""The documents stay true to the code: every test they cite exists, the
state table in docs/protocol.md is the one generated from nautilus/protocol/state.py,
its alert table names every alert code, each under its code's name, and
docs/nodes.md names every error a RetryPolicy never retries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nautilus.asyncio import node
from nautilus.protocol.messages import AlertCode
from nautilus.protocol.state import diagram

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"`(?:tests/)?(test_[a-z0-9_]+\.py)::(test_[a-z0-9_]+)`")
DOCS = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
ALERT_ROW = re.compile(r"^\| (\d+) \| ([a-z_]+) \|", re.MULTILINE)


@pytest.mark.parametrize("doc", DOCS)
def test_cited_tests_exist(doc: str) -> None:
    text = (ROOT / doc).read_text()
    cited = CITED.findall(text)
    if doc in ("docs/protocol.md", "docs/sessions.md"):
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


def test_protocol_alert_table_names_every_alert_code() -> None:
    text = (ROOT / "docs/protocol.md").read_text()
    section = text[text.index("## 6. Alerts") : text.index("## 7.")]
    documented = {int(code): name for code, name in ALERT_ROW.findall(section)}
    assert documented == {int(a): a.name.lower() for a in AlertCode}


def test_nodes_doc_names_every_error_a_retry_raises_at_once() -> None:
    text = (ROOT / "docs/nodes.md").read_text()
    section = text[text.index("## Reconnecting: `RetryPolicy`") :]
    named = re.search(r"\.\s+((?:`\w+`,?\s+)+)are raised at once", section)
    assert named, "the RetryPolicy section should say which errors are raised at once"
    documented = set(re.findall(r"`(\w+)`", named.group(1)))
    assert documented == {error.__name__ for error in node._PERMANENT}
