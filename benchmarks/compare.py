"""Transport benchmark: Nautilus against Python's ssl (TLS 1.3) and plain asyncio.

Measures, side by side in the same run:

* full handshakes per second, sequential (with median and p99 latency) and
  with concurrent clients, server-auth and mutual: Nautilus (x25519-mlkem768,
  aes-256-gcm, Ed25519 identities, pinned trust) against ssl (TLS 1.3,
  TLS_AES_256_GCM_SHA384, X25519, ECDSA P-256 self-signed certificates);
* one-way stream throughput with 64 KiB and 4 KiB writes
  (``writer.write`` + ``await writer.drain()``): plain asyncio, ssl, Nautilus.

The server runs in a subprocess (``benchmarks/_peers.py``) on 127.0.0.1; the
clients run here. Each scenario runs its contenders round by round, the order
rotated each round, after a short warm-up; the table shows each contender's
median over the rounds and the range, and ratios of medians. Every handshake's
parameters are checked on both sides, and every streamed byte is compared
with the expected pattern by the server.

Writes ``benchmarks/results/latest-transport.json`` (every figure, the CPU,
the OpenSSL versions, the git commit). The exit status is non-zero only when
something fails to run or to verify.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import random
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
from _peers import HOST, LISTENERS, PATTERN_SIZE, TlsFiles
from run_primitives import cpu_model, git_commit

import nautilus
import nautilus.asyncio as nasyncio

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_OUTPUT = RESULTS / "latest-transport.json"
PEERS_SCRIPT = Path(__file__).resolve().parent / "_peers.py"
CONTENDERS = ("plain", "ssl", "nautilus")
OP_TIMEOUT = 20.0  # one connection, handshake, close or server answer
STARTUP_TIMEOUT = 60.0
MB = 1e6


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # "handshake" or "stream"
    contenders: tuple[str, ...]
    mutual: bool = False
    concurrent: bool = False
    chunk: int = 0

    @property
    def unit(self) -> str:
        return "hs/s" if self.kind == "handshake" else "MB/s"


SCENARIOS = (
    Scenario("hs-seq", "handshakes/s, sequential, server-auth", "handshake", ("ssl", "nautilus")),
    Scenario(
        "hs-seq-mutual",
        "handshakes/s, sequential, mutual",
        "handshake",
        ("ssl", "nautilus"),
        mutual=True,
    ),
    Scenario(
        "hs-conc",
        "handshakes/s, {n} concurrent, server-auth",
        "handshake",
        ("ssl", "nautilus"),
        concurrent=True,
    ),
    Scenario(
        "hs-conc-mutual",
        "handshakes/s, {n} concurrent, mutual",
        "handshake",
        ("ssl", "nautilus"),
        mutual=True,
        concurrent=True,
    ),
    Scenario("stream-64k", "stream MB/s, 64 KiB writes", "stream", CONTENDERS, chunk=65536),
    Scenario("stream-4k", "stream MB/s, 4 KiB writes", "stream", CONTENDERS, chunk=4096),
)


class BenchFailure(Exception):
    """A run failed or did not verify."""


FAILURES = (BenchFailure, OSError, ssl.SSLError, nautilus.NautilusError, asyncio.TimeoutError)


# -- the server process ------------------------------------------------------------------------


class PeerProcess:
    """``_peers.py`` in a subprocess, and its JSON-lines control channel."""

    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports

    @classmethod
    async def start(cls, directory: Path, seed: int, client_peer_id: str) -> PeerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(PEERS_SCRIPT),
            "--dir",
            str(directory),
            "--seed",
            str(seed),
            "--client-peer-id",
            client_peer_id,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        peer = cls(proc, {})
        try:
            ready = await peer.expect("ready", STARTUP_TIMEOUT)
        except BaseException:
            await peer.stop()
            raise
        peer.ports = {str(k): int(v) for k, v in ready.items()}
        if set(peer.ports) != set(LISTENERS):
            await peer.stop()
            raise BenchFailure(f"the server reported listeners {sorted(peer.ports)}")
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

    async def stats(self) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(b'{"cmd": "stats"}\n')
        await stdin.drain()
        result: dict[str, Any] = await self.expect("stats")
        return result

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
    """What the client side needs: contexts, identities, ports, the pattern."""

    peer: PeerProcess
    tls_server_auth: ssl.SSLContext
    tls_mutual: ssl.SSLContext
    nautilus_server_auth: nautilus.Context
    nautilus_mutual: nautilus.Context
    server_peer_id: str
    chunks: dict[int, list[bytes]] = field(default_factory=dict)

    async def connect(
        self, contender: str, role: str, mutual: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        port = self.peer.ports[_peers.listener_name(contender, role, mutual)]
        if contender == "plain":
            return await asyncio.open_connection(HOST, port)
        if contender == "ssl":
            ctx = self.tls_mutual if mutual else self.tls_server_auth
            return await asyncio.open_connection(HOST, port, ssl=ctx)
        nctx = self.nautilus_mutual if mutual else self.nautilus_server_auth
        return await nasyncio.open_connection(HOST, port, context=nctx)

    def check(self, contender: str, writer: asyncio.StreamWriter) -> None:
        if contender == "ssl":
            problem = _peers.check_tls(writer, expect_peer_cert=True)
        elif contender == "nautilus":
            problem = _peers.check_nautilus(writer, self.server_peer_id)
        else:
            problem = None
        if problem is not None:
            raise BenchFailure(f"{contender}: {problem}")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


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


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def machine_cpu() -> tuple[float, float] | None:
    """CPU seconds the whole machine spent (user + nice + system; steal), or None if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        ticks = float(os.sysconf("SC_CLK_TCK"))
        values = [int(x) for x in fields[1:]]
    except (OSError, ValueError):
        return None
    if fields[0] != "cpu" or len(values) < 8:
        return None
    return (values[0] + values[1] + values[2]) / ticks, values[7] / ticks


