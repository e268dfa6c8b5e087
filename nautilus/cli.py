"""The ``nautilus`` command (also ``python -m nautilus``).

::

    nautilus identity new PATH [--kind KIND] [--force]
    nautilus identity show PATH
    nautilus ticket-secret new PATH [--force]
    nautilus serve HOST:PORT --identity PATH [--trust PEER ...] [--known-peers FILE]
                   [--client-auth off|optional|required] [--timeout SECONDS]
                   [--ticket-secret PATH]
    nautilus connect HOST:PORT (--trust PEER ... | --known-peers FILE)
                     [--identity PATH] [--timeout SECONDS] [--wait SECONDS]
                     [--session-file PATH]

``identity new`` writes a new identity file (mode 0600) and prints its peer
id; it never replaces an existing file unless ``--force`` is given.
``identity show`` prints the peer id and kind of an identity file (nothing
secret). ``ticket-secret new`` writes a new shared ticket-key secret (32
random bytes, mode 0600) and prints nothing; it never replaces an existing
file unless ``--force`` is given. ``serve`` runs an echo server (each
connection in its own thread) until interrupted, and prints ``listening on
HOST:PORT as PEER_ID`` on stderr once it accepts (port 0 picks a free port;
the line names it); with ``--ticket-secret`` its ticket keys come from that
file (``TicketKeys.share_secret_file``), so that its session tickets open in
every server given the file, a restarted one included. ``connect`` makes one
connection, prints the session (peer id, group, cipher, and "resumed" for a
resumed session) on stderr, then copies stdin to the peer and the peer's data
to stdout, like ``openssl s_client -quiet``; with ``--session-file`` it keeps
its session tickets in that file (a ``SessionCache``, mode 0600), so that the
next ``connect`` to the same HOST:PORT and server resumes. Nautilus has no
half-close: after the end of stdin, ``connect`` keeps reading until the peer
closes or has sent nothing for ``--wait`` seconds (default 1), then closes.

Exit status: 0 on success, 1 when the operation failed (the message on
stderr says why, never a secret; output that cannot be written is a
failure too), 2 for bad usage, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO, cast

from nautilus._version import __version__
from nautilus.context import Context
from nautilus.exceptions import NautilusError
from nautilus.identity import KINDS, Identity, parse_peer_id
from nautilus.protocol.events import SessionInfo
from nautilus.server import NautilusServerMixin
from nautilus.sessions import SessionCache, write_ticket_secret
from nautilus.sockets import NautilusSocket, create_connection

__all__ = ["main"]

_CHUNK = 64 * 1024
_CLIENT_AUTH = ("off", "optional", "required")
_MIN_TIMEOUT = 0.001  # (Context's least handshake_timeout)


class _Failure(Exception):
    """An operation failed: the message goes to stderr, the exit status is 1."""


def _address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[HOST]:PORT`` for an IPv6 literal) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    # (ASCII digits only: str.isdigit() also takes "²", which int() refuses,
    # and other scripts' digits, which a port in a command line is not.)
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"the port must be a number from 0 to 65535: {text!r}")
    return host, int(port)


def _seconds(text: str, least: float = 0.0) -> float:
    """A number of seconds, from ``least`` up to a day, for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not least <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected {least:g} to 86400 seconds, got {text!r}")
    return value


def _timeout(text: str) -> float:
    """A handshake timeout for argparse: from a millisecond (the least a
    Context takes) up to a day."""
    return _seconds(text, _MIN_TIMEOUT)


