"""Nautilus over asyncio: streams and protocols, like ``ssl=`` in asyncio.

Streams::

    reader, writer = await nautilus.asyncio.open_connection(host, port, context=ctx)
    server = await nautilus.asyncio.start_server(handle, host, port, context=ctx)

Protocols (any :class:`asyncio.Protocol` runs over Nautilus unchanged)::

    transport, protocol = await nautilus.asyncio.create_connection(factory, host, port,
                                                                  context=ctx)
    server = await nautilus.asyncio.create_server(factory, host, port, context=ctx)

Clients get their reader/writer (or transport/protocol) only once the
handshake has completed; a failed handshake raises its named error
(:class:`nautilus.NegotiationFailed`, :class:`nautilus.AuthenticationFailed`,
:class:`nautilus.HandshakeTimeout`...). Servers call the application only for
connections whose handshake completed; the others are closed and logged at
DEBUG on the ``nautilus.asyncio`` logger. See ``docs/asyncio.md``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nautilus.asyncio._transport import NautilusTransport, _NautilusProtocol
from nautilus.asyncio.channel import Channel, open_channel, start_channel_server
from nautilus.asyncio.node import Node, RetryPolicy
from nautilus.context import Context
from nautilus.identity import PeerKey
from nautilus.protocol.connection import Connection
from nautilus.sockets import _default_server_name as _server_name_of_address

__all__ = [
    "Channel",
    "NautilusTransport",
    "Node",
    "RetryPolicy",
    "create_connection",
    "create_server",
    "open_channel",
    "open_connection",
    "start_channel_server",
    "start_server",
]

_P = TypeVar("_P", bound=asyncio.Protocol)
_DEFAULT_LIMIT = 2**16
_SSL_ARGUMENTS = ("ssl", "server_hostname", "ssl_handshake_timeout", "ssl_shutdown_timeout")


def _check_kw(kw: dict[str, Any]) -> None:
    for name in _SSL_ARGUMENTS:
        if name in kw:
            raise TypeError(f"{name}= is not supported: Nautilus replaces TLS; use context=")


def _check_address(host: object, port: object) -> None:
    if host is not None and not isinstance(host, (str, list, tuple)):
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")
    if port is not None and (isinstance(port, bool) or not isinstance(port, (int, str))):
        raise TypeError(f"port must be an int, a str or None, not {type(port).__name__}")
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")


def _check_limit(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")


def _check_server_context(context: object) -> Context:
    if not isinstance(context, Context):
        raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
    if context.identity is None:
        raise ValueError("a server needs a context with an identity")
    return context


def _default_server_name(host: object, port: object) -> str | None:
    """The blocking sockets' default server name of ``(host, port)``."""
    return _server_name_of_address((host, port))


async def create_connection(
    protocol_factory: Callable[[], _P],
    host: str | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    expected_peer: PeerKey | str | None = None,
    server_name: str | None = None,
    early_data: bytes | None = None,
    **kw: Any,
) -> tuple[NautilusTransport, _P]:
    """Connect over TCP, run the handshake, then start ``protocol_factory()``'s protocol.

    The application protocol is created, and its ``connection_made()`` called
    with a :class:`NautilusTransport`, only once the handshake has completed.
    ``server_name`` (default ``"host:port"``, ``"[host]:port"`` for IPv6
    literals) is the name the known-peers file records the server under.
    ``early_data`` is sent as 0-RTT data with the first flight when the
    context allows it (``early_data=True``) and a cached ticket permits it;
    otherwise, or if the server refuses it, it is sent right after the
    handshake. ``transport.get_extra_info("nautilus").early_data_accepted``
    says which. Early data can be replayed by an attacker: only send requests
    that are safe to process twice.
    Other keyword arguments go to ``loop.create_connection()`` (``local_addr``,
    ``family``, ``sock``, ``happy_eyeballs_delay``...).

    Returns:
        ``(transport, protocol)``.

    Raises:
        TypeError, ValueError: bad arguments (checked before any I/O), an
            ``ssl``-related argument, or a factory that returns no asyncio.Protocol.
        OSError: the TCP connection could not be made.
        nautilus.NegotiationFailed, nautilus.AuthenticationFailed,
        nautilus.KeyAgreementFailed, nautilus.HandshakeTimeout,
        nautilus.ProtocolViolation, nautilus.SessionKeyDerivationFailed:
            the handshake failed (the socket is closed).
        nautilus.HandshakeError: the server closed the connection during the
            handshake without saying why.
    """
    if not callable(protocol_factory):
        raise TypeError("protocol_factory must be callable")
    if host is not None and not isinstance(host, str):  # (a list is for servers only)
        raise TypeError(f"host must be a str or None, not {type(host).__name__}")
    _check_address(host, port)
    _check_kw(kw)
    if server_name is None:
        server_name = _default_server_name(host, port)
    if early_data is not None and not isinstance(early_data, (bytes, bytearray, memoryview)):
        raise TypeError(f"early_data must be bytes-like, not {type(early_data).__name__}")
    conn = Connection(context, "client", server_name=server_name, expected_peer=expected_peer)
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[NautilusTransport] = loop.create_future()
    owner = _NautilusProtocol(
        loop, conn, protocol_factory, waiter, bytes(early_data) if early_data else None
    )
    addr: Any = (host, port)  # typeshed's overloads want both or neither; asyncio checks
    try:
        await loop.create_connection(lambda: owner, *addr, **kw)
    except BaseException:  # refused, or cancelled (maybe after connection_made)
        # Nothing will await the handshake now: settle the waiter, so that
        # its exception (set when TCP closes) is not reported as unretrieved.
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled():
            waiter.exception()
        raise
    try:
        # The transport comes with the waiter's result: the connection may be
        # lost between the handshake's completion and this coroutine's turn
        # (a reset right behind the server's flight), and the owner then lets
        # go of it. The application protocol has been told (connection_lost),
        # and the stream's first read raises the error.
        transport = await waiter
    except BaseException:  # a failed handshake is already closing (alert sent); not so a cancel
        if not owner._closing:
            owner._abort()
        raise
    owner._waiter = None  # (it holds the transport: no cycle through the owner)
    app = owner._app
    assert app is not None
    return transport, app  # type: ignore[return-value]  # app came from protocol_factory


