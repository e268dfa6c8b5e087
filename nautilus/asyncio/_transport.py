"""The asyncio glue: one protocol that owns a TCP transport and a sans-IO Connection.

:class:`_NautilusProtocol` is what the event loop sees: it feeds received
bytes to a :class:`nautilus.Connection`, writes what the connection wants sent,
drives the handshake timer, and, once the handshake has completed, creates the
application's protocol and hands it a :class:`NautilusTransport`. Everything
here is thin on purpose; the protocol logic lives in the Connection.

Two things are done here for speed, as asyncio's TLS transport does them:
small writes made in one event-loop iteration are sealed together (fewer,
fuller records and TCP writes: NautilusTransport.write), and pausing reading
stops deliveries at once but pauses the socket only once 256 KiB are held
(no pause and resume of the socket each time a reader catches up).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from nautilus.exceptions import ClosedError, ConnectionLost, HandshakeError, NautilusError
from nautilus.protocol.connection import Connection
from nautilus.protocol.events import (
    ConnectionClosed,
    DataReceived,
    EarlyDataReceived,
    Event,
    HandshakeCompleted,
    MessagesReceived,
)
from nautilus.protocol.messages import AlertCode

__all__ = ["NautilusTransport"]

logger = logging.getLogger("nautilus.asyncio")

_Buffer = bytes | bytearray | memoryview
_WARN_WRITES_AFTER_CLOSE = 5
_COALESCE = 1 << 16  # bytes of small writes collected before they are sealed together
# ... and of framed message batches. Each seal and TCP write has a fixed
# cost, and so has each read of a peer that keeps up, whose reads are then
# about one such write: at 64 KiB, one-way 256-byte messages took about 13%
# more CPU per message on each side. Stream data stays at 64 KiB: for a
# stream of 4 KiB writes, 192 KiB gave the writer about 10% less CPU per
# byte but the reader none, with some rounds much slower (a StreamReader
# allocates as much per read as the read held).
_COALESCE_MESSAGES = 3 << 16
_READ_BACKLOG = 1 << 18  # bytes held while reading is paused before TCP reading pauses too
_RECV_SMALL = 1 << 14  # receive buffer space offered to TCP reads at first (handshake, chat)
_RECV_LARGE = 1 << 19  # ... and once a read filled it (bulk transfers)
# (512 KiB, twice asyncio's own read size: each read has a fixed cost. The
# measurements are in docs/asyncio.md, "Performance notes".)
_QUIET = 1.0  # seconds without a read after which large reads' buffers are given back


class _SharedReadBuffer(threading.local):
    """One _RECV_SMALL buffer per thread (per event loop) for small reads.

    A connection with nothing kept from earlier reads reads into it, and the
    Connection takes everything at once (an incomplete record at the end is
    copied to the connection's own buffer): no buffer is allocated per read,
    and a quiet connection holds none.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_RECV_SMALL))


_shared = _SharedReadBuffer()
_LINGER = 5.0  # seconds a closing side waits for the peer's FIN (see _close_after_peer)


_now = time.time  # the Connection's clock (a name of its own: one call, no Python frame)


def _name(error: BaseException) -> str:
    """The public class name of a Nautilus error (DecodeError -> ProtocolViolation)."""
    for cls in type(error).__mro__:
        if cls.__module__ == "nautilus.exceptions":
            return cls.__name__
    return type(error).__name__


