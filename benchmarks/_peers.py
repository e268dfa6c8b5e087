"""The server side of ``benchmarks/compare.py``, and the settings both sides share.

``compare.py`` (the client, in the main process) runs this file as a
subprocess::

    python benchmarks/_peers.py --dir DIR --seed N --client-peer-id ID [--uvloop]
                                [--listeners NAME,NAME...]

``DIR`` holds what ``compare.py`` generated at start-up: the server's Nautilus
identity (``server.identity``), the TLS certificates and keys
(:func:`make_tls_files`). The server listens on 127.0.0.1, port 0, once per
listener (:data:`LISTENERS`, or the ``--listeners`` subset), prints one JSON
line ``{"ready": {listener: port, ...}}`` on stdout and then serves. Each
listener has a contender (``plain``, ``ssl``, ``nautilus``,
``nautilus-chacha``) and a role:

* ``hs`` (handshakes, asyncio): once the handshake has completed, the session
  is checked and counted, and the server closes at once (TLS or Nautilus
  close_notify first). The client waits for that close, so a handshake it
  counts is one the server has completed too. ``hs-tickets`` is the same with
  session tickets issued (ssl: one ticket; Nautilus: ``resumption="psk_only"``,
  which grants whichever mode the client asks for); resumed sessions are
  counted apart, and for Nautilus so are psk_only ones.
* ``sink`` (one-way stream, asyncio): read until the end of the stream,
  comparing every byte with the pattern (:func:`pattern`), then print
  ``{"sink": {...}}`` (listener, bytes, whether every byte matched, times).
* ``bsink``: the same over blocking sockets, one thread per connection,
  ``recv_into`` a preallocated buffer (``ssl.SSLSocket``, ``NautilusSocket``,
  a plain socket).
* ``echo`` (256-byte request/response, asyncio): each message is checked
  against the expected sequence (:func:`messages`) and sent back; at the end
  ``{"msgs": {...}}`` with the count. Nautilus uses its message API
  (``start_channel_server``, ``Channel.recv_message`` / ``send_message``);
  plain and ssl use asyncio streams with a 4-byte big-endian length prefix.
* ``msink`` (one-way messages, asyncio): every message is checked and
  counted; ``{"msgs": {...}}`` at the end. plain and ssl parse the
  length-prefixed frames out of large reads (``reader.read``), making one
  ``bytes`` object per message as the message API does; Nautilus takes all
  the messages queued at each wake-up (``Channel.recv_messages``).
* ``hs-floor`` (contender ``floor``, asyncio): the message exchange of a
  psk_only resumption with no protocol and no cryptography: the client sends
  :data:`FLOOR_SIZES` ``[0]`` bytes, the server answers with ``[1]``, the
  client sends ``[2]``, the server sends ``[3]`` and closes. What any
  resumption must at least take (see ``_report.resumption_bound``).
* ``idle``: hold the connection open and idle until the client closes it
  (for the memory scenario); the number of such connections is in the stats.

A line ``{"cmd": "stats"}`` on stdin is answered with ``{"stats": {...}}``:
handshakes counted per listener (good, bad, resumed), idle connections, the
process's CPU time and resident memory. ``{"cmd": "memory"}`` collects
garbage first, then answers ``{"memory": {...}}`` with the resident memory
(``VmRSS``) and the idle connections. The server exits when stdin closes, so
it never outlives ``compare.py``. Nothing else is written to stdout; errors
go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import gc
import ipaddress
import json
import os
import random
import resource
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import nautilus
import nautilus.asyncio as nasyncio

HOST = "127.0.0.1"
NAUTILUS_GROUP = "x25519-mlkem768"
NAUTILUS_CIPHER = "aes-256-gcm"
NAUTILUS_CHACHA = "chacha20-poly1305"
TLS_GROUP = "X25519"
TLS_CIPHER = "TLS_AES_256_GCM_SHA384"
TLS_VERSION = "TLSv1.3"
PATTERN_SIZE = 1 << 20
"""The stream is this many pseudo-random bytes, repeated; chunk sizes divide it."""
READ_SIZE = 1 << 18
SERVER_IDENTITY_FILE = "server.identity"
MESSAGE_SIZE = 256
MESSAGE_KINDS = 1024
"""Distinct messages: message ``i`` of a connection is ``messages(seed)[i % MESSAGE_KINDS]``."""
LENGTH_PREFIX = 4
MAX_FRAME = 1 << 20
ERRORS = (OSError, EOFError, ssl.SSLError, nautilus.NautilusError, asyncio.IncompleteReadError)


FLOOR_SIZES = (276, 321, 57, 22)
"""The bytes of a psk_only resumption in bench's settings: the client's hello, the
server's flight with one ticket, the client's Finished, the server's close_notify
(tests/test_bench_smoke.py checks them against a real resumption)."""


class Listener(NamedTuple):
    contender: str  # plain, floor, ssl, nautilus, nautilus-chacha
    role: str  # hs, hs-tickets, hs-floor, sink, bsink, echo, msink, idle
    mutual: bool = False


LISTENERS: dict[str, Listener] = {
    "plain-hs": Listener("plain", "hs"),  # TCP connect and close: the floor of a handshake
    "floor-hs": Listener("floor", "hs-floor"),  # and of a resumption: its messages, no work
    "ssl-hs": Listener("ssl", "hs"),
    "ssl-hs-mutual": Listener("ssl", "hs", True),
    "ssl-hs-tickets": Listener("ssl", "hs-tickets"),
    "nautilus-hs": Listener("nautilus", "hs"),
    "nautilus-hs-mutual": Listener("nautilus", "hs", True),
    "nautilus-hs-tickets": Listener("nautilus", "hs-tickets"),
    **{
        f"{c}-{role}": Listener(c, role)
        for role, contenders in (
            ("sink", ("plain", "ssl", "nautilus", "nautilus-chacha")),
            ("bsink", ("plain", "ssl", "nautilus")),
            ("echo", ("plain", "ssl", "nautilus")),
            ("msink", ("plain", "ssl", "nautilus")),
            ("idle", ("plain", "ssl", "nautilus")),
        )
        for c in contenders
    },
}


def listener_name(contender: str, role: str, mutual: bool = False) -> str:
    return f"{contender}-{role}" + ("-mutual" if mutual else "")


def pattern(seed: int) -> bytes:
    """The block the streams repeat: both processes derive it from the seed."""
    return random.Random(seed).randbytes(PATTERN_SIZE)


def messages(block: bytes) -> list[bytes]:
    """The distinct 256-byte messages, cut from the pattern (random, so all different)."""
    return [block[i * MESSAGE_SIZE : (i + 1) * MESSAGE_SIZE] for i in range(MESSAGE_KINDS)]


def cipher_of(contender: str) -> str:
    return NAUTILUS_CHACHA if contender == "nautilus-chacha" else NAUTILUS_CIPHER


def raise_open_files_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (up to the hard limit); the result."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return wanted if soft == resource.RLIM_INFINITY else soft


def blocking_mode(sock: socket.socket, guard: float = 60.0) -> None:
    """Blocking mode for a transfer, with kernel send/receive timeouts as a guard.

    A Python-level timeout (``settimeout``) would make CPython poll() before
    every send and receive on plain sockets and NautilusSocket, but not on
    ssl.SSLSocket (which tries first): blocking mode measures each at its
    fastest, and SO_SNDTIMEO / SO_RCVTIMEO still end a stalled transfer.
    """
    sock.settimeout(None)
    whole = int(guard)
    timeval = struct.pack("@ll", whole, int((guard - whole) * 1e6))
    for option in (socket.SO_SNDTIMEO, socket.SO_RCVTIMEO):
        sock.setsockopt(socket.SOL_SOCKET, option, timeval)


def rss_kib() -> int | None:
    """This process's resident memory (``VmRSS``) in KiB, or None if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_loop(main: Coroutine[Any, Any, Any], use_uvloop: bool) -> Any:
    """``asyncio.run(main)``, on a uvloop event loop if asked."""
    if not use_uvloop:
        return asyncio.run(main)
    import uvloop

    runner_cls: Any = getattr(asyncio, "Runner", None)
    if runner_cls is not None:  # Python 3.11+
        with runner_cls(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    uvloop.install()  # pragma: no cover (Python 3.10)
    return asyncio.run(main)


# -- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_dir(cls, directory: Path) -> TlsFiles:
        return cls(
            directory / "server.crt",
            directory / "server.key",
            directory / "client.crt",
            directory / "client.key",
        )


def _self_signed(cert_path: Path, key_path: Path, common_name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def make_tls_files(directory: Path) -> TlsFiles:
    """EC P-256 self-signed certificates (ECDSA-SHA256, SAN IP 127.0.0.1) for both sides."""
    files = TlsFiles.in_dir(directory)
    _self_signed(files.server_cert, files.server_key, "nautilus-bench-server")
    _self_signed(files.client_cert, files.client_key, "nautilus-bench-client")
    return files


def tls_server_context(
    files: TlsFiles, *, mutual: bool, tickets: int = 0, group: str = TLS_GROUP
) -> ssl.SSLContext:
    """TLS 1.3 only, X25519 only; no session tickets unless ``tickets`` (as Nautilus)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.server_cert, files.server_key)
    ctx.set_ecdh_curve(group)
    ctx.num_tickets = tickets
    if mutual:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=files.client_cert)
    return ctx


def tls_client_context(files: TlsFiles, *, mutual: bool, group: str = TLS_GROUP) -> ssl.SSLContext:
    """TLS 1.3 only, X25519 only; trusts exactly the server's certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile=files.server_cert)
    ctx.set_ecdh_curve(group)
    if mutual:
        ctx.load_cert_chain(files.client_cert, files.client_key)
    return ctx


def tls_group_setting_effective(files: TlsFiles) -> bool:
    """True if set_ecdh_curve() really restricts the groups (Python cannot report them).

    An in-memory handshake between an X25519-only client and a P-256-only
    server must fail, and one between two X25519-only sides must succeed.
    """

    def handshake(server_group: str) -> bool:
        server = tls_server_context(files, mutual=False, group=server_group)
        client = tls_client_context(files, mutual=False)
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_hostname=HOST)
        s = server.wrap_bio(s_in, s_out, server_side=True)
        done = {id(c): False, id(s): False}
        for _ in range(8):
            for obj, out, peer_in in ((c, c_out, s_in), (s, s_out, c_in)):
                try:
                    obj.do_handshake()
                    done[id(obj)] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    return False
                if out.pending:
                    peer_in.write(out.read())
            if all(done.values()):
                return True
        return False

    return handshake(TLS_GROUP) and not handshake("prime256v1")


def check_tls_object(obj: object, *, expect_peer_cert: bool) -> str | None:
    """What is wrong with a TLS connection's parameters (SSLObject or SSLSocket), or None."""
    if not isinstance(obj, (ssl.SSLObject, ssl.SSLSocket)):
        return "no ssl_object"
    cipher = obj.cipher()
    if obj.version() != TLS_VERSION or cipher is None or cipher[0] != TLS_CIPHER:
        return f"negotiated {obj.version()} {cipher}, not {TLS_VERSION} {TLS_CIPHER}"
    if expect_peer_cert and not obj.getpeercert():
        return "no peer certificate"
    return None


def check_tls(writer: asyncio.StreamWriter, *, expect_peer_cert: bool) -> str | None:
    """What is wrong with an asyncio TLS connection's parameters, or None."""
    return check_tls_object(writer.get_extra_info("ssl_object"), expect_peer_cert=expect_peer_cert)


def tls_group(writer: asyncio.StreamWriter) -> str | None:
    """The negotiated group where Python can report it (``SSLObject.group()``), else None."""
    obj = writer.get_extra_info("ssl_object")
    method = getattr(obj, "group", None)
    if callable(method):
        value = method()
        return str(value) if value is not None else None
    return None


# -- Nautilus ----------------------------------------------------------------------------------


def nautilus_server_context(
    identity: nautilus.Identity,
    client_peer_id: str,
    *,
    mutual: bool,
    cipher: str = NAUTILUS_CIPHER,
    resumption: str = "off",
) -> nautilus.Context:
    """``resumption="off"``: full handshakes only; ``"psk_only"`` grants either mode."""
    return nautilus.Context(
        identity,
        trusted_peers=[client_peer_id] if mutual else [],
        client_auth="required" if mutual else "off",
        groups=[NAUTILUS_GROUP],
        ciphers=[cipher],
        resumption=resumption,
    )


def nautilus_client_context(
    server_peer_id: str,
    identity: nautilus.Identity | None,
    *,
    cipher: str = NAUTILUS_CIPHER,
    resumption: str = "off",
) -> nautilus.Context:
    """Pinned trust in the server; ``identity`` only for mutual authentication."""
    return nautilus.Context(
        identity,
        trusted_peers=[server_peer_id],
        groups=[NAUTILUS_GROUP],
        ciphers=[cipher],
        resumption=resumption,
    )


def check_session(
    info: object, peer_id: str | None, *, cipher: str = NAUTILUS_CIPHER, resumed: bool = False
) -> str | None:
    """What is wrong with a Nautilus session, or None; ``peer_id`` None: no peer key.

    ``resumed``: the session must have been resumed from a ticket (else: must
    be a full handshake, with the peer trusted as pinned).
    """
    if not isinstance(info, nautilus.SessionInfo):
        return "no Nautilus session"
    if info.resumed != resumed:
        return "a resumed session, not a full handshake" if info.resumed else "not resumed"
    if info.group != NAUTILUS_GROUP or info.cipher != cipher:
        return f"negotiated {info.group} {info.cipher}, not {NAUTILUS_GROUP} {cipher}"
    if info.peer_id != peer_id:
        return f"peer {info.peer_id}, expected {peer_id}"
    expected_trust = "resumed" if resumed else "pinned"
    if peer_id is not None and info.trust != expected_trust:
        return f"peer trusted as {info.trust!r}, not {expected_trust!r}"
    return None


def check_nautilus(
    writer: asyncio.StreamWriter, peer_id: str | None, *, cipher: str = NAUTILUS_CIPHER
) -> str | None:
    """What is wrong with an asyncio Nautilus connection (a full handshake), or None."""
    return check_session(writer.get_extra_info("nautilus"), peer_id, cipher=cipher)


def psk_mode(holder: object) -> str | None:
    """The resumption mode of a connection ("NONE", "PSK_DHE", "PSK_ONLY").

    Read from the sans-IO Connection under a NautilusSocket or a
    NautilusTransport (a private attribute: None if it is not there).
    """
    mode = getattr(getattr(holder, "_conn", None), "_psk_mode", None)
    return getattr(mode, "name", None)


# -- the server process ------------------------------------------------------------------------

_emit_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    line = json.dumps(obj) + "\n"
    with _emit_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FloorProtocol(asyncio.Protocol):
    """One connection of the ``hs-floor`` listener (see the module docstring)."""

    def __init__(self, server: Server, name: str) -> None:
        self.server, self.name = server, name
        self.got = 0
        self.answered = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.got += len(data)
        hello, flight, last, close = FLOOR_SIZES
        if not self.answered and self.got >= hello:
            self.answered = True
            self.transport.write(bytes(flight))
        if self.got >= hello + last and not self.transport.is_closing():
            problem = None if self.got == hello + last else f"{self.got} bytes received"
            self.server.note(self.name, problem)
            self.transport.write(bytes(close))
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        hello, _, last, _ = FLOOR_SIZES
        if self.got < hello + last:
            self.server.note(self.name, f"the client left after {self.got} bytes")


class Server:
    def __init__(
        self, directory: Path, seed: int, client_peer_id: str, listeners: list[str]
    ) -> None:
        self.files = TlsFiles.in_dir(directory)
        self.identity = nautilus.Identity.load(directory / SERVER_IDENTITY_FILE)
        self.client_peer_id = client_peer_id
        block = pattern(seed)
        self.doubled = block + block  # any slice up to PATTERN_SIZE long, at any phase
        self.messages = messages(block)
        self.listeners = listeners
        self.counts = {
            name: {"ok": 0, "bad": 0, "resumed": 0, "psk_only": 0} for name in self.listeners
        }
        self.idle = dict.fromkeys(self.listeners, 0)
        self.problems: list[str] = []
        self.servers: list[asyncio.Server] = []
        self.sockets: list[socket.socket] = []

    def note(self, name: str, problem: str | None) -> None:
        self.counts[name]["bad" if problem else "ok"] += 1
        if problem and len(self.problems) < 20:
            self.problems.append(f"{name}: {problem}")
            print(f"[peers] {name}: {problem}", file=sys.stderr, flush=True)

    def check(self, writer: asyncio.StreamWriter, listener: Listener) -> str | None:
        if listener.contender == "ssl":
            return check_tls(writer, expect_peer_cert=listener.mutual)
        if listener.contender.startswith("nautilus"):
            return check_nautilus(
                writer,
                self.client_peer_id if listener.mutual else None,
                cipher=cipher_of(listener.contender),
            )
        return None

    # -- asyncio handlers

    def handshake_handler(self, name: str, listener: Listener) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.note(name, self.check(writer, listener))
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()

        return handle

    def tickets_handler(self, name: str, listener: Listener) -> Handler:
        """A handshake listener that issues tickets: full or resumed sessions are both fine."""
        counts = self.counts[name]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if listener.contender == "ssl":
                obj = writer.get_extra_info("ssl_object")
                problem = check_tls_object(obj, expect_peer_cert=False)
                resumed = bool(getattr(obj, "session_reused", False))
                only = False
            else:
                info = writer.get_extra_info("nautilus")
                resumed = bool(getattr(info, "resumed", False))
                problem = check_session(info, None, resumed=resumed)
                only = psk_mode(writer.transport) == "PSK_ONLY"
            self.note(name, problem)
            if not problem:
                counts["resumed"] += resumed
                counts["psk_only"] += only
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()

        return handle

    def sink_handler(self, name: str) -> Handler:
        doubled = self.doubled

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            total, matched, error = 0, True, None
            first: float | None = None
            try:
                while data := await reader.read(READ_SIZE):
                    if first is None:
                        first = time.monotonic()
                    view, phase = memoryview(data), total % PATTERN_SIZE
                    for start in range(0, len(data), PATTERN_SIZE):
                        part = view[start : start + PATTERN_SIZE]
                        if not doubled.startswith(part, phase):
                            matched = False
                        phase = (phase + len(part)) % PATTERN_SIZE
                    total += len(data)
            except ERRORS as exc:
                error = describe(exc)
            end = time.monotonic()
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()
            self.report_sink(name, total, matched, error, first, end)

        return handle

    def report_sink(
        self,
        name: str,
        total: int,
        matched: bool,
        error: str | None,
        first: float | None,
        end: float,
    ) -> None:
        emit(
            {
                "sink": {
                    "listener": name,
                    "bytes": total,
                    "matched": matched,
                    "error": error,
                    "first_byte": first,
                    "end": end,
                }
            }
        )

    def report_messages(self, name: str, count: int, matched: bool, error: str | None) -> None:
        emit({"msgs": {"listener": name, "count": count, "matched": matched, "error": error}})

    def echo_handler(self, name: str) -> Handler:
        """Length-prefixed request/response over streams (plain, ssl)."""
        expected, kinds = self.messages, MESSAGE_KINDS

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count, matched, error = 0, True, None
            readexactly, write, drain = reader.readexactly, writer.write, writer.drain
            try:
                while True:
                    try:
                        head = await readexactly(LENGTH_PREFIX)
                    except asyncio.IncompleteReadError as exc:
                        if exc.partial:
                            error = "the stream ended inside a length prefix"
                        break
                    size = int.from_bytes(head, "big")
                    if size > MAX_FRAME:
                        error = f"a frame of {size} bytes"
                        break
                    message = await readexactly(size)
                    if message != expected[count % kinds]:
                        matched = False
                    write(head + message)
                    await drain()
                    count += 1
            except ERRORS as exc:
                error = describe(exc)
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()
            self.report_messages(name, count, matched, error)

        return handle

    def msink_handler(self, name: str) -> Handler:
        """Length-prefixed one-way messages over streams (plain, ssl): parse large reads."""
        expected, kinds = self.messages, MESSAGE_KINDS

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count, matched, error = 0, True, None
            buf = b""
            unpack_from = struct.Struct(">I").unpack_from
            try:
                while data := await reader.read(READ_SIZE):
                    buf = buf + data if buf else data
                    pos, end = 0, len(buf)
                    while end - pos >= LENGTH_PREFIX:
                        (size,) = unpack_from(buf, pos)
                        if size > MAX_FRAME:
                            raise ValueError(f"a frame of {size} bytes")
                        stop = pos + LENGTH_PREFIX + size
                        if stop > end:
                            break
                        message = buf[pos + LENGTH_PREFIX : stop]
                        if message != expected[count % kinds]:
                            matched = False
                        count += 1
                        pos = stop
                    buf = buf[pos:]
                if buf:
                    error = f"the stream ended inside a frame ({len(buf)} bytes left)"
            except (*ERRORS, ValueError) as exc:
                error = describe(exc)
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()
            self.report_messages(name, count, matched, error)

        return handle

    def channel_handler(
        self, name: str, listener: Listener, echo: bool
    ) -> Callable[[nasyncio.Channel], Awaitable[None]]:
        """The Nautilus message API: echo (request/response) or count (one-way)."""
        expected, kinds = self.messages, MESSAGE_KINDS

        async def handle(channel: nasyncio.Channel) -> None:
            count, matched, error = 0, True, None
            problem = check_session(channel.session, None, cipher=cipher_of(listener.contender))
            if problem:
                error = problem
            elif echo:  # each message is checked and sent back before the next is awaited
                recv, send, drain = channel.recv_message, channel.send_message, channel.drain
                try:
                    while True:
                        try:
                            message = await recv()
                        except EOFError:
                            break
                        if message != expected[count % kinds]:
                            matched = False
                        send(message)
                        await drain()
                        count += 1
                except ERRORS as exc:
                    error = describe(exc)
            else:  # all the queued messages per wake-up, as msink parses a whole read
                recv_messages = channel.recv_messages
                try:
                    while True:
                        try:
                            batch = await recv_messages()
                        except EOFError:
                            break
                        for message in batch:
                            if message != expected[count % kinds]:
                                matched = False
                            count += 1
                except ERRORS as exc:
                    error = describe(exc)
            channel.close()
            with contextlib.suppress(*ERRORS):
                await channel.wait_closed()
            self.report_messages(name, count, matched, error)

        return handle

    def idle_handler(self, name: str, listener: Listener) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            problem = self.check(writer, listener)
            self.note(name, problem)
            if not problem:
                self.idle[name] += 1
                try:
                    with contextlib.suppress(*ERRORS):
                        while await reader.read(READ_SIZE):
                            pass
                finally:
                    self.idle[name] -= 1
            writer.close()
            with contextlib.suppress(*ERRORS):
                await writer.wait_closed()

        return handle

    # -- blocking sockets

    def blocking_sink(
        self, name: str, wrap: Callable[[socket.socket], socket.socket], conn: socket.socket
    ) -> None:
        """One connection of a ``bsink`` listener (its own thread)."""
        total, matched, error = 0, True, None
        first: float | None = None
        sock: socket.socket = conn
        doubled = self.doubled
        try:
            conn.settimeout(60.0)
            sock = wrap(conn)
            if isinstance(sock, ssl.SSLSocket):
                problem = check_tls_object(sock, expect_peer_cert=False)
            elif isinstance(sock, nautilus.NautilusSocket):
                problem = check_session(sock.session, None)
            else:
                problem = None
            if problem:
                raise ValueError(problem)
            blocking_mode(sock)
            buf = bytearray(READ_SIZE)
            view = memoryview(buf)
            recv_into = sock.recv_into
            while n := recv_into(buf):
                if first is None:
                    first = time.monotonic()
                phase = total % PATTERN_SIZE
                for start in range(0, n, PATTERN_SIZE):
                    part = view[start : min(n, start + PATTERN_SIZE)]
                    if not doubled.startswith(part, phase):
                        matched = False
                    phase = (phase + len(part)) % PATTERN_SIZE
                total += n
            if isinstance(sock, ssl.SSLSocket):
                sock = sock.unwrap()  # our close_notify, answering the client's
        except (*ERRORS, ValueError) as exc:
            error = describe(exc)
        end = time.monotonic()
        with contextlib.suppress(OSError, nautilus.NautilusError):
            sock.close()
        self.report_sink(name, total, matched, error, first, end)

    def blocking_wrapper(self, contender: str) -> Callable[[socket.socket], socket.socket]:
        """How a ``bsink`` listener wraps an accepted socket (handshake included)."""
        if contender == "ssl":
            tls = tls_server_context(self.files, mutual=False)
            return lambda conn: tls.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        if contender == "nautilus":
            nctx = nautilus_server_context(self.identity, self.client_peer_id, mutual=False)
            return lambda conn: nctx.wrap_socket(conn, server_side=True)
        return lambda conn: conn

    def serve_blocking(self, name: str, contender: str, lsock: socket.socket) -> None:
        wrap = self.blocking_wrapper(contender)
        while True:
            try:
                conn, _ = lsock.accept()
            except OSError:
                return
            threading.Thread(
                target=self.blocking_sink, args=(name, wrap, conn), daemon=True
            ).start()

    # -- start-up and control

    async def start(self) -> dict[str, int]:
        ports = {}
        for name in self.listeners:
            listener = LISTENERS[name]
            contender, role, mutual = listener
            if role == "bsink":
                lsock = socket.create_server((HOST, 0), backlog=64)
                self.sockets.append(lsock)
                threading.Thread(
                    target=self.serve_blocking, args=(name, contender, lsock), daemon=True
                ).start()
                ports[name] = lsock.getsockname()[1]
                continue
            if role == "hs-floor":
                server = await asyncio.get_running_loop().create_server(
                    functools.partial(FloorProtocol, self, name), HOST, 0, backlog=1024
                )
                self.servers.append(server)
                ports[name] = server.sockets[0].getsockname()[1]
                continue
            if contender.startswith("nautilus"):
                nctx = nautilus_server_context(
                    self.identity,
                    self.client_peer_id,
                    mutual=mutual,
                    cipher=cipher_of(contender),
                    resumption="psk_only" if role == "hs-tickets" else "off",
                )
                if role in ("echo", "msink"):
                    server = await nasyncio.start_channel_server(
                        self.channel_handler(name, listener, echo=role == "echo"),
                        HOST,
                        0,
                        context=nctx,
                    )
                else:
                    server = await nasyncio.start_server(
                        self.handler(name, listener), HOST, 0, context=nctx, backlog=1024
                    )
            elif contender == "ssl":
                ctx = tls_server_context(
                    self.files, mutual=mutual, tickets=1 if role == "hs-tickets" else 0
                )
                server = await asyncio.start_server(
                    self.handler(name, listener), HOST, 0, ssl=ctx, backlog=1024
                )
            else:
                server = await asyncio.start_server(
                    self.handler(name, listener), HOST, 0, backlog=1024
                )
            self.servers.append(server)
            ports[name] = server.sockets[0].getsockname()[1]
        return ports

    def handler(self, name: str, listener: Listener) -> Handler:
        role = listener.role
        if role == "hs":
            return self.handshake_handler(name, listener)
        if role == "hs-tickets":
            return self.tickets_handler(name, listener)
        if role == "sink":
            return self.sink_handler(name)
        if role == "echo":
            return self.echo_handler(name)
        if role == "msink":
            return self.msink_handler(name)
        if role == "idle":
            return self.idle_handler(name, listener)
        raise ValueError(f"no asyncio handler for role {role!r}")

    def stats(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "idle": self.idle,
            "cpu_s": time.process_time(),
            "rss_kib": rss_kib(),
            "problems": list(self.problems),
        }

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_quiet_cancelled_handlers)
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(commands), os.fdopen(0, "rb", buffering=0)
        )
        emit({"ready": await self.start()})
        try:
            while line := await commands.readline():
                cmd = json.loads(line).get("cmd")
                if cmd == "stats":
                    emit({"stats": self.stats()})
                elif cmd == "memory":
                    gc.collect()
                    emit({"memory": {"rss_kib": rss_kib(), "idle": self.idle}})
                else:
                    emit({"error": f"unknown command {cmd!r}"})
        finally:
            for server in self.servers:
                server.close()
            for lsock in self.sockets:
                lsock.close()


def _quiet_cancelled_handlers(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: as the default one, except for the
    cancelled connection handlers of an interrupted run. When compare.py
    stops this process in the middle of a scenario, asyncio.run() cancels
    them, and Python 3.11's StreamReaderProtocol then logs a CancelledError
    raised in its own done-callback (fixed in 3.12), a traceback per
    connection that reports nothing wrong."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


def main() -> int:
    parser = argparse.ArgumentParser(description="compare.py's server process")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--client-peer-id", required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on a uvloop event loop")
    parser.add_argument("--listeners", help="comma-separated subset of the listeners")
    parser.add_argument(
        "--max-connections", type=int, default=0, help="raise the open-files limit for this many"
    )
    args = parser.parse_args()
    names = args.listeners.split(",") if args.listeners else list(LISTENERS)
    unknown = set(names) - set(LISTENERS)
    if unknown:
        parser.error(f"unknown listeners: {', '.join(sorted(unknown))}")
    if args.max_connections:
        raise_open_files_limit(args.max_connections + 256)
    server = Server(args.dir, args.seed, args.client_peer_id, names)
    run_loop(server.serve(), args.uvloop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
