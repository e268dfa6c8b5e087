"""Transport benchmark (``make bench``): Nautilus against Python's ssl (TLS 1.3) and plaintext.

Measures, side by side in the same run (the keys are ``--only``'s):

* ``hs-*``: full handshakes per second and latency (p50, p99), sequential and
  with concurrent clients, server-auth and mutual: Nautilus (x25519-mlkem768,
  aes-256-gcm, Ed25519 identities, pinned trust) against ssl (TLS 1.3,
  TLS_AES_256_GCM_SHA384, X25519, ECDSA P-256 self-signed certificates);
* ``hs-resume``: over blocking sockets, full against resumed handshakes:
  Nautilus psk_dhe and psk_only against ssl resumed (``session=``); ``hs-seq``,
  ``hs-conc`` and ``hs-resume`` also time plain TCP connect and close, the
  floor under any handshake;
* ``stream-*``: one-way asyncio stream throughput with 64 KiB and 4 KiB
  writes: plain, ssl, Nautilus with AES-256-GCM and with ChaCha20-Poly1305;
* ``socket-*``: the same over blocking sockets (``sendall`` / ``recv_into``):
  plain socket, ``ssl.SSLSocket``, ``NautilusSocket``;
* ``msg-rr`` and ``msg-oneway``: 256-byte messages, request/response round
  trips per second and one-way messages per second (batches of 64): the
  Nautilus message API (asyncio ``Channel``) against asyncio streams with a
  4-byte length prefix over ssl and plain TCP;
* ``memory``: the server's resident memory per idle established connection,
  1000 connections (a fresh server process per measurement);
* CPU time on each side: per handshake, seconds per GiB, per message.

With uvloop installed (``pip install -e '.[bench]'``) the asyncio scenarios
run again on uvloop (both processes), as separate ``uvloop-*`` rows.

The server runs in a subprocess (``benchmarks/_peers.py``) on 127.0.0.1; the
clients run here. Each scenario runs its contenders round by round, the order
rotated each round, after a short warm-up; the table shows each contender's
median over the rounds and the range, and ratios of medians. Every
handshake's parameters are checked on both sides, every streamed byte and
every message is checked by the receiver, and the counts of both sides must
agree.

Writes ``benchmarks/results/latest.json`` (every figure, the machine, the
OpenSSL versions, the git commit) and ``benchmarks/results/latest.png`` (a
chart; skipped with a message if matplotlib is missing). Targets are
reported, not enforced: the exit status is non-zero only when something fails
to run or to verify.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import random
import socket
import ssl
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import _peers
from _peers import HOST, PATTERN_SIZE, TlsFiles, check_session, check_tls_object
from _report import check_targets, cpu_table, fmt, interference, main_table, print_report, ratio
from run_primitives import cpu_model, git_commit
from run_primitives import versions as primitive_versions

import nautilus
import nautilus.asyncio as nasyncio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "latest.json"
DEFAULT_CHART = RESULTS / "latest.png"
PEERS_SCRIPT = Path(__file__).resolve().parent / "_peers.py"
OP_TIMEOUT = 20.0  # one connection, handshake, close or server answer
STARTUP_TIMEOUT = 60.0
PREFLIGHT_TIMEOUT = 5.0
MB = 1e6
GIB = float(1 << 30)
BATCH = 64
"""Messages per batch in the one-way message scenario."""
MEMORY_WARMUP = 16
OPEN_CONCURRENCY = 32
"""Handshakes in flight while the memory scenario opens its connections."""
CPU_FLAGS = (
    "aes",
    "pclmulqdq",
    "avx",
    "avx2",
    "bmi2",
    "adx",
    "sha_ni",
    "vaes",
    "vpclmulqdq",
    "avx512f",
    "avx512vl",
    "avx512bw",
)

UNITS = {
    "handshake": "hs/s",
    "resume": "hs/s",
    "stream": "MB/s",
    "socket": "MB/s",
    "rr": "rt/s",
    "oneway": "msg/s",
    "memory": "KiB/conn",
}
CPU_UNITS = {
    "handshake": "us/handshake",
    "resume": "us/handshake",
    "stream": "s/GiB",
    "socket": "s/GiB",
    "rr": "us/round trip",
    "oneway": "us/message",
}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # handshake, resume, stream, socket, rr, oneway, memory
    contenders: tuple[str, ...]
    mutual: bool = False
    concurrent: bool = False
    chunk: int = 0
    loop: str = "asyncio"  # or "uvloop" (asyncio scenarios only)

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    def on(self, loop: str) -> Scenario:
        """The same scenario on another event loop (``uvloop``), as separate rows."""
        return Scenario(
            f"{loop}-{self.key}",
            f"[{loop}] {self.title}",
            self.kind,
            self.contenders,
            self.mutual,
            self.concurrent,
            self.chunk,
            loop,
        )


HS = ("ssl", "nautilus")
HS_PLAIN = ("plain", "ssl", "nautilus")  # plain: TCP connect and close, the floor of any handshake
STREAM = ("plain", "ssl", "nautilus", "nautilus-chacha")
THREE = ("plain", "ssl", "nautilus")
# floor: a resumption's messages with no protocol work, the floor of any resumption
RESUME = (
    "plain",
    "floor",
    "ssl",
    "ssl-resumed",
    "nautilus",
    "nautilus-psk_dhe",
    "nautilus-psk_only",
)

SCENARIOS = (
    Scenario("hs-seq", "handshakes/s, sequential, server-auth", "handshake", HS_PLAIN),
    Scenario("hs-seq-mutual", "handshakes/s, sequential, mutual", "handshake", HS, mutual=True),
    Scenario(
        "hs-conc",
        "handshakes/s, {n} concurrent, server-auth",
        "handshake",
        HS_PLAIN,
        concurrent=True,
    ),
    Scenario(
        "hs-conc-mutual",
        "handshakes/s, {n} concurrent, mutual",
        "handshake",
        HS,
        mutual=True,
        concurrent=True,
    ),
    Scenario("hs-resume", "handshakes/s, blocking", "resume", RESUME),
    Scenario("stream-64k", "asyncio stream MB/s, 64 KiB writes", "stream", STREAM, chunk=65536),
    Scenario("stream-4k", "asyncio stream MB/s, 4 KiB writes", "stream", STREAM, chunk=4096),
    Scenario("socket-64k", "blocking socket MB/s, 64 KiB sendall", "socket", THREE, chunk=65536),
    Scenario("socket-4k", "blocking socket MB/s, 4 KiB sendall", "socket", THREE, chunk=4096),
    Scenario("msg-rr", "256 B request/response, round trips/s", "rr", THREE),
    Scenario("msg-oneway", f"256 B one-way messages/s, batches of {BATCH}", "oneway", THREE),
    Scenario("memory", "server RSS KiB per idle connection ({c})", "memory", THREE),
)
UVLOOP_KEYS = ("hs-seq", "hs-conc", "stream-64k", "stream-4k", "msg-rr", "msg-oneway", "memory")
ALL_SCENARIOS = SCENARIOS + tuple(sc.on("uvloop") for sc in SCENARIOS if sc.key in UVLOOP_KEYS)


class BenchFailure(Exception):
    """A run failed or did not verify."""


FAILURES = (
    BenchFailure,
    OSError,
    EOFError,
    ssl.SSLError,
    nautilus.NautilusError,
    asyncio.TimeoutError,
    asyncio.IncompleteReadError,
)


def uvloop_version() -> str | None:
    """uvloop's version if it can be imported, else None."""
    try:
        import uvloop
    except ImportError:
        return None
    return str(getattr(uvloop, "__version__", "unknown"))