async def create_server(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str | list[str] | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    **kw: Any,
) -> asyncio.Server:
    """Listen for Nautilus connections; run ``protocol_factory()``'s protocol on each.

    The application protocol is created only for connections whose handshake
    completed. Failed handshakes are closed (with an alert where safe) and
    logged at DEBUG on the ``nautilus.asyncio`` logger; the server keeps
    serving. Other keyword arguments go to ``loop.create_server()``
    (``backlog``, ``reuse_port``, ``start_serving``, ``sock``...).

    Returns:
        The :class:`asyncio.Server` (its sockets are the TCP listeners).

    Raises:
        TypeError, ValueError: bad arguments (``context`` is not a Context or
            has no identity, an ``ssl``-related argument...), before any I/O.
        OSError: the address could not be bound.
    """
    if not callable(protocol_factory):
        raise TypeError("protocol_factory must be callable")
    ctx = _check_server_context(context)
    _check_address(host, port)
    _check_kw(kw)
    loop = asyncio.get_running_loop()

    def factory() -> _NautilusProtocol:
        return _NautilusProtocol(loop, Connection(ctx, "server"), protocol_factory, None)

    addr: Any = (host, port)
    return await loop.create_server(factory, *addr, **kw)


async def open_connection(
    host: str | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    expected_peer: PeerKey | str | None = None,
    server_name: str | None = None,
    limit: int = _DEFAULT_LIMIT,
    early_data: bytes | None = None,
    **kw: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and complete the handshake; return asyncio streams.

    ``writer.get_extra_info("nautilus")`` is the :class:`nautilus.SessionInfo`.
    After the handshake, ``reader.read()`` returns ``b""`` only after the
    peer's close_notify; an end without it raises
    :class:`nautilus.ConnectionLost` (truncation), and a record that fails
    authentication raises :class:`nautilus.IntegrityError`.
    See :func:`create_connection` for ``server_name``, ``early_data`` (0-RTT)
    and ``**kw``.

    Raises:
        TypeError, ValueError: bad arguments, before any I/O.
        OSError: the TCP connection could not be made.
        nautilus.HandshakeError (a named subclass): as :func:`create_connection`.
    """
    _check_limit(limit)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(
        lambda: protocol,
        host,
        port,
        context=context,
        expected_peer=expected_peer,
        server_name=server_name,
        early_data=early_data,
        **kw,
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(
    client_connected_cb: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None
    ],
    host: str | list[str] | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    limit: int = _DEFAULT_LIMIT,
    **kw: Any,
) -> asyncio.Server:
    """Serve Nautilus streams: ``client_connected_cb(reader, writer)`` per connection.

    The callback (a function or a coroutine function) runs only for
    connections whose handshake completed; see :func:`create_server`.

    Raises:
        TypeError, ValueError: bad arguments, before any I/O.
        OSError: the address could not be bound.
    """
    if not callable(client_connected_cb):
        raise TypeError("client_connected_cb must be callable")
    _check_limit(limit)
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, context=context, **kw)