def _peer(text: str) -> str:
    """A peer id (``--trust``) for argparse: well formed, as Context wants it."""
    try:
        return parse_peer_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nautilus", description="Nautilus post-quantum secure transport."
    )
    parser.add_argument("--version", action="version", version=f"nautilus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    identity = commands.add_parser("identity", help="make or inspect identity files")
    ident_commands = identity.add_subparsers(dest="identity_command", required=True)
    new = ident_commands.add_parser("new", help="write a new identity file (mode 0600)")
    new.add_argument("path", metavar="PATH")
    new.add_argument("--kind", choices=KINDS, default="ed25519", help="default: ed25519")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    show = ident_commands.add_parser("show", help="print an identity file's peer id and kind")
    show.add_argument("path", metavar="PATH")

    secret = commands.add_parser("ticket-secret", help="make shared ticket-key secret files")
    secret_commands = secret.add_subparsers(dest="secret_command", required=True)
    new_secret = secret_commands.add_parser(
        "new", help="write a new shared ticket-key secret file (32 random bytes, mode 0600)"
    )
    new_secret.add_argument("path", metavar="PATH")
    new_secret.add_argument("--force", action="store_true", help="replace an existing file")

    def trust_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--trust",
            action="append",
            type=_peer,
            default=[],
            metavar="PEER",
            help="a trusted peer id (repeat for more)",
        )
        sub.add_argument(
            "--known-peers", metavar="FILE", help="trust on first use, recorded in FILE"
        )
        sub.add_argument(
            "--timeout", type=_timeout, default=10.0, help="handshake timeout (default 10 s)"
        )

    serve = commands.add_parser("serve", help="run an echo server")
    serve.add_argument("address", type=_address, metavar="HOST:PORT")
    serve.add_argument("--identity", required=True, metavar="PATH", help="the server's identity")
    serve.add_argument("--client-auth", choices=_CLIENT_AUTH, default="off")
    serve.add_argument(
        "--ticket-secret",
        metavar="PATH",
        help="derive the session ticket keys from this secret file (from 'ticket-secret new'), "
        "shared with other servers or the next run of this one",
    )
    trust_options(serve)

    connect = commands.add_parser("connect", help="connect, then copy stdin/stdout")
    connect.add_argument("address", type=_address, metavar="HOST:PORT")
    connect.add_argument("--identity", metavar="PATH", help="this client's identity")
    connect.add_argument(
        "--session-file",
        metavar="PATH",
        help="keep session tickets in this file (mode 0600), to resume the next connection",
    )
    connect.add_argument(
        "--wait",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="after the end of stdin, close once the peer has sent nothing for this long "
        "(default 1 s)",
    )
    trust_options(connect)
    # (--trust or --known-peers: checked once parsed, a usage error like the others)
    connect.set_defaults(usage_error=connect.error)
    return parser


def _load(path: str) -> Identity:
    try:
        return Identity.load(path)
    except (ValueError, OSError) as exc:
        raise _Failure(str(exc)) from None


def _context(args: argparse.Namespace, identity: Identity | None, **extra: Any) -> Context:
    try:
        return Context(
            identity,
            trusted_peers=args.trust,
            known_peers_file=args.known_peers,
            handshake_timeout=args.timeout,
            **extra,
        )
    except (TypeError, ValueError) as exc:
        raise _Failure(str(exc)) from None


def _describe(info: SessionInfo | None) -> str:
    if info is None:
        return "no session"
    peer = info.peer_id or "an anonymous peer"
    resumed = ", resumed" if info.resumed else ""
    return f"{peer} ({info.group}, {info.cipher}{resumed})"


def _identity_new(args: argparse.Namespace, out: BinaryIO) -> None:
    if os.path.lexists(args.path) and not args.force:  # (before the work of a new key)
        raise _Failure(f"{args.path} exists: give --force to replace it")
    identity = Identity.generate(args.kind)
    try:
        identity.save(args.path, overwrite=args.force)  # (refuses what appeared meanwhile)
    except FileExistsError:
        raise _Failure(f"{args.path} exists: give --force to replace it") from None
    except (ValueError, OSError) as exc:
        raise _Failure(f"cannot write {args.path}: {exc}") from None
    out.write(f"{identity.peer_id}\n".encode())


def _ticket_secret_new(args: argparse.Namespace) -> None:
    try:
        write_ticket_secret(args.path, overwrite=args.force)
    except FileExistsError:
        raise _Failure(f"{args.path} exists: give --force to replace it") from None
    except (ValueError, OSError) as exc:
        raise _Failure(f"cannot write {args.path}: {exc}") from None


def _identity_show(args: argparse.Namespace, out: BinaryIO) -> None:
    identity = _load(args.path)
    out.write(f"{identity.peer_id}\nkind: {identity.public.kind}\n".encode())


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: NautilusSocket = self.request
        try:
            while data := sock.recv(_CHUNK):
                sock.sendall(data)
        except (NautilusError, OSError) as exc:
            sys.stderr.write(f"nautilus: {self.client_address}: {exc}\n")