# -- the server process ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What both processes share: the directory of keys and certificates, the seed."""

    directory: Path
    seed: int
    files: TlsFiles
    server_identity: nautilus.Identity
    client_identity: nautilus.Identity


class PeerProcess:
    """``_peers.py`` in a subprocess, and its JSON-lines control channel."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports

    @classmethod
    async def start(
        cls,
        setup: Setup,
        *,
        use_uvloop: bool = False,
        listeners: list[str] | None = None,
        max_connections: int = 0,
    ) -> PeerProcess:
        cmd = [
            sys.executable,
            str(PEERS_SCRIPT),
            "--dir",
            str(setup.directory),
            "--seed",
            str(setup.seed),
            "--client-peer-id",
            setup.client_identity.peer_id,
        ]
        if use_uvloop:
            cmd.append("--uvloop")
        if listeners:
            cmd += ["--listeners", ",".join(listeners)]
        if max_connections:
            cmd += ["--max-connections", str(max_connections)]
        # Its own session: Ctrl-C in a terminal (SIGINT to the foreground
        # process group) reaches this process only, which then stops it.
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
            start_new_session=True,
        )
        peer = cls(proc, {})
        try:
            ready = await peer.expect("ready", STARTUP_TIMEOUT)
            peer.ports = {str(k): int(v) for k, v in ready.items()}
            if set(peer.ports) != set(listeners or _peers.LISTENERS):
                raise BenchFailure(f"the server reported listeners {sorted(peer.ports)}")
        except BaseException:
            await peer.stop()
            raise
        return peer

    async def expect(self, key: str, timeout: float = OP_TIMEOUT) -> Any:
        stdout = self.proc.stdout
        assert stdout is not None
        try:
            line = await asyncio.wait_for(stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise BenchFailure(f"the server sent no {key!r} line within {timeout:g} s") from None
        if not line:
            raise BenchFailure(f"the server process ended (waiting for {key!r})")
        message = json.loads(line)
        if key not in message:
            raise BenchFailure(f"expected a {key!r} line from the server, got {message}")
        return message[key]

    async def command(self, cmd: str) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await stdin.drain()
        result: dict[str, Any] = await self.expect(cmd)
        return result

    async def stats(self) -> dict[str, Any]:
        return await self.command("stats")

    async def stop(self) -> None:
        stdin = self.proc.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5.0)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# -- clients -----------------------------------------------------------------------------------


@dataclass
class Client:
    """What the client side needs: contexts, identities, ports, the pattern, the messages."""

    setup: Setup
    peer: PeerProcess
    connections: int
    tls_server_auth: ssl.SSLContext
    tls_mutual: ssl.SSLContext
    tls_resuming: ssl.SSLContext
    nautilus_contexts: dict[str, nautilus.Context]
    messages: list[bytes]
    chunks: dict[int, list[bytes]] = field(default_factory=dict)
    tls_session: ssl.SSLSession | None = None

    @property
    def server_peer_id(self) -> str:
        return self.setup.server_identity.peer_id

    def nautilus_context(self, contender: str, mutual: bool = False) -> nautilus.Context:
        return self.nautilus_contexts["mutual" if mutual else contender]

    async def connect(
        self, contender: str, role: str, mutual: bool = False, peer: PeerProcess | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = (peer or self.peer).ports[_peers.listener_name(contender, role, mutual)]
        if contender == "plain":
            return await asyncio.open_connection(HOST, port)
        if contender == "ssl":
            ctx = self.tls_mutual if mutual else self.tls_server_auth
            return await asyncio.open_connection(HOST, port, ssl=ctx)
        nctx = self.nautilus_context(contender, mutual)
        return await nasyncio.open_connection(HOST, port, context=nctx)

    def check(self, contender: str, writer: asyncio.StreamWriter) -> None:
        if contender == "ssl":
            problem = _peers.check_tls(writer, expect_peer_cert=True)
        elif contender.startswith("nautilus"):
            problem = _peers.check_nautilus(
                writer, self.server_peer_id, cipher=_peers.cipher_of(contender)
            )
        else:
            problem = None
        if problem is not None:
            raise BenchFailure(f"{contender}: {problem}")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(latencies) * 1e3,
        "p90": percentile(latencies, 90) * 1e3,
        "p99": percentile(latencies, 99) * 1e3,
        "max": max(latencies) * 1e3,
        "n": len(latencies),
    }


@functools.cache
def irq_time_accounting() -> bool | None:
    """Whether the kernel accounts interrupt time apart from the tasks it
    interrupts (CONFIG_IRQ_TIME_ACCOUNTING), from /proc/config.gz or
    /boot/config-<release>; None if neither says."""
    import gzip

    release = platform.release()
    for path, opener in (
        (Path("/proc/config.gz"), gzip.open),
        (Path(f"/boot/config-{release}"), open),
    ):
        try:
            with opener(path, "rt") as f:  # type: ignore[operator]
                text = f.read()
        except (OSError, EOFError, ValueError):
            continue
        return "CONFIG_IRQ_TIME_ACCOUNTING=y" in text
    return None


def machine_cpu() -> tuple[float, float] | None:
    """CPU seconds the whole machine spent (user + nice + system, and irq +
    softirq where the processes' own times include them; steal), or None if
    unknown. Without the kernel's IRQ time accounting, a tick that lands in a
    softirq (loopback TCP's work) is charged to the running process's system
    time but to softirq here, so leaving it out made other programs' share
    read as zero; with it, interrupt time is in neither (and where the
    kernel's configuration cannot be read, it is left out as well)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        values = [int(x) for x in fields[1:]]
    except (OSError, ValueError):
        return None
    if fields[0] != "cpu" or len(values) < 8:
        return None
    busy = values[0] + values[1] + values[2]
    if irq_time_accounting() is False:  # (read once, at the first measurement)
        busy += values[5] + values[6]
    return busy / ticks, values[7] / ticks


class CpuUse(NamedTuple):
    client_cpu_s: float
    server_cpu_s: float
    wall_s: float
    other_cores: float | None
    steal_cores: float | None


@dataclass
class CpuWatch:
    """CPU time over a run: this process, the server process and the rest of the machine.

    ``other_cores`` (machine minus the two benchmark processes, in cores) shows
    how much other programs disturbed a run (interrupt work done in the
    benchmark processes' time is theirs, see machine_cpu).
    """

    server: float
    client: float = field(default_factory=time.process_time)
    machine: tuple[float, float] | None = field(default_factory=machine_cpu)
    wall: float = field(default_factory=time.perf_counter)

    def stop(self, server_stats: dict[str, Any]) -> CpuUse:
        wall = time.perf_counter() - self.wall
        client = time.process_time() - self.client
        server = float(server_stats["cpu_s"]) - self.server
        now = machine_cpu()
        other = steal = None
        if now is not None and self.machine is not None and wall > 0:
            other = max(0.0, (now[0] - self.machine[0] - client - server) / wall)
            steal = (now[1] - self.machine[1]) / wall
        return CpuUse(client, server, wall, other, steal)


def cpu_fields(cpu: CpuUse, ops: float, scale: float) -> dict[str, Any]:
    """CPU per operation on each side (``scale``: to the unit of CPU_UNITS), and cores used."""
    return {
        "client_cpu": cpu.client_cpu_s / ops * scale,
        "server_cpu": cpu.server_cpu_s / ops * scale,
        "client_cores": cpu.client_cpu_s / cpu.wall_s if cpu.wall_s > 0 else None,
        "server_cores": cpu.server_cpu_s / cpu.wall_s if cpu.wall_s > 0 else None,
        "other_cores": cpu.other_cores,
        "steal_cores": cpu.steal_cores,
    }


def count_delta(before: dict[str, Any], after: dict[str, Any], listener: str) -> dict[str, int]:
    b, a = before["counts"][listener], after["counts"][listener]
    return {k: a[k] - b[k] for k in a}


# -- handshakes (asyncio) ----------------------------------------------------------------------


async def handshake_cycle(client: Client, contender: str, mutual: bool) -> float:
    """Connect, handshake, wait for the server's close, close; return the handshake latency."""
    start = time.perf_counter()
    reader, writer = await client.connect(contender, "hs", mutual)
    latency = time.perf_counter() - start
    try:
        client.check(contender, writer)
        rest = await reader.read()  # b"" once the server's close_notify arrives
        if rest:
            raise BenchFailure(f"{contender}: the server sent {len(rest)} bytes")
    finally:
        await _close(writer)
    return latency


async def run_handshakes(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    listener = _peers.listener_name(contender, "hs", sc.mutual)
    workers = args.concurrency if sc.concurrent else 1
    latencies: list[float] = []
    before = await client.peer.stats()
    watch = CpuWatch(before["cpu_s"])
    start = time.perf_counter()
    deadline = start + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            cycle = handshake_cycle(client, contender, sc.mutual)
            latencies.append(await asyncio.wait_for(cycle, OP_TIMEOUT))

    outcomes = await asyncio.gather(*(worker() for _ in range(workers)), return_exceptions=True)
    elapsed = time.perf_counter() - start
    after = await client.peer.stats()
    cpu = watch.stop(after)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    n = len(latencies)
    delta = count_delta(before, after, listener)
    if n == 0 or delta["ok"] != n or delta["bad"]:
        raise BenchFailure(
            f"{listener}: client completed {n} handshakes, server counted {delta['ok']} good "
            f"and {delta['bad']} bad ({after['problems'][-3:]})"
        )
    return {
        "value": n / elapsed,
        "handshakes": n,
        "elapsed_s": elapsed,
        "concurrency": workers,
        "latency_ms": latency_summary(latencies),
        "latencies_s": latencies,  # pooled over rounds by summarize(), then dropped
        **cpu_fields(cpu, n, 1e6),
        "verified": True,
    }


# -- handshakes over blocking sockets: full and resumed ----------------------------------------


class ResumeSpec(NamedTuple):
    listener: str
    resumed: bool
    mode: str  # what the Nautilus client must have negotiated: NONE, PSK_DHE, PSK_ONLY


RESUME_SPECS = {
    "plain": ResumeSpec("plain-hs", False, ""),
    "floor": ResumeSpec("floor-hs", False, ""),
    "ssl": ResumeSpec("ssl-hs", False, ""),
    "ssl-resumed": ResumeSpec("ssl-hs-tickets", True, ""),
    "nautilus": ResumeSpec("nautilus-hs", False, "NONE"),
    "nautilus-psk_dhe": ResumeSpec("nautilus-hs-tickets", True, "PSK_DHE"),
    "nautilus-psk_only": ResumeSpec("nautilus-hs-tickets", True, "PSK_ONLY"),
}


def tls_blocking_cycle(
    ctx: ssl.SSLContext, port: int, session: ssl.SSLSession | None
) -> tuple[float, ssl.SSLSession | None]:
    """One blocking TLS handshake (resuming ``session`` if given); (latency, the new session)."""
    start = time.perf_counter()
    raw = socket.create_connection((HOST, port), timeout=OP_TIMEOUT)
    try:
        sock = ctx.wrap_socket(raw, server_hostname=HOST, session=session)
    except BaseException:
        raw.close()
        raise
    latency = time.perf_counter() - start
    with sock:
        problem = check_tls_object(sock, expect_peer_cert=True)
        if problem is not None:
            raise BenchFailure(f"ssl: {problem}")
        if sock.session_reused != (session is not None):
            raise BenchFailure(f"ssl: session_reused is {sock.session_reused}")
        while rest := sock.recv(4096):  # b"" at the server's close_notify; tickets before it
            raise BenchFailure(f"ssl: the server sent {len(rest)} bytes")
        new_session = sock.session
        with contextlib.suppress(OSError, ssl.SSLError):
            sock.unwrap()  # our close_notify, as the other clients send theirs
    return latency, new_session


def plain_blocking_cycle(port: int) -> float:
    """One TCP connection, no handshake (the floor of the others); its connect latency."""
    start = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=OP_TIMEOUT)
    latency = time.perf_counter() - start
    with sock:
        while rest := sock.recv(4096):  # b"" when the server closes
            raise BenchFailure(f"plain: the server sent {len(rest)} bytes")
    return latency


def floor_blocking_cycle(port: int) -> float:
    """A resumption's messages and nothing else (the ``hs-floor`` listener); its latency,
    taken as for the handshakes: from connect to the server's answer."""
    hello, flight, last, close = _peers.FLOOR_SIZES
    start = time.perf_counter()
    sock = socket.create_connection((HOST, port), timeout=OP_TIMEOUT)
    with sock:
        sock.sendall(bytes(hello))
        got = 0
        while got < flight:
            data = sock.recv(4096)
            if not data:
                raise BenchFailure(f"floor: the server closed after {got} bytes")
            got += len(data)
        latency = time.perf_counter() - start
        sock.sendall(bytes(last))
        while data := sock.recv(4096):
            got += len(data)
        if got != flight + close:
            raise BenchFailure(f"floor: the server sent {got} bytes, not {flight + close}")
    return latency


def nautilus_blocking_cycle(
    ctx: nautilus.Context, port: int, spec: ResumeSpec, server_id: str
) -> float:
    """One blocking Nautilus handshake; its latency. Checks full or resumed, and the mode."""
    start = time.perf_counter()
    sock = nautilus.create_connection((HOST, port), context=ctx, timeout=OP_TIMEOUT)
    latency = time.perf_counter() - start
    with sock:
        problem = check_session(sock.session, server_id, resumed=spec.resumed)
        mode = _peers.psk_mode(sock)
        if problem is None and mode is not None and mode != spec.mode:
            problem = f"resumption mode {mode}, expected {spec.mode}"
        if problem is not None:
            raise BenchFailure(f"nautilus: {problem}")
        while rest := sock.recv(4096):  # b"" at the server's close_notify; tickets before it
            raise BenchFailure(f"nautilus: the server sent {len(rest)} bytes")
    return latency


async def run_resume(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """Sequential blocking handshakes in a worker thread (the event loop idles meanwhile)."""
    del args
    spec = RESUME_SPECS[contender]
    port = client.peer.ports[spec.listener]
    server_id = client.server_peer_id
    nctx = client.nautilus_contexts.get(contender)
    if spec.resumed:  # a full handshake first, not counted: the first ticket
        if contender == "ssl-resumed":
            _, client.tls_session = await asyncio.to_thread(
                tls_blocking_cycle, client.tls_resuming, port, None
            )
        else:
            assert nctx is not None
            nctx.session_cache.clear()  # tickets of an earlier run: this one must be full
            full = ResumeSpec(spec.listener, False, "NONE")
            await asyncio.to_thread(nautilus_blocking_cycle, nctx, port, full, server_id)

    def loop(deadline: float) -> list[float]:
        latencies = []
        while time.perf_counter() < deadline:
            if contender == "plain":
                latency = plain_blocking_cycle(port)
            elif contender == "floor":
                latency = floor_blocking_cycle(port)
            elif contender == "ssl":
                latency, _ = tls_blocking_cycle(client.tls_server_auth, port, None)
            elif contender == "ssl-resumed":
                latency, client.tls_session = tls_blocking_cycle(
                    client.tls_resuming, port, client.tls_session
                )
            else:
                assert nctx is not None
                latency = nautilus_blocking_cycle(nctx, port, spec, server_id)
            latencies.append(latency)
        return latencies

    before = await client.peer.stats()
    watch = CpuWatch(before["cpu_s"])
    start = time.perf_counter()
    latencies = await asyncio.to_thread(loop, start + seconds)
    elapsed = time.perf_counter() - start
    after = await client.peer.stats()
    cpu = watch.stop(after)
    n = len(latencies)
    delta = count_delta(before, after, spec.listener)
    resumed = delta["resumed"] if spec.resumed else 0
    psk_only = n if spec.mode == "PSK_ONLY" else 0
    if (
        n == 0
        or delta["ok"] != n
        or delta["bad"]
        or resumed != (n if spec.resumed else 0)
        or delta["psk_only"] != psk_only
    ):
        raise BenchFailure(
            f"{spec.listener}: client completed {n} handshakes ({contender}), server counted "
            f"{delta} ({after['problems'][-3:]})"
        )
    return {
        "value": n / elapsed,
        "handshakes": n,
        "elapsed_s": elapsed,
        "resumed": spec.resumed,
        "latency_ms": latency_summary(latencies),
        "latencies_s": latencies,
        **cpu_fields(cpu, n, 1e6),
        "verified": True,
    }


# -- one-way streams ---------------------------------------------------------------------------


def check_sink_report(listener: str, sent: int, report: dict[str, Any]) -> None:
    if report["listener"] != listener or report["bytes"] != sent or not report["matched"]:
        raise BenchFailure(f"{listener}: sent {sent} bytes, the server reported {report}")
    if report["error"]:
        raise BenchFailure(f"{listener}: the server's read failed: {report['error']}")


def stream_result(
    sent: int, count: int, elapsed: float, report: dict[str, Any], cpu: CpuUse
) -> dict[str, Any]:
    server_span = report["end"] - report["first_byte"]
    return {
        "value": sent / elapsed / MB,
        "bytes": sent,
        "writes": count,
        "elapsed_s": elapsed,
        "server_read_mb_per_s": sent / server_span / MB if server_span > 0 else None,
        **cpu_fields(cpu, sent, GIB),
        "verified": True,
    }


async def run_stream(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One connection; write ``sc.chunk``-byte pieces of the pattern for ``seconds``, close.

    Timed from the first write to the server's report that it has read the
    end of the stream (the handshake is not included).
    """
    del args
    listener = _peers.listener_name(contender, "sink")
    chunks = client.chunks[sc.chunk]
    _reader, writer = await asyncio.wait_for(client.connect(contender, "sink"), OP_TIMEOUT)
    client.check(contender, writer)
    before = await client.peer.stats()
    write, drain = writer.write, writer.drain
    count, i, n = 0, 0, len(chunks)
    watch = CpuWatch(before["cpu_s"])
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while True:
            write(chunks[i])
            await drain()
            count += 1
            i += 1
            if i == n:
                i = 0
            if time.perf_counter() >= deadline:
                break
    finally:
        await asyncio.wait_for(_close(writer), OP_TIMEOUT)
    return await sink_outcome(client, listener, count * sc.chunk, count, start, watch)


async def sink_outcome(
    client: Client, listener: str, sent: int, count: int, start: float, watch: CpuWatch
) -> dict[str, Any]:
    """The sink's report on a stream that has ended: checked, and the figures."""
    report = await client.peer.expect("sink")
    elapsed = time.perf_counter() - start
    after = await client.peer.stats()
    cpu = watch.stop(after)
    check_sink_report(listener, sent, report)
    return stream_result(sent, count, elapsed, report, cpu)


def blocking_connect(client: Client, contender: str, port: int) -> socket.socket:
    """A connected blocking socket, its handshake done and checked."""
    if contender == "nautilus":
        nctx = client.nautilus_context("nautilus")
        nsock = nautilus.create_connection((HOST, port), context=nctx, timeout=OP_TIMEOUT)
        problem = check_session(nsock.session, client.server_peer_id)
        if problem is not None:
            nsock.close()
            raise BenchFailure(f"nautilus: {problem}")
        return nsock
    raw = socket.create_connection((HOST, port), timeout=OP_TIMEOUT)
    if contender == "plain":
        return raw
    try:
        tsock = client.tls_server_auth.wrap_socket(raw, server_hostname=HOST)
    except BaseException:
        raw.close()
        raise
    problem = check_tls_object(tsock, expect_peer_cert=True)
    if problem is not None:
        tsock.close()
        raise BenchFailure(f"ssl: {problem}")
    return tsock


def blocking_send(sock: socket.socket, chunks: list[bytes], seconds: float) -> tuple[int, float]:
    """``sendall`` the chunks in turn for ``seconds``, then close; (writes, start time)."""
    count, i, n = 0, 0, len(chunks)
    sendall = sock.sendall
    start = time.perf_counter()
    deadline = start + seconds
    try:
        while True:
            sendall(chunks[i])
            count += 1
            i += 1
            if i == n:
                i = 0
            if time.perf_counter() >= deadline:
                break
        if isinstance(sock, ssl.SSLSocket):
            sock = sock.unwrap()  # close_notify; returns once the server's answer arrived
    finally:
        sock.close()
    return count, start


async def run_socket(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """As run_stream over blocking sockets; the client writes from a worker thread."""
    del args
    listener = _peers.listener_name(contender, "bsink")
    port = client.peer.ports[listener]
    sock = await asyncio.to_thread(blocking_connect, client, contender, port)
    _peers.blocking_mode(sock)
    before = await client.peer.stats()
    watch = CpuWatch(before["cpu_s"])
    count, start = await asyncio.to_thread(blocking_send, sock, client.chunks[sc.chunk], seconds)
    return await sink_outcome(client, listener, count * sc.chunk, count, start, watch)


# -- 256-byte messages -------------------------------------------------------------------------


class MessagePipe:
    """One connection carrying messages: the Nautilus message API or length-prefixed streams."""

    def __init__(
        self,
        channel: nasyncio.Channel | None,
        streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> None:
        self.channel = channel
        self.streams = streams

    @classmethod
    async def open(cls, client: Client, contender: str, role: str) -> MessagePipe:
        if contender == "nautilus":
            port = client.peer.ports[_peers.listener_name(contender, role)]
            channel = await nasyncio.open_channel(
                HOST, port, context=client.nautilus_context(contender)
            )
            problem = check_session(channel.session, client.server_peer_id)
            if problem is not None:
                channel.abort()
                raise BenchFailure(f"nautilus: {problem}")
            return cls(channel, None)
        reader, writer = await client.connect(contender, role)
        client.check(contender, writer)
        return cls(None, (reader, writer))

    async def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            await self.channel.wait_closed()
        elif self.streams is not None:
            await _close(self.streams[1])


def frame(batch: list[bytes]) -> bytes:
    """Length-prefixed framing (4 bytes, big-endian), as a Python application writes it."""
    parts = []
    for message in batch:
        parts.append(len(message).to_bytes(4, "big"))
        parts.append(message)
    return b"".join(parts)


async def run_round_trips(
    pipe: MessagePipe, messages: list[bytes], deadline: float
) -> tuple[int, float]:
    """Send one message, wait for its echo, check it; until the deadline. (count, end time)."""
    count, kinds = 0, len(messages)
    now = time.perf_counter
    if pipe.channel is not None:
        channel = pipe.channel
        send, drain, recv = channel.send_message, channel.drain, channel.recv_message
        while True:
            message = messages[count % kinds]
            send(message)
            await drain()
            if await recv() != message:
                raise BenchFailure("nautilus: the echo differs from the request")
            count += 1
            if now() >= deadline:
                return count, now()
    assert pipe.streams is not None
    reader, writer = pipe.streams
    readexactly, write, sdrain = reader.readexactly, writer.write, writer.drain
    while True:
        message = messages[count % kinds]
        write(len(message).to_bytes(4, "big") + message)
        await sdrain()
        size = int.from_bytes(await readexactly(4), "big")
        if await readexactly(size) != message:
            raise BenchFailure("the echo differs from the request")
        count += 1
        if now() >= deadline:
            return count, now()


async def run_one_way(
    pipe: MessagePipe, batches: list[list[bytes]], deadline: float
) -> tuple[int, float]:
    """Send batches of messages until the deadline; (messages sent, end time)."""
    count, i, n = 0, 0, len(batches)
    now = time.perf_counter
    if pipe.channel is not None:
        channel = pipe.channel
        send_messages, drain = channel.send_messages, channel.drain
        while True:
            batch = batches[i]
            send_messages(batch)
            await drain()
            count += len(batch)
            i = i + 1 if i + 1 < n else 0
            if now() >= deadline:
                return count, now()
    assert pipe.streams is not None
    writer = pipe.streams[1]
    write, sdrain = writer.write, writer.drain
    while True:
        batch = batches[i]
        write(frame(batch))
        await sdrain()
        count += len(batch)
        i = i + 1 if i + 1 < n else 0
        if now() >= deadline:
            return count, now()


async def run_messages(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """256-byte messages on one connection: request/response (rr) or one-way."""
    del args
    role = "echo" if sc.kind == "rr" else "msink"
    listener = _peers.listener_name(contender, role)
    pipe = await asyncio.wait_for(MessagePipe.open(client, contender, role), OP_TIMEOUT)
    before = await client.peer.stats()
    watch = CpuWatch(before["cpu_s"])
    start = time.perf_counter()
    try:
        if sc.kind == "rr":
            count, end = await run_round_trips(pipe, client.messages, start + seconds)
        else:
            batches = [
                client.messages[j : j + BATCH] for j in range(0, len(client.messages), BATCH)
            ]
            count, end = await run_one_way(pipe, batches, start + seconds)
    finally:
        await asyncio.wait_for(pipe.close(), OP_TIMEOUT)
    report = await client.peer.expect("msgs")
    if sc.kind == "oneway":
        end = time.perf_counter()  # once the server has counted the last message
    elapsed = end - start
    after = await client.peer.stats()
    cpu = watch.stop(after)
    if report["listener"] != listener or report["count"] != count or not report["matched"]:
        raise BenchFailure(f"{listener}: the client counted {count}, the server reported {report}")
    if report["error"]:
        raise BenchFailure(f"{listener}: the server failed: {report['error']}")
    return {
        "value": count / elapsed,
        "messages": count,
        "elapsed_s": elapsed,
        **cpu_fields(cpu, count, 1e6),
        "verified": True,
    }


# -- memory ------------------------------------------------------------------------------------


async def open_idle(
    client: Client, peer: PeerProcess, contender: str, n: int
) -> list[asyncio.StreamWriter]:
    """Open ``n`` connections to the idle listener, OPEN_CONCURRENCY handshakes at a time."""
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)

    async def one() -> None:
        async with gate:
            _reader, writer = await asyncio.wait_for(
                client.connect(contender, "idle", peer=peer), OP_TIMEOUT
            )
        writers.append(writer)
        client.check(contender, writer)

    outcomes = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        await close_all(writers)
        raise errors[0]
    return writers


async def close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    await asyncio.gather(
        *(asyncio.wait_for(w.wait_closed(), OP_TIMEOUT) for w in writers), return_exceptions=True
    )


async def wait_idle(peer: PeerProcess, listener: str, n: int) -> dict[str, Any]:
    """Wait until the server holds exactly ``n`` idle connections; its stats then."""
    deadline = time.monotonic() + OP_TIMEOUT
    while True:
        stats = await peer.stats()
        if stats["idle"][listener] == n:
            return stats
        if time.monotonic() > deadline:
            raise BenchFailure(f"{listener}: the server holds {stats['idle'][listener]}, not {n}")
        await asyncio.sleep(0.02)


async def run_memory(
    client: Client, sc: Scenario, contender: str, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    """A fresh server process; its RSS growth for ``client.connections`` idle connections."""
    del seconds, args
    listener = _peers.listener_name(contender, "idle")
    n = client.connections
    peer = await PeerProcess.start(
        client.setup,
        use_uvloop=sc.loop == "uvloop",
        listeners=[listener],
        max_connections=n,
    )
    try:
        await close_all(await open_idle(client, peer, contender, MEMORY_WARMUP))
        await wait_idle(peer, listener, 0)
        before = await peer.command("memory")
        start = time.perf_counter()
        writers = await open_idle(client, peer, contender, n)
        try:
            await wait_idle(peer, listener, n)
            opened = time.perf_counter() - start
            after = await peer.command("memory")
        finally:
            await close_all(writers)
        stats = await wait_idle(peer, listener, 0)
    finally:
        await peer.stop()
    counts = stats["counts"][listener]
    if counts["ok"] != n + MEMORY_WARMUP or counts["bad"]:
        raise BenchFailure(f"{listener}: {n + MEMORY_WARMUP} connections, server counted {counts}")
    if before["rss_kib"] is None or after["rss_kib"] is None:
        raise BenchFailure("the server cannot read its resident memory (/proc/self/status)")
    growth = after["rss_kib"] - before["rss_kib"]
    return {
        "value": growth / n,
        "connections": n,
        "rss_before_kib": before["rss_kib"],
        "rss_after_kib": after["rss_kib"],
        "open_s": opened,
        "verified": True,
    }


Runner = Callable[[Client, Scenario, str, float, argparse.Namespace], Awaitable[dict[str, Any]]]
RUNNERS: dict[str, Runner] = {
    "handshake": run_handshakes,
    "resume": run_resume,
    "stream": run_stream,
    "socket": run_socket,
    "rr": run_messages,
    "oneway": run_messages,
    "memory": run_memory,
}


# -- the run -----------------------------------------------------------------------------------


class Progress:
    """One line on stderr: runs done, elapsed time, what is running (rewritten on a terminal)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, text: str, *, step: bool = False) -> None:
        if step:
            self.done += 1
        elapsed = time.monotonic() - self.start
        line = f"[transport {self.done}/{self.total} {elapsed:4.0f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def failure(where: str, exc: Exception) -> str:
    """Describe a failed run; an unexpected exception (a bug) also gets its traceback."""
    if not isinstance(exc, FAILURES):
        traceback.print_exception(exc, file=sys.stderr)
    return f"{where}: {type(exc).__name__}: {exc}"


async def measure(
    client: Client,
    sc: Scenario,
    args: argparse.Namespace,
    progress: Progress,
    unsupported: str | None = None,
) -> dict[str, Any]:
    """Warm up, then the rounds, the order rotated each round.

    ``unsupported``: Nautilus does not run on this event loop (why): its
    contenders are left out and marked so.
    """
    runner = RUNNERS[sc.kind]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in sc.contenders}
    errors: dict[str, str] = {}
    skipped = {c: unsupported for c in sc.contenders if unsupported and c.startswith("nautilus")}
    if skipped:
        sc = dataclasses.replace(sc, contenders=tuple(c for c in sc.contenders if c not in skipped))
        for _ in range(len(skipped) * args.rounds):
            progress.show(f"{sc.key}: Nautilus skipped (unsupported on {sc.loop})", step=True)
    if args.warmup > 0 and sc.kind != "memory":
        for contender in sc.contenders:
            progress.show(f"{sc.key} {contender}: warm-up")
            try:
                await runner(client, sc, contender, args.warmup, args)
            except Exception as exc:
                errors[contender] = failure("warm-up", exc)
    for rnd in range(args.rounds):
        shift = rnd % len(sc.contenders)
        order = sc.contenders[shift:] + sc.contenders[:shift]
        for contender in order:
            if contender in errors:
                progress.show(f"{sc.key} {contender}: skipped", step=True)
                continue
            progress.show(f"{sc.key} {contender} round {rnd + 1}/{args.rounds}")
            try:
                result = await runner(client, sc, contender, args.round_seconds, args)
            except Exception as exc:
                errors[contender] = failure(f"round {rnd + 1}", exc)
                progress.show(f"{sc.key} {contender} round {rnd + 1}: FAILED", step=True)
                continue
            result["round"] = rnd + 1
            runs[contender].append(result)
            other = result.get("other_cores")
            busy = f" (other programs: {other:.2f} cores)" if other and other >= 0.1 else ""
            progress.show(
                f"{sc.key} {contender} round {rnd + 1}/{args.rounds}: "
                f"{fmt(result['value'])} {sc.unit}{busy}",
                step=True,
            )
    return summarize(sc, runs, errors, args, skipped)


def summarize(
    sc: Scenario,
    runs: dict[str, list[dict[str, Any]]],
    errors: dict[str, str],
    args: argparse.Namespace,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for contender, results in runs.items():
        entry: dict[str, Any] = {
            "error": errors.get(contender),
            "unsupported": (skipped or {}).get(contender),
        }
        values = [r["value"] for r in results]
        if values and contender not in errors:
            entry.update(median=statistics.median(values), min=min(values), max=max(values))
        else:
            entry.update(median=None, min=None, max=None)
        if sc.kind in ("handshake", "resume") and results:
            pooled = [x for r in results for x in r["latencies_s"]]
            entry["latency_ms"] = latency_summary(pooled)
        if sc.kind in CPU_UNITS and results:
            for key in ("client_cpu", "server_cpu", "client_cores", "server_cores", "other_cores"):
                known = [r[key] for r in results if r.get(key) is not None]
                entry[key] = statistics.median(known) if known else None
        entry["verified"] = bool(results) and all(r["verified"] for r in results)
        for r in results:
            r.pop("latencies_s", None)
        entry["rounds"] = results
        contenders[contender] = entry
    n = args.concurrency if sc.concurrent else 1
    return {
        "key": sc.key,
        "title": sc.title.format(n=n, c=args.connections),
        "kind": sc.kind,
        "loop": sc.loop,
        "unit": sc.unit,
        "cpu_unit": CPU_UNITS.get(sc.kind),
        "mutual": sc.mutual,
        "concurrency": n,
        "write_size": sc.chunk or None,
        "contenders": contenders,
        "ratios": scenario_ratios(sc.kind, contenders),
    }


def scenario_ratios(kind: str, contenders: dict[str, Any]) -> dict[str, float | None]:
    def med(name: str) -> float | None:
        entry = contenders.get(name)
        return None if entry is None else entry["median"]

    def p50(name: str) -> float | None:
        entry = contenders.get(name)
        return None if entry is None else entry.get("latency_ms", {}).get("p50")

    def cpu(name: str) -> float | None:
        entry = contenders.get(name) or {}
        client, server = entry.get("client_cpu"), entry.get("server_cpu")
        return None if client is None or server is None else client + server

    out = {
        "nautilus_over_ssl": ratio(med("nautilus"), med("ssl")),
        "nautilus_over_plain": ratio(med("nautilus"), med("plain")),
        "cpu_nautilus_over_ssl": ratio(cpu("nautilus"), cpu("ssl")),
        "cpu_nautilus_over_plain": ratio(cpu("nautilus"), cpu("plain")),
    }
    if kind in ("handshake", "resume"):
        out["latency_p50_nautilus_over_ssl"] = ratio(p50("nautilus"), p50("ssl"))
    if kind == "stream":
        out["chacha_over_ssl"] = ratio(med("nautilus-chacha"), med("ssl"))
        out["chacha_over_plain"] = ratio(med("nautilus-chacha"), med("plain"))
        out["cpu_chacha_over_ssl"] = ratio(cpu("nautilus-chacha"), cpu("ssl"))
    if kind == "resume":
        for mode in ("psk_dhe", "psk_only"):
            name = f"nautilus-{mode}"
            out[f"{mode}_over_ssl_resumed"] = ratio(med(name), med("ssl-resumed"))
            out[f"{mode}_over_nautilus_full"] = ratio(med(name), med("nautilus"))
            out[f"{mode}_over_plain"] = ratio(med(name), med("plain"))
            out[f"latency_p50_{mode}_over_ssl_resumed"] = ratio(p50(name), p50("ssl-resumed"))
            out[f"cpu_{mode}_over_ssl_resumed"] = ratio(cpu(name), cpu("ssl-resumed"))
        out["ssl_resumed_over_ssl_full"] = ratio(med("ssl-resumed"), med("ssl"))
        out["floor_over_plain"] = ratio(med("floor"), med("plain"))
    if kind == "memory":
        n, p = med("nautilus"), med("plain")
        out["nautilus_minus_plain_kib"] = None if n is None or p is None else n - p
    return out


def make_client(setup: Setup, peer: PeerProcess, connections: int) -> Client:
    files, server_id = setup.files, setup.server_identity.peer_id
    ncc = _peers.nautilus_client_context
    block = _peers.pattern(setup.seed)
    return Client(
        setup=setup,
        peer=peer,
        connections=connections,
        tls_server_auth=_peers.tls_client_context(files, mutual=False),
        tls_mutual=_peers.tls_client_context(files, mutual=True),
        tls_resuming=_peers.tls_client_context(files, mutual=False),
        nautilus_contexts={
            "nautilus": ncc(server_id, None),
            "mutual": ncc(server_id, setup.client_identity),
            "nautilus-chacha": ncc(server_id, None, cipher=_peers.NAUTILUS_CHACHA),
            "nautilus-psk_dhe": ncc(server_id, None, resumption="psk_dhe"),
            "nautilus-psk_only": ncc(server_id, None, resumption="psk_only"),
        },
        messages=_peers.messages(block),
        chunks={
            size: [block[o : o + size] for o in range(0, PATTERN_SIZE, size)]
            for size in (4096, 65536)
        },
    )


async def tls_parameters(client: Client) -> dict[str, Any]:
    """What one TLS connection negotiated (reported with the results)."""
    reader, writer = await asyncio.wait_for(client.connect("ssl", "hs", True), OP_TIMEOUT)
    obj = writer.get_extra_info("ssl_object")
    assert isinstance(obj, ssl.SSLObject)
    group = _peers.tls_group(writer)
    out = {
        "version": obj.version(),
        "cipher": obj.cipher(),
        "group": group,
        "group_reported_by_python": group is not None,
    }
    await reader.read()
    await _close(writer)
    return out


async def run_phase(
    setup: Setup,
    loop: str,
    scenarios: list[Scenario],
    args: argparse.Namespace,
    progress: Progress,
) -> dict[str, Any]:
    """The scenarios of one event loop, against one server process on the same kind of loop."""
    peer = await PeerProcess.start(setup, use_uvloop=loop == "uvloop")
    unsupported = None
    try:
        client = make_client(setup, peer, args.connections)
        tls = await tls_parameters(client)
        if loop != "asyncio":
            unsupported = await preflight(client, loop)
        results = [await measure(client, sc, args, progress, unsupported) for sc in scenarios]
    finally:
        await peer.stop()
    return {"scenarios": results, "tls": tls, "unsupported": unsupported}


async def preflight(client: Client, loop: str) -> str | None:
    """Why Nautilus does not run on this event loop (one handshake fails), or None."""
    try:
        await asyncio.wait_for(handshake_cycle(client, "nautilus", False), PREFLIGHT_TIMEOUT)
    except Exception as exc:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return f"a Nautilus handshake on {loop} failed ({what}; see the tracebacks above)"
    return None


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine() -> dict[str, Any]:
    flags: list[str] = []
    memory_kib = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].split()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "cpu_flags_absent": [f for f in CPU_FLAGS if f not in flags],
        "cpu_flags_all": flags,
        "kernel": platform.release(),
        "machine": platform.machine(),
        "memory_kib": memory_kib,
    }


def versions() -> dict[str, Any]:
    """Python's and its ssl's, then Nautilus's, cryptography's (as run_primitives.py), uvloop's."""
    return {
        "python": platform.python_version(),
        "ssl_openssl": ssl.OPENSSL_VERSION,
        **primitive_versions(),
        "uvloop": uvloop_version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a short run (about a minute; noisier figures)"
    )
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 3; --quick 2)")
    parser.add_argument(
        "--round-seconds", type=float, help="seconds per round (default 2.0; --quick 0.4)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per contender and scenario (default 0.3)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="clients in the concurrent scenarios"
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="idle connections in the memory scenario (default 1000; --quick 300)",
    )
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated scenarios: {', '.join(sc.key for sc in ALL_SCENARIOS)}",
    )
    parser.add_argument(
        "--contenders",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="comma-separated contenders to run (default all; for profiling one of them)",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="skip the uvloop rows even if uvloop is installed"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results (default %(default)s)"
    )
    parser.add_argument(
        "--chart", type=Path, default=DEFAULT_CHART, help="PNG chart (default %(default)s)"
    )
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument(
        "--primitives",
        type=Path,
        help="a latest-primitives.json (run_primitives.py) to include in the JSON",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.round_seconds is None:
        args.round_seconds = 0.4 if args.quick else 2.0
    if args.warmup is None:
        args.warmup = min(0.3, args.round_seconds / 3)
    if args.connections is None:
        args.connections = 300 if args.quick else 1000
    if (
        args.rounds < 1
        or args.round_seconds <= 0
        or args.concurrency < 1
        or args.warmup < 0
        or args.connections < 1
    ):
        parser.error("--rounds, --round-seconds, --concurrency and --connections must be positive")
    names = {c for sc in ALL_SCENARIOS for c in sc.contenders}
    if args.contenders and not set(args.contenders) <= names:
        parser.error(f"unknown contender in --contenders; known: {', '.join(sorted(names))}")
    known = {sc.key for sc in ALL_SCENARIOS}
    if args.only and not set(args.only) <= known:
        parser.error(f"unknown scenario in --only; known: {', '.join(sorted(known))}")
    return args


def phases(args: argparse.Namespace, have_uvloop: bool) -> list[tuple[str, list[Scenario]]]:
    out = []
    for loop in ("asyncio", "uvloop"):
        if loop == "uvloop" and (args.no_uvloop or not have_uvloop):
            continue
        chosen = [
            sc for sc in ALL_SCENARIOS if sc.loop == loop and (not args.only or sc.key in args.only)
        ]
        if args.contenders:
            chosen = [
                dataclasses.replace(
                    sc, contenders=tuple(c for c in sc.contenders if c in args.contenders)
                )
                for sc in chosen
            ]
            chosen = [sc for sc in chosen if sc.contenders]
        if chosen:
            out.append((loop, chosen))
    return out


def budget(scenarios: list[Scenario], args: argparse.Namespace) -> float:
    """Seconds a phase may take before it is stopped as hung."""
    total = 60.0
    for sc in scenarios:
        if sc.kind == "memory":
            total += len(sc.contenders) * args.rounds * (10.0 + args.connections * 0.02)
        else:
            total += len(sc.contenders) * (
                args.rounds * (args.round_seconds + 2.0) + args.warmup + 2.0
            )
    return total


def include_primitives(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"[transport] no primitive results from {path}: {exc}", file=sys.stderr)
        return None
    keep = ("date", "git", "records", "kem", "targets", "versions", "settings")
    return {k: data[k] for k in keep if k in data}


def run_commit(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The commit a run measured: the one at its end, counted as having local
    changes (``dirty``) if the tree was dirty at either end or the commit
    changed during the run (``changed_during_run``): the servers started
    later may have imported other code than the earlier ones."""
    changed = start.get("commit") != end.get("commit")
    return {
        **end,
        "dirty": bool(start.get("dirty") or end.get("dirty") or changed),
        "changed_during_run": changed,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    git_start = git_commit()  # (again at the end: code changed meanwhile makes a mixed run)
    load_start = load_average()
    uv = uvloop_version()
    uvloop_note = None
    if uv is None:
        uvloop_note = "uvloop is not installed: no uvloop rows (pip install -e '.[bench]')."
    elif args.no_uvloop:
        uvloop_note = "uvloop rows skipped (--no-uvloop)."
    connections_note = None
    limit = _peers.raise_open_files_limit(args.connections + 256)
    if limit < args.connections + 256:
        wanted, args.connections = args.connections, max(1, limit - 256)
        connections_note = (
            f"The open-files limit ({limit}) allows only {args.connections} of the "
            f"{wanted} connections asked for the memory scenario."
        )
    plan = phases(args, uv is not None)
    total = sum(len(sc.contenders) * args.rounds for _, scs in plan for sc in scs)
    progress = Progress(total)
    scenarios: list[dict[str, Any]] = []
    tls: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="nautilus-bench-") as tmp:
        directory = Path(tmp)
        files = _peers.make_tls_files(directory)
        server_identity = nautilus.Identity.generate("ed25519")
        server_identity.save(directory / _peers.SERVER_IDENTITY_FILE)
        setup = Setup(
            directory,
            random.SystemRandom().randrange(1 << 32),
            files,
            server_identity,
            nautilus.Identity.generate("ed25519"),
        )
        group_forced = _peers.tls_group_setting_effective(files)
        try:
            for loop, chosen in plan:
                limit_s = budget(chosen, args)
                try:
                    outcome = _peers.run_loop(
                        asyncio.wait_for(run_phase(setup, loop, chosen, args, progress), limit_s),
                        loop == "uvloop",
                    )
                except asyncio.TimeoutError:
                    print(
                        f"\n[transport] error: the {loop} runs took over {limit_s:.0f} s; stopped",
                        file=sys.stderr,
                    )
                    return 1
                except FAILURES as exc:
                    print(f"\n[transport] error: {type(exc).__name__}: {exc}", file=sys.stderr)
                    return 1
                scenarios += outcome["scenarios"]
                tls = tls or outcome["tls"]
                if outcome["unsupported"]:
                    unsupported[loop] = outcome["unsupported"]
        finally:
            progress.finish()
    tls["group_setting"] = _peers.TLS_GROUP
    tls["group_setting_effective"] = group_forced
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": run_commit(git_start, git_commit()),
        "machine": machine(),
        "load_average": {"start": load_start, "end": load_average()},
        "versions": versions(),
        "settings": {
            "rounds": args.rounds,
            "round_seconds": args.round_seconds,
            "warmup_seconds": args.warmup,
            "concurrency": args.concurrency,
            "connections": args.connections,
            "connections_note": connections_note,
            "message_size": _peers.MESSAGE_SIZE,
            "message_batch": BATCH,
            "quick": args.quick,
            "uvloop": uv is not None and not args.no_uvloop,
            "uvloop_note": uvloop_note,
            "nautilus_unsupported_on": unsupported,
            "host": HOST,
        },
        "nautilus": {
            "group": _peers.NAUTILUS_GROUP,
            "cipher": _peers.NAUTILUS_CIPHER,
            "identity": "ed25519",
            "trust": "pinned",
            "resumption": "off, except in hs-resume",
            "message_api": "nautilus.asyncio Channel (open_channel / start_channel_server)",
        },
        "tls": tls,
        "scenarios": scenarios,
        "targets": check_targets(scenarios, os.cpu_count() or 1),
        "interference": {
            **interference(scenarios),
            "irq_time_accounting": irq_time_accounting(),
        },
    }
    summary["table"] = main_table(summary)
    summary["cpu_table"] = cpu_table(summary)
    primitives = include_primitives(args.primitives)
    if primitives is not None:
        summary["primitives"] = primitives
    summary["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    written = [shown(args.output)]
    if not args.no_chart:
        import chart

        problem = chart.render(summary, args.chart)
        if problem is None:
            written.append(shown(args.chart))
        else:
            print(f"[transport] no chart: {problem}")
    print(f"\n[transport] wrote {' and '.join(written)} in {summary['elapsed_s']} s")
    failed = any(
        entry["error"] or not (entry["verified"] or entry["unsupported"])
        for sc in summary["scenarios"]
        for entry in sc["contenders"].values()
    )
    return 1 if failed else 0


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C: the peer processes are stopped on the way out
        print("\n[transport] interrupted: no results written", file=sys.stderr)
        sys.exit(130)
