"""The ``nautilus`` command line: identity files, and an echo server and a
client over real loopback sockets."""

from __future__ import annotations

import functools
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nautilus.cli
from nautilus import Identity
from nautilus.cli import main

pytestmark = pytest.mark.native


class _Output(io.BytesIO):
    """stdout whose writes notify ``grown`` (for a reader waiting for the echo)."""

    def __init__(self) -> None:
        super().__init__()
        self.grown = threading.Condition()

    def write(self, data: Any) -> int:
        with self.grown:
            n = super().write(data)
            self.grown.notify_all()
        return n


class _Input(io.BytesIO):
    """stdin that ends only once ``out`` holds as many bytes as were read (the
    echo of it all) or ``release()`` is called: ``connect`` closes after
    --wait seconds of quiet from the end of stdin, and the echo must not race
    that bound (a slow host may answer after it)."""

    def __init__(self, data: bytes, out: _Output) -> None:
        super().__init__(data)
        self._out = out
        self._released = False

    def read1(self, size: int | None = -1, /) -> bytes:
        data = super().read1(size)
        if not data:
            with self._out.grown:
                self._out.grown.wait_for(
                    lambda: self._released or self._out.tell() >= self.tell(), 30
                )
        return data

    def release(self) -> None:
        with self._out.grown:
            self._released = True
            self._out.grown.notify_all()


def run(*argv: str, stdin: bytes = b"") -> tuple[int, bytes, str]:
    """``main(argv)`` in this process: (exit status, stdout, stderr). stdin
    ends once its echo has arrived (or main() has returned)."""
    out, err = _Output(), io.BytesIO()
    inp = _Input(stdin, out)
    try:
        status = main(list(argv), stdin=inp, stdout=out, stderr=err)
    finally:
        inp.release()
    return status, out.getvalue(), err.getvalue().decode()


def test_identity_new_writes_a_private_file_and_prints_its_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "server.id"
    status, out, err = run("identity", "new", str(path))
    assert (status, err) == (0, "")
    assert path.stat().st_mode & 0o777 == 0o600
    assert out.decode() == Identity.load(path).peer_id + "\n"
    status, out, err = run("identity", "show", str(path))
    assert status == 0
    assert out.decode() == f"{Identity.load(path).peer_id}\nkind: ed25519\n"


def test_identity_new_never_replaces_a_file_without_force(tmp_path: Path) -> None:
    path = tmp_path / "server.id"
    run("identity", "new", str(path))
    first = Identity.load(path).peer_id
    status, out, err = run("identity", "new", str(path), "--kind", "ml-dsa-65")
    assert (status, out) == (1, b"")
    assert err == f"nautilus: error: {path} exists: give --force to replace it\n"
    assert Identity.load(path).peer_id == first
    status, out, _ = run("identity", "new", str(path), "--kind", "ml-dsa-65", "--force")
    assert status == 0
    assert Identity.load(path).kind == "ml-dsa-65"
    assert out.decode().strip() == Identity.load(path).peer_id != first


