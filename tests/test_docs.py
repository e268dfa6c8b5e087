"""The documents stay true to the code: every test they cite exists, the
state table in docs/protocol.md is the one generated from nautilus/protocol/state.py,
its alert table names every alert code, each under its code's name,
docs/nodes.md names every error a RetryPolicy never retries, and every
`nautilus` command line shown exists, with its options."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nautilus import cli
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
    assert diagram() in text, "regenerate with: python -m nautilus.protocol"


def test_the_command_the_docs_give_prints_the_state_table_without_a_warning() -> None:
    text = (ROOT / "docs/protocol.md").read_text()
    assert "(`python -m nautilus.protocol`)" in text
    run = subprocess.run(
        [sys.executable, "-W", "error", "-m", "nautilus.protocol"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert (run.returncode, run.stderr) == (0, "")
    assert run.stdout == diagram() + "\n"


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


def _command_lines(text: str) -> list[str]:
    """The `nautilus ...` lines of a document's shell blocks, a usage line's
    indented continuations joined to it."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.splitlines():
            if line.startswith(" ") and lines and lines[-1].startswith("nautilus "):
                lines[-1] += " " + line.strip()
            elif "nautilus " in line:
                lines.append(line[line.index("nautilus ") :].split("#")[0])
    return lines


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser | None = action.choices.get(name)
            return found
    return None


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_every_command_line_shown_exists_with_its_options(doc: str) -> None:
    lines = _command_lines((ROOT / doc).read_text())
    assert lines, f"{doc} should show nautilus command lines"
    wrong = []
    for line in lines:
        parser = cli._parser()
        words = line.split()[1:]
        while words and (sub := _subcommand(parser, words[0])) is not None:
            parser, words = sub, words[1:]
        if any(isinstance(action, argparse._SubParsersAction) for action in parser._actions):
            wrong.append(f"{line!r}: no such command")
            continue
        known = {option for action in parser._actions for option in action.option_strings}
        for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", " ".join(words)):
            if option not in known:
                wrong.append(f"{line!r}: {option}")
    assert not wrong, f"{doc} shows command lines the parser refuses: {wrong}"
