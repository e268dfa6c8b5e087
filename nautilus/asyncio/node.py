"""Peer-to-peer nodes over Nautilus: :class:`Node` listens and dials.

A node keeps at most one live :class:`~nautilus.asyncio.Channel` per peer
(by peer id). When two nodes dial each other at the same moment both
connections complete; a small exchange on each connection (the node
protocol, below) makes both sides keep the same one, the connection dialled
by the node with the smaller peer id, and moves the traffic of the other
onto it without losing or reordering a message. ``docs/nodes.md`` explains
the protocol and why it is lossless.

The node protocol runs in the connection's stream data (``send_data``),
beside the messages, in fixed 48-byte control frames::

    type (1) | zero (7) | value (8, big-endian) | a (16) | b (16)

    HELLO  value=version (1)   a=session id of the sender   b=connection nonce
    START  value=number of the next message the sender sends on this connection
    DONE   value=messages the sender sent on this connection; it sends no more

The zero bytes, and ``a`` and ``b`` of START and DONE, must be zero; the
session id and the nonce are random and must not be all-zero.

Messages themselves are the Connection's messages, unchanged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import random
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nautilus.asyncio._transport import NautilusTransport, _NautilusProtocol
from nautilus.asyncio.channel import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    Channel,
    _Buffer,
    _check_queue_limits,
    _Link,
    _Route,
)
from nautilus.context import Context
from nautilus.exceptions import (
    AuthenticationFailed,
    ClosedError,
    ConnectionLost,
    HandshakeError,
    HandshakeTimeout,
    KeyAgreementFailed,
    NegotiationFailed,
    ProtocolViolation,
    SessionKeyDerivationFailed,
)
from nautilus.identity import PeerKey, parse_peer_id
from nautilus.protocol.events import SessionInfo
from nautilus.protocol.messages import AlertCode

__all__ = ["Node", "RetryPolicy"]

logger = logging.getLogger("nautilus.asyncio")

_VERSION = 1
_HELLO, _START, _DONE = 1, 2, 3
_FRAME = struct.Struct(">B7sQ16s16s")
_PAD = bytes(7)
_ID_SIZE = 16
_ZERO_ID = bytes(_ID_SIZE)
_PEER_CLOSE_LINGER = 10.0  # seconds a peer's close may take to reach all connections
_CLOSE_TIMEOUT = 5.0  # seconds Node.wait_closed() waits for close_notify before aborting
_MAX_UNANSWERED = 32  # a peer's unsettled connections (no session yet, or awaiting its DONE)
DEFAULT_MAX_PENDING = 100  # new channels waiting for Node.accept()
_rng = random.SystemRandom()

# Session states.
_OPEN = "open"
_PEER_CLOSING = "peer-closing"  # the peer closed: waiting for its other connections to end
_ENDED = "ended"  # the peer closed and every connection has ended
_CLOSED = "closed"  # closed on this side
_FAILED = "failed"


# ---------------------------------------------------------------------- retry


@dataclass(frozen=True)
class RetryPolicy:
    """How :meth:`Node.connect` retries: exponential backoff with jitter.

    Attempt ``k`` (``k = 1 .. attempts - 1``) is preceded by a pause of
    ``min(maximum, initial * multiplier ** (k - 1))`` seconds, shortened by a
    random fraction of up to ``jitter`` of itself (``jitter=0``: exact
    delays; ``jitter=1``: "full jitter", anywhere from 0 to the delay).

    Only transient failures are retried: ``OSError`` (refused, reset,
    unreachable, ``nautilus.ConnectionLost``, ``nautilus.HandshakeTimeout``)
    and a bare ``nautilus.HandshakeError`` (the peer closed the connection
    during the handshake, as a node that is shutting down does). A peer that
    refuses us (``AuthenticationFailed``), no common parameters
    (``NegotiationFailed``), or a protocol violation fail at once.

    Raises:
        TypeError, ValueError: a field of the wrong type or out of range.
    """

    attempts: int = 5
    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or isinstance(self.attempts, bool):
            raise TypeError(f"attempts must be an int, not {type(self.attempts).__name__}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        for name in ("initial", "maximum", "multiplier", "jitter"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                raise ValueError(f"{name} must be finite, got an int too large") from None
            if not (math.isfinite(number) and number >= 0):
                raise ValueError(f"{name} must be finite and not negative, got {value}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if self.jitter > 1:
            raise ValueError(f"jitter must be in 0..1, got {self.jitter}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum}) must not be below initial ({self.initial})")

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (1 for the second attempt).

        Raises:
            TypeError: ``retry`` is not an int.
            ValueError: ``retry`` is below 1.
        """
        if not isinstance(retry, int) or isinstance(retry, bool):
            raise TypeError(f"retry must be an int, not {type(retry).__name__}")
        if retry < 1:
            raise ValueError(f"retry must be at least 1, got {retry}")
        try:  # in floats: a large retry overflows (to the cap) rather than grow an int
            base = min(self.maximum, self.initial * float(self.multiplier) ** (retry - 1))
        except OverflowError:
            base = self.maximum
        return base * (1.0 - self.jitter * _rng.random())