class NautilusTransport(asyncio.Transport):
    """The transport an application protocol gets: :meth:`write` seals.

    It behaves like the transport of ``loop.create_connection()``, with these
    differences: :meth:`write_eof` is not supported (the protocol has no
    half-close; :meth:`can_write_eof` is False), ``get_extra_info("nautilus")``
    returns the :class:`nautilus.SessionInfo`, and :meth:`update_keys` /
    :meth:`export_keying_material` reach the session. Every other extra-info
    name (``"peername"``, ``"sockname"``, ``"socket"``...) is answered by the
    underlying TCP transport, whose water marks drive write flow control.

    Writing after :meth:`close` (or after the connection was lost) drops the
    data, as asyncio's own transports do; ``StreamWriter.drain()`` reports why
    the connection ended.
    """

    __slots__ = ("_conn", "_owner", "_tcp")

    def __init__(self, owner: _NautilusProtocol, tcp: asyncio.Transport) -> None:
        super().__init__()
        self._owner = owner
        self._conn = owner._conn
        self._tcp = tcp

    # ------------------------------------------------------------------ writing

    def write(self, data: _Buffer) -> None:
        """Seal ``data`` and send it (or queue it in the TCP transport's buffer).

        The first write of an event-loop iteration is sealed and sent at
        once; later ones in the same iteration (and all those made inside a
        callback) are collected and sealed together, at the end of the
        iteration or callback, or as soon as 64 KiB are waiting. (A write in
        a later iteration, with nothing read since the last one, is
        collected too and leaves with the loop's next callbacks.)

        Raises:
            TypeError: ``data`` is not bytes-like, or a non-contiguous memoryview.
        """
        if type(data) is bytes or isinstance(data, (bytes, bytearray)):
            size = len(data)
        elif isinstance(data, memoryview):
            if not data.c_contiguous:
                raise TypeError("data must be a contiguous buffer")
            size = data.nbytes
        else:
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        owner = self._owner
        if owner._closing:
            owner._writes_after_close += 1
            if owner._writes_after_close == _WARN_WRITES_AFTER_CLOSE:
                logger.warning("nautilus: write() on a closed connection (data dropped)")
            return
        if not size:
            return
        if owner._pending_size or owner._corked or owner._in_callback:
            if size < _COALESCE:
                if owner._pending_messages:  # framed messages wait: they go first
                    owner._seal_pending()
                # Collected, to be sealed with the others (bytes are kept, not copied).
                owner._pending.append(data if type(data) is bytes else bytes(data))
                owner._pending_size += size
                if owner._pending_size >= _COALESCE:
                    # Sent at once, in a callback too: what waits sealed is
                    # counted nowhere, and the TCP buffer's water marks must
                    # see it (pause_writing) for a writer that loops.
                    owner._seal_pending()
                    owner._send()
                elif not owner._in_callback:  # (in a callback: sent when it returns)
                    owner._uncork_soon()
                return
            # Large enough on its own: sealed straight from the caller's buffer.
            if owner._pending_size:
                owner._seal_pending()
            owner._seal(data)
            owner._send()
            return
        # The first write of this loop iteration: sent now. Further writes
        # are collected until the loop runs its next callbacks (_uncork).
        owner._seal(data)
        owner._send_and_cork()

    # ------------------------------------------------- message API (hook)
    # Used by nautilus.asyncio.channel: whole messages (Connection.send_messages)
    # rather than stream data. Received messages go to the application
    # protocol's ``messages_received(messages)`` method, if it has one: a
    # tuple of one or more messages (bytes) per call, in order.

    def send_messages(self, messages: Iterable[_Buffer]) -> None:
        """Frame and seal ``messages`` in one call (``Connection.send_messages``).

        As with :meth:`write`, the first call of an event-loop iteration is
        sealed and sent at once; later ones in the same iteration are framed
        and wait, and are sealed together (full records rather than a short
        one per call) and sent in one TCP write, at the end of the iteration
        or as soon as 192 KiB are waiting. Unlike :meth:`write`, sending on a
        closed connection raises.

        Raises:
            TypeError: ``messages`` is not an iterable of bytes-like objects.
            nautilus.MessageTooLarge: a message is over the context's
                ``max_message_size``; nothing was sent, the connection is usable.
            nautilus.ClosedError: the connection is closed or closing (the
                failure, if it failed, is the ``__cause__``).
        """
        owner = self._owner
        if owner._closing:
            raise ClosedError("the connection is closed") from (owner._app_exc or self._conn.error)
        conn = self._conn
        if owner._corked or owner._in_callback:
            # Not the first write of this loop iteration (or in a callback):
            # framed now (so that what is wrong raises here), sealed with the
            # others by _uncork, when the callback returns, or at 192 KiB.
            framed = conn._frame_messages(messages)
            if not framed:
                return
            if owner._pending_size and not owner._pending_messages:
                owner._seal_pending()  # what was written before goes first
            owner._pending.append(framed)
            owner._pending_messages = True
            owner._pending_size += len(framed)
            if owner._pending_size >= _COALESCE_MESSAGES:
                owner._seal_pending()
                owner._send()
            elif not owner._in_callback:
                owner._uncork_soon()
            return
        if owner._pending_size:
            owner._seal_pending()  # what was written before goes first
        conn.send_messages(messages)
        owner._send_and_cork()

    def _message_lane(self, receive: Callable[[bytes], object]) -> Callable[[bytes], bool]:
        """Open the message lane (channels and nodes): a received record
        holding exactly one message goes to ``receive(message)`` rather than to
        ``messages_received``; the function returned seals and writes one
        message (bytes) at once, or returns False having done nothing (the
        caller then uses :meth:`send_messages`). Request/response traffic
        then takes a few steps per message instead of the general path."""
        owner = self._owner
        owner._lane = receive
        return owner._send_message

    def writelines(self, list_of_data: Iterable[_Buffer]) -> None:
        """Write the buffers as one (they are joined, then sealed in one call).

        Raises:
            TypeError: an item is not bytes-like.
        """
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        """Not supported: Nautilus has no half-close; use :meth:`close`.

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("Nautilus connections have no half-close; use close()")

    def can_write_eof(self) -> bool:
        """False: see :meth:`write_eof`."""
        return False

    def get_write_buffer_size(self) -> int:
        """Bytes waiting to be sent: written but not yet sealed (collected
        small writes, under 64 KiB, or framed message batches, under 192 KiB;
        plus the last one), plus the sealed bytes in the TCP transport's buffer."""
        return self._tcp.get_write_buffer_size() + self._owner._pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The TCP transport's ``(low, high)`` write-buffer water marks."""
        return self._tcp.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the TCP transport's water marks; they drive ``pause_writing()``.

        Raises:
            TypeError: ``high`` or ``low`` is neither None nor an int.
            ValueError: a negative limit, or ``high`` < ``low``.
        """
        for name, value in (("high", high), ("low", low)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise TypeError(f"{name} must be None or an int, not {type(value).__name__}")
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        self._tcp.set_write_buffer_limits(high, low)

    # ------------------------------------------------------------------ reading

    def pause_reading(self) -> None:
        """Deliver nothing to the protocol until :meth:`resume_reading`.

        What arrives meanwhile is kept (as received, not yet decrypted) and
        delivered after :meth:`resume_reading`; past 256 KiB kept, the socket
        is no longer read, so the peer's writes block in turn.
        """
        if not self.is_closing():
            self._owner._read_paused = True

    def resume_reading(self) -> None:
        """Resume delivering data (what was held first, from the event loop)."""
        owner = self._owner
        if owner._read_paused:
            owner._read_paused = False
            if owner._stall_timer is not None:  # (record_timeout: a pause does not count)
                owner._stall_from = owner._loop.time()
            if (
                owner._held is not None
                or owner._rend > owner._rseen
                or owner._eof_held
                or owner._tcp_paused
                or owner._early_received
            ) and owner._resume_handle is None:
                owner._resume_handle = owner._loop.call_soon(owner._resume)

    def is_reading(self) -> bool:
        """True unless reading is paused or the transport is closing."""
        return not self._owner._read_paused and not self.is_closing()

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Send close_notify after any data written, then close the socket.

        The protocol's ``connection_lost(None)`` follows once the TCP
        transport has flushed its buffer and the peer has closed its side
        (see ``_close_after_peer``). Idempotent.
        """
        owner = self._owner
        if owner._closing:
            return
        owner._closing = True
        if owner._pending_size:
            owner._seal_pending()  # the data written before close() goes first
        self._conn.close()
        owner._transmit()
        owner._close_after_peer()

    def _refuse(self, alert: AlertCode) -> None:
        """Close because the application found the peer at fault (a Node: a
        broken node protocol, a stall): as :meth:`close`, but the peer gets
        the fatal ``alert`` instead of close_notify, so that it learns why
        rather than seeing a truncation. As after an error, a peer that is
        not reading (the TCP buffer has not drained) is not waited for."""
        owner = self._owner
        if owner._closing:
            return
        if owner._pending_size:
            owner._seal_pending()
        self._conn._close_with_alert(alert)
        owner._shutdown(clean=False)

    def abort(self) -> None:
        """Close at once: buffered data is lost and no close_notify is sent,
        so the peer sees a truncated connection (``ConnectionLost``)."""
        owner = self._owner
        owner._closing = True
        owner._drop_pending()
        self._conn.close()
        self._conn.data_to_send()  # discard the close_notify: this is an abort
        owner._cancel_timer()
        self._tcp.abort()

    def is_closing(self) -> bool:
        """True once the connection is closing or closed (either side).

        As for asyncio's TLS transport, this is the connection's own state:
        a TCP transport that failed (a reset) is closing at once but reports
        it with ``connection_lost()`` only on the loop's next round. Until
        then this stays False, so that ``StreamWriter.drain()`` waits for
        that report (the protocol is paused, see ``_write_now``) and raises
        the connection's error (``ConnectionLost``) rather than asyncio's
        bare ``ConnectionResetError('Connection lost')``.
        """
        return self._owner._closing

    # ------------------------------------------------------------------ details

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``"nautilus"``: the :class:`nautilus.SessionInfo`;
        ``"nautilus_stats"``: the connection's counters now (a
        :class:`nautilus.ConnectionStats`: application bytes each way, key
        updates, the last one); anything else: the TCP transport's answer
        (``"peername"``, ``"sockname"``, ``"socket"``...)."""
        if name == "nautilus":
            return self._conn.session
        if name == "nautilus_stats":
            return self._conn.stats
        return self._tcp.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Deliver further events to ``protocol`` (an :class:`asyncio.Protocol`).

        Raises:
            TypeError: ``protocol`` is not an asyncio.Protocol.
        """
        if not isinstance(protocol, asyncio.Protocol):
            raise TypeError(f"protocol must be an asyncio.Protocol, not {type(protocol).__name__}")
        self._owner._set_app(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The application protocol events are delivered to."""
        app = self._owner._app
        assert app is not None
        return app

    def update_keys(self, request_peer: bool = True) -> None:
        """Ratchet the sending keys now; with ``request_peer``, ask the peer to
        ratchet its own (it does so before it sends its next data).

        The peer refuses more than 64 key updates in a row with no data
        between them (within one second): it closes the connection with a
        protocol violation. Send data between bursts of updates.

        Raises:
            TypeError: ``request_peer`` is not a bool.
            nautilus.ClosedError: the connection is closed.
        """
        if not isinstance(request_peer, bool):
            raise TypeError(f"request_peer must be a bool, not {type(request_peer).__name__}")
        if self._owner._closing:
            raise ClosedError("the connection is closed")
        if self._owner._pending_size:
            self._owner._seal_pending()
        self._conn.update_keys(request_peer)
        self._owner._transmit()

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material bound to this session (channel binding).

        Available from the end of the handshake until the connection closes
        (its secrets are then wiped).

        Raises:
            TypeError: wrong types.  ValueError: ``length`` not in 1..8160.
            nautilus.ClosedError: before the handshake completed, or once the
                connection is closed or failed.
        """
        return self._conn.export_keying_material(label, context, length)

    @property
    def _handshake_timeout(self) -> float:
        """The handshake_timeout this connection was made with (its context's
        settings snapshot, not the context's current value)."""
        return self._conn._cfg.handshake_timeout

    def __repr__(self) -> str:
        state = "closing" if self.is_closing() else "open"
        return f"<nautilus.asyncio.NautilusTransport {self._conn.role} {state}>"


class _NautilusProtocol(asyncio.BufferedProtocol):
    """Owns the TCP transport and the Connection; creates the app protocol.

    TCP reads land in a buffer of ours (``get_buffer``/``buffer_updated``):
    the Connection opens the complete records there, and the bytes of an
    incomplete record, or those held while reading is paused, stay in place
    until more arrive (no copy, and no new buffer per read).

    ``waiter`` (clients) is resolved with the NautilusTransport when the
    handshake completes, or set to the handshake's error; servers pass None
    and log failed handshakes.
    """

    # Slots: no per-instance dict, so the attribute reads on the per-read
    # path stay specialized (see Connection).
    __slots__ = (
        "_app",
        "_app_copies",
        "_app_exc",
        "_app_factory",
        "_app_lost",
        "_app_messages",
        "_app_sized",
        "_closing",
        "_conn",
        "_corked",
        "_early_data",
        "_early_received",
        "_eof_held",
        "_held",
        "_in_callback",
        "_lane",
        "_linger_timer",
        "_loop",
        "_pending",
        "_pending_messages",
        "_pending_size",
        "_quiet_timer",
        "_rbuf",
        "_read_paused",
        "_reads",
        "_rend",
        "_resume_handle",
        "_rseen",
        "_rsize",
        "_rstart",
        "_rview",
        "_shared_read",
        "_stall_from",
        "_stall_timer",
        "_tcp",
        "_tcp_lost",
        "_tcp_paused",
        "_timer",
        "_timer_at",
        "_transport",
        "_uncork_due",
        "_waiter",
        "_write_paused",
        "_writes_after_close",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: Connection,
        app_factory: Callable[[], asyncio.BaseProtocol],
        waiter: asyncio.Future[NautilusTransport] | None,
        early_data: bytes | None = None,
    ) -> None:
        self._loop = loop
        self._early_data = early_data  # client: 0-RTT data for the first flight
        self._early_received: list[bytes] = []  # server: accepted 0-RTT data, held for the app
        self._conn = conn
        conn._keep_input = True  # incomplete records stay in _rbuf (_process)
        conn._flush_hook = self._write_now  # parts of its flights leave at once
        self._app_factory = app_factory
        self._waiter = waiter
        self._tcp: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._app_copies = False  # the app copies the data it gets (_set_app)
        self._app_messages: Callable[..., object] | None = None  # (_set_app)
        self._app_sized = False  # (_set_app)
        self._lane: Callable[[bytes], object] | None = None  # (NautilusTransport._message_lane)
        self._transport: NautilusTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._in_callback = False
        self._closing = False
        self._tcp_lost = False
        self._app_lost = False
        self._app_exc: Exception | None = None
        self._write_paused = False
        self._writes_after_close = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        # Writes collected until the end of the loop iteration (see
        # NautilusTransport.write), or framed message batches (_pending_messages:
        # see NautilusTransport.send_messages); never both.
        self._pending: list[bytes | bytearray] = []
        self._pending_messages = False
        self._pending_size = 0
        # _corked: a write went out and (as far as we know) the loop iteration
        # has not ended, so further writes are collected; _uncork_due: the
        # _uncork that sends them is scheduled. _corked is not cleared by a
        # callback of its own (that would cost a loop iteration per write,
        # one per message of a request/response exchange) but by the first
        # collected write's _uncork, or by the next read: any later callback.
        self._corked = False
        self._uncork_due = False
        # What TCP delivered: _rbuf[_rstart:_rend]; the Connection has seen
        # it up to _rseen (what lies between _rstart and _rseen is an
        # incomplete record it waits to see completed; what follows _rseen
        # came while reading was paused: the backlog). _rsize: the space
        # offered to the next read.
        self._rbuf = bytearray()
        self._rview = memoryview(self._rbuf)
        self._rstart = self._rseen = self._rend = 0
        self._rsize = _RECV_SMALL
        self._shared_read = False  # the current read goes to _shared.view
        # Reads into _rbuf (large ones), counted for _quiet_timer, which gives
        # the large buffers back once _QUIET seconds passed without one.
        self._reads = 0
        self._quiet_timer: asyncio.TimerHandle | None = None
        # (record_timeout) When the peer last sent more of an incomplete
        # record or message (loop time), and the timer that checks that it
        # did (_on_stall).
        self._stall_from = 0.0
        self._stall_timer: asyncio.TimerHandle | None = None
        # Reading paused by the application (NautilusTransport.pause_reading):
        # the event not delivered, whether the TCP transport is paused too
        # (past _READ_BACKLOG held bytes), and whether the peer's FIN came
        # meanwhile.
        self._read_paused = False
        self._held: Event | None = None
        self._tcp_paused = False
        self._eof_held = False
        self._resume_handle: asyncio.Handle | None = None

    # ------------------------------------------------------- TCP protocol calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not asserted: uvloop's transports have the interface without the base class.
        self._tcp = cast(asyncio.Transport, transport)
        try:
            self._conn.start(_now(), early_data=self._early_data)
        except Exception as exc:  # it should not raise: the waiter must hear of it all the same
            self._engine_error(exc)
            return
        except BaseException as exc:  # (a trust rule's KeyboardInterrupt...)
            if self._interrupted(exc):
                raise
            return
        self._early_data = None
        self._transmit()
        self._dispatch()
        self._arm_timer()

    def get_buffer(self, sizehint: int) -> memoryview:
        size = self._rsize
        if size == _RECV_SMALL and self._rend == 0 and not self._read_paused and self._held is None:
            self._shared_read = True
            return _shared.view
        self._shared_read = False
        if self._read_paused:  # what is read is held, up to _READ_BACKLOG bytes
            size = max(_RECV_SMALL, min(size, _READ_BACKLOG - (self._rend - self._rseen)))
        if len(self._rbuf) - self._rend < size:
            self._make_room(size)
        return self._rview[self._rend : self._rend + size]

    def buffer_updated(self, nbytes: int) -> None:
        if not self._uncork_due:
            self._corked = False  # a later callback: the iteration of the last write is over
        if nbytes >= self._rsize:  # the read filled what was offered: offer more
            self._rsize = _RECV_LARGE
        if self._shared_read:
            self._shared_read = False
            data = _shared.view[:nbytes]
            if (self._read_paused or self._held is not None) and not self._closing:
                self._keep(data)  # (paused by a callback since get_buffer)
                self._hold()
                return
            lane = self._lane
            if lane is not None and not self._closing and not self._pending_size:
                # One record holding one message: straight to the channel.
                taken = self._conn._take_message(data, _now())
                if type(taken) is bytes:
                    try:
                        lane(taken)
                    except Exception as exc:
                        self._app_failed(exc, "messages_received()")
                    return
                if taken:  # opened, something else: its events and answers
                    if self._conn._messages:  # (the start of a longer message)
                        self._incomplete()
                    self._after_receive()
                    return
            self._process(data)
            return
        self._rend += nbytes
        self._reads += 1
        if self._quiet_timer is None:
            self._quiet_timer = self._loop.call_later(_QUIET, self._on_quiet, self._reads)
        if (
            self._read_paused or self._held is not None or self._rseen < self._rend - nbytes
        ) and not self._closing:
            # Held until _resume has delivered what came before (and, until
            # then, the views of the Connection's buffer in those events).
            self._hold()
        else:
            self._process()
            if self._rend == 0 and nbytes < _RECV_SMALL and self._rbuf:
                # A small read, all of it taken: keep no buffer while the
                # connection is quiet (idle connections cost no memory), nor
                # the Connection's decryption buffer grown by the large reads.
                self._release_buffers()

    def _release_buffers(self) -> None:
        """Give back our receive buffer and the Connection's decryption buffer
        (nothing is kept in them: _rend is 0); the next read is small again."""
        self._rbuf = bytearray()
        self._rview = memoryview(self._rbuf)
        self._rstart = self._rseen = self._rend = 0
        self._rsize = _RECV_SMALL
        self._conn._release_scratch()

    def _on_quiet(self, reads: int) -> None:
        """(_QUIET seconds after a read into our own buffer) A connection that
        fell silent right after a burst would keep the large buffers until its
        next read: they are given back if no read came since and nothing is
        kept in them (an incomplete record, what a paused application has not
        taken yet)."""
        self._quiet_timer = None
        if self._tcp_lost or not self._rbuf:
            return
        if reads != self._reads:  # still reading: look again later
            self._quiet_timer = self._loop.call_later(_QUIET, self._on_quiet, self._reads)
        elif self._rend == 0 and not self._read_paused and self._held is None:
            self._release_buffers()

    def data_received(self, data: bytes) -> None:
        """For transports that do not call get_buffer(): the bytes are copied in."""
        size = len(data)
        if size:
            self._shared_read = False
            if len(self._rbuf) - self._rend < size:
                self._make_room(size)
            self._rview[self._rend : self._rend + size] = data
            self.buffer_updated(size)

    def _keep(self, data: memoryview) -> None:
        """Copy ``data`` to the end of our own buffer (_rend advances)."""
        size = len(data)
        if len(self._rbuf) - self._rend < size:
            self._make_room(size)
        self._rview[self._rend : self._rend + size] = data
        self._rend += size

    def _make_room(self, size: int) -> None:
        """Make ``size`` bytes free after _rend: move what is kept to the
        start, in a larger buffer if need be (the TCP transport may still
        hold a view of the old one: it is replaced, never resized)."""
        start, end = self._rstart, self._rend
        keep = end - start
        if keep + size > len(self._rbuf):
            rbuf = bytearray(keep + size + max(size, keep) // 8)
            rbuf[:keep] = self._rview[start:end]
            self._rbuf, self._rview = rbuf, memoryview(rbuf)
        elif start:
            if start >= keep:
                self._rview[:keep] = self._rview[start:end]
            else:  # overlapping
                self._rview[:keep] = bytes(self._rview[start:end])
        else:
            return
        self._rstart, self._rseen, self._rend = 0, self._rseen - start, keep

    def _process(self, shared: memoryview | None = None) -> None:
        """Give the Connection what TCP delivered (in our buffer, or ``shared``:
        a read into the thread's shared buffer); deliver the events."""
        conn = self._conn
        if self._pending_size:
            self._seal_pending()  # what the application wrote goes before any answer
        if shared is None:
            start, end = self._rstart, self._rend
            self._rseen = end
            if start == end:
                return
            data = self._rview[start:end]
        else:
            start, end, data = 0, len(shared), shared
        try:
            conn.receive_data(data, _now())
            used = end - start - conn._unread  # an incomplete record stays here
        except Exception as exc:  # the Connection promises not to raise here
            used = end - start
            self._engine_error(exc)
        except BaseException as exc:  # (a hook's KeyboardInterrupt...): the Connection failed
            if shared is None:
                self._rstart = self._rseen = self._rend = 0  # nothing more will be read
            if self._interrupted(exc):
                raise
            return
        if shared is not None:
            if used < end:  # the shared buffer is reused: keep the incomplete record
                self._keep(shared[used:])
                self._rseen = self._rend
        elif start + used == end:
            self._rstart = self._rseen = self._rend = 0
        else:
            self._rstart = start + used
        if self._rstart < self._rseen or conn._messages:
            self._incomplete()
        self._after_receive()

    def _incomplete(self) -> None:
        """A read left a record, or a message of the message API, incomplete
        (or brought more of one): once connected, the peer has
        ``record_timeout`` seconds from now to send more of it (:meth:`_on_stall`)."""
        self._stall_from = self._loop.time()
        if self._stall_timer is None and self._conn.handshake_complete:
            timeout = self._conn._cfg.record_timeout
            if timeout is not None:
                self._stall_timer = self._loop.call_later(timeout, self._on_stall)

    def _on_stall(self) -> None:
        """(``record_timeout`` after a read left a record or a message
        incomplete) Fail the connection, with a record_timeout alert, if the
        peer has sent none of the rest since. One timer per connection, armed
        again while the peer sends more: nothing per read. Time spent with
        reading paused (the application's backpressure) does not count
        against the peer: the count restarts when reading resumes
        (resume_reading)."""
        self._stall_timer = None
        conn = self._conn
        if self._tcp_lost or self._closing or conn.is_closed:
            return
        if self._rstart == self._rseen and not conn._messages:
            return  # (complete since: the next incomplete one arms it again)
        timeout = conn._cfg.record_timeout
        assert timeout is not None  # (else not armed)
        now = self._loop.time()
        if self._read_paused or self._held is not None or self._rseen < self._rend:
            self._stall_from = now  # not reading what it sent: not its stall
        left = self._stall_from + timeout - now
        if left > 0:
            self._stall_timer = self._loop.call_later(left, self._on_stall)
            return
        if self._pending_size:
            self._seal_pending()
        conn._record_timed_out(timeout)
        self._transmit()
        self._dispatch()

    def _after_receive(self) -> None:
        """The Connection took what was read: deliver its events, send its answers."""
        # Dispatch first, then send once: what the Connection queued (handshake
        # flight, key update, close_notify reply) and what the application
        # wrote from its callbacks leave in order, in one TCP write.
        self._in_callback = True
        try:
            self._dispatch()
        finally:
            self._in_callback = False
        self._transmit()
        if self._app is None:
            self._arm_timer()

    def eof_received(self) -> bool:
        if not self._closing and (
            self._read_paused or self._held is not None or self._rend > self._rseen
        ):
            # Keep TCP open (unread) until the application, reading again,
            # has what came before the FIN (_resume).
            self._eof_held = True
            return True
        self._process_eof()
        return False  # let the TCP transport close

    def _process_eof(self) -> None:
        # Without close_notify this is a truncation (or a handshake cut short).
        if self._pending_size:
            self._seal_pending()
        self._conn.receive_eof()
        self._dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tcp_lost = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        backlog = self._rend > self._rseen
        if not self._closing and (self._held is not None or backlog or self._early_received):
            # TCP ended while the application had paused reading: what was
            # held goes to it now, before the end.
            self._read_paused = False
            self._deliver_early()
            if backlog:
                self._process()
            else:
                self._dispatch()
        self._closing = True
        self._drop_pending()
        self._cancel_timer()
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        conn = self._conn
        was_closed = conn.is_closed
        conn.receive_eof()  # (if closed: a client reading its tickets stops, its keys go)
        if not was_closed:
            err = conn.error
            if err is not None and exc is not None and err.__cause__ is None:
                err.__cause__ = exc
            self._dispatch()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            lost = HandshakeError("the connection closed before the handshake completed")
            lost.__cause__ = exc
            waiter.set_exception(lost)
        self._lose_app()
        # The application's NautilusTransport refers to this protocol (its
        # owner): dropping the way back leaves no reference cycle, so that both
        # go as soon as the application lets go of the transport, rather than
        # at the next garbage collection (with the Connection and all they hold).
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._uncork_due:
            self._corked = False
        if self._app is not None:
            self._app.resume_writing()

    # ------------------------------------------------------------------ helpers

    def _transmit(self) -> None:
        """Seal what the application wrote, and send what the Connection has to send."""
        if self._pending_size:
            self._seal_pending()
        self._send()

    def _send(self) -> None:
        conn = self._conn
        out = conn._take_output()  # no copy: the transport takes any buffer
        if out and not self._tcp_lost:
            self._write_now(out)
            if conn._took_keys:  # replace them while the peer works on this flight
                conn._took_keys = False
                self._loop.call_soon(conn._ctx._key_pool.prepare_quietly)

    def _write_now(self, data: bytes | bytearray) -> None:
        """Write to TCP now (also: the first part of a server's flight, while
        the Connection makes the rest)."""
        if data and not self._tcp_lost:
            tcp = self._tcp
            assert tcp is not None
            tcp.write(data)
            if not self._write_paused and tcp.is_closing() and not self._closing:
                # The write failed (the peer reset the connection...): TCP is
                # closed and calls connection_lost() on the loop's next round.
                # Until then, later writes would be dropped, and a writer that
                # does not yield (drain() returns at once while not paused)
                # would never learn it: pause it, so drain() waits for the end
                # and raises.
                self.pause_writing()

    def _send_message(self, message: bytes) -> bool:
        """The message lane's sending half: seal ``message`` and write it now,
        when it is the first write of this loop iteration and nothing waits
        (as NautilusTransport.send_messages would, in fewer steps). False,
        having done nothing, otherwise: the caller takes the general path."""
        if (
            self._corked
            or self._in_callback
            or self._pending_size
            or self._closing
            or self._tcp_lost
        ):
            return False
        sealed = self._conn._seal_message(message)
        if sealed is None:
            return False
        tcp = self._tcp  # (_write_now, inline)
        assert tcp is not None
        tcp.write(sealed)
        if not self._write_paused and tcp.is_closing() and not self._closing:
            self.pause_writing()  # the write failed: see _write_now
        self._corked = True
        return True

    def _seal(self, data: _Buffer, messages: bool = False) -> None:
        """Seal application data, or framed messages (dropped if the Connection
        closed meanwhile: its ConnectionClosed event, dispatched next, says why)."""
        try:
            if messages:
                self._conn._seal_messages(data)  # type: ignore[arg-type]  # (framed: bytes or bytearray)
            else:
                self._conn.send_data(data)
        except ClosedError:
            self._writes_after_close += 1

    def _seal_pending(self) -> None:
        """Seal what was collected: data, or framed messages (in one call)."""
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        messages = self._pending_messages
        self._pending = []
        self._pending_messages = False
        self._pending_size = 0
        self._seal(data, messages)

    def _drop_pending(self) -> None:
        self._pending = []
        self._pending_messages = False
        self._pending_size = 0

    def _send_and_cork(self) -> None:
        """Send now; further writes and message batches of this loop iteration
        are collected (see _corked)."""
        self._send()
        self._corked = True

    def _uncork_soon(self) -> None:
        """Something was collected: have the loop's next callbacks send it."""
        if not self._uncork_due:
            self._uncork_due = True
            self._loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        """The loop iteration of the collected writes is over: send them."""
        self._uncork_due = False
        self._corked = False
        if self._pending_size and not self._closing:
            self._transmit()

    def _dispatch(self) -> None:
        conn = self._conn
        if self._early_received and self._app is not None:
            self._deliver_early()  # still held: reading was paused in connection_made()
        event = self._held
        if event is None:
            event = conn.next_event()
        else:
            self._held = None
        while event is not None:
            if self._read_paused and not self._closing:
                self._held = event  # delivered by _resume
                return
            if type(event) is DataReceived:
                app = self._app
                if app is not None and not self._closing:
                    data = event.data
                    if type(data) is not bytes and not self._app_copies:
                        data = bytes(data)  # a view of the Connection's buffer (_set_app)
                    try:
                        app.data_received(data)
                    except Exception as exc:
                        self._app_failed(exc, "data_received()")
                        return
            elif type(event) is MessagesReceived:
                deliver = self._app_messages
                if deliver is not None and self._app is not None and not self._closing:
                    try:
                        if self._app_sized:  # (this package's links: the byte count too)
                            deliver(event.messages, event.nbytes)
                        else:
                            deliver(event.messages)  # the whole batch in one call
                    except Exception as exc:
                        self._app_failed(exc, "messages_received()")
                        return
            elif type(event) is EarlyDataReceived:
                # Before the handshake completes there is no application yet:
                # it gets this data first, as ordinary stream data (the server
                # context opted into 0-RTT, replays included).
                self._early_received.append(event.data)
            elif type(event) is HandshakeCompleted:
                self._handshake_completed()
            elif type(event) is ConnectionClosed:
                self._connection_closed(event.error)
            # KeysUpdated, AlertReceived and EarlyDataRejected (the Connection
            # sends the refused early data again itself) need nothing from us.
            event = conn.next_event()
        conn._lent = False  # every DataReceived view was delivered

    # ------------------------------------------------------ paused reading

    def _hold(self) -> None:
        """Keep the bytes read for later (reading is paused, or was until just now)."""
        if self._rend - self._rseen >= _READ_BACKLOG and not self._tcp_paused:
            tcp = self._tcp
            assert tcp is not None
            self._tcp_paused = True
            tcp.pause_reading()

    def _resume(self) -> None:
        """Reading resumed: deliver what was held, in order, then read TCP again."""
        self._resume_handle = None
        try:
            self._deliver_held()
        except Exception as exc:  # from the application's callbacks: as asyncio does
            self._loop.call_exception_handler(
                {
                    "message": "nautilus: delivering data held while reading was paused failed",
                    "exception": exc,
                    "protocol": self._app,
                }
            )
            if self._tcp is not None and not self._tcp_lost:
                self._tcp.abort()

    def _deliver_held(self) -> None:
        if self._read_paused or self._closing:
            return
        if self._early_received:
            self._deliver_early()
        if self._held is not None and not self._read_paused:
            self._in_callback = True
            try:
                self._dispatch()
            finally:
                self._in_callback = False
            self._transmit()
        if self._rend > self._rseen and not self._read_paused and not self._closing:
            self._process()
        if self._read_paused or self._closing:
            return
        tcp = self._tcp
        assert tcp is not None
        if self._eof_held:
            if self._held is None and self._rend == self._rseen:
                self._eof_held = False
                self._process_eof()
                if not self._tcp_lost:
                    self._close_tcp()  # eof_received() left that to us
        elif self._tcp_paused:
            self._tcp_paused = False
            tcp.resume_reading()

    def _handshake_completed(self) -> None:
        self._cancel_timer()
        tcp = self._tcp
        assert tcp is not None
        transport = NautilusTransport(self, tcp)
        self._transport = transport
        try:
            app = self._app_factory()
            if not isinstance(app, asyncio.Protocol):
                raise TypeError(
                    f"the protocol factory must return an asyncio.Protocol, "
                    f"not {type(app).__name__}"
                )
            self._set_app(app)
            app.connection_made(transport)
        except Exception as exc:
            self._app = None
            if self._waiter is not None:
                if not self._waiter.done():
                    self._waiter.set_exception(exc)
            else:
                logger.exception("nautilus: the protocol factory or connection_made() failed")
            self._abort()
            return
        if not self._deliver_early():
            return  # the application raised: connection_lost() tells it so
        if self._write_paused:
            app.pause_writing()
        self._arm_timer()  # (rekey_interval: the age of the sending keys)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(transport)

    def _set_app(self, app: asyncio.Protocol) -> None:
        """Deliver to ``app`` from now on.

        asyncio's own StreamReaderProtocol, feeding an asyncio StreamReader,
        copies what ``data_received`` gets into the reader's buffer at once:
        it is given views of the Connection's decrypted data rather than
        copies (one copy and one large allocation less per read).
        """
        self._app = app
        self._app_messages = getattr(app, "messages_received", None)  # the message API hook
        # The channels' and nodes' links also take the messages' byte count
        # (MessagesReceived.nbytes), which they would otherwise add up.
        self._app_sized = bool(getattr(app, "_messages_sized", False))
        reader = getattr(app, "_stream_reader", None)
        self._app_copies = (
            type(app) is asyncio.StreamReaderProtocol and type(reader) is asyncio.StreamReader
        )
        if self._app_copies:
            self._conn._data_views = True

    def _deliver_early(self) -> bool:
        """(server) Accepted 0-RTT data goes to the application first, as stream
        data. False if the application raised (the connection is dropped)."""
        early = self._early_received
        while early and self._app is not None and not self._read_paused and not self._closing:
            try:
                self._app.data_received(early.pop(0))
            except Exception as exc:
                self._app_failed(exc, "data_received()")
                return False
        return True

    def _connection_closed(self, error: NautilusError | None) -> None:
        app = self._app
        if error is None:  # close_notify from the peer: a clean end of stream
            closing, self._closing = self._closing, True  # writes from now on are dropped
            if app is not None and not closing:
                try:
                    app.eof_received()  # no half-close: the return value cannot keep it open
                except Exception as exc:
                    self._app_failed(exc, "eof_received()")
                    return
            self._shutdown(clean=True)
            return
        if app is not None:
            self._app_exc = error
            self._shutdown(clean=False)
            # Tell the application now rather than once TCP has closed, so
            # that a StreamWriter.drain() racing with this reports ``error``.
            self._lose_app()
            return
        if self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_exception(error)
        else:
            self._log_failure(error)
        self._shutdown(clean=False)

    def _shutdown(self, *, clean: bool) -> None:
        """Send what the Connection queued (close_notify, an alert), then close TCP.

        After an error, a TCP buffer that has not drained means the peer is
        not reading: abort rather than wait for it forever.
        """
        self._closing = True
        self._cancel_timer()
        tcp = self._tcp
        if tcp is None or self._tcp_lost:
            return
        backlog = tcp.get_write_buffer_size()
        self._transmit()
        if not clean and backlog:
            tcp.abort()
        elif clean or self._app is None:
            self._close_tcp()
        else:
            self._close_after_peer()  # so that the alert reaches the application's peer

    def _close_tcp(self) -> None:
        """Close TCP once its buffer is flushed; abort if that takes over
        ``_LINGER`` seconds (a peer that does not read would otherwise keep
        the socket, and the application's wait_closed(), for ever)."""
        tcp = self._tcp
        assert tcp is not None
        tcp.close()
        if tcp.get_write_buffer_size() and self._linger_timer is None:
            self._linger_timer = self._loop.call_later(_LINGER, self._linger_over)

    def _linger_over(self) -> None:
        """The peer did not close its side (or read what we sent) in time."""
        self._linger_timer = None
        tcp = self._tcp
        if tcp is None or self._tcp_lost:
            return
        unsent = tcp.get_write_buffer_size()
        if unsent:
            # The peer is not reading (fast enough): what is unsent is lost,
            # and the application must not take this for a clean close.
            if self._app_exc is None:
                self._app_exc = ConnectionLost(
                    f"the peer had not read what was sent {_LINGER:g} s after the close "
                    f"({unsent} bytes still unsent): the connection was aborted, and "
                    "the end of the data (close_notify included) did not arrive"
                )
            tcp.abort()
        else:
            tcp.close()

    # ------------------------------------------------- lingering close (fix)

    def _close_after_peer(self) -> None:
        """Close TCP once the peer has closed its side (a "lingering close").

        Closing a socket that has unread data, or that receives data later
        (the server's post-handshake ticket, the peer's reply close_notify),
        makes the kernel answer with RST, and the peer may then lose what was
        sent before our close_notify. So: half-close now (after the TCP
        buffer is flushed), keep reading (the closed Connection drops it), and
        close on the peer's FIN (``eof_received``) or after ``_LINGER`` seconds.
        """
        tcp = self._tcp
        if tcp is None or self._tcp_lost:
            return
        if self._eof_held or not tcp.can_write_eof():  # the peer has closed already
            self._close_tcp()
            return
        if self._rend > self._rstart and self._conn._tickets_tail:
            # What the application has not read is dropped, but a closed
            # client still lacking a session ticket reads it for one (a
            # ticket's record cut by the close included): Connection.close.
            self._conn.receive_data(self._rview[self._rstart : self._rend])
        self._rstart = self._rseen = self._rend = 0
        if self._tcp_paused:  # the peer's FIN must be read even if the app paused reading
            self._tcp_paused = False
            tcp.resume_reading()
        try:
            tcp.write_eof()
        except OSError:  # the peer reset meanwhile (ENOTCONN): TCP is gone, close() must not raise
            tcp.abort()
            return
        if self._linger_timer is None:
            self._linger_timer = self._loop.call_later(_LINGER, self._linger_over)

    def _app_failed(self, exc: Exception, call: str) -> None:
        """A callback of the application raised. As asyncio's own transports
        do: the loop's exception handler is told, the connection is dropped
        (no close_notify: the peer sees a truncation), and the application's
        ``connection_lost()`` gets its own exception (not a truncation by the
        peer, which it is not)."""
        self._loop.call_exception_handler(
            {
                "message": f"nautilus: protocol.{call} call failed",
                "exception": exc,
                "transport": self._transport,
                "protocol": self._app,
            }
        )
        if self._app_exc is None:
            self._app_exc = exc
        self._abort()

    def _lose_app(self) -> None:
        app = self._app
        if app is not None and not self._app_lost:
            self._app_lost = True
            app.connection_lost(self._app_exc)

    def _abort(self) -> None:
        """Drop the connection without close_notify (used on local failures)."""
        self._closing = True
        self._drop_pending()
        self._cancel_timer()
        if not self._conn.is_closed:
            self._conn.close()
        self._conn.data_to_send()
        if self._tcp is not None and not self._tcp_lost:
            self._tcp.abort()

    def _engine_error(self, exc: Exception) -> None:
        """``Connection.receive_data`` (or ``start``) raised although it should not.

        If the Connection still closed itself (its ConnectionClosed event is
        queued), that event is used as usual. Otherwise the connection is
        dropped without close_notify and ``exc`` is reported if it is a
        Nautilus error (an unusable known-peers file raises
        ``IdentityFileError``), else a ``ConnectionLost`` caused by it.
        """
        conn = self._conn
        if conn.is_closed and conn.error is not None:
            logger.error("nautilus: the protocol engine raised %r", exc, exc_info=exc)
            return
        if isinstance(exc, NautilusError):
            error: NautilusError = exc
        else:
            logger.error("nautilus: the protocol engine raised %r", exc, exc_info=exc)
            error = ConnectionLost(f"internal error in the protocol engine: {exc!r}")
            error.__cause__ = exc
        self._abort()
        if self._app is not None:
            self._app_exc = error
            self._lose_app()
        elif self._waiter is not None:
            if not self._waiter.done():
                self._waiter.set_exception(error)
        else:
            self._log_failure(error)

    def _interrupted(self, exc: BaseException) -> bool:
        """``Connection.receive_data`` (or ``start``) raised ``exc``, which is
        not an Exception: a handshake step hook or trust rule raised
        KeyboardInterrupt, SystemExit, asyncio.CancelledError...

        The Connection failed itself before (internal_error queued, a
        ConnectionClosed whose error is caused by ``exc``): that is dispatched
        as any local failure, so the waiter or ``connection_lost()`` gets that
        error (not "the peer closed") and the alert goes out before TCP
        closes. Returns True for KeyboardInterrupt and SystemExit, which the
        caller raises again, as asyncio lets them out of its loop; anything
        else goes to the loop's exception handler, as asyncio does with a
        callback that raises it (raised again from a protocol callback, the
        TCP transport would abort and the alert would be lost).
        """
        self._in_callback = True
        try:
            self._dispatch()
        finally:
            self._in_callback = False
        if not self._conn.is_closed:  # (never: the Connection fails itself first)
            self._engine_error(ConnectionLost(f"interrupted by {type(exc).__name__}"))
        self._transmit()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return True
        self._loop.call_exception_handler(
            {
                "message": f"nautilus: a handshake step hook or trust rule raised "
                f"{type(exc).__name__}; the connection failed",
                "exception": exc,
                "transport": self._transport,
                "protocol": self._app,
            }
        )
        return False

    def _log_failure(self, error: BaseException) -> None:
        peer = self._tcp.get_extra_info("peername") if self._tcp is not None else None
        logger.debug("nautilus: handshake with %s failed: %s: %s", peer, _name(error), error)

    def _arm_timer(self) -> None:
        when = self._conn.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = when
        if when is not None:
            loop = self._loop
            delay = max(0.0, when - _now())
            self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._pending_size:
            self._seal_pending()
        self._conn.handle_timer(_now())
        self._transmit()
        self._dispatch()
        self._arm_timer()
