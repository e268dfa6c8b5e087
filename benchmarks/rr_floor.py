"""How fast can a 256-byte request/response go on asyncio at all? (``make bench-rr-floor``)

``make bench``'s ``msg-rr`` scenario compares Nautilus's message API with
length-prefixed framing over ``ssl`` and over plain asyncio streams. This
script adds the floor under all of them, in the same run: a bare
``asyncio.Protocol`` echo with no framing and no crypto, whose server writes
each read straight back from ``data_received`` (no task, no stream), and whose
client waits for each answer on one future, the least an ``await``-per-message
API can do. Any asyncio message API that must also frame, encrypt and
decrypt does at least this much work per round trip, so the floor's rate
over ``ssl``'s bounds the ratio any of them can reach::

    make bench-rr-floor
    python benchmarks/rr_floor.py [--rounds 5] [--round-seconds 2]

The contenders alternate round by round (the order rotated), each on a fresh
connection to one server process; the table shows the median and range of
round trips per second, and each median over ``ssl``'s. Loopback only; it
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # (benchmarks/ is not a package)

import nautilus
from nautilus import asyncio as nasyncio

CONTENDERS = ("floor", "plain", "ssl", "nautilus")
SIZE = 256
PREFIX = 4
WARMUP_S = 0.2


# -- server (a subprocess) -------------------------------------------------------


class _Echo(asyncio.Protocol):
    """The floor's server: every read goes straight back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """plain and ssl: length-prefixed frames, as make bench's echo listener."""
    try:
        while True:
            head = await reader.readexactly(PREFIX)
            writer.write(head + await reader.readexactly(int.from_bytes(head, "big")))
            await writer.drain()
    except (asyncio.IncompleteReadError, OSError, ssl.SSLError):
        pass
    writer.close()


async def _channel_echo(channel: nasyncio.Channel) -> None:
    try:
        while True:
            channel.send_message(await channel.recv_message())
            await channel.drain()
    except (EOFError, nautilus.NautilusError):
        pass
    channel.close()


async def serve(directory: Path) -> None:
    loop = asyncio.get_running_loop()
    files = _peers.TlsFiles.in_dir(directory)
    identity = nautilus.Identity.load(directory / "server.identity")
    servers: dict[str, Any] = {
        "floor": await loop.create_server(_Echo, _peers.HOST, 0),
        "plain": await asyncio.start_server(_stream_echo, _peers.HOST, 0),
        "ssl": await asyncio.start_server(
            _stream_echo, _peers.HOST, 0, ssl=_peers.tls_server_context(files, mutual=False)
        ),
        "nautilus": await nasyncio.start_channel_server(
            _channel_echo,
            _peers.HOST,
            0,
            context=_peers.nautilus_server_context(identity, "", mutual=False),
        ),
    }
    ports = {name: srv.sockets[0].getsockname()[1] for name, srv in servers.items()}
    print(json.dumps({"ready": ports}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the client closes our stdin
    for srv in servers.values():
        srv.close()


# -- client ---------------------------------------------------------------------------


class _Waiter(asyncio.Protocol):
    """The floor's client: one future per answer (a 256-byte answer may come in pieces)."""

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None
        self.have = 0

    def data_received(self, data: bytes) -> None:
        self.have += len(data)
        if self.have >= SIZE and self.future is not None:
            self.have -= SIZE
            self.future.set_result(None)
            self.future = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_exception(ConnectionError("the floor's server closed"))


async def _rate(rounds: Callable[[float], Awaitable[tuple[int, float]]], seconds: float) -> float:
    """Round trips per second: a warm-up, then ``seconds`` of ``rounds(until)``,
    which returns (round trips, end time). Each contender's loop is written
    out in full, with no call per round trip: the harness must not slow the
    floor down, or the bound it gives would be too low."""
    await rounds(time.perf_counter() + WARMUP_S)
    start = time.perf_counter()
    count, end = await rounds(start + seconds)
    return count / (end - start)