class _EchoServer(NautilusServerMixin, socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def _serve(args: argparse.Namespace, err: BinaryIO) -> None:
    identity = _load(args.identity)
    ctx = _context(args, identity, client_auth=args.client_auth)
    if args.ticket_secret is not None:
        try:
            ctx.ticket_keys.share_secret_file(args.ticket_secret)
        except (ValueError, OSError) as exc:
            raise _Failure(str(exc)) from None
    try:
        server = _EchoServer(args.address, _EchoHandler, context=ctx)
    except OSError as exc:
        raise _Failure(f"cannot listen on {args.address[0]}:{args.address[1]}: {exc}") from None
    with server:
        host, port = server.server_address[:2]
        err.write(f"listening on {host!s}:{port} as {identity.peer_id}\n".encode())
        err.flush()
        server.serve_forever()


def _connect(args: argparse.Namespace, inp: BinaryIO, out: BinaryIO, err: BinaryIO) -> None:
    identity = _load(args.identity) if args.identity is not None else None
    extra: dict[str, Any] = {}
    if args.session_file is not None:
        try:
            extra["session_cache"] = SessionCache(path=args.session_file)
        except (ValueError, OSError) as exc:
            raise _Failure(str(exc)) from None
    ctx = _context(args, identity, **extra)
    try:
        sock = create_connection(args.address, context=ctx, timeout=args.timeout)
    except (NautilusError, OSError) as exc:
        host, port = args.address
        raise _Failure(f"cannot connect to {host}:{port}: {exc}") from None
    with sock:
        err.write(f"connected to {_describe(sock.session)}\n".encode())
        err.flush()
        sock.settimeout(None)
        # Nautilus has no half-close: after the end of stdin the connection
        # stays open while the peer still sends, until it has been quiet for
        # --wait seconds; then shutting it down wakes the reader with b"".
        last = [time.monotonic()]
        closing = threading.Event()  # set when this side ends the connection
        failure: list[BaseException] = []
        read = getattr(inp, "read1", inp.read)  # read1: what is there, not a full chunk

        def upload() -> None:
            try:
                while data := read(_CHUNK):
                    sock.sendall(data)
                # Quiet for --wait seconds after the end of stdin: what came before
                # it does not count (the answer to the last input is still wanted).
                ended = time.monotonic()
                while (left := max(last[0], ended) + args.wait - time.monotonic()) > 0:
                    time.sleep(left)
                closing.set()
                sock.shutdown(socket.SHUT_RDWR)
            except (NautilusError, OSError) as exc:
                failure.append(exc)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)  # the reader must not wait on

        sender = threading.Thread(target=upload, name="nautilus-upload", daemon=True)
        sender.start()
        try:
            while data := sock.recv(_CHUNK):
                last[0] = time.monotonic()
                out.write(data)
                out.flush()
        except (NautilusError, OSError) as exc:
            # Once this side has ended the connection (the peer was quiet for
            # --wait seconds), how the peer's end arrives does not matter: a
            # reset included, as the peer may answer our close as we close.
            if not failure and not closing.is_set():
                raise _Failure(f"the connection failed: {exc}") from None
        if failure:
            raise _Failure(f"sending failed: {failure[0]}")


def _standard(stream: Any, mode: str, opened: list[BinaryIO]) -> BinaryIO:
    """The binary buffer of a standard stream of the process; one that was
    closed when Python started (``sys.stdout`` is None) is the null device
    (added to ``opened``, for the caller to close)."""
    if stream is None:
        null = cast(BinaryIO, open(os.devnull, mode))  # noqa: SIM115 (closed by main)
        opened.append(null)
        return null
    return cast(BinaryIO, stream.buffer)


def _say(err: BinaryIO, text: str) -> None:
    """Write ``text`` to stderr, if it can still be written."""
    with contextlib.suppress(OSError):
        err.write(text.encode())
        err.flush()


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status.

    ``stdin``, ``stdout`` and ``stderr`` (binary streams) default to the
    process's (one that is closed is taken as the null device). Usage errors
    exit through argparse (``SystemExit(2)``). Output that cannot be written
    (stdout a pipe whose reader has gone, a full disk) is a failure: status 1.
    """
    args = _parser().parse_args(argv)
    if args.command == "connect" and not args.trust and args.known_peers is None:
        args.usage_error("connect needs --trust PEER or --known-peers FILE to know the server")
    opened: list[BinaryIO] = []  # null devices standing for closed streams
    inp = stdin if stdin is not None else _standard(sys.stdin, "rb", opened)
    out = stdout if stdout is not None else _standard(sys.stdout, "wb", opened)
    err = stderr if stderr is not None else _standard(sys.stderr, "wb", opened)
    try:
        if args.command == "identity":
            if args.identity_command == "new":
                _identity_new(args, out)
            else:
                _identity_show(args, out)
        elif args.command == "ticket-secret":
            _ticket_secret_new(args)
        elif args.command == "serve":
            _serve(args, err)
        else:
            _connect(args, inp, out, err)
        out.flush()
    except _Failure as exc:
        _say(err, f"nautilus: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:  # (the commands' own OSErrors are _Failures)
        _say(err, f"nautilus: error: cannot write the output: {exc.strerror or exc}\n")
        return 1
    finally:
        with contextlib.suppress(OSError):
            out.flush()  # (what was written before a failure)
        for null in opened:
            null.close()
    return 0
