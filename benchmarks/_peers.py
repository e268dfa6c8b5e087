"""The server side of ``benchmarks/compare.py``, and the settings both sides share.

``compare.py`` (the client, in the main process) runs this file as a
subprocess::

    python benchmarks/_peers.py --dir DIR --seed N --client-peer-id ID

``DIR`` holds what ``compare.py`` generated at start-up: the server's Nautilus
identity (``server.identity``), the TLS certificates and keys
(:func:`make_tls_files`). The server listens on 127.0.0.1, port 0, once per
contender and role (:data:`LISTENERS`), prints one JSON line
``{"ready": {listener: port, ...}}`` on stdout and then serves:

* ``*-hs`` listeners (handshakes): once the handshake has completed, the
  session is checked and counted, and the server closes at once (TLS or
  Nautilus close_notify first). The client waits for that close, so a
  handshake it counts is one the server has completed too.
* ``*-sink`` listeners (one-way streams): read until the end of the stream,
  comparing every byte with the pattern (:func:`pattern`), then print
  ``{"sink": {...}}`` (listener, bytes, whether every byte matched, times).

A line ``{"cmd": "stats"}`` on stdin is answered with ``{"stats": {...}}``:
handshakes counted per listener (good and bad) and the process's CPU time.
The server exits when stdin closes, so it never outlives ``compare.py``.
Nothing else is written to stdout; errors go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import random
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import nautilus
import nautilus.asyncio as nasyncio

HOST = "127.0.0.1"
NAUTILUS_GROUP = "x25519-mlkem768"
NAUTILUS_CIPHER = "aes-256-gcm"
TLS_GROUP = "X25519"
TLS_CIPHER = "TLS_AES_256_GCM_SHA384"
TLS_VERSION = "TLSv1.3"
PATTERN_SIZE = 1 << 20
"""The stream is this many pseudo-random bytes, repeated; chunk sizes divide it."""
READ_SIZE = 1 << 18
SERVER_IDENTITY_FILE = "server.identity"

# name -> (contender, role, mutual)
LISTENERS: dict[str, tuple[str, str, bool]] = {
    "plain-sink": ("plain", "sink", False),
    "ssl-hs": ("ssl", "hs", False),
    "ssl-hs-mutual": ("ssl", "hs", True),
    "ssl-sink": ("ssl", "sink", False),
    "nautilus-hs": ("nautilus", "hs", False),
    "nautilus-hs-mutual": ("nautilus", "hs", True),
    "nautilus-sink": ("nautilus", "sink", False),
}


def listener_name(contender: str, role: str, mutual: bool = False) -> str:
    return f"{contender}-{role}" + ("-mutual" if mutual else "")


def pattern(seed: int) -> bytes:
    """The block the streams repeat: both processes derive it from the seed."""
    return random.Random(seed).randbytes(PATTERN_SIZE)


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


def tls_server_context(files: TlsFiles, *, mutual: bool, group: str = TLS_GROUP) -> ssl.SSLContext:
    """TLS 1.3 only, X25519 only, no session tickets (as Nautilus with resumption off)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.server_cert, files.server_key)
    ctx.set_ecdh_curve(group)
    ctx.num_tickets = 0
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


def check_tls(writer: asyncio.StreamWriter, *, expect_peer_cert: bool) -> str | None:
    """What is wrong with a TLS connection's parameters, or None."""
    obj = writer.get_extra_info("ssl_object")
    if not isinstance(obj, (ssl.SSLObject, ssl.SSLSocket)):
        return "no ssl_object"
    cipher = obj.cipher()
    if obj.version() != TLS_VERSION or cipher is None or cipher[0] != TLS_CIPHER:
        return f"negotiated {obj.version()} {cipher}, not {TLS_VERSION} {TLS_CIPHER}"
    if expect_peer_cert and not obj.getpeercert():
        return "no peer certificate"
    return None


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
    identity: nautilus.Identity, client_peer_id: str, *, mutual: bool
) -> nautilus.Context:
    return nautilus.Context(
        identity,
        trusted_peers=[client_peer_id] if mutual else [],
        client_auth="required" if mutual else "off",
        groups=[NAUTILUS_GROUP],
        ciphers=[NAUTILUS_CIPHER],
        resumption="off",  # full handshakes only (resumption is measured on its own)
    )