async def _run_floor(port: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(_Waiter, _peers.HOST, port)
    message = os.urandom(SIZE)

    async def rounds(until: float) -> tuple[int, float]:
        count, now = 0, time.perf_counter
        while True:
            proto.future = loop.create_future()
            transport.write(message)
            await proto.future
            count += 1
            if now() >= until:
                return count, now()

    rate = await _rate(rounds, seconds)
    transport.close()
    return rate


async def _run_streams(port: int, seconds: float, tls: ssl.SSLContext | None) -> float:
    reader, writer = await asyncio.open_connection(_peers.HOST, port, ssl=tls)
    frame = SIZE.to_bytes(PREFIX, "big") + os.urandom(SIZE)

    async def rounds(until: float) -> tuple[int, float]:
        count, now = 0, time.perf_counter
        while True:
            writer.write(frame)
            await writer.drain()
            head = await reader.readexactly(PREFIX)
            if await reader.readexactly(int.from_bytes(head, "big")) != frame[PREFIX:]:
                raise RuntimeError("the echo differs from the request")
            count += 1
            if now() >= until:
                return count, now()

    rate = await _rate(rounds, seconds)
    writer.close()
    return rate


async def _run_channel(port: int, seconds: float, context: nautilus.Context) -> float:
    channel = await nasyncio.open_channel(_peers.HOST, port, context=context)
    message = os.urandom(SIZE)

    async def rounds(until: float) -> tuple[int, float]:
        count, now = 0, time.perf_counter
        while True:
            channel.send_message(message)
            await channel.drain()
            if await channel.recv_message() != message:
                raise RuntimeError("the echo differs from the request")
            count += 1
            if now() >= until:
                return count, now()

    rate = await _rate(rounds, seconds)
    channel.close()
    await channel.wait_closed()
    return rate


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, list[float]]:
    files = _peers.make_tls_files(directory)
    identity = nautilus.Identity.generate()
    identity.save(directory / "server.identity")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        str(directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        ports = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["ready"]
        tls = _peers.tls_client_context(files, mutual=False)
        ctx = _peers.nautilus_client_context(identity.peer_id, None)
        runs: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        for rnd in range(args.rounds):
            order = CONTENDERS[rnd % len(CONTENDERS) :] + CONTENDERS[: rnd % len(CONTENDERS)]
            for name in order:
                port, secs = ports[name], args.round_seconds
                if name == "floor":
                    rate = await _run_floor(port, secs)
                elif name == "nautilus":
                    rate = await _run_channel(port, secs, ctx)
                else:
                    rate = await _run_streams(port, secs, tls if name == "ssl" else None)
                runs[name].append(rate)
            if sys.stderr.isatty():
                print(f"\r\033[Kround {rnd + 1}/{args.rounds} done", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        return runs
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def report(runs: dict[str, list[float]]) -> list[str]:
    ssl_median = statistics.median(runs["ssl"])
    lines = [f"{'256 B request/response':<24}{'round trips/s':>30}{'over ssl':>10}"]
    for name in CONTENDERS:
        values = runs[name]
        med = statistics.median(values)
        spread = f"{med:,.0f} ({min(values):,.0f}-{max(values):,.0f})"
        lines.append(f"{name:<24}{spread:>30}{med / ssl_median:>9.2f}x")
    floor = statistics.median(runs["floor"]) / ssl_median
    lines.append(
        f"An asyncio message API can reach at most {floor:.2f}x ssl here (the floor); "
        f"make bench's target is 2.00x."
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=2.0)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(serve(args.serve))
        return 0
    if args.rounds < 1 or args.round_seconds <= 0:
        parser.error("--rounds must be at least 1 and --round-seconds positive")
    with tempfile.TemporaryDirectory(prefix="nautilus-rr-floor-") as tmp:
        runs = asyncio.run(measure(args, Path(tmp)))
    print("\n".join(report(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