_NO_RETRY = RetryPolicy(attempts=1)
_PERMANENT = (
    NegotiationFailed,
    AuthenticationFailed,
    KeyAgreementFailed,
    ProtocolViolation,
    SessionKeyDerivationFailed,
)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _PERMANENT):
        return False
    return isinstance(exc, (OSError, HandshakeError))


# ---------------------------------------------------------------------- links


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class _InboundProtocol(_NautilusProtocol):
    """A node's inbound connection, which leaves the node's set when TCP ends."""

    __slots__ = ("_inbound", "_node")

    _inbound: set[_InboundProtocol]
    _node: Node

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._inbound.discard(self)  # (wait_closed() waits for the set to empty)
            self._node._connection_ended()


class _NodeLink(_Link):
    """One connection between two nodes, and its half of the node protocol."""

    def __init__(self, node: Node, *, dialled: bool) -> None:
        super().__init__()
        self.node = node
        self.dialled = dialled
        self.nonce = os.urandom(_ID_SIZE)
        self.peer_id = ""
        self.local_sid = _ZERO_ID  # the session id our HELLO announced
        self.peer_sid = _ZERO_ID
        self.key: tuple[str, bytes] = ("", b"")  # (dialler's peer id, dialler's nonce)
        self.ready = False  # both HELLOs exchanged
        self.session: _Session | None = None
        self.ended = False  # close_notify or failure seen (or closed here)
        self.aborted = False  # dropped here: its end is no close_notify from the peer
        self.joined: asyncio.Future[_Session] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the peer's HELLO, or the hold, is overdue
        if dialled:  # Node._dial waits on it; if it gave up, the outcome is not news
            self.joined = asyncio.get_running_loop().create_future()
            self.joined.add_done_callback(_consume)
        self._control = bytearray()
        # What the peer sends on this connection.
        self.started = False  # START received
        self.base = 0  # number of the first message after START
        self.received = 0
        self.inbox: deque[bytes] = deque()  # received, not yet delivered (out of order)
        self.inbox_bytes = 0
        self.done_received = False
        # What this side sends on it.
        self.sent = 0
        self.retired = False  # DONE sent
        # The message lane (NautilusTransport._message_lane): seals and writes
        # one message at once, or returns False.
        self.send_lane: Callable[[bytes], bool] | None = None

    # ------------------------------------------------------- protocol calls

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        info = self.transport.get_extra_info("nautilus")
        peer_id = info.peer_id if isinstance(info, SessionInfo) else None
        self.peer_id = peer_id or ""
        self.send_lane = self.transport._message_lane(self._message_received)
        self.node._link_made(self)

    def data_received(self, data: bytes) -> None:
        buf = self._control
        buf += data
        size = _FRAME.size
        end = len(buf) - len(buf) % size
        for offset in range(0, end, size):
            if self.ended:
                return
            self._on_frame(*_FRAME.unpack_from(buf, offset))
        del buf[:end]

    def _message_received(self, message: bytes) -> None:
        """One message from the message lane: as :meth:`messages_received`."""
        self.messages_received((message,))

    _messages_sized = True  # the transport gives messages_received their byte count

    def messages_received(self, messages: tuple[bytes, ...], nbytes: int = -1) -> None:
        if self.ended:
            return
        if not self.started or self.done_received:
            self.violation("a message outside START .. DONE", AlertCode.UNEXPECTED_MESSAGE)
            return
        self.received += len(messages)
        if nbytes < 0:
            nbytes = sum(map(len, messages))
        session = self.session
        if session is not None:
            session.messages(self, messages, nbytes)
            return
        self.inbox.extend(messages)  # held: delivered when the connection joins a session
        self.inbox_bytes += nbytes
        if self.inbox_bytes > self.node._max_queue_bytes or len(self.inbox) > self.node._max_queue:
            self.set_reading(False)

    def eof_received(self) -> bool:
        self._end(None)
        return False

    def abort(self) -> None:
        self.aborted = True
        super().abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if exc is None and self.aborted:  # (asyncio reports an abort as a clean end)
            exc = ConnectionLost("the connection was aborted")
        self._end(exc)
        self.node._link_gone(self)

    # ------------------------------------------------------------- control

    def _on_frame(self, kind: int, pad: bytes, value: int, a: bytes, b: bytes) -> None:
        if pad != _PAD:
            self.violation(f"control frame {kind} with reserved bytes set", AlertCode.DECODE_ERROR)
        elif kind == _HELLO:
            if self.ready:
                self.violation("a second HELLO", AlertCode.UNEXPECTED_MESSAGE)
                return
            if value != _VERSION:
                self.violation(
                    f"node protocol version {value}; this node speaks {_VERSION}",
                    AlertCode.PROTOCOL_VERSION,
                )
                return
            if a == _ZERO_ID or b == _ZERO_ID:
                self.violation("an all-zero session id or nonce in HELLO", AlertCode.DECODE_ERROR)
                return
            self.peer_sid = a
            self.ready = True
            self._cancel_timer()
            if self.dialled:
                self.key = (self.node.peer_id, self.nonce)
            else:
                self.key = (self.peer_id, b)
            self.node._link_ready(self)
        elif not self.ready:
            self.violation(f"control frame {kind} before HELLO", AlertCode.UNEXPECTED_MESSAGE)
        elif kind not in (_START, _DONE):
            self.violation(f"unknown control frame type {kind}", AlertCode.DECODE_ERROR)
        elif a != _ZERO_ID or b != _ZERO_ID:
            self.violation(
                f"control frame {kind} with its unused fields set", AlertCode.DECODE_ERROR
            )
        elif kind == _START:
            if self.started or self.done_received:
                self.violation("START twice, or after DONE", AlertCode.UNEXPECTED_MESSAGE)
                return
            self.started = True
            self.base = value
            if self.session is not None:
                self.session.check_gap()
        else:
            if self.done_received:
                self.violation("DONE twice", AlertCode.UNEXPECTED_MESSAGE)
                return
            if value != self.received:
                self.violation(
                    f"DONE after {value} messages, but {self.received} arrived",
                    AlertCode.UNEXPECTED_MESSAGE,
                )
                return
            self.done_received = True
            if self.session is not None:
                self.session.done(self)

    def send_frame(self, kind: int, value: int, a: bytes = _ZERO_ID, b: bytes = _ZERO_ID) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        transport.write(_FRAME.pack(kind, _PAD, value, a, b))

    def violation(self, message: str, alert: AlertCode) -> None:
        """The peer broke the node protocol: it gets ``alert``, and the connection closes."""
        logger.debug("nautilus: node protocol violation by %s: %s", self.peer_id, message)
        self.refuse(alert)
        self._end(ProtocolViolation(f"node protocol: {message}"))

    def refuse(self, alert: AlertCode) -> None:
        """Close with the fatal ``alert`` rather than close_notify (the peer is at fault)."""
        if self.transport is not None and not self.lost:
            self.transport._refuse(alert)

    def wait_for_hello(self, timeout: float) -> None:
        """Drop the connection unless the peer's HELLO arrives within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        message = f"the peer sent no node hello within {timeout:g} s"
        self._timer = loop.call_later(timeout, self._overdue, message)

    def hold(self, timeout: float) -> None:
        """Held (rule 3): drop the connection unless it joins a session within
        ``timeout`` seconds of its first hold."""
        if self._timer is None:
            loop = asyncio.get_running_loop()
            message = f"the peer's new session was held over {timeout:g} s: the old one went on"
            self._timer = loop.call_later(timeout, self._overdue, message)

    def _overdue(self, message: str) -> None:
        self._timer = None
        if self.session is not None or self.ended:
            return
        logger.debug("nautilus: dropping a connection of %s: %s", self.peer_id, message)
        self.refuse(AlertCode.HANDSHAKE_TIMEOUT)
        self._end(HandshakeTimeout(message))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end(self, exc: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        self._cancel_timer()
        self.node._link_ended(self, exc)

    @property
    def head(self) -> int:
        """Number of the first message in the inbox."""
        return self.base + self.received - len(self.inbox)

    def __repr__(self) -> str:
        role = "dialled" if self.dialled else "accepted"
        return f"<_NodeLink {role} peer={self.peer_id} ended={self.ended} retired={self.retired}>"


# -------------------------------------------------------------------- session


class _Session(_Route):
    """The channel to one peer, over one connection or, during a tie-break, several.

    Messages are numbered per session and direction: the sender announces on
    a connection (START) the number of the next message it sends there, so
    the receiver can put messages from several connections back in order.
    """

    def __init__(self, node: Node, peer_id: str, local_sid: bytes, peer_sid: bytes) -> None:
        self.node = node
        self.peer_id = peer_id
        self.local_sid = local_sid
        self.peer_sid = peer_sid
        self.links: list[_NodeLink] = []  # until each is gone with nothing left to deliver
        self.joins = 0  # connections that ever joined
        self.current: _NodeLink | None = None
        self.state = _OPEN
        self.sent = 0
        self.next_seq = 0
        self.reading = True
        self._linger: asyncio.TimerHandle | None = None
        self.channel = Channel(
            self,
            peer_id,
            None,
            max_queue=node._max_queue,
            max_queue_bytes=node._max_queue_bytes,
        )

    # ------------------------------------------------------------ links

    def join(self, link: _NodeLink) -> None:
        link.session = self
        self.links.append(link)
        self.joins += 1
        self._tie_break()
        if link.inbox:
            self._merge()
        self._update_reading()
        self.check_gap()

    def _tie_break(self) -> None:
        """Use the connection with the smallest key; retire the others."""
        candidates = [link for link in self.links if not link.ended and not link.retired]
        if not candidates:
            return
        winner = min(candidates, key=lambda link: link.key)
        if self.current is not winner:
            winner.send_frame(_START, self.sent)
            self.current = winner
        for link in candidates:
            if link is not winner:
                self._retire(link)

    def _retire(self, link: _NodeLink) -> None:
        link.retired = True
        link.send_frame(_DONE, link.sent)
        if link.done_received:
            link.close()

    def done(self, link: _NodeLink) -> None:
        """The peer sent DONE on ``link``: it sends nothing more there."""
        if link.retired:
            link.close()
        self.check_gap()

    # --------------------------------------------------------- receiving

    def messages(self, link: _NodeLink, messages: tuple[bytes, ...], nbytes: int) -> None:
        """Messages that arrived on ``link`` (already counted in ``link.received``),
        ``nbytes`` bytes in all."""
        count = len(messages)
        if not link.inbox and link.base + link.received - count == self.next_seq:
            self.next_seq += count
            self.channel._feed(messages, nbytes)
            if len(self.links) > 1 and any(other.inbox for other in self.links):
                self._merge()
            return
        link.inbox.extend(messages)
        link.inbox_bytes += nbytes
        self._merge()
        self._update_reading()

    def _merge(self) -> None:
        """Deliver the inboxes' messages in order of their numbers."""
        progress = True
        while progress:
            progress = False
            for link in self.links:
                inbox = link.inbox
                if not inbox:
                    continue
                head = link.head
                if head == self.next_seq:
                    self.next_seq += len(inbox)
                    self.channel._feed(inbox)
                    inbox.clear()
                    link.inbox_bytes = 0
                    progress = True
                elif head < self.next_seq:
                    link.violation(f"message {head} arrived twice", AlertCode.UNEXPECTED_MESSAGE)
                    return
        self._prune()
        self._update_reading()
        if any(link.inbox for link in self.links):
            self.check_gap()

    def _prune(self) -> None:
        """Forget the connections that are gone and hold no message to deliver
        (tie-break losers, closed after both DONEs): a peer that dials again and
        again under the same session must not grow the list without bound."""
        if any(link.lost and not link.inbox for link in self.links):
            self.links = [link for link in self.links if link.inbox or not link.lost]

    def check_gap(self) -> None:
        """Fail the session if a START skipped messages no connection can still carry.

        The messages before a connection's START come on the peer's other
        connections of the session. While one of them may still carry
        message ``next_seq`` (it has not said HELLO or START yet, or its
        next message is that one), the others wait for it. Once none can,
        the peer announced messages it never sent: it would stall the
        channel for ever.
        """
        if self.state != _OPEN:
            return
        expected = self.next_seq
        for link in self.node._links:
            if link.peer_id != self.peer_id or link.ended or link.done_received:
                continue
            in_session = link.session is self or not link.ready  # (not ready: it may join)
            if in_session and (not link.started or link.head <= expected):
                return
        for link in self.links:
            if link.started and link.head > expected:
                logger.debug(
                    "nautilus: node protocol violation by %s: START(%d), message %d never sent",
                    self.peer_id,
                    link.base,
                    expected,
                )
                self._fail(
                    ProtocolViolation(
                        f"node protocol: START({link.base}) on a connection, but message "
                        f"{expected} was sent on none"
                    ),
                    AlertCode.UNEXPECTED_MESSAGE,
                )
                return

    def _update_reading(self) -> None:
        max_queue, max_bytes = self.node._max_queue, self.node._max_queue_bytes
        for link in self.links:
            if not link.ended:
                link.set_reading(
                    self.reading and len(link.inbox) <= max_queue and link.inbox_bytes <= max_bytes
                )

    # ------------------------------------------------------------- route

    def route_send(self, messages: list[_Buffer]) -> None:
        link = self.current
        if link is None or self.state != _OPEN:
            raise ClosedError("the channel is closed")
        lane = link.send_lane
        if not (len(messages) == 1 and type(messages[0]) is bytes and lane and lane(messages[0])):
            transport = link.transport
            assert transport is not None
            transport.send_messages(messages)  # raises before anything is counted
        link.sent += len(messages)
        self.sent += len(messages)

    async def route_drain(self) -> None:
        while self.state == _OPEN:
            link = self.current
            if link is None or link.writable:
                return
            await link.wait_writable()

    def route_ended(self) -> None:
        for link in self.links:  # a drain() waiting for a link's TCP buffer wakes, and raises
            link._wake_writers()

    def route_close(self) -> None:
        if self.state in (_CLOSED, _FAILED, _ENDED):
            return
        renew = self.state == _OPEN
        self.state = _CLOSED
        self._cancel_linger()
        for link in self.links:
            link.close()
        self._check_gone()
        self.node._session_over(self, renew=renew)

    def route_abort(self) -> None:
        if self.state in (_CLOSED, _FAILED, _ENDED):
            for link in self.links:
                link.abort()
            return
        self._fail(ConnectionLost("the channel was aborted"))

    def route_reading(self, reading: bool) -> None:
        self.reading = reading
        self._update_reading()

    def route_transport(self) -> NautilusTransport | None:
        link = self.current
        return link.transport if link is not None else None

    # --------------------------------------------------------- endings

    def link_ended(self, link: _NodeLink, exc: BaseException | None) -> None:
        if self.state == _CLOSED:
            if exc is not None and self.channel._error is None:
                # Our close did not complete (a peer that did not read): what
                # was sent may be lost, and wait_closed() says so.
                self.channel._error = exc
            return
        if self.state in (_FAILED, _ENDED):
            return
        if link.retired and link.done_received:
            pass  # a tie-break loser, closed once both sides said DONE
        elif exc is not None:
            self._fail(exc)
            return
        elif self.state == _OPEN:
            # close_notify on a connection in use: the peer closed the channel.
            # Its other connections end too; what they still carry is delivered.
            self.state = _PEER_CLOSING
            self.channel._stop_sending("the peer closed the channel")
            self._linger = asyncio.get_running_loop().call_later(
                _PEER_CLOSE_LINGER, self._linger_over
            )
            self.node._session_over(self, renew=False)
        if all(other.ended for other in self.links):
            self._all_ended()

    def _all_ended(self) -> None:
        self._cancel_linger()
        missing = any(link.inbox for link in self.links)
        self.state = _ENDED
        if missing:
            self.channel._finish(ConnectionLost("the peer closed the channel, messages missing"))
        else:
            self.channel._finish(None, "the peer closed the channel")
        self._check_gone()
        self.node._session_over(self, renew=False)

    def _linger_over(self) -> None:
        self._linger = None
        if self.state == _PEER_CLOSING:
            self._fail(ConnectionLost("the peer closed the channel on only some connections"))

    def _cancel_linger(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None

    def _fail(self, exc: BaseException, alert: AlertCode | None = None) -> None:
        """The session fails with ``exc``; its connections are dropped, or
        closed with ``alert`` if the peer is at fault."""
        renew = self.state == _OPEN
        self.state = _FAILED
        self._cancel_linger()
        self.channel._finish(exc)
        for link in self.links:
            if alert is None:
                link.abort()
            else:
                link.refuse(alert)
        self._check_gone()
        self.node._session_over(self, renew=renew)

    def _check_gone(self) -> None:
        if all(link.lost for link in self.links):
            self.channel._closed_done()

    def link_gone(self, link: _NodeLink) -> None:
        self._prune()
        if self.state in (_CLOSED, _FAILED, _ENDED):
            self._check_gone()

    def __repr__(self) -> str:
        return f"<_Session peer={self.peer_id} {self.state} links={len(self.links)}>"


# ----------------------------------------------------------------------- node


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a close() from outside any)
        return None