def nautilus_client_context(
    server_peer_id: str, identity: nautilus.Identity | None
) -> nautilus.Context:
    """Pinned trust in the server; ``identity`` only for mutual authentication."""
    return nautilus.Context(
        identity,
        trusted_peers=[server_peer_id],
        groups=[NAUTILUS_GROUP],
        ciphers=[NAUTILUS_CIPHER],
        resumption="off",  # full handshakes only (resumption is measured on its own)
    )


def check_nautilus(writer: asyncio.StreamWriter, peer_id: str | None) -> str | None:
    """What is wrong with a Nautilus session, or None; ``peer_id`` None: no peer key."""
    info = writer.get_extra_info("nautilus")
    if not isinstance(info, nautilus.SessionInfo):
        return "no Nautilus session"
    if info.resumed:
        return "a resumed session, not a full handshake"
    if info.group != NAUTILUS_GROUP or info.cipher != NAUTILUS_CIPHER:
        return f"negotiated {info.group} {info.cipher}, not {NAUTILUS_GROUP} {NAUTILUS_CIPHER}"
    if info.peer_id != peer_id:
        return f"peer {info.peer_id}, expected {peer_id}"
    if peer_id is not None and info.trust != "pinned":
        return f"peer trusted as {info.trust!r}, not 'pinned'"
    return None


# -- the server process ------------------------------------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Server:
    def __init__(self, directory: Path, seed: int, client_peer_id: str) -> None:
        self.files = TlsFiles.in_dir(directory)
        self.identity = nautilus.Identity.load(directory / SERVER_IDENTITY_FILE)
        self.client_peer_id = client_peer_id
        block = pattern(seed)
        self.doubled = block + block  # any slice up to PATTERN_SIZE long, at any phase
        self.counts = {name: {"ok": 0, "bad": 0} for name in LISTENERS}
        self.problems: list[str] = []
        self.servers: list[asyncio.Server] = []

    def note(self, name: str, problem: str | None) -> None:
        self.counts[name]["bad" if problem else "ok"] += 1
        if problem and len(self.problems) < 20:
            self.problems.append(f"{name}: {problem}")
            print(f"[peers] {name}: {problem}", file=sys.stderr, flush=True)

    def handshake_handler(self, name: str, contender: str, mutual: bool) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if contender == "ssl":
                problem = check_tls(writer, expect_peer_cert=mutual)
            else:
                problem = check_nautilus(writer, self.client_peer_id if mutual else None)
            self.note(name, problem)
            writer.close()
            with contextlib.suppress(OSError, nautilus.NautilusError, ssl.SSLError):
                await writer.wait_closed()

        return handle

    def sink_handler(self, name: str) -> Any:
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
            except (OSError, nautilus.NautilusError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            end = time.monotonic()
            writer.close()
            with contextlib.suppress(OSError, nautilus.NautilusError, ssl.SSLError):
                await writer.wait_closed()
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

        return handle

    async def start(self) -> dict[str, int]:
        ports = {}
        for name, (contender, role, mutual) in LISTENERS.items():
            handler = (
                self.sink_handler(name)
                if role == "sink"
                else self.handshake_handler(name, contender, mutual)
            )
            if contender == "plain":
                server = await asyncio.start_server(handler, HOST, 0)
            elif contender == "ssl":
                ctx = tls_server_context(self.files, mutual=mutual)
                server = await asyncio.start_server(handler, HOST, 0, ssl=ctx)
            else:
                nctx = nautilus_server_context(self.identity, self.client_peer_id, mutual=mutual)
                server = await nasyncio.start_server(handler, HOST, 0, context=nctx)
            self.servers.append(server)
            ports[name] = server.sockets[0].getsockname()[1]
        return ports

    def stats(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "cpu_s": time.process_time(),
            "problems": list(self.problems),
        }

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
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
                else:
                    emit({"error": f"unknown command {cmd!r}"})
        finally:
            for server in self.servers:
                server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="compare.py's server process")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--client-peer-id", required=True)
    args = parser.parse_args()
    server = Server(args.dir, args.seed, args.client_peer_id)
    asyncio.run(server.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