class CpuUse(NamedTuple):
    client_cpu_s: float
    server_cpu_s: float
    other_cores: float | None
    steal_cores: float | None


@dataclass
class CpuWatch:
    """CPU time over a run: this process, the server process and the rest of the machine.

    ``other_cores`` (machine minus the two benchmark processes, in cores) shows
    how much other programs disturbed a run; interrupt work is not counted.
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
        return CpuUse(client, server, other, steal)


async def run_handshakes(
    client: Client, sc: Scenario, contender: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    listener = _peers.listener_name(contender, "hs", sc.mutual)
    workers = concurrency if sc.concurrent else 1
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
    good = after["counts"][listener]["ok"] - before["counts"][listener]["ok"]
    bad = after["counts"][listener]["bad"] - before["counts"][listener]["bad"]
    if n == 0 or good != n or bad:
        raise BenchFailure(
            f"{listener}: client completed {n} handshakes, server counted {good} good "
            f"and {bad} bad ({after['problems'][-3:]})"
        )
    return {
        "value": n / elapsed,
        "handshakes": n,
        "elapsed_s": elapsed,
        "concurrency": workers,
        "latency_ms": latency_summary(latencies),
        "latencies_s": latencies,  # pooled over rounds by summarize(), then dropped
        "client_cpu_us_per_handshake": cpu.client_cpu_s / n * 1e6,
        "server_cpu_us_per_handshake": cpu.server_cpu_s / n * 1e6,
        "other_cores": cpu.other_cores,
        "steal_cores": cpu.steal_cores,
        "verified": True,
    }


def latency_summary(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(latencies) * 1e3,
        "p90": percentile(latencies, 90) * 1e3,
        "p99": percentile(latencies, 99) * 1e3,
        "max": max(latencies) * 1e3,
        "n": len(latencies),
    }


async def run_stream(
    client: Client, sc: Scenario, contender: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    """One connection; write ``sc.chunk``-byte pieces of the pattern for ``seconds``, close.

    Timed from the first write to the server's report that it has read the
    end of the stream (the handshake is not included).
    """
    del concurrency
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
    report = await client.peer.expect("sink")
    elapsed = time.perf_counter() - start
    after = await client.peer.stats()
    cpu = watch.stop(after)
    sent = count * sc.chunk
    if report["listener"] != listener or report["bytes"] != sent or not report["matched"]:
        raise BenchFailure(f"{listener}: sent {sent} bytes, the server reported {report}")
    if report["error"]:
        raise BenchFailure(f"{listener}: the server's read failed: {report['error']}")
    server_span = report["end"] - report["first_byte"]
    return {
        "value": sent / elapsed / MB,
        "bytes": sent,
        "writes": count,
        "elapsed_s": elapsed,
        "server_read_mb_per_s": sent / server_span / MB if server_span > 0 else None,
        "client_cpu_ns_per_byte": cpu.client_cpu_s / sent * 1e9,
        "server_cpu_ns_per_byte": cpu.server_cpu_s / sent * 1e9,
        "other_cores": cpu.other_cores,
        "steal_cores": cpu.steal_cores,
        "verified": True,
    }


Runner = Callable[[Client, Scenario, str, float, int], Awaitable[dict[str, Any]]]
RUNNERS: dict[str, Runner] = {"handshake": run_handshakes, "stream": run_stream}


# -- the run -----------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def show(self, text: str, *, step: bool = False) -> None:
        if step:
            self.done += 1
        elapsed = time.monotonic() - self.start
        line = f"[transport {self.done}/{self.total} {elapsed:5.0f}s] {text}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def failure(where: str, exc: Exception) -> str:
    """Describe a failed run; an unexpected exception (a bug) also gets its traceback."""
    if not isinstance(exc, FAILURES):
        traceback.print_exception(exc, file=sys.stderr)
    return f"{where}: {type(exc).__name__}: {exc}"


async def measure(
    client: Client, sc: Scenario, args: argparse.Namespace, progress: Progress
) -> dict[str, Any]:
    """Warm up, then the rounds, the order rotated each round."""
    runner = RUNNERS[sc.kind]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in sc.contenders}
    errors: dict[str, str] = {}
    for contender in sc.contenders:
        if args.warmup > 0:
            progress.show(f"{sc.key} {contender}: warm-up")
            try:
                await runner(client, sc, contender, args.warmup, args.concurrency)
            except Exception as exc:
                errors[contender] = failure("warm-up", exc)
    for rnd in range(args.rounds):
        shift = rnd % len(sc.contenders)
        order = sc.contenders[shift:] + sc.contenders[:shift]
        for contender in order:
            if contender in errors:
                progress.show(f"{sc.key} {contender}: skipped", step=True)
                continue
            try:
                result = await runner(client, sc, contender, args.round_seconds, args.concurrency)
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
                f"{fmt(result['value'], sc.unit)} {sc.unit}{busy}",
                step=True,
            )
    return summarize(sc, runs, errors, args.concurrency)


def summarize(
    sc: Scenario, runs: dict[str, list[dict[str, Any]]], errors: dict[str, str], concurrency: int
) -> dict[str, Any]:
    contenders: dict[str, Any] = {}
    for contender, results in runs.items():
        entry: dict[str, Any] = {"error": errors.get(contender)}
        values = [r["value"] for r in results]
        if values and contender not in errors:
            entry.update(median=statistics.median(values), min=min(values), max=max(values))
        else:
            entry.update(median=None, min=None, max=None)
        if sc.kind == "handshake" and results:
            pooled = [x for r in results for x in r["latencies_s"]]
            entry["latency_ms"] = latency_summary(pooled)
            for key in ("client_cpu_us_per_handshake", "server_cpu_us_per_handshake"):
                entry[key] = statistics.median(r[key] for r in results)
        if sc.kind == "stream" and results:
            for key in ("client_cpu_ns_per_byte", "server_cpu_ns_per_byte"):
                entry[key] = statistics.median(r[key] for r in results)
        entry["verified"] = bool(results) and all(r["verified"] for r in results)
        for r in results:
            r.pop("latencies_s", None)
        entry["rounds"] = results
        contenders[contender] = entry

    def median(name: str) -> float | None:
        entry = contenders.get(name)
        return None if entry is None else entry["median"]

    def cpu(name: str) -> float | None:
        return cpu_cell(contenders.get(name), sc.kind)[1]

    ratios = {
        "nautilus_over_ssl": ratio(median("nautilus"), median("ssl")),
        "nautilus_over_plain": ratio(median("nautilus"), median("plain")),
        "cpu_nautilus_over_ssl": ratio(cpu("nautilus"), cpu("ssl")),
        "cpu_nautilus_over_plain": ratio(cpu("nautilus"), cpu("plain")),
    }
    if sc.kind == "handshake":
        lat = {c: contenders[c].get("latency_ms", {}).get("p50") for c in contenders}
        ratios["latency_p50_nautilus_over_ssl"] = ratio(lat.get("nautilus"), lat.get("ssl"))
    return {
        "key": sc.key,
        "title": sc.title.format(n=concurrency),
        "kind": sc.kind,
        "unit": sc.unit,
        "mutual": sc.mutual,
        "concurrency": concurrency if sc.concurrent else 1,
        "write_size": sc.chunk or None,
        "contenders": contenders,
        "ratios": ratios,
    }


def make_client(
    peer: PeerProcess, files: TlsFiles, server_id: str, client_id: nautilus.Identity
) -> Client:
    return Client(
        peer=peer,
        tls_server_auth=_peers.tls_client_context(files, mutual=False),
        tls_mutual=_peers.tls_client_context(files, mutual=True),
        nautilus_server_auth=_peers.nautilus_client_context(server_id, None),
        nautilus_mutual=_peers.nautilus_client_context(server_id, client_id),
        server_peer_id=server_id,
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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = [sc for sc in SCENARIOS if not args.only or sc.key in args.only]
    seed = random.SystemRandom().randrange(1 << 32)
    block = _peers.pattern(seed)
    with tempfile.TemporaryDirectory(prefix="nautilus-bench-") as tmp:
        directory = Path(tmp)
        files = _peers.make_tls_files(directory)
        server_identity = nautilus.Identity.generate("ed25519")
        client_identity = nautilus.Identity.generate("ed25519")
        server_identity.save(directory / _peers.SERVER_IDENTITY_FILE)
        group_forced = _peers.tls_group_setting_effective(files)
        peer = await PeerProcess.start(directory, seed, client_identity.peer_id)
        try:
            client = make_client(peer, files, server_identity.peer_id, client_identity)
            for sc in scenarios:
                if sc.chunk:
                    client.chunks[sc.chunk] = [
                        block[o : o + sc.chunk] for o in range(0, PATTERN_SIZE, sc.chunk)
                    ]
            tls = await tls_parameters(client)
            tls["group_setting"] = _peers.TLS_GROUP
            tls["group_setting_effective"] = group_forced
            total = sum(len(sc.contenders) * args.rounds for sc in scenarios)
            progress = Progress(total)
            results = []
            try:
                for sc in scenarios:
                    results.append(await measure(client, sc, args, progress))
            finally:
                progress.finish()
        finally:
            await peer.stop()
    return {"scenarios": results, "tls": tls}


# -- report ------------------------------------------------------------------------------------


def cell(entry: dict[str, Any] | None, unit: str, show_range: bool) -> str:
    if entry is None:
        return "-"
    if entry["median"] is None:
        return "FAILED" if entry["error"] else "-"
    text = fmt(entry["median"], unit)
    if show_range:
        text += f" ({fmt(entry['min'], unit)}-{fmt(entry['max'], unit)})"
    return text


def ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def print_rows(
    heads: tuple[str, ...], rows: list[tuple[str, ...]], minimum: tuple[int, ...] = ()
) -> None:
    """A table: the first column left-aligned, the others right-aligned."""
    widths = [
        max(minimum[i] if i < len(minimum) else 0, len(head), *(len(r[i]) for r in rows))
        for i, head in enumerate(heads)
    ]

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print(join(heads))
    print("-" * len(join(heads)))
    for row in rows:
        print(join(row))


def print_table(summary: dict[str, Any]) -> None:
    minimum = (40, 8, 8, 8, 6, 7)
    heads = ("scenario", "plain", "ssl", "Nautilus", "N/ssl", "N/plain")
    rows: list[tuple[str, ...]] = []
    for sc in summary["scenarios"]:
        cons = sc["contenders"]
        rows.append(
            (
                sc["title"],
                cell(cons.get("plain"), sc["unit"], True),
                cell(cons.get("ssl"), sc["unit"], True),
                cell(cons.get("nautilus"), sc["unit"], True),
                ratio_cell(sc["ratios"]["nautilus_over_ssl"]),
                ratio_cell(sc["ratios"]["nautilus_over_plain"]),
            )
        )
        if sc["kind"] == "handshake" and not sc["concurrency"] > 1:
            lat = {c: cons[c].get("latency_ms") for c in cons}
            rows.append(
                (
                    "  latency ms, p50 / p99",
                    "-",
                    *(
                        f"{lat[c]['p50']:.2f} / {lat[c]['p99']:.2f}" if lat.get(c) else "-"
                        for c in ("ssl", "nautilus")
                    ),
                    ratio_cell(sc["ratios"]["latency_p50_nautilus_over_ssl"]),
                    "-",
                )
            )
    print_rows(heads, rows, minimum)


def cpu_cell(entry: dict[str, Any] | None, kind: str) -> tuple[str, float | None]:
    """ "client / server" CPU per handshake (us) or per byte (ns), and their sum."""
    unit = "us_per_handshake" if kind == "handshake" else "ns_per_byte"
    if entry is None or f"client_cpu_{unit}" not in entry:
        return "-", None
    client, server = entry[f"client_cpu_{unit}"], entry[f"server_cpu_{unit}"]
    digits = 0 if kind == "handshake" else 2
    return f"{client:.{digits}f} / {server:.{digits}f}", client + server


def print_cpu_table(summary: dict[str, Any]) -> None:
    heads = ("CPU: client / server", "plain", "ssl", "Nautilus", "N/ssl", "N/plain")
    rows: list[tuple[str, ...]] = []
    for sc in summary["scenarios"]:
        per = "us/handshake" if sc["kind"] == "handshake" else "ns/byte"
        rows.append(
            (
                f"{sc['title'].split(', ', 1)[1]} ({per})",
                *(cpu_cell(sc["contenders"].get(c), sc["kind"])[0] for c in CONTENDERS),
                ratio_cell(sc["ratios"]["cpu_nautilus_over_ssl"]),
                ratio_cell(sc["ratios"]["cpu_nautilus_over_plain"]),
            )
        )
    print_rows(heads, rows)


def print_report(summary: dict[str, Any]) -> None:
    env, tls, settings = summary["versions"], summary["tls"], summary["settings"]
    print()
    print(
        f"CPU: {summary['cpu_model']} ({summary['cpu_count']} CPUs); Python {env['python']}; "
        f"load average {summary['load_average']['start']:.2f} at start, "
        f"{summary['load_average']['end']:.2f} at end"
    )
    git = summary["git"]
    commit = (git["commit"] or "unknown")[:12] + (" + local changes" if git["dirty"] else "")
    print(
        f"ssl: {env['ssl_openssl']}; Nautilus {env['nautilus']}: {env['nautilus_openssl']}; "
        f"commit {commit}"
    )
    cipher = tls["cipher"][0] if tls.get("cipher") else "?"
    group = tls["group"] or (
        f"{tls['group_setting']} (set on both sides; Python cannot report it"
        + (", the setting was checked to be effective)" if tls["group_setting_effective"] else ")")
    )
    print(
        f"ssl: {tls['version']} {cipher}, group {group}, ECDSA P-256 self-signed certificates, "
        "no session tickets"
    )
    print(
        f"Nautilus: {_peers.NAUTILUS_GROUP}, {_peers.NAUTILUS_CIPHER}, Ed25519 identities, "
        "pinned trust, resumption off"
    )
    print(
        f"{settings['rounds']} rounds of {settings['round_seconds']:g} s per contender, order "
        f"rotated; median (min-max); ratios of medians; 1 MB = 10^6 B"
    )
    print()
    print_table(summary)
    print()
    print_cpu_table(summary)
    print()
    print(
        "Handshake = connect, handshake, server closes (close_notify), client closes; the "
        "client is in this process, the server in another. Latency = connect to handshake done."
    )
    failures = [
        (sc["key"], name, entry["error"])
        for sc in summary["scenarios"]
        for name, entry in sc["contenders"].items()
        if entry["error"]
    ]
    noise = summary["interference"]
    if noise["other_cores_max"] is not None:
        print(
            f"Other programs used {noise['other_cores_median']:.2f} cores (median over the runs; "
            f"max {noise['other_cores_max']:.2f}; {noise['runs_with_other_over_0_1_core']} of "
            f"{noise['runs']} runs over 0.1); steal max {noise['steal_cores_max']:.2f} cores."
        )
        if noise["other_cores_max"] > 0.2:
            print(
                "WARNING: the machine was busy during some runs: figures are noisy; compare "
                "the ranges, or run again on a quiet machine."
            )
    for key, name, error in failures:
        print(f"FAILED {key} {name}: {error}")


def interference(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """How busy the rest of the machine was during the measured runs."""
    runs = [r for sc in scenarios for e in sc["contenders"].values() for r in e["rounds"]]
    other = [r["other_cores"] for r in runs if r.get("other_cores") is not None]
    steal = [r["steal_cores"] for r in runs if r.get("steal_cores") is not None]
    return {
        "other_cores_median": statistics.median(other) if other else None,
        "other_cores_max": max(other) if other else None,
        "runs_with_other_over_0_1_core": sum(x > 0.1 for x in other),
        "runs": len(runs),
        "steal_cores_max": max(steal) if steal else None,
    }


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def versions() -> dict[str, Any]:
    from nautilus._bindings import OPENSSL_VERSION

    try:
        import cryptography

        crypto_version: str | None = cryptography.__version__
    except ImportError:
        crypto_version = None
    return {
        "python": platform.python_version(),
        "ssl_openssl": ssl.OPENSSL_VERSION,
        "nautilus": nautilus.__version__,
        "nautilus_openssl": OPENSSL_VERSION,
        "cryptography": crypto_version,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short rounds (whole run under about a minute)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per contender (default 3)")
    parser.add_argument(
        "--round-seconds", type=float, help="seconds per round (default 3.0; --quick 0.7)"
    )
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per contender and scenario (default 0.5)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=32, help="clients in the concurrent scenarios"
    )
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated scenarios: {', '.join(sc.key for sc in SCENARIOS)}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="JSON results file (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.round_seconds is None:
        args.round_seconds = 0.7 if args.quick else 3.0
    if args.warmup is None:
        args.warmup = min(0.5, args.round_seconds / 3)
    if args.rounds < 1 or args.round_seconds <= 0 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--rounds, --round-seconds and --concurrency must be positive")
    known = {sc.key for sc in SCENARIOS}
    if args.only and not set(args.only) <= known:
        parser.error(f"unknown scenario in --only; known: {', '.join(sorted(known))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_start = load_average()
    scenarios = [sc for sc in SCENARIOS if not args.only or sc.key in args.only]
    runs = sum(len(sc.contenders) * args.rounds for sc in scenarios)
    warmups = sum(len(sc.contenders) for sc in scenarios)
    budget = runs * (args.round_seconds + 1.0) + warmups * (args.warmup + 1.0) + 120.0
    try:
        outcome = asyncio.run(asyncio.wait_for(run(args), budget))
    except asyncio.TimeoutError:
        print(f"[transport] error: the run took over {budget:.0f} s; stopped", file=sys.stderr)
        return 1
    except FAILURES as exc:
        print(f"[transport] error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_average()},
        "versions": versions(),
        "settings": {
            "rounds": args.rounds,
            "round_seconds": args.round_seconds,
            "warmup_seconds": args.warmup,
            "concurrency": args.concurrency,
            "quick": args.quick,
            "host": HOST,
        },
        "nautilus": {
            "group": _peers.NAUTILUS_GROUP,
            "cipher": _peers.NAUTILUS_CIPHER,
            "identity": "ed25519",
            "trust": "pinned",
            "resumption": "off",
        },
        **outcome,
        "interference": interference(outcome["scenarios"]),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print_report(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    shown = args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output
    print(f"\n[transport] wrote {shown} in {summary['elapsed_s']} s")
    failed = any(
        entry["error"] or not entry["verified"]
        for sc in summary["scenarios"]
        for entry in sc["contenders"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
