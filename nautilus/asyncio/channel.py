"""Whole messages over Nautilus on asyncio: :class:`Channel`.

A channel carries messages (``Connection.send_messages`` / ``MessagesReceived``)
rather than a byte stream::

    channel = await nautilus.asyncio.open_channel(host, port, context=ctx)
    channel.send_message(b"hello")
    await channel.drain()
    reply = await channel.recv_message()
    channel.close()
    await channel.wait_closed()

Framing and the size bound (the context's ``max_message_size``) are the
Connection's; this module adds an asyncio face: a bounded receive queue that
pauses reading from the socket when it is full, ``drain()`` for writes, and
clear end-of-channel semantics (see :meth:`Channel.recv_message`). Where
messages come in bursts, :meth:`Channel.recv_messages` takes all the queued
ones in one call, at a fraction of the cost per message. The same
:class:`Channel` class is what :class:`nautilus.asyncio.Node` hands out for
its peers; there it routes over whichever connection to the peer survives.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

from nautilus.asyncio._transport import NautilusTransport
from nautilus.context import Context
from nautilus.exceptions import ClosedError, ConnectionLost
from nautilus.identity import PeerKey
from nautilus.protocol.connection import ConnectionStats, _iter_messages
from nautilus.protocol.events import SessionInfo

__all__ = [
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_QUEUE_BYTES",
    "Channel",
    "open_channel",
    "start_channel_server",
]

logger = logging.getLogger("nautilus.asyncio")

_Buffer = bytes | bytearray | memoryview
DEFAULT_MAX_QUEUE = 1024
"""Received messages a channel queues before it stops reading the socket."""
DEFAULT_MAX_QUEUE_BYTES = 1 << 22
"""Received bytes (4 MiB) a channel queues before it stops reading the socket."""


def _check_queue_limits(max_queue: object, max_queue_bytes: object) -> tuple[int, int]:
    for name, value in (("max_queue", max_queue), ("max_queue_bytes", max_queue_bytes)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    assert isinstance(max_queue, int)
    assert isinstance(max_queue_bytes, int)
    return max_queue, max_queue_bytes


# --------------------------------------------------------------------------- links


class _Link(asyncio.Protocol):
    """The application protocol of one Nautilus connection (base class).

    Keeps the transport, the write flow control (``pause_writing`` from the
    TCP transport's water marks) and the reading switch. Subclasses receive
    messages through ``messages_received(messages)``, the transport's hook
    (a tuple of one or more messages per call).
    """

    def __init__(self) -> None:
        self.transport: NautilusTransport | None = None
        self.lost = False
        self._write_paused = False
        self._writable: list[asyncio.Future[None]] = []
        self._reading = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, NautilusTransport)
        self.transport = transport

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writers()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake_writers()

    def _wake_writers(self) -> None:
        waiters, self._writable = self._writable, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    @property
    def writable(self) -> bool:
        """True unless the TCP buffer is over its high-water mark."""
        return not self._write_paused or self.lost

    async def wait_writable(self) -> None:
        """Wait until the TCP buffer is under its low-water mark, or the connection is lost."""
        if self.writable:
            return
        fut = asyncio.get_running_loop().create_future()
        self._writable.append(fut)
        try:
            await fut
        finally:
            if fut in self._writable:
                self._writable.remove(fut)

    def set_reading(self, reading: bool) -> None:
        """Pause or resume reading from the socket."""
        transport = self.transport
        if reading == self._reading or transport is None or self.lost:
            return
        self._reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def close(self) -> None:
        """Close the connection (close_notify after what was sent)."""
        if self.transport is not None and not self.lost:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (no close_notify: the peer sees a truncation)."""
        if self.transport is not None and not self.lost:
            self.transport.abort()


class _Route:
    """Where a :class:`Channel` sends, and whose reading it pauses (base class).

    One connection (:class:`_ChannelLink`) or a node's peer session, which
    routes over whichever of its connections is current.
    """

    def route_send(self, messages: list[_Buffer]) -> None:
        raise NotImplementedError

    async def route_drain(self) -> None:
        raise NotImplementedError

    def route_ready(self) -> bool:
        """True if :meth:`route_drain` would return at once (False: not known)."""
        return False

    def route_close(self) -> None:
        raise NotImplementedError

    def route_abort(self) -> None:
        raise NotImplementedError

    def route_reading(self, reading: bool) -> None:
        raise NotImplementedError

    def route_transport(self) -> NautilusTransport | None:
        raise NotImplementedError

    def route_ended(self) -> None:
        """The channel ended (closed, aborted, failed or closed by the peer):
        a drain() waiting for the route must wake (it then raises)."""


# ------------------------------------------------------------------------- channel


class Channel:
    """A message channel to one peer over Nautilus.

    Get one from :func:`open_channel`, :func:`start_channel_server`'s
    callback, or :class:`nautilus.asyncio.Node`. Sending never blocks: messages
    are sealed at once and queued in the transport (the first send of an
    event-loop iteration is written at once, later ones of the same iteration
    together at its end); :meth:`drain` waits for the queue to empty below its
    low-water mark. Received messages wait in a
    bounded queue; when more than ``max_queue`` messages or ``max_queue_bytes``
    bytes are queued the channel stops reading from the socket (the peer's
    :meth:`drain` then blocks) until :meth:`recv_message` or
    :meth:`recv_messages` has taken the queue down to half of both. (The
    queue may exceed the limits by what one read from the socket held: the
    messages opened together are queued together.)

    End of channel:

    * after a clean close (the peer's :meth:`close`, or this side's),
      :meth:`recv_message` (or :meth:`recv_messages`) returns the messages
      already received, then raises :class:`EOFError`; ``async for`` stops there;
    * after a failure, it returns the messages already received (each whole
      and authenticated), then raises the failure: ``nautilus.ConnectionLost``
      (the connection ended without close_notify), ``nautilus.ProtocolViolation``
      (for example an oversized message from the peer, or its close_notify
      in the middle of a message),
      ``nautilus.IntegrityError``, the peer's alert...

    There is no half-close: after either side's :meth:`close`, messages still
    in flight towards this side are dropped.
    """

    def __init__(
        self,
        route: _Route,
        peer_id: str | None,
        session: SessionInfo | None,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        self._route = route
        self._peer_id = peer_id
        self._session = session
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._reading = True
        # The reader waiting in recv_message() or recv_messages(). Its result
        # is None (look at the queue) or, from the message lane, the message
        # itself, handed over without passing through the queue.
        self._waiter: asyncio.Future[bytes | None] | None = None
        self._closing = False  # close() was called
        self._aborted = False  # abort() was called
        self._send_closed: str | None = None  # why sending is over, once it is
        self._ended = False  # nothing more will be received
        self._eof_reason = ""
        self._error: BaseException | None = None
        # The message lane of a channel over one connection (_ChannelLink):
        # seals and writes one message at once, or returns False.
        self._send_lane: Callable[[bytes], bool] | None = None
        # Kept: on CPython 3.11 each get_running_loop() costs a getpid() system call.
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()

    # ------------------------------------------------------------ information

    @property
    def peer_id(self) -> str | None:
        """The peer's id, or None for a client that did not authenticate."""
        return self._peer_id

    @property
    def session(self) -> SessionInfo | None:
        """The :class:`nautilus.SessionInfo` of the connection in use."""
        transport = self._route.route_transport()
        if transport is not None:
            info = transport.get_extra_info("nautilus")
            if isinstance(info, SessionInfo):
                self._session = info
        return self._session

    @property
    def stats(self) -> ConnectionStats | None:
        """The counters of the connection in use now (:class:`nautilus.ConnectionStats`:
        application bytes each way, key updates), or None without one."""
        transport = self._route.route_transport()
        if transport is None:
            return None
        stats: ConnectionStats | None = transport.get_extra_info("nautilus_stats")
        return stats

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As ``transport.get_extra_info`` for the connection in use
        (``"nautilus"``, ``"nautilus_stats"``, ``"peername"``, ``"sockname"``...)."""
        transport = self._route.route_transport()
        if transport is None:
            return default
        return transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        """True once the channel is closing or closed (either side), or failed."""
        return self._closing or self._send_closed is not None

    # ---------------------------------------------------------------- sending

    def send_message(self, message: _Buffer) -> None:
        """Send one message; it is sealed at once and queued for writing.

        Raises:
            TypeError: ``message`` is not bytes-like.
            nautilus.MessageTooLarge: it is over the context's
                ``max_message_size``; nothing was sent, the channel is usable.
            nautilus.ClosedError: the channel is closed or closing (by either
                side); after a failure, the failure is its ``__cause__``.
        """
        lane = self._send_lane
        if (
            lane is not None
            and type(message) is bytes
            and self._send_closed is None
            and lane(message)
        ):
            return
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"a message must be bytes-like, not {type(message).__name__}")
        self._check_sending()
        self._route.route_send([message])

    def send_messages(self, messages: Iterable[_Buffer]) -> None:
        """Send many messages, framed together and sealed in one call.

        All or nothing: every message is checked before any is sent.

        Raises:
            TypeError: ``messages`` is one bytes-like object or a str rather
                than an iterable of them, or an item is not bytes-like.
            nautilus.MessageTooLarge: a message is over ``max_message_size``;
                nothing was sent, the channel is usable.
            nautilus.ClosedError: as :meth:`send_message`.
        """
        batch = list(_iter_messages(messages))
        self._check_sending()
        if batch:
            self._route.route_send(batch)

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark.

        Raises:
            The failure (``nautilus.ConnectionLost``...): the connection failed.
            nautilus.ClosedError: the channel was closed (by either side)
                before or while waiting; what was sent may not have arrived.
        """
        if self._send_closed is None and self._route.route_ready():
            return  # nothing to wait for (the common case)
        self._raise_if_not_sending()
        await self._route.route_drain()
        self._raise_if_not_sending()

    def _check_sending(self) -> None:
        if self._send_closed is not None:
            raise ClosedError(f"cannot send: {self._send_closed}") from self._error

    def _raise_if_not_sending(self) -> None:
        if self._send_closed is not None:
            if self._error is not None:
                raise self._error
            raise ClosedError(self._send_closed)

    # -------------------------------------------------------------- receiving

    async def recv_message(self) -> bytes:
        """The next message (whole, as sent).

        Raises:
            EOFError: the channel was closed cleanly (by either side) and every
                message received before has been returned.
            The failure (``nautilus.ConnectionLost``, ``nautilus.ProtocolViolation``,
                ``nautilus.IntegrityError``, ``nautilus.AuthenticationFailed``...):
                the connection failed and every message received before it
                has been returned.
            RuntimeError: another coroutine is already waiting in recv_message()
                or recv_messages().
        """
        queue = self._queue
        if not queue:
            if self._waiter is None and not self._ended:  # _wait(), inline: one coroutine less
                waiter: asyncio.Future[bytes | None] = self._loop.create_future()
                self._waiter = waiter
                try:
                    handed = await waiter
                except BaseException:  # (cancelled: a message handed over is queued)
                    self._waiter = None
                    self._reclaim(waiter)
                    raise
                self._waiter = None
                if handed is not None:
                    return handed
            if not queue:
                await self._wait()
        data = queue.popleft()
        self._queued_bytes -= len(data)
        if not self._reading:
            self._taken()
        return data

    async def recv_messages(self, max_count: int | None = None) -> list[bytes]:
        """All the messages received and not yet taken, at least one (waits for
        it), at most ``max_count`` (None: no limit); oldest first.

        Taking the queue in one call costs far less per message than
        :meth:`recv_message` when messages arrive in bursts.

        Raises:
            TypeError: ``max_count`` is not an int or None.
            ValueError: ``max_count`` is less than 1.
            EOFError, the failure, RuntimeError: as :meth:`recv_message`
                (EOFError or the failure only once the queue is empty).
        """
        if max_count is not None:
            if not isinstance(max_count, int) or isinstance(max_count, bool):
                raise TypeError(f"max_count must be an int or None, not {type(max_count).__name__}")
            if max_count < 1:
                raise ValueError(f"max_count must be at least 1, got {max_count}")
        queue = self._queue
        if not queue:
            await self._wait()
        if max_count is None or max_count >= len(queue):
            messages = list(queue)
            queue.clear()
            self._queued_bytes = 0
        else:
            popleft = queue.popleft
            messages = [popleft() for _ in range(max_count)]
            self._queued_bytes -= sum(map(len, messages))
        if not self._reading:
            self._taken()
        return messages

    async def _wait(self) -> None:
        """Wait until a message is queued; raise at the end of the channel."""
        while not self._queue:
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise EOFError(self._eof_reason)
            if self._waiter is not None:
                raise RuntimeError("another coroutine is already waiting for a message")
            waiter = self._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None
                self._reclaim(waiter)

    def _reclaim(self, waiter: asyncio.Future[bytes | None]) -> None:
        """Queue the message handed to ``waiter``, if any, that its reader did not take."""
        if waiter.done() and not waiter.cancelled():
            handed = waiter.result()
            if handed is not None:
                self._queue.appendleft(handed)
                self._queued_bytes += len(handed)

    def _taken(self) -> None:
        """Messages were taken while reading was paused: resume it at half the limits."""
        if len(self._queue) <= self._max_queue // 2 and self._queued_bytes <= (
            self._max_queue_bytes // 2
        ):
            self._reading = True
            self._route.route_reading(True)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        """The next message; stops after a clean close, raises after a failure."""
        try:
            return await self.recv_message()
        except EOFError:
            raise StopAsyncIteration from None

    @property
    def queued(self) -> tuple[int, int]:
        """``(messages, bytes)`` received and not yet taken by recv_message(s)()."""
        return len(self._queue), self._queued_bytes

    # -------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the channel: close_notify after what was sent, then the socket.

        Messages already received can still be read; then recv_message()
        and recv_messages() raise EOFError. Idempotent.
        """
        if self._closing:
            return
        self._closing = True
        self._finish(None, "the channel was closed")
        self._route.route_close()

    def abort(self) -> None:
        """Drop the channel at once: no close_notify, unsent data is lost.

        The peer sees ``nautilus.ConnectionLost``; on this side the channel
        ends as after a failure, with ``nautilus.ConnectionLost``. Idempotent.
        """
        if self._aborted:
            return
        self._aborted = self._closing = True
        self._finish(ConnectionLost("the channel was aborted"))  # (unless it had ended)
        self._route.route_abort()  # also after close(): a close that lingers ends now

    async def wait_closed(self) -> None:
        """Wait until the connection(s) of the channel are closed.

        Raises:
            The failure: the channel failed (rather than closing cleanly).
        """
        await asyncio.shield(self._closed)
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------ called by routes

    def _feed(self, messages: Sequence[bytes], nbytes: int = -1) -> None:
        """Queue received messages (one or more; ``nbytes`` their total size,
        if known) and wake the waiting reader once."""
        if self._ended:
            return
        self._queue.extend(messages)
        self._queued_bytes += nbytes if nbytes >= 0 else sum(map(len, messages))
        self._fed()

    def _feed_one(self, message: bytes) -> None:
        """:meth:`_feed` for one message (the message lane): handed straight to
        the waiting reader when the queue is empty."""
        waiter = self._waiter
        if waiter is not None and not self._queue and not self._ended and not waiter.done():
            waiter.set_result(message)
            return
        if self._ended:
            return
        self._queue.append(message)
        self._queued_bytes += len(message)
        self._fed()

    def _fed(self) -> None:
        """Wake the waiting reader; stop reading past the queue's limits."""
        queue = self._queue
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._reading and (
            len(queue) > self._max_queue or self._queued_bytes > self._max_queue_bytes
        ):
            self._reading = False
            self._route.route_reading(False)

    def _stop_sending(self, reason: str) -> None:
        if self._send_closed is None:
            self._send_closed = reason

    def _finish(self, error: BaseException | None, reason: str = "") -> None:
        """Nothing more will be received: ``error`` None for a clean end."""
        if self._ended:
            return
        self._ended = True
        if error is not None:
            self._error = error
            self._stop_sending(f"the connection failed: {type(error).__name__}: {error}")
        else:
            self._eof_reason = reason
            self._stop_sending(reason)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._route.route_ended()

    def _closed_done(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    def __repr__(self) -> str:
        state = "closing" if self.is_closing() else "open"
        return f"<nautilus.asyncio.Channel peer={self._peer_id} {state}>"


# ------------------------------------------------------------ one connection


class _ChannelLink(_Link, _Route):
    """A Channel over exactly one connection (``open_channel``, ``start_channel_server``)."""

    def __init__(
        self,
        max_queue: int,
        max_queue_bytes: int,
        on_channel: Callable[[Channel], None] | None = None,
    ) -> None:
        super().__init__()
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._on_channel = on_channel
        self.channel: Channel | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        info = self.transport.get_extra_info("nautilus")
        channel = Channel(
            self,
            info.peer_id if isinstance(info, SessionInfo) else None,
            info if isinstance(info, SessionInfo) else None,
            max_queue=self._max_queue,
            max_queue_bytes=self._max_queue_bytes,
        )
        self.channel = channel
        channel._send_lane = self.transport._message_lane(channel._feed_one)
        if self._on_channel is not None:
            self._on_channel(channel)

    _messages_sized = True  # the transport gives messages_received their byte count

    def messages_received(self, messages: tuple[bytes, ...], nbytes: int = -1) -> None:
        channel = self.channel
        assert channel is not None
        channel._feed(messages, nbytes)

    def data_received(self, data: bytes) -> None:
        """Stream data (``send_data``) is not part of the channel API: it is dropped."""

    def eof_received(self) -> bool:
        channel = self.channel
        assert channel is not None
        channel._finish(None, "the peer closed the channel")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        channel = self.channel
        assert channel is not None
        channel._finish(exc, "the connection was closed")
        if exc is not None and channel._error is None:
            channel._error = exc  # ended after a close that did not complete: wait_closed() says so
        channel._closed_done()

    # route

    def route_send(self, messages: list[_Buffer]) -> None:
        transport = self.transport
        assert transport is not None
        transport.send_messages(messages)

    async def route_drain(self) -> None:
        await self.wait_writable()

    def route_ready(self) -> bool:
        return not self._write_paused or self.lost

    def route_close(self) -> None:
        self.close()

    def route_abort(self) -> None:
        self.abort()

    def route_reading(self, reading: bool) -> None:
        self.set_reading(reading)

    def route_transport(self) -> NautilusTransport | None:
        return self.transport

    def route_ended(self) -> None:
        self._wake_writers()


# ------------------------------------------------------------------ entry points


async def open_channel(
    host: str | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    expected_peer: PeerKey | str | None = None,
    server_name: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    **kw: Any,
) -> Channel:
    """Connect, complete the handshake, and return a :class:`Channel`.

    ``expected_peer``, ``server_name`` and ``**kw`` are as for
    :func:`nautilus.asyncio.create_connection`. ``max_queue`` and
    ``max_queue_bytes`` bound the receive queue (see :class:`Channel`).

    A server that requires client authentication decides after the client's
    last handshake flight: a client it rejects gets its channel, and the
    first :meth:`Channel.recv_message` raises ``nautilus.AuthenticationFailed``.

    Raises:
        TypeError, ValueError: bad arguments, before any I/O (``early_data``
            among them: 0-RTT data is stream data, which a channel does not
            carry).
        OSError: the TCP connection could not be made.
        nautilus.HandshakeError (a named subclass): the handshake failed.
    """
    from nautilus.asyncio import create_connection

    if "early_data" in kw:
        raise TypeError(
            "open_channel() takes no early_data: 0-RTT data is stream data, and a channel "
            "carries only messages (the server's channel would drop it)"
        )
    limits = _check_queue_limits(max_queue, max_queue_bytes)
    link = _ChannelLink(*limits)
    await create_connection(
        lambda: link,
        host,
        port,
        context=context,
        expected_peer=expected_peer,
        server_name=server_name,
        **kw,
    )
    assert link.channel is not None
    return link.channel


async def start_channel_server(
    callback: Callable[[Channel], Awaitable[None] | None],
    host: str | list[str] | None = None,
    port: int | str | None = None,
    *,
    context: Context,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
    **kw: Any,
) -> asyncio.Server:
    """Serve channels: ``callback(channel)`` for each connection whose handshake completed.

    ``callback`` is a function or a coroutine function (run as a task). An
    exception it raises is logged on the ``nautilus.asyncio`` logger and
    closes that channel; the server keeps serving. Returning does not close
    the channel. ``**kw`` goes to :func:`nautilus.asyncio.create_server`.

    Raises:
        TypeError, ValueError: bad arguments, before any I/O.
        OSError: the address could not be bound.
    """
    from nautilus.asyncio import create_server

    if not callable(callback):
        raise TypeError("callback must be callable")
    limits = _check_queue_limits(max_queue, max_queue_bytes)
    tasks: set[asyncio.Future[Any]] = set()

    def finished(task: asyncio.Future[Any], channel: Channel) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("nautilus: channel callback failed", exc_info=exc)
            channel.close()

    def on_channel(channel: Channel) -> None:
        try:
            result = callback(channel)
        except Exception:
            logger.exception("nautilus: channel callback failed")
            channel.close()
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            tasks.add(task)
            task.add_done_callback(lambda t: finished(t, channel))

    return await create_server(
        lambda: _ChannelLink(*limits, on_channel), host, port, context=context, **kw
    )