def _peer_id_of(peer: object, name: str = "expected_peer") -> str:
    if isinstance(peer, PeerKey):
        return peer.peer_id
    if isinstance(peer, str):
        return parse_peer_id(peer)
    raise TypeError(f"{name} must be a PeerKey or a peer id, not {type(peer).__name__}")


def _check_host_port(host: object, port: object, *, lowest: int = 0) -> tuple[str, int]:
    """``lowest`` 1 for an address to dial (port 0 is only for listening)."""
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, not {type(port).__name__}")
    if not lowest <= port <= 65535:
        raise ValueError(f"port must be in {lowest}..65535, got {port}")
    return host, port


class Node:
    """A peer node: listens on ``host:port`` and dials other nodes.

    ``context`` must have an identity, ``client_auth="required"`` and trust
    settings (``trusted_peers``, ``trusted_issuers`` or ``known_peers_file``):
    every connection, either way, authenticates both nodes, and connections
    from peers the context does not trust are refused during the handshake.
    The context's ``handshake_timeout`` also bounds the node hello: a
    connection whose peer sends none within that time after the handshake
    is dropped, in either direction (the value the context had when the
    connection was made, as for the handshake itself); so is a connection
    of a peer's next session held that long while the previous session goes
    on here.

    Args:
        context: the node's :class:`nautilus.Context`.
        host, port: where to listen (port 0: any free port; see :attr:`address`).
        on_peer: called with the :class:`Channel` of each newly connected peer
            (a function, or a coroutine function run as a task, which
            :meth:`close` cancels). Without it, new peers queue up for
            :meth:`accept`.
        max_queue, max_queue_bytes: the receive-queue bounds of each channel.
        max_pending: without ``on_peer``, how many new channels may wait for
            :meth:`accept`. While that many wait, a peer's connection that
            would start another is refused (closed; a warning is logged).
            Channels this node's own :meth:`connect` makes are never refused.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: the context has no identity, does not require client
            authentication, or has no trust settings; a bad port or bound.
    """

    def __init__(
        self,
        context: Context,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_peer: Callable[[Channel], Awaitable[None] | None] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not isinstance(context, Context):
            raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
        if context.identity is None:
            raise ValueError("a Node needs a context with an identity")
        if context.client_auth != "required":
            raise ValueError(
                "a Node needs a context with client_auth='required' (got "
                f"{context.client_auth!r}): peers must authenticate to be refused or trusted"
            )
        if not context.trust.configured:
            raise ValueError(
                "a Node needs a context with trust settings (trusted_peers, trusted_issuers "
                "or known_peers_file): without them any client key would be accepted"
            )
        self._host, self._port = _check_host_port(host, port)
        if on_peer is not None and not callable(on_peer):
            raise TypeError("on_peer must be callable")
        self._max_queue, self._max_queue_bytes = _check_queue_limits(max_queue, max_queue_bytes)
        if not isinstance(max_pending, int) or isinstance(max_pending, bool):
            raise TypeError(f"max_pending must be an int, not {type(max_pending).__name__}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self._max_pending = max_pending
        self._context = context
        self._peer_id = context.identity.peer_id
        self._on_peer = on_peer
        self._running = False
        self._server: asyncio.Server | None = None
        self._address: tuple[str, int] | None = None
        # The on_peer tasks, held until they end (a restart keeps those of the
        # previous run: the loop itself holds tasks only weakly).
        self._tasks: set[asyncio.Future[Any]] = set()
        self._reset()

    def _reset(self) -> None:
        self._sessions: dict[str, _Session] = {}
        self._sids: dict[str, bytes] = {}
        self._held: dict[str, list[_NodeLink]] = {}
        self._links: set[_NodeLink] = set()
        self._accepted: deque[Channel] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._dials: set[asyncio.Future[Channel]] = set()  # dials in progress
        self._stopped: asyncio.Future[None] | None = None
        # Inbound TCP connections until they end, the ones still in their
        # handshake included (the node has no link for those yet).
        self._inbound: set[_InboundProtocol] = set()
        # Made by wait_closed() while it waits for those sets to empty; a link
        # or an inbound connection that ends sets it (_connection_ended).
        self._ended_waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start listening. After :meth:`close`, starts again on the same port.

        Raises:
            RuntimeError: the node is already running.
            OSError: the address could not be bound.
        """
        from nautilus.asyncio import _check_server_context
        from nautilus.protocol.connection import Connection

        if self._running:
            raise RuntimeError("the node is already running")
        self._connection_ended()  # a wait_closed() of the last run stops waiting
        self._reset()
        loop = asyncio.get_running_loop()
        ctx = _check_server_context(self._context)
        inbound = self._inbound

        def factory() -> _InboundProtocol:
            # As nautilus.asyncio.create_server, keeping each connection from
            # its first byte: close() drops those still in their handshake.
            protocol = _InboundProtocol(
                loop, Connection(ctx, "server"), lambda: _NodeLink(self, dialled=False), None
            )
            protocol._inbound = inbound
            protocol._node = self
            inbound.add(protocol)
            return protocol

        server = await loop.create_server(factory, self._host, self._port)
        self._server = server
        sockname = server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self._port = self._address[1]
        self._stopped = loop.create_future()
        self._running = True

    def close(self) -> None:
        """Stop listening and close every channel and connection. Idempotent.

        Pending :meth:`connect` and :meth:`accept` calls raise ``ClosedError``;
        dials in progress (in the handshake or waiting for the peer's node
        hello) are dropped. The ``on_peer`` tasks still running are cancelled
        (except the one calling ``close()``, if it is one).
        """
        if not self._running:
            return
        self._running = False
        if self._server is not None:
            self._server.close()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)  # wakes every pending connect(): it drops its dial
        for session in list(self._sessions.values()):
            session.channel.close()
        for link in list(self._links):
            link.close()
        for protocol in list(self._inbound):
            if protocol._app is None:  # still in its handshake: no link, no close_notify owed
                protocol._abort()
        self._accepted.clear()
        waiter = self._accept_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        current = _current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def wait_closed(self) -> None:
        """Wait until the ``on_peer`` tasks and every connection of the closed node have ended.

        Connections whose close does not complete within a few seconds (a
        peer that does not read) are aborted; an ``on_peer`` task that goes
        on after its cancellation is no longer waited for after those
        seconds. The task calling ``wait_closed()`` does not wait for itself.
        """
        if self._server is not None:
            await self._server.wait_closed()
        if self._dials and not self._running:
            await asyncio.wait(set(self._dials))  # being cancelled by their connect() calls
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CLOSE_TIMEOUT
        tasks = self._tasks - {_current_task()}
        if tasks and not self._running:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT)
        while (self._links or self._inbound) and not self._running:
            left = deadline - loop.time()
            if left <= 0:
                for link in list(self._links):
                    link.abort()
                for protocol in list(self._inbound):
                    protocol._abort()
            # Woken as soon as a connection ends (a close takes a round trip,
            # well under a millisecond over loopback: a poll every 10 ms made
            # every close of a node with a peer take 10 ms).
            waiter = self._ended_waiter  # (shared by every wait_closed() call)
            if waiter is None or waiter.done():
                waiter = self._ended_waiter = loop.create_future()
            await asyncio.wait({waiter}, timeout=left if left > 0 else 0.01)

    def _connection_ended(self) -> None:
        """A link or an inbound connection has ended: wake wait_closed()."""
        waiter = self._ended_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # ------------------------------------------------------------ information

    @property
    def peer_id(self) -> str:
        """This node's peer id."""
        return self._peer_id

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the node listens on (the real port when 0 was asked for).

        Raises:
            RuntimeError: the node was never started.
        """
        if self._address is None:
            raise RuntimeError("the node has not been started")
        return self._address

    @property
    def is_running(self) -> bool:
        """True between :meth:`start` and :meth:`close`."""
        return self._running

    @property
    def peers(self) -> dict[str, Channel]:
        """The open channels, by peer id (a new dict each time)."""
        return {peer_id: s.channel for peer_id, s in self._sessions.items()}

    def connection_count(self, peer_id: PeerKey | str | None = None) -> int:
        """Open connections (with ``peer_id``, or in all), including connections
        that lost a tie-break and are being retired.

        Raises:
            TypeError: ``peer_id`` is not a PeerKey, a str or None.
            ValueError: ``peer_id`` is a malformed peer id.
        """
        wanted = None if peer_id is None else _peer_id_of(peer_id, "peer_id")
        return sum(1 for link in self._links if not link.lost and wanted in (None, link.peer_id))

    # ------------------------------------------------------------ dialling

    async def connect(
        self,
        address: tuple[str, int],
        expected_peer: PeerKey | str,
        *,
        retry: RetryPolicy | None = None,
    ) -> Channel:
        """The channel to ``expected_peer``: the open one, or a new connection to ``address``.

        If the peer dials this node at the same time, both connections
        complete and the tie-break keeps one; the channel returned is the
        same object either way, and messages sent on it are not lost. If
        the dial fails but the peer connected to this node meanwhile, that
        channel is returned. With ``retry``, transient failures are retried
        (see :class:`RetryPolicy`); cancelling the call stops it at once.

        Raises:
            TypeError, ValueError: a malformed address (port 0 included) or peer id, or
                this node's own id.
            nautilus.ClosedError: the node is not running, or was closed meanwhile.
            OSError: the TCP connection failed (after the retries).
            nautilus.AuthenticationFailed: the peer is not ``expected_peer``,
                or it refused this node (it does not trust it).
            nautilus.HandshakeTimeout: the handshake, or then the peer's node
                hello, took longer than the context's ``handshake_timeout``.
            nautilus.HandshakeError (another subclass): the handshake failed.
            nautilus.ConnectionLost: the connection ended before the node hello.
        """
        if not isinstance(address, tuple) or len(address) != 2:
            raise TypeError("address must be a (host, port) tuple")
        host, port = _check_host_port(*address, lowest=1)
        peer_id = _peer_id_of(expected_peer)
        if peer_id == self._peer_id:
            raise ValueError("a node cannot connect to itself")
        policy = _NO_RETRY if retry is None else retry
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        attempt = 0
        last: Exception | None = None
        while True:
            if not self._running:
                raise ClosedError("the node is not running") from last
            session = self._sessions.get(peer_id)
            if session is not None:
                return session.channel
            attempt += 1
            try:
                return await self._dial(host, port, peer_id)
            except Exception as exc:
                session = self._sessions.get(peer_id)
                if session is not None:
                    return session.channel
                if attempt >= policy.attempts or not self._running or not _retryable(exc):
                    raise
                last = exc
                delay = policy.delay(attempt)
                logger.debug(
                    "nautilus: connecting to %s at %s:%s failed (%s: %s); retry %d in %.3f s",
                    peer_id,
                    host,
                    port,
                    type(exc).__name__,
                    exc,
                    attempt,
                    delay,
                )
            stopped = self._stopped
            assert stopped is not None
            await asyncio.wait({stopped}, timeout=delay)

    async def _dial(self, host: str, port: int, peer_id: str) -> Channel:
        """One attempt, run as a task that :meth:`close` can reach at any stage."""
        stopped = self._stopped
        assert stopped is not None
        dial = asyncio.ensure_future(self._join(host, port, peer_id))
        dial.add_done_callback(_consume)
        self._dials.add(dial)
        dial.add_done_callback(self._dials.discard)
        waiting: set[asyncio.Future[Any]] = {dial, stopped}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not dial.done():  # the node closed, or this call was cancelled
                dial.cancel()
        if stopped.done():
            cause = None if dial.cancelled() or not dial.done() else dial.exception()
            raise ClosedError("the node was closed while connecting") from cause
        return dial.result()

    async def _join(self, host: str, port: int, peer_id: str) -> Channel:
        """Connect, complete the handshake, exchange HELLOs: the channel joined."""
        from nautilus.asyncio import create_connection

        link = _NodeLink(self, dialled=True)
        await create_connection(
            lambda: link, host, port, context=self._context, expected_peer=peer_id
        )
        joined = link.joined
        assert joined is not None
        try:
            session = await joined
        except BaseException:
            if link.session is None:
                link.close()
            raise
        return session.channel

    # ------------------------------------------------------------- accepting

    async def accept(self) -> Channel:
        """The channel of the next newly connected peer (when there is no ``on_peer``).

        Every new channel is reported once, whichever node dialled (a
        channel returned by :meth:`connect` is reported too). Channels not
        yet accepted when the node closes are dropped. At most
        ``max_pending`` channels of peers' making wait here: beyond, their
        connections are refused.

        Raises:
            nautilus.ClosedError: the node is not running (or was closed while waiting).
            RuntimeError: another coroutine is already waiting in accept().
        """
        while not self._accepted:
            if not self._running:
                raise ClosedError("the node is not running")
            if self._accept_waiter is not None:
                raise RuntimeError("another coroutine is already waiting in accept()")
            waiter = asyncio.get_running_loop().create_future()
            self._accept_waiter = waiter
            try:
                await waiter
            finally:
                self._accept_waiter = None
        return self._accepted.popleft()

    def _announce(self, channel: Channel) -> None:
        callback = self._on_peer
        if callback is None:
            self._accepted.append(channel)
            waiter = self._accept_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        try:
            result = callback(channel)
        except Exception:
            logger.exception("nautilus: on_peer callback failed")
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("nautilus: on_peer callback failed", exc_info=task.exception())

    # -------------------------------------------------- links and sessions

    def _sid(self, peer_id: str) -> bytes:
        sid = self._sids.get(peer_id)
        if sid is None:
            sid = self._sids[peer_id] = os.urandom(_ID_SIZE)
        return sid

    def _link_made(self, link: _NodeLink) -> None:
        """A connection's handshake completed: say HELLO."""
        if not self._running or not link.peer_id or link.peer_id == self._peer_id:
            link.close()
            link._end(ClosedError("the node is closed") if not self._running else None)
            return
        if link.peer_id not in self._sessions and self._refuses_new_channel(link):
            link.close()  # before our HELLO: the dialler's connect() raises ConnectionLost
            link._end(None)
            return
        if not link.dialled and self._unsettled(link.peer_id) >= _MAX_UNANSWERED:
            # Each connection more retires one, which stays open until the
            # peer's DONE: a peer that never answers must not pile them up.
            # Refused before our HELLO, which the peer needs to join it: its
            # channel, if it has one, goes on (an alert on a connection it had
            # joined would fail it, an honest peer's DONE being merely late).
            logger.debug(
                "nautilus: refusing a connection of %s: %d of its connections are unsettled",
                link.peer_id,
                _MAX_UNANSWERED,
            )
            link.close()  # the dialler's connect() raises ConnectionLost (or finds the channel)
            link._end(None)
            return
        self._links.add(link)
        link.local_sid = self._sid(link.peer_id)
        link.send_frame(_HELLO, _VERSION, link.local_sid, link.nonce)
        assert link.transport is not None
        link.wait_for_hello(link.transport._handshake_timeout)  # the connection's own setting

    def _link_ready(self, link: _NodeLink) -> None:
        """Both HELLOs are in: the connection joins a session (or waits, or goes)."""
        peer_id = link.peer_id
        if not self._running or link.local_sid != self._sids.get(peer_id):
            # Announced under a session this side has closed since.
            link.close()
            link._end(ClosedError("the channel was closed while this connection was made"))
            return
        session = self._sessions.get(peer_id)
        if session is not None and session.peer_sid != link.peer_sid:
            # The peer has started a new session; ours ends when its connections do.
            self._held.setdefault(peer_id, []).append(link)
            assert link.transport is not None
            link.hold(link.transport._handshake_timeout)
            return
        link._cancel_timer()
        if session is None and self._refuses_new_channel(link):
            link.abort()  # the peer may have its channel already: no clean end
            link._end(None)
            return
        new = session is None
        if session is None:
            session = _Session(self, peer_id, link.local_sid, link.peer_sid)
            self._sessions[peer_id] = session
        session.join(link)
        if link.joined is not None and not link.joined.done():
            link.joined.set_result(session)
        if new and self._sessions.get(peer_id) is session:
            self._announce(session.channel)

    def _link_ended(self, link: _NodeLink, exc: BaseException | None) -> None:
        session = link.session
        if session is not None:
            session.link_ended(link, exc)
        else:
            held = self._held.get(link.peer_id)
            if held is not None and link in held:
                held.remove(link)
            joined = link.joined
            if joined is not None and not joined.done():
                if exc is None:
                    exc = ConnectionLost("the peer closed the connection before the node hello")
                joined.set_exception(exc)
            link.close()
        current = self._sessions.get(link.peer_id)
        if current is not None:
            current.check_gap()  # one connection fewer that could carry a missing message

    def _unsettled(self, peer_id: str) -> int:
        """The peer's connections open here that are not settled: those it
        dialled that are in no session yet (waiting for its HELLO, or held),
        and those retired and waiting for its DONE. Each one joining a session
        retires at most one, so a bound on these, checked before our HELLO,
        bounds those waiting for a DONE (but for this node's own dials, which
        its application makes)."""
        return sum(
            link.peer_id == peer_id
            and not link.ended
            and (
                (link.session is None and not link.dialled)
                or (link.retired and not link.done_received)
            )
            for link in self._links
        )

    def _refuses_new_channel(self, link: _NodeLink) -> bool:
        """Whether ``link`` may not start a channel: ``max_pending`` wait for accept()."""
        if self._on_peer is not None or link.dialled or len(self._accepted) < self._max_pending:
            return False
        logger.warning(
            "nautilus: %d channels wait for accept(): refusing a new channel from %s",
            len(self._accepted),
            link.peer_id,
        )
        return True

    def _link_gone(self, link: _NodeLink) -> None:
        self._links.discard(link)
        self._connection_ended()
        if link.session is not None:
            link.session.link_gone(link)

    def _session_over(self, session: _Session, *, renew: bool) -> None:
        peer_id = session.peer_id
        if self._sessions.get(peer_id) is session:
            del self._sessions[peer_id]
        if peer_id in self._sessions:
            return
        held = self._held.get(peer_id)
        if (
            renew
            and self._sids.get(peer_id) == session.local_sid
            and not (held and any(not link.ended for link in held))
        ):
            # (A held connection is the peer's next session, announced with
            # our current id: it starts now, under that id, rather than being
            # refused as part of the session that just ended.)
            self._sids[peer_id] = os.urandom(_ID_SIZE)
        for link in self._held.pop(peer_id, []):
            if not link.ended:
                self._link_ready(link)

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "not started"
        state = "running" if self._running else "stopped"
        return (
            f"<nautilus.asyncio.Node {self._peer_id} {where} {state} peers={len(self._sessions)}>"
        )