def test_identity_new_never_replaces_a_file_that_appears_while_it_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is made by another process after the existence check (here:
    while the key is generated): it is still not replaced."""
    path = tmp_path / "server.id"
    generate = Identity.generate

    def racing_generate(kind: str = "ed25519") -> Identity:
        path.write_text("the other process's file\n")
        return generate(kind)

    monkeypatch.setattr(Identity, "generate", staticmethod(racing_generate))
    status, out, err = run("identity", "new", str(path))
    assert (status, out) == (1, b"")
    assert err == f"nautilus: error: {path} exists: give --force to replace it\n"
    assert path.read_text() == "the other process's file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.id"]  # no temporary left


def test_identity_show_of_a_file_that_is_no_identity_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not an identity\n")
    path.chmod(0o600)
    status, out, err = run("identity", "show", str(path))
    assert (status, out) == (1, b"")
    assert err.startswith("nautilus: error: ")
    assert "identity" in err
    status, _, err = run("identity", "show", str(tmp_path / "missing"))
    assert status == 1
    assert err.startswith("nautilus: error: ")


class _BrokenPipe(io.BytesIO):
    """stdout whose reader has gone: writing (or flushing what was written) fails."""

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.mark.parametrize("command", ["new", "show"])
def test_output_that_cannot_be_written_fails_cleanly(tmp_path: Path, command: str) -> None:
    """stdout a pipe whose reader has gone: status 1 and a message, no traceback."""
    path = tmp_path / "server.id"
    if command == "show":
        run("identity", "new", str(path))
    err = io.BytesIO()
    status = main(["identity", command, str(path)], stdout=_BrokenPipe(), stderr=err)
    assert status == 1
    assert err.getvalue() == b"nautilus: error: cannot write the output: Broken pipe\n"
    assert Identity.load(path).peer_id  # (new: the identity was saved all the same)


def test_closed_standard_streams_are_the_null_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standard stream closed when Python started is None in sys: taken as
    the null device, not an AttributeError."""
    path = tmp_path / "server.id"
    run("identity", "new", str(path))
    for name in ("stdin", "stdout", "stderr"):
        monkeypatch.setattr(sys, name, None)
    assert main(["identity", "show", str(path)]) == 0
    assert main(["identity", "show", str(tmp_path / "missing")]) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["connect", "127.0.0.1:99999", "--trust", "x"],
        ["connect", "127.0.0.1", "--trust", "x"],
        ["connect", "127.0.0.1:1", "--trust", "x", "--timeout", "0"],
        ["connect", "127.0.0.1:1", "--trust", "x", "--timeout", "0.0001"],  # under Context's least
        ["serve", "127.0.0.1:0", "--identity", "f", "--timeout", "1e-300"],
        ["connect", "127.0.0.1:1", "--trust", "x"],  # not a peer id
        ["connect", "127.0.0.1:1", "--trust", "did:key:z6Mk"],
        ["serve", "127.0.0.1:0", "--identity", "f", "--trust", "nautilus:ml-dsa-65:z0"],
        ["connect", "127.0.0.1:1", "--trust", "x", "--wait", "-1"],
        ["identity", "new", "f", "--kind", "rsa"],
        ["serve", "127.0.0.1:0"],  # no --identity
        ["connect", "127.0.0.1:1"],  # neither --trust nor --known-peers
        [],
    ],
)
def test_bad_usage_exits_with_status_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage: nautilus" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["99999", "65536", "\u00b2", "\u0661", "-1", "1.0"])
def test_a_bad_port_says_what_it_takes(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Only ASCII digits make a port: a superscript two was a bare "invalid
    _address value", and an Arabic-Indic one was taken as port 1."""
    with pytest.raises(SystemExit) as exc:
        main(["connect", f"127.0.0.1:{port}", "--trust", "x"])
    assert exc.value.code == 2
    assert f"the port must be a number from 0 to 65535: '127.0.0.1:{port}'" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("address", [":443", "443", "localhost"])
def test_an_address_without_a_host_or_port_says_what_it_takes(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["connect", address, "--trust", "x"])
    assert exc.value.code == 2
    assert f"expected HOST:PORT, got '{address}'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "100000", "86401", "nan"])
def test_timeout_out_of_range_says_the_range_it_takes(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The least timeout is Context's (a millisecond), not 0: the message says so."""
    with pytest.raises(SystemExit) as exc:
        main(["connect", "127.0.0.1:1", "--timeout", value, "--trust", "x"])
    assert exc.value.code == 2
    assert f"expected 0.001 to 86400 seconds, got '{value}'" in capsys.readouterr().err


class EchoServer:
    """``python -m nautilus serve`` in a subprocess, on a free loopback port
    (or on ``address``)."""

    def __init__(self, identity: Path, *extra: str, address: str = "127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nautilus", "serve", address, "--identity", str(identity),
             *extra],
            stderr=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
            # stop() sends SIGINT: Ctrl-C works there even when this run ignores it
            # (started in the background or under nohup), as the server's would be
            preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        found = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+) as (\S+)\n", line)
        assert found, line
        self.address = f"127.0.0.1:{found[1]}"
        self.peer_id = found[2]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            assert self.proc.stderr is not None
            self.proc.stderr.close()


@pytest.fixture
def server_id(tmp_path: Path) -> Path:
    path = tmp_path / "server.id"
    Identity.generate().save(path)
    return path


@pytest.fixture
def server(server_id: Path) -> Iterator[EchoServer]:
    srv = EchoServer(server_id)
    yield srv
    assert srv.stop() == 130  # Ctrl-C


def test_connect_echoes_stdin_through_the_server(server: EchoServer) -> None:
    data = os.urandom(300_000) + b"the end\n"
    status, out, err = run(
        "connect", server.address, "--trust", server.peer_id, "--wait", "0.3", stdin=data
    )
    assert status == 0, err
    assert out == data
    assert err == f"connected to {server.peer_id} (x25519-mlkem768, aes-256-gcm)\n"


def test_connect_waits_for_the_answer_to_input_that_ended_late(
    server: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --wait quiet is counted from the end of stdin: input that came
    later than --wait seconds after the connection (or the last answer) is
    still answered. The quiet used to be counted from the last data received,
    or the connection: the client closed as soon as it had sent the input."""
    clock = [0.0]  # seconds added to the CLI's monotonic clock

    class LateInput(io.BytesIO):
        def read1(self, size: int | None = -1, /) -> bytes:
            if self.tell() == 0:
                clock[0] += 10.0  # the input comes 10 s after the connection
            return super().read1(size)

    fake = type(
        "FakeTime", (), {"monotonic": lambda: time.monotonic() + clock[0], "sleep": time.sleep}
    )
    monkeypatch.setattr(nautilus.cli, "time", fake)
    out, err = io.BytesIO(), io.BytesIO()
    argv = ["connect", server.address, "--trust", server.peer_id, "--wait", "1"]
    status = main(argv, stdin=LateInput(b"late\n"), stdout=out, stderr=err)
    assert status == 0, err.getvalue()
    assert out.getvalue() == b"late\n"


def test_connect_to_a_server_it_does_not_trust_fails_cleanly(
    server: EchoServer, tmp_path: Path
) -> None:
    other = Identity.generate().peer_id
    status, out, err = run("connect", server.address, "--trust", other, stdin=b"secret\n")
    assert (status, out) == (1, b"")
    assert err.startswith(f"nautilus: error: cannot connect to {server.address}: ")
    assert "not trusted" in err
    # Trust on first use: the first connection records the server, the next checks it.
    known = tmp_path / "known_peers"
    for _ in range(2):
        status, out, err = run(
            "connect", server.address, "--known-peers", str(known), "--wait", "0.2", stdin=b"hi\n"
        )
        assert (status, out) == (0, b"hi\n"), err
    assert server.peer_id in known.read_text()
    # The server kept serving through all of this.
    status, out, _ = run("connect", server.address, "--trust", server.peer_id, stdin=b"again\n")
    assert (status, out) == (0, b"again\n")


def test_a_server_requiring_client_auth_serves_only_trusted_clients(
    server_id: Path, tmp_path: Path
) -> None:
    client_id = tmp_path / "client.id"
    run("identity", "new", str(client_id))
    client_peer = Identity.load(client_id).peer_id
    srv = EchoServer(server_id, "--client-auth", "required", "--trust", client_peer)
    try:
        base = ("connect", srv.address, "--trust", srv.peer_id, "--wait", "0.2")
        status, out, err = run(*base, "--identity", str(client_id), stdin=b"ping\n")
        assert (status, out) == (0, b"ping\n"), err
        status, out, err = run(*base, stdin=b"ping\n")  # no identity
        assert status == 1
        assert out == b""
        assert err.startswith("nautilus: error: ")
    finally:
        assert srv.stop() == 130


def test_ticket_secret_new_writes_a_private_secret_and_prints_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tickets.secret"
    assert run("ticket-secret", "new", str(path)) == (0, b"", "")
    first = path.read_bytes()
    assert len(first) == 32
    assert path.stat().st_mode & 0o777 == 0o600
    status, out, err = run("ticket-secret", "new", str(path))
    assert (status, out) == (1, b"")
    assert err == f"nautilus: error: {path} exists: give --force to replace it\n"
    assert path.read_bytes() == first
    assert run("ticket-secret", "new", str(path), "--force") == (0, b"", "")
    assert path.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tickets.secret"]
    status, out, err = run("ticket-secret", "new", str(tmp_path / "missing" / "s"))
    assert (status, out) == (1, b"")
    assert err.startswith(f"nautilus: error: cannot write {tmp_path / 'missing' / 's'}: ")


def test_connect_with_a_session_file_resumes_across_a_restart_of_a_server_sharing_a_secret(
    server_id: Path, tmp_path: Path
) -> None:
    """Two servers, one after the other on the same address (a restart), from
    one --ticket-secret file: the second opens the ticket the first issued,
    which the first connect kept in its --session-file."""
    secret = tmp_path / "tickets.secret"
    assert run("ticket-secret", "new", str(secret))[0] == 0
    sessions = tmp_path / "sessions"
    first = EchoServer(server_id, "--ticket-secret", str(secret))
    try:
        base = ("connect", first.address, "--trust", first.peer_id, "--wait", "0.2")
        status, out, err = run(*base, "--session-file", str(sessions), stdin=b"one\n")
        assert (status, out) == (0, b"one\n"), err
        assert err == f"connected to {first.peer_id} (x25519-mlkem768, aes-256-gcm)\n"
    finally:
        assert first.stop() == 130
    assert sessions.stat().st_mode & 0o777 == 0o600
    second = EchoServer(server_id, "--ticket-secret", str(secret), address=first.address)
    try:
        status, out, err = run(*base, "--session-file", str(sessions), stdin=b"two\n")
        assert (status, out) == (0, b"two\n"), err
        assert err == f"connected to {first.peer_id} (x25519-mlkem768, aes-256-gcm, resumed)\n"
        # Without the file, a full handshake.
        status, out, err = run(*base, stdin=b"three\n")
        assert (status, out) == (0, b"three\n"), err
        assert "resumed" not in err
    finally:
        assert second.stop() == 130


def test_a_restarted_server_without_the_shared_secret_does_not_resume(
    server_id: Path, tmp_path: Path
) -> None:
    """The same, without --ticket-secret: the restarted server's ticket keys
    are new, so the ticket kept does not open (a full handshake, no failure)."""
    sessions = tmp_path / "sessions"
    first = EchoServer(server_id)
    try:
        base = ("connect", first.address, "--trust", first.peer_id, "--wait", "0.2")
        base += ("--session-file", str(sessions))
        assert run(*base, stdin=b"one\n")[:2] == (0, b"one\n")
    finally:
        assert first.stop() == 130
    second = EchoServer(server_id, address=first.address)
    try:
        status, out, err = run(*base, stdin=b"two\n")
        assert (status, out) == (0, b"two\n"), err
        assert err == f"connected to {first.peer_id} (x25519-mlkem768, aes-256-gcm)\n"
    finally:
        assert second.stop() == 130


def _serve_fails(server_id: Path, *extra: str) -> tuple[int, str]:
    """``serve`` in a subprocess that is to fail before listening: (status, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "nautilus", "serve", "127.0.0.1:0", "--identity", str(server_id),
         *extra],
        capture_output=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=60,
    )  # fmt: skip
    return proc.returncode, proc.stderr.decode()


def test_serve_with_a_bad_ticket_secret_file_fails_cleanly_before_listening(
    server_id: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "tickets.secret"
    secret.write_bytes(b"S" * 32)
    secret.chmod(0o644)
    status, err = _serve_fails(server_id, "--ticket-secret", str(secret))
    assert status == 1
    assert err == (
        f"nautilus: error: ticket secret file '{secret}' has permissions 0644, which allow "
        f"group or others; run: chmod 600 '{secret}'\n"
    )
    secret.chmod(0o600)
    secret.write_bytes(b"S" * 31)
    status, err = _serve_fails(server_id, "--ticket-secret", str(secret))
    assert status == 1
    assert err.startswith(f"nautilus: error: ticket secret file '{secret}' is too short")
    assert err.count("\n") == 1
    assert "SSSS" not in err
    status, err = _serve_fails(server_id, "--ticket-secret", str(tmp_path / "missing"))
    assert status == 1
    assert err == f"nautilus: error: ticket secret file '{tmp_path / 'missing'}' does not exist\n"


def test_connect_with_a_bad_session_file_fails_cleanly(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.write_bytes(b"")
    sessions.chmod(0o644)
    peer = Identity.generate().peer_id
    status, out, err = run(
        "connect", "127.0.0.1:1", "--trust", peer, "--session-file", str(sessions)
    )
    assert (status, out) == (1, b"")
    assert err.startswith("nautilus: error: session cache ")
    assert err.count("\n") == 1
