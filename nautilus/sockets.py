"""Nautilus over blocking (and non-blocking) sockets: the ``ssl.SSLSocket`` of Nautilus.

:func:`wrap_socket` (reached through :meth:`nautilus.Context.wrap_socket`) and
:func:`create_connection` return a :class:`NautilusSocket`, a
:class:`socket.socket` subclass whose ``recv``/``send`` family seals and opens
Nautilus records, so code written for sockets (``socketserver``,
``http.server``, ``http.client`` with a small ``connect`` override,
``makefile()`` readers and writers) runs over Nautilus unchanged.

The adapter is thin: a sans-IO :class:`nautilus.Connection` does the protocol,
this module moves bytes between it and the socket. Four locks make one reader
thread and one writer thread safe together:

* the *state lock* guards every call into the Connection and is never held
  across a blocking socket call;
* the *write lock* is held by whoever takes bytes from the Connection's output
  and writes them, so records reach the socket in the order they were sealed
  (records carry sequence numbers); a reader that produced output (a key-update
  answer, a close_notify reply) only *tries* it, so that it never waits for a
  writer blocked on a full socket buffer;
* the *read lock* serializes readers; the *handshake lock* serializes the
  handshake, which whichever thread comes first runs (it is the only reader
  until the handshake completes), so a writer never waits for a reader
  blocked on the socket.

Locks are taken in the order read, handshake, write, state. Whoever holds
the state lock takes the Connection's output before releasing it.

Bulk transfer has two direct paths around the Connection's buffers, both
under the same locks: in blocking mode and with a timeout ``send``/``sendall``
seal from the caller's buffer into a reusable one and write it at once, and ``recv_into``
opens records straight into the caller's buffer, handing the Connection only
what is not stream data (key updates, alerts, tickets, messages) and every
case out of the ordinary (it then gets the bytes held back first, in order).

See ``docs/sockets.md``.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import io
import operator
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, cast

from nautilus import _bindings as _b
from nautilus._fork import renew_locks_after_fork
from nautilus.context import Context
from nautilus.exceptions import (
    ClosedError,
    ConnectionLost,
    HandshakeError,
    IntegrityError,
    MessageTooLarge,
    NautilusError,
    ProtocolViolation,
    RecordLimitReached,
    UnreadLimitReached,
    WantReadError,
    WantWriteError,
)
from nautilus.identity import PeerKey
from nautilus.protocol import events as _events
from nautilus.protocol.connection import (
    Connection,
    ConnectionStats,
    _Abort,
    _check_client_arguments,
    _iter_messages,
)
from nautilus.protocol.events import ConnectionClosed, DataReceived, MessagesReceived, SessionInfo
from nautilus.protocol.messages import RECORD_SEALED as _SEALED
from nautilus.protocol.messages import AlertCode
from nautilus.record import HEADER_SIZE, TAG_SIZE, ContentType

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["NautilusSocket", "create_connection", "wrap_socket"]

RECV_BUFFER_SIZE = 256 * 1024
"""Bytes asked of the kernel per read once data flows in bulk: records are opened in
large batches. A socket starts with _RECV_FIRST and grows to this once a read fills
its buffer (as a record larger than the buffer does)."""
UNREAD_LIMIT = 16 * 1024 * 1024
"""Most bytes of the kind not being read (stream data while recv_message()
waits, messages while recv() waits) a socket holds before it stops reading
(UnreadLimitReached); at least ``max_message_size``, so one message fits."""
UNREAD_ITEMS = 65536
"""Most records' worth of stream data, or messages, of that kind it holds
(each costs memory beyond its bytes: empty messages cost nothing on the wire)."""
_RECV_FIRST = 16 * 1024
"""The receive buffer of a new socket: enough for a handshake's reads and small
records, without touching (and evicting from the cache) 256 KiB per connection."""

_raw_recv_into = socket.socket.recv_into
# The socket's family and type as ints: socket.socket's properties turn them
# into enums, about 1.3 us per wrapped socket for nothing.
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_raw_send = socket.socket.send
_raw_shutdown = socket.socket.shutdown
_raw_setsockopt = socket.socket.setsockopt
_raw_getsockopt = socket.socket.getsockopt
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
# The write after a record of the protocol's own (NautilusSocket._push_write):
# nothing to do; to be pushed (TCP_NODELAY); pushed (Nagle back on at the next
# write); to be pushed with TCP_NODELAY still set from the last one.
_PUSH_NONE, _PUSH_NEXT, _PUSH_DONE, _PUSH_AGAIN = 0, 1, 2, 3
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
_HAS_POLL = hasattr(select, "poll")
_SHUT_MODES = (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR)
# What the message lane did with a read (NautilusSocket._receive_message; 0: nothing).
_HANDLED, _LONE_MESSAGE = 1, 2
_DEFAULT_TIMEOUT: Any = getattr(socket, "_GLOBAL_DEFAULT_TIMEOUT", object())
_MAX_TIMEOUT = 1e9
"""The longest ``timeout`` create_connection() takes (about 31 years): a socket's
timeout beyond some billions of seconds overflows the C time types."""

# (Server) 0-RTT data, when the context accepts it: delivered as stream data.
_EarlyDataReceived: Any = getattr(_events, "EarlyDataReceived", None)

# What a call sends through _submit().
_DATA, _MESSAGES, _KEY_UPDATE = 0, 1, 2

_APP_DATA = int(ContentType.APPLICATION_DATA)
_NT_OK = _b.NT_OK
_OVERHEAD = _b.RECORD_OVERHEAD
_nt_seal_send = _b.nt_seal_send
_nt_open_packed = _b.nt_open_packed
_NT_PARTIAL = _b.NT_PARTIAL
_NT_DUE = _b.NT_DUE
_from_buffer = _b.from_buffer
_WRITE_PIECE = 256 * 1024
"""Content sealed per step by the direct send path (its output buffer stays this small)."""
_RECORD_EXTRA = HEADER_SIZE + 1 + TAG_SIZE  # a sealed record's bytes beyond its content
_WRITER_GRACE = 0.02
"""Seconds shutdown() waits for the write lock before it takes its holder for a
writer blocked on the socket (and shuts TCP down without close_notify)."""


def _wait(sock: socket.socket, write: bool, timeout: float | None) -> bool:
    """Wait until ``sock`` is readable (or writable); False if ``timeout`` passed first.

    Raises OSError (``EBADF``) if the socket is closed (by another thread,
    since the caller's last look), as a read or write on it would, not the
    ValueError that poll() and select() raise for a descriptor of -1.
    """
    if timeout is not None and timeout < 0:
        timeout = 0.0
    fd = sock.fileno()
    if fd < 0:
        raise OSError(errno.EBADF, "the socket is closed")
    if _HAS_POLL:
        poller = select.poll()
        poller.register(fd, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(None if timeout is None else timeout * 1000.0))
    if write:  # pragma: no cover - platforms without poll()
        return bool(select.select([], [fd], [fd], timeout)[1])
    return bool(select.select([fd], [], [fd], timeout)[0])  # pragma: no cover


# On a socket with a timeout, Python polls before each send or recv, for as
# long as the timeout, MSG_DONTWAIT or not; the descriptor itself is
# non-blocking then. Where this module must not wait (or has just waited
# itself), write(2) and readv(2) on the descriptor skip that poll.
_POSIX_IO = os.name == "posix"


def _send_nowait(sock: socket.socket, data: bytes | bytearray | memoryview) -> int:
    """send(2) without waiting: the bytes the socket took (BlockingIOError: none)."""
    if _POSIX_IO and sock.gettimeout():  # (a timeout: the descriptor is non-blocking)
        return os.write(sock.fileno(), data)
    return _raw_send(sock, data, _DONTWAIT)


def _recv_nowait(sock: socket.socket, into: bytearray | memoryview) -> int:
    """recv(2) into ``into`` without waiting: the bytes read, 0 at the end of
    the stream (BlockingIOError: nothing has arrived)."""
    if _POSIX_IO and sock.gettimeout():
        return os.readv(sock.fileno(), (into,))
    return _raw_recv_into(sock, into, 0, _DONTWAIT)


def _check_flags(call: str, flags: object) -> None:
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"flags must be an int, not {type(flags).__name__}")
    if flags:
        raise ValueError(f"non-zero flags not allowed in calls to {call}() on NautilusSocket")


def _nbytes(data: object) -> int:
    """Length in bytes of a bytes-like object; TypeError for anything else."""
    if isinstance(data, (bytes, bytearray)):
        return len(data)
    try:
        view = data if isinstance(data, memoryview) else memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__}") from None
    if not view.c_contiguous:
        raise TypeError("a contiguous bytes-like object is required")
    return view.nbytes


def _as_buffer(data: ReadableBuffer) -> bytes | bytearray | memoryview:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return data
    return memoryview(data).cast("B")


def _default_server_name(address: object) -> str | None:
    if not isinstance(address, tuple) or len(address) < 2:
        return None
    host, port = address[0], address[1]
    if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, (int, str)):
        return None
    host = host.lower()  # host names are case-insensitive: one known-peers entry
    if ":" in host and not host.startswith("["):  # IPv6 literal: [::1]:443
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class NautilusSocket(socket.socket):
    """A TCP socket carrying a Nautilus connection, with the surface of ``ssl.SSLSocket``.

    Made by :meth:`nautilus.Context.wrap_socket` or :func:`create_connection`,
    not directly. Stream calls (:meth:`recv`, :meth:`recv_into`, :meth:`send`,
    :meth:`sendall`, ``makefile()``) and the message API (:meth:`send_message`,
    :meth:`send_messages`, :meth:`recv_message`) may be mixed: each kind is
    buffered separately. Timeouts (``settimeout``/``setblocking``) apply as on
    a plain socket; in non-blocking mode the calls raise
    :class:`nautilus.WantReadError` / :class:`nautilus.WantWriteError`.

    One reader thread and one writer thread may use a socket at the same time.

    Attributes:
        context: the :class:`nautilus.Context`.
        server_side: True for the server end.
        server_name: (clients) the name the known-peers file records the server under.
    """

    __slots__ = (
        "_conn",
        "_connected",
        "_connecting",
        "_context",
        "_do_handshake_on_connect",
        "_early",
        "_eof",
        "_error",
        "_error_raised",
        "_expected_peer",
        "_fd_closed",
        "_hs_done",
        "_hs_lock",
        "_hs_nodelay",
        "_iend",
        "_ipos",
        "_msgs",
        "_out_len",
        "_push",
        "_queued",
        "_rbuf",
        "_rdata",
        "_rdview",
        "_read_lock",
        "_read_shut",
        "_ready",
        "_rmore",
        "_rpos",
        "_rview",
        "_server_name",
        "_server_side",
        "_started",
        "_state_lock",
        "_timed_rekey",
        "_unsent",
        "_wbuf",
        "_wfit",
        "_wptr",
        "_write_lock",
        "_wview",
    )

    _conn: Connection
    _context: Context
    _server_side: bool
    _server_name: str | None
    _expected_peer: PeerKey | str | None
    _do_handshake_on_connect: bool
    _connected: bool
    _connecting: bool
    _started: bool
    _timed_rekey: bool
    _hs_done: bool
    _hs_nodelay: bool
    _ready: bool
    _push: int
    _eof: bool
    _error: BaseException | None
    _error_raised: bool
    _fd_closed: bool
    _read_shut: bool
    _read_lock: threading.Lock
    _hs_lock: threading.Lock
    _write_lock: threading.Lock
    _state_lock: threading.Lock
    _rbuf: bytearray
    _rview: memoryview
    _rdata: bytes
    _rdview: memoryview | None
    _rpos: int
    _rmore: deque[bytes]
    _early: list[bytes]
    _msgs: deque[bytes]
    _queued: list[bytes]
    _unsent: memoryview | None
    _ipos: int
    _iend: int
    _wbuf: bytearray
    _wview: memoryview
    _wfit: int
    _wptr: Any
    _out_len: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(
            f"{self.__class__.__name__} does not have a public constructor; "
            "use Context.wrap_socket() or nautilus.create_connection()"
        )

    @classmethod
    def _create(
        cls,
        sock: socket.socket,
        context: Context,
        conn: Connection,
        *,
        server_side: bool,
        server_name: str | None,
        expected_peer: PeerKey | str | None,
        do_handshake_on_connect: bool,
        connected: bool,
    ) -> NautilusSocket:
        """Take over ``sock``'s file descriptor (``sock`` is detached, as ssl does)."""
        self = cls.__new__(cls)
        socket.socket.__init__(self, _raw_family(sock), _raw_type(sock), sock.proto, sock.fileno())
        timeout = sock.gettimeout()
        sock.detach()
        self.settimeout(timeout)
        self._use_connection(conn)
        self._context = context
        self._server_side = server_side
        self._server_name = server_name
        self._expected_peer = expected_peer
        self._do_handshake_on_connect = do_handshake_on_connect
        self._connecting = False
        self._started = False
        self._hs_done = False
        self._hs_nodelay = False  # TCP_NODELAY set for the handshake, to undo at its end
        self._ready = False
        self._push = _PUSH_NONE
        self._eof = False
        self._error = None
        self._error_raised = False
        self._fd_closed = False
        self._read_shut = False  # shutdown(SHUT_RD or SHUT_RDWR) was called
        self._read_lock = threading.Lock()
        self._hs_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        # (A child forked while a thread was inside a call would wait for ever.)
        renew_locks_after_fork(self, "_read_lock", "_hs_lock", "_write_lock", "_state_lock")
        self._rbuf = bytearray(_RECV_FIRST)
        self._rview = memoryview(self._rbuf)
        self._rdata = b""
        self._rdview = None
        self._rpos = 0
        self._ipos = 0
        self._iend = 0
        self._rmore = deque()
        self._early = []  # (server) accepted 0-RTT data, held until the handshake completes
        self._msgs = deque()
        self._queued = []
        self._unsent = None
        self._wbuf = bytearray()
        self._wview = memoryview(self._wbuf)
        self._wptr = None
        self._wfit = -1  # the largest content sealed into _wbuf as one record
        self._out_len = _b.new_out_len()
        self._connected = connected
        return self

    def _use_connection(self, conn: Connection) -> None:
        """Drive ``conn`` (at wrapping, or the one connect() makes for the
        address's server name): a ``rekey_interval`` in its settings takes the
        send path that runs timers. (Its flights leave as they are made from
        the start of the handshake: see :meth:`_handshake_locked`.)"""
        self._conn = conn
        self._timed_rekey = conn._cfg.rekey_interval is not None

    # ------------------------------------------------------------- attributes

    @property
    def context(self) -> Context:
        """The :class:`nautilus.Context` this socket was made with."""
        return self._context

    @property
    def server_side(self) -> bool:
        """True for the server end of the connection."""
        return self._server_side

    @property
    def server_name(self) -> str | None:
        """(Clients) the name the known-peers file records the server under."""
        return self._server_name

    @property
    def session(self) -> SessionInfo | None:
        """The :class:`nautilus.SessionInfo` (``peer_id``, ``group``, ``cipher``,
        ``resumed``...), or None before the handshake has completed."""
        return self._conn.session

    @property
    def stats(self) -> ConnectionStats:
        """The connection's counters now (:class:`nautilus.ConnectionStats`:
        application bytes each way, key updates, the last one)."""
        return self._conn.stats

    def pending(self) -> int:
        """Stream bytes already received and decrypted, ready for :meth:`recv`
        without touching the socket (as ``ssl.SSLSocket.pending``).

        Records already read but not opened yet (:meth:`recv_into` reads many
        at once, and opens as many as the caller's buffer takes) are opened
        now, unless another thread is reading.
        """
        if self._iend > self._ipos and self._read_lock.acquire(blocking=False):
            try:
                if self._iend > self._ipos:
                    self._feed_held(self._iend)
            finally:
                self._read_lock.release()
        return len(self._rdata) - self._rpos + sum(len(c) for c in tuple(self._rmore))

    def pending_messages(self) -> int:
        """Messages already received, ready for :meth:`recv_message`."""
        return len(self._msgs)

    # ---------------------------------------------------------------- connect

    def connect(self, address: Any) -> None:
        """Connect to ``address``, then (with ``do_handshake_on_connect``) run the handshake.

        ``server_name``, if it was not given to ``wrap_socket``, becomes
        ``"host:port"`` of ``address``.

        Raises:
            ValueError: a server-side socket, or one already connected; or
                (no ``server_name`` given) a host that makes a server_name
                with a control character (before anything connects).
            TypeError, OverflowError (as ``socket.connect``: a port beyond
                65535): a malformed address. A connect that fails so, or
                with an ``OSError``, keeps no server name from ``address``.
            OSError: the TCP connection failed (``BlockingIOError`` while a
                non-blocking connect is in progress).
            nautilus.HandshakeError: the handshake failed (subclasses name why).
            TimeoutError: the socket's timeout expired.
        """
        self._real_connect(address, connect_ex=False)

    def connect_ex(self, address: Any) -> int:
        """As :meth:`connect`, but a TCP failure is returned as an errno value.

        Raises:
            as :meth:`connect` for everything but TCP errors.
        """
        return self._real_connect(address, connect_ex=True)

    def _real_connect(self, address: Any, *, connect_ex: bool) -> int:
        if self._server_side:
            raise ValueError("can't connect in server-side mode")
        if self._connected or self._connecting:
            raise ValueError("attempt to connect an already-connected NautilusSocket")
        if self._fd_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        # The name (and the Connection carrying it) are made first, so that a
        # bad one is refused before anything connects, and kept only once the
        # TCP connect to that address is made or under way: a connect refused
        # for its address (OverflowError, TypeError, a failed look-up or a
        # refused connection) must leave no name for the next address tried,
        # or the known-peers file would record that server under it.
        named: tuple[str, Connection] | None = None
        if self._server_name is None:
            name = _default_server_name(address)
            if name is not None:
                conn = Connection(
                    self._context, "client", server_name=name, expected_peer=self._expected_peer
                )
                named = (name, conn)
        if connect_ex:
            rc = super().connect_ex(address)
        else:
            try:
                super().connect(address)
            except BlockingIOError:
                self._take_name(named)
                self._connecting = True
                raise
            rc = 0
        if rc in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._take_name(named)
        if rc in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._connecting = True
        if rc == 0:
            self._connected = True
            if self._do_handshake_on_connect:
                self.do_handshake()
        return rc

    def _take_name(self, named: tuple[str, Connection] | None) -> None:
        """Keep the server name connect() made from the address, and its Connection."""
        if named is not None:
            self._use_connection(named[1])
            self._server_name = named[0]

    def accept(self) -> tuple[NautilusSocket, Any]:
        """(A wrapped listening socket, server side) accept a connection and wrap it.

        The new socket runs the handshake now when ``do_handshake_on_connect``
        was set, else on first use or :meth:`do_handshake`.

        Raises:
            ValueError: not a server-side socket.
            OSError: as ``socket.accept``.
            nautilus.HandshakeError: the handshake failed (the socket is closed).
        """
        if not self._server_side:
            raise ValueError("accept() needs a server-side NautilusSocket")
        newsock, addr = super().accept()
        wrapped = wrap_socket(
            self._context,
            newsock,
            server_side=True,
            do_handshake_on_connect=self._do_handshake_on_connect,
        )
        return wrapped, addr

    # -------------------------------------------------------------- handshake

    def do_handshake(self) -> None:
        """Run the handshake (or the rest of it) now.

        Every I/O call does this implicitly first, as in ``ssl``. The
        context's ``handshake_timeout`` bounds the handshake in every mode; the
        socket's own timeout bounds each call. In non-blocking mode, call it
        again when the socket is ready as the exception says.

        Raises:
            nautilus.NegotiationFailed, nautilus.AuthenticationFailed,
            nautilus.KeyAgreementFailed, nautilus.ProtocolViolation,
            nautilus.SessionKeyDerivationFailed: the handshake failed; the
                connection is shut down (an alert was sent where safe).
            nautilus.HandshakeTimeout: ``handshake_timeout`` passed.
            nautilus.HandshakeError: the peer closed the connection during the
                handshake without saying why.
            TimeoutError: the socket's timeout expired first; the handshake
                may be resumed by calling again.
            nautilus.WantReadError, nautilus.WantWriteError: non-blocking mode.
            nautilus.ClosedError: the handshake failed earlier, or the
                connection was shut down.
            OSError: the socket is not connected, or closed (``EBADF``).
        """
        if self._fd_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        with self._hs_lock:
            self._handshake_locked()

    def _handshake_locked(self) -> None:
        """The handshake, with the handshake lock held.

        Only the holder of the handshake lock reads from the socket until the
        handshake has completed; only holders of the read lock do afterwards.
        """
        timeout = self.gettimeout()
        if self._hs_done:
            self._hs_write(timeout)
            return
        if self._error is not None:
            raise ClosedError(f"the connection failed: {self._error}") from self._error
        if self._eof:
            raise ClosedError("the connection was shut down before the handshake")
        if not self._connected:
            self._check_connected(timeout)
        conn = self._conn
        if not self._started:
            self._handshake_nodelay()
            # Parts of its flights leave at once. Set only now, as the
            # Connection drops it once used (or failed): a socket dropped
            # unclosed before its handshake was kept by this reference cycle,
            # its descriptor open until the cycle collector ran.
            conn._flush_hook = self._send_now
            with self._state_lock:
                conn.start(time.time())
                self._started = True
                self._take_output()
        user_deadline = None if not timeout else time.monotonic() + timeout
        while True:
            if conn.session is not None:
                if self._early:  # the 0-RTT data comes first in the stream
                    self._rmore.extendleft(reversed(self._early))
                    self._early = []
                self._hs_done = True
                self._ready = not self._fd_closed
                if self._eof:  # the peer closed (or failed) at once: let reads report it
                    self._flush_nowait()
                    self._nagle_back()
                    return
                if self._server_side:
                    self._write_tickets(timeout)
                else:
                    self._hs_flight(timeout)  # our Finished: the handshake is not over before
                self._nagle_back()
                self._push_next_write()
                return
            if self._eof:
                self._fail_handshake()
            self._hs_flight(timeout)
            if conn._took_keys:  # replace them while the peer works on this flight
                conn._took_keys = False
                conn._ctx._key_pool.prepare_quietly()
            self._hs_read(timeout, user_deadline)

    def _handshake_nodelay(self) -> None:
        """Turn Nagle's algorithm off for the handshake (TCP, if the application
        has not already): :meth:`_nagle_back` puts it back once it completes.

        A flight leaves in parts (the server's ServerHello at once, then the
        rest of its flight, then its tickets), and with Nagle on, each part
        after the first waits for the ACK of the one before, which the peer
        may delay (40 ms on Linux): after a HelloRetry, every psk_only
        resumption against a psk_dhe server took 43 ms instead of 2.
        """
        if _raw_family(self) in _TCP_FAMILIES:
            self._hs_nodelay = self._nodelay_for_now()

    def _nagle_back(self) -> None:
        """The handshake is over: Nagle as the application had it (see
        :meth:`_handshake_nodelay`)."""
        if self._hs_nodelay:
            self._hs_nodelay = False
            self._nagle_on()

    def _nodelay_for_now(self) -> bool:
        """Turn ``TCP_NODELAY`` on if Nagle's algorithm is on; whether it was
        (:meth:`_nagle_on` is then owed). False if the socket fails (a reset:
        the caller's next read or write finds out)."""
        try:
            if not _raw_getsockopt(self, socket.IPPROTO_TCP, socket.TCP_NODELAY):
                _raw_setsockopt(self, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return True
        except OSError:
            pass
        return False

    def _nagle_on(self) -> None:
        """Nagle's algorithm back on, after :meth:`_nodelay_for_now`."""
        with contextlib.suppress(OSError):
            _raw_setsockopt(self, socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)

    def _hs_flight(self, timeout: float | None) -> None:
        """Write a handshake flight. A peer that reset the connection (or has
        gone: ``BrokenPipeError``) fails the handshake, as a reset read
        does: a ``HandshakeError`` whose ``__cause__`` is the socket's error,
        never the bare ``OSError``."""
        try:
            self._hs_write(timeout)
        except ConnectionError as exc:
            if isinstance(exc, NautilusError):
                raise
            self._lost(exc)
            error = HandshakeError(f"the connection was lost during the handshake: {exc}")
            error.__cause__ = exc
            self._error = error
            self._fail_handshake()

    def _write_tickets(self, timeout: float | None) -> None:
        """The server's write after the handshake (its session tickets).

        A client may send its data and go (a reset, if our tickets reach it
        after it closed) before this write: what it sent first is still ours
        to read. A broken connection here is therefore not raised; the
        tickets stay unsent, and the next send() meets the error, or the next
        read the end of the stream.
        """
        with contextlib.suppress(ConnectionError):
            self._hs_write(timeout)

    def _check_connected(self, timeout: float | None) -> None:
        try:
            self.getpeername()
        except OSError as exc:
            if exc.errno not in (errno.ENOTCONN, errno.EINVAL):
                raise
            if self._connecting:
                err = self.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._connecting = False
                    raise OSError(err, os.strerror(err)) from None
                if timeout == 0.0:
                    raise WantWriteError(
                        errno.EAGAIN, "the TCP connection is still being made"
                    ) from None
            raise OSError(errno.ENOTCONN, "the socket is not connected") from None
        self._connected = True
        self._connecting = False

    def _hs_write(self, timeout: float | None) -> None:
        if self._unsent is None and not self._queued:
            return
        with self._write_lock:
            try:
                self._write_out(timeout, nowait=False)
            except BlockingIOError:
                raise WantWriteError(errno.EAGAIN, "the socket is not writable") from None

    def _send_now(self, data: bytes | bytearray) -> None:
        """Write part of a flight while the Connection goes on (a server's
        ServerHello, then the rest of its flight before its application keys and
        tickets; a client's flight before it switches keys), during the
        handshake, whose lock keeps other writers out. Never blocks: what is not
        taken now is written with the rest."""
        if not data:
            return
        if self._unsent is not None or self._queued:
            self._queued.append(bytes(data))
            return
        try:
            sent = _send_nowait(self, data)
        except OSError:  # the socket is full or failed: the later write finds out
            sent = 0
        if sent < len(data):
            self._unsent = memoryview(data)[sent:]

    def _hs_read(self, timeout: float | None, user_deadline: float | None) -> None:
        conn = self._conn
        hs_deadline = conn.get_timer()
        if timeout == 0.0:
            try:
                n = _raw_recv_into(self, self._rview)
            except BlockingIOError:
                if hs_deadline is not None and time.time() >= hs_deadline:
                    self._fire_timer()
                    return
                raise WantReadError(
                    errno.EAGAIN, "the handshake needs data from the peer"
                ) from None
            except OSError as exc:
                self._lost(exc)
                return
            self._feed(n)
            return
        wait = None if hs_deadline is None else hs_deadline - time.time()
        user_wait = None if user_deadline is None else user_deadline - time.monotonic()
        by_user = user_wait is not None and (wait is None or user_wait < wait)
        if not _wait(self, False, user_wait if by_user else wait):
            if by_user:
                raise TimeoutError("timed out")
            self._fire_timer()
            return
        try:
            n = _recv_nowait(self, self._rview)  # (readable: no second wait)
        except (BlockingIOError, InterruptedError):
            return  # a spurious wake-up: wait again
        except TimeoutError:  # (where Python's own poll still comes first)
            raise
        except OSError as exc:
            self._lost(exc)
            return
        self._feed(n)

    def _fire_timer(self) -> None:
        with self._state_lock:
            self._conn.handle_timer(time.time())
            self._drain()
            self._take_output()

    def _fail_handshake(self) -> NoReturn:
        """The Connection closed during the handshake: send its alert, shut down, raise."""
        self._flush_nowait()
        self._shutdown_tcp()
        error = self._error
        if error is None:
            error = HandshakeError("the connection closed during the handshake")
            self._error = error
        self._error_raised = True
        raise error

    # -------------------------------------------------------------- receiving

    def recv(self, bufsize: int = 1024, flags: int = 0) -> bytes:
        """Up to ``bufsize`` bytes of stream data (messages are left for :meth:`recv_message`).

        Returns ``b""`` at a clean end: the peer sent close_notify (or this
        side shut the connection down).

        Raises:
            TypeError, ValueError: bad ``bufsize`` or non-zero ``flags``.
            nautilus.ConnectionLost: the connection ended without close_notify
                (truncation), or was reset.
            nautilus.RecordTimeout: (a ConnectionLost) the call waited the
                context's ``record_timeout`` for the rest of a record or
                message the peer had begun; the connection is shut down (a
                record_timeout alert was sent).
            nautilus.IntegrityError, nautilus.ProtocolViolation: the peer sent
                a forged or malformed record; the connection is shut down (an
                alert was sent). Later calls raise ``ClosedError``.
            TimeoutError: the socket's timeout expired; nothing was lost and
                the call may be retried.
            nautilus.UnreadLimitReached: messages the application has not
                read fill what the socket holds (:data:`UNREAD_LIMIT`); read
                them with :meth:`recv_message` first. Nothing was lost.
            nautilus.WantReadError, nautilus.WantWriteError: non-blocking mode.
            nautilus.HandshakeError and subclasses: the implicit handshake failed.
            OSError: the socket is closed (``EBADF``) or not connected.
        """
        if type(bufsize) is not int:
            bufsize = operator.index(bufsize)
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if type(flags) is not int or flags:
            _check_flags("recv", flags)
        if not bufsize:
            if self._fd_closed:
                raise OSError(errno.EBADF, "the socket is closed")
            return b""
        with self._read_lock:
            data = self._rdata
            pos = self._rpos
            if pos >= len(data):
                data = self._next_chunk()
                if not data:
                    return b""
                pos = 0
            end = pos + bufsize
            if end >= len(data):
                self._rdata = b""
                self._rpos = 0
                return data if pos == 0 else data[pos:]
            self._rpos = end
            return data[pos:end]

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        """Receive up to ``nbytes`` (default: the buffer's size) stream bytes into ``buffer``.

        Returns the number of bytes written, 0 at a clean end. The bytes
        after those, up to ``nbytes``, may be overwritten (records are opened
        in place; what is not stream data there is wiped with zeros).

        Raises:
            TypeError: ``buffer`` is not a writable bytes-like object.
            ValueError: ``nbytes`` negative or larger than the buffer,
                non-zero ``flags``.
            as :meth:`recv` otherwise.
        """
        try:
            view = memoryview(buffer)
        except TypeError:
            raise TypeError(
                f"buffer must be a writable bytes-like object, not {type(buffer).__name__}"
            ) from None
        if view.readonly:
            raise TypeError("recv_into() needs a writable bytes-like object")
        if view.format != "B" or view.ndim != 1:
            # Bytes are written through a view of unsigned bytes ('B'): slice
            # assignment refuses other formats ('b', 'c', ctypes' '<c'...), and
            # the direct path must not fail half-way on the caller's buffer.
            # Counted in bytes (nbytes), as plain sockets do.
            if not view.c_contiguous:
                raise TypeError(
                    "recv_into() buffer must be C-contiguous (or a 1-dimensional view of "
                    f"unsigned bytes), not a strided view of format {view.format!r}"
                )
            view = view.cast("B")
        size = len(view)
        if nbytes:
            if type(nbytes) is not int:
                nbytes = operator.index(nbytes)
            if nbytes < 0:
                raise ValueError("negative buffersize in recv_into")
            if nbytes > size:
                raise ValueError("buffer too small for requested bytes")
            size = nbytes
        elif type(nbytes) is not int:
            operator.index(nbytes)
        if type(flags) is not int or flags:
            _check_flags("recv_into", flags)
        if not size:
            if self._fd_closed:
                raise OSError(errno.EBADF, "the socket is closed")
            return 0
        with self._read_lock:
            data = self._rdata
            pos = self._rpos
            if pos >= len(data):
                if not self._rmore and self._hs_done and not self._eof and view.c_contiguous:
                    n = self._recv_direct(view, size)
                    if n >= 0:
                        return n
                data = self._next_chunk()
                if not data:
                    return 0
                pos = 0
            n = len(data) - pos
            if n > size:
                n = size
            elif pos == 0:  # the whole chunk
                view[:n] = data
                self._rdata = b""
                return n
            dview = self._rdview
            if dview is None:
                dview = self._rdview = memoryview(data)
            end = pos + n
            view[:n] = dview[pos:end]
            if end < len(data):
                self._rpos = end
            else:
                self._rdata = b""
                self._rdview = None
                self._rpos = 0
            return n

    def recv_message(self) -> bytes:
        """The next whole message of the message API (at most ``max_message_size``).

        Stream data that arrives meanwhile is kept for :meth:`recv`.

        Raises:
            EOFError: the peer closed the connection cleanly (close_notify)
                and no message is left (as ``multiprocessing`` connections do).
            nautilus.ProtocolViolation: the peer sent a message larger than
                this context's ``max_message_size`` (or another malformed
                record); the connection is shut down.
            nautilus.UnreadLimitReached: stream data the application has not
                read fills what the socket holds (:data:`UNREAD_LIMIT`); read
                it with :meth:`recv` first. Nothing was lost.
            as :meth:`recv` otherwise (but for its UnreadLimitReached).
        """
        with self._read_lock:
            msgs = self._msgs
            while not msgs:
                if self._fd_closed:
                    raise OSError(errno.EBADF, "the socket is closed")
                if not self._hs_done:
                    with self._hs_lock:
                        self._handshake_locked()
                    continue
                if self._eof:
                    self._end_of_stream()
                    raise EOFError("the peer closed the connection")
                self._fill(lane=True)
            return msgs.popleft()

    def _recv_direct(self, view: memoryview, size: int) -> int:
        """The bulk path of :meth:`recv_into` (read lock held, nothing decrypted waits).

        Records read from the socket are held back from the Connection and
        opened straight into ``view[:size]``: no intermediate copy. Returns the
        stream bytes written (at least 1), or -1 where the Connection's own path
        is needed (then everything held back is given to it first, in order):
        the handshake or the end of the connection, messages in flight, a
        record larger than ``size``, anything malformed, a failure to report.
        Records that are not stream data (key updates, alerts, tickets,
        messages) are handed to the Connection one by one, as they arrive.
        """
        while True:
            if self._eof or self._timed_rekey:
                return -1
            rview = self._rview  # (replaced when the buffer grows)
            conn = self._conn
            ipos, iend = self._ipos, self._iend
            avail = iend - ipos
            held = conn._in
            if held:  # a record cut by an earlier read waits in the Connection
                head = bytes(held[:HEADER_SIZE])  # (a closing writer may clear it)
                if len(head) < HEADER_SIZE or head[0] != _SEALED:
                    return -1
                need = HEADER_SIZE + ((head[1] << 16) | (head[2] << 8) | head[3]) - len(held)
                if need <= 0 or need > RECV_BUFFER_SIZE:
                    return -1
                if avail >= need:  # complete it there, and continue from a boundary
                    self._feed_held(ipos + need)
                    if self._rmore:
                        return -1
                    continue
                total = need
            elif avail >= HEADER_SIZE:
                if rview[ipos] != _SEALED:
                    return -1
                clen = ((rview[ipos + 1] << 16) | (rview[ipos + 2] << 8) | rview[ipos + 3]) - (
                    1 + TAG_SIZE
                )
                if clen < 0 or clen > size:
                    return -1
                total = clen + _RECORD_EXTRA
                if avail >= total:
                    with self._state_lock:
                        n = self._open_direct(view, size)
                    if n < 0:
                        return -1
                    if self._queued:
                        self._flush_nowait()
                    if self._error is not None:
                        self._shutdown_tcp()
                    if n:
                        return n
                    continue
                if total > RECV_BUFFER_SIZE:
                    return -1
            else:
                total = HEADER_SIZE
            # Read more: move the partial record to the front first.
            if ipos:
                if avail:
                    self._rbuf[:avail] = bytes(rview[ipos:iend])
                self._ipos, self._iend = 0, avail
            if total - avail > 0 and not self._fill(direct=True):
                return -1

    def _open_direct(self, view: memoryview, size: int) -> int:
        """Open the complete records held back into ``view[:size]`` (read and state
        locks held). Returns the stream bytes written, or -1 (Connection path)."""
        conn = self._conn
        opener = conn._opener
        if (
            opener is None
            or conn._batch_type != _APP_DATA
            or conn._early_left
            or conn._early_skip
            or not conn.handshake_complete
        ):
            return -1
        handle = opener._handle
        ipos, iend = self._ipos, self._iend
        summary = opener._summary
        rc = _nt_open_packed(
            handle, _from_buffer(self._rview[ipos:iend]), iend - ipos,
            _from_buffer(view, require_writable=True), size, _APP_DATA, 0, summary,
        )  # fmt: skip
        if rc != _NT_OK:
            failure = _b.open_failure(rc, summary)
            good = cast("_b.PackedOpen", failure.spans[0])
            error = failure.error
            if isinstance(error, (RecordLimitReached, IntegrityError)):  # as the Connection does
                pos = ipos + failure.consumed
                abort = conn._open_abort(error, self._rview, pos, opener.max_fragment)
            else:  # pragma: no cover - the opener is only given what fits
                failed = ProtocolViolation(f"record layer failure: {error}")
                abort = _Abort(failed, AlertCode.DECODE_ERROR)
            self._ipos = self._iend = 0  # nothing after a bad record is read
            self._direct_failed(abort, good.written)
            return good.written
        ipos += summary.consumed
        self._ipos = ipos
        written: int = summary.written  # (cffi gives the fields as ints)
        if summary.last_type != _APP_DATA:
            # Not stream data: wipe its content from the caller's buffer, step the
            # opener back one record and let the Connection open it (and act on it).
            length: int = summary.last_length
            written -= length
            if length:
                view[written : written + length] = bytes(length)
            _b.aead_set_sequence(handle, _b.aead_sequence(handle) - 1)
            conn._bytes_received += written
            self._feed_held(ipos, ipos - length - _RECORD_EXTRA, locked=True)
            return written
        conn._bytes_received += written
        return written

    def _direct_failed(self, abort: _Abort, good: int) -> None:
        """A record opened by :meth:`_open_direct` failed: fail the Connection as
        it fails itself (the alert is queued), after ``good`` bytes were delivered."""
        conn = self._conn
        conn._bytes_received += good
        conn._fail(abort.error, abort.alert)
        self._drain()
        self._take_output()

    def _feed_held(self, end: int, start: int | None = None, *, locked: bool = False) -> None:
        """Give the Connection the bytes held back, ``rview[start:end]`` (``start``:
        the first held back), and everything before ``start`` is dropped."""
        if start is None:
            start = self._ipos
        if end >= self._iend:
            self._ipos = self._iend = 0
        else:
            self._ipos = end
        if locked:
            self._feed_locked(self._rview[start:end])
            return
        try:
            with self._state_lock:
                self._feed_locked(self._rview[start:end])
        except BaseException:  # (see _feed_locked): its alert goes out now
            self._flush_nowait()
            raise
        if self._queued:
            self._flush_nowait()
        if self._error is not None and self._conn.session is not None:
            self._shutdown_tcp()

    def _feed_locked(self, data: memoryview) -> None:
        self._receive(data)
        self._drain()
        self._take_output()

    def _receive_message(self, data: memoryview) -> int:
        """The message lane of :meth:`_receive` (state lock held), when ``data``
        is exactly one record: ``_LONE_MESSAGE`` (its one message is queued),
        ``_HANDLED`` (it held something else, taken as ``receive_data`` takes
        it: collect the events), or 0, having done nothing."""
        try:
            taken = self._conn._take_message(data, time.time())
        except BaseException:  # (as in _receive)
            self._drain()
            self._take_output()
            raise
        if type(taken) is bytes:
            self._msgs.append(taken)
            return _LONE_MESSAGE
        return _HANDLED if taken else 0

    def _receive(self, data: memoryview) -> None:
        """``conn.receive_data(data)`` (state lock held)."""
        try:
            self._conn.receive_data(data, time.time())
        except BaseException:
            # A hook's or trust rule's KeyboardInterrupt...: the Connection
            # failed first (an internal_error alert queued, ConnectionClosed).
            # Keep both, so that the next call fails at once rather than
            # waiting for a peer that waits for us; the caller sends the alert.
            self._drain()
            self._take_output()
            raise

    def _next_chunk(self) -> bytes:
        """Install the next buffered chunk of stream data, reading if needed (read lock held).

        Returns b"" at a clean end of stream.
        """
        more = self._rmore
        while not more:
            if self._fd_closed:
                raise OSError(errno.EBADF, "the socket is closed")
            if not self._hs_done:
                with self._hs_lock:
                    self._handshake_locked()
                continue
            if self._eof:
                self._end_of_stream()
                self._rdata = b""
                self._rpos = 0
                return b""
            self._fill()
        data = more.popleft()
        self._rdata = data
        self._rdview = None
        self._rpos = 0
        return data

    def _end_of_stream(self) -> None:
        """No more data will come: return after a clean end, raise after a failure."""
        error = self._error
        if error is None:
            return
        if not self._error_raised:
            self._error_raised = True
            raise error
        raise ClosedError(f"the connection failed earlier: {error}") from error

    def _fill(self, *, direct: bool = False, lane: bool = False) -> bool:
        """Read from the socket once and feed the Connection (read lock held).

        Bytes held back by the direct path go to the Connection first (and
        nothing is read then). With ``direct``, the bytes read are held back
        too, after those; returns False if they went to the Connection
        instead (the end of the stream, a failure). With ``lane``
        (:meth:`recv_message`), a read that is exactly one record holding one
        message takes the message lane (see :meth:`_feed`).
        """
        if self._unsent is not None or self._queued:
            self._flush_nowait()
        iend = self._iend
        if not direct:
            if iend > self._ipos:
                self._feed_held(iend)
                return False
            if iend:
                self._ipos = self._iend = iend = 0
        if self._rmore if lane else self._msgs:
            self._check_unread(lane)
        conn = self._conn
        incomplete = conn._in or conn._messages or iend > self._ipos
        bound = self._record_bound() if incomplete else None
        try:
            if bound:  # (record_timeout)
                n = self._recv_within(self._rview[iend:], bound)
                if n < 0:
                    return False
            else:
                n = _raw_recv_into(self, self._rview[iend:])
        except BlockingIOError:
            if self._unsent is not None or self._queued:
                raise WantWriteError(errno.EAGAIN, "output is waiting for the socket") from None
            raise WantReadError(errno.EAGAIN, "no data from the peer yet") from None
        except TimeoutError:
            raise
        except InterruptedError:  # pragma: no cover - a signal handler raised nothing
            return direct
        except OSError as exc:
            if self._fd_closed:
                raise
            self._ipos = self._iend = 0
            if self._read_shut:
                # After our own SHUT_RD (SHUT_RDWR) the kernel resets the
                # connection if the peer still sends (its answer to our
                # close_notify, say), and a reader that was not yet waiting
                # gets ECONNRESET: this side asked for the end of reading.
                self._feed(0)
                return False
            self._lost(exc)
            return False
        full = n > 0 and iend + n == len(self._rbuf) < RECV_BUFFER_SIZE
        if direct and n:
            self._iend = iend + n
            if full:
                self._grow_rbuf()
            return True
        self._feed(n, lane)
        if full:
            self._grow_rbuf()
        return False

    def _record_bound(self) -> float | None:
        """(Before a read, with a record or a message incomplete.) How long the
        read may wait for more of it: the context's ``record_timeout``, or
        None where the socket's own timeout is shorter (or it does not wait)
        or there is no such bound."""
        conn = self._conn
        timeout = conn._cfg.record_timeout
        own = self.gettimeout()
        if timeout is None or (own is not None and own <= timeout) or conn.is_closed:
            return None
        return timeout if self._hs_done else None

    def _recv_within(self, into: memoryview, timeout: float) -> int:
        """Read into ``into``, waiting at most ``timeout`` for the peer to
        send more of what it left incomplete. Time between the application's
        calls does not count: each wait gets the whole timeout. Returns -1 if
        nothing came: the connection has failed with RecordTimeout, a
        record_timeout alert sent (and TCP shut down)."""
        deadline = 0.0
        while True:
            try:
                return _recv_nowait(self, into)  # (what has arrived: no poll first)
            except BlockingIOError:
                pass
            now = time.monotonic()
            if not deadline:
                deadline = now + timeout
            # (a wake-up with nothing to read waits again, for what is left)
            if now >= deadline or not _wait(self, False, deadline - now):
                break
        conn = self._conn
        with self._state_lock:
            conn._record_timed_out(timeout)
            self._drain()
            self._take_output()
        if self._queued:
            self._flush_nowait()
        self._shutdown_tcp()
        return -1

    def _check_unread(self, lane: bool) -> None:
        """Before a read for messages (``lane``) or stream data: refuse to read
        more while the other kind holds :data:`UNREAD_LIMIT` bytes or
        :data:`UNREAD_ITEMS` items. A peer that sends only the kind the
        application does not read must not grow the socket's memory without
        bound; the socket stays usable (the other kind can be read)."""
        with self._state_lock:
            held = tuple(self._rmore if lane else self._msgs)
        limit = max(UNREAD_LIMIT, self._conn._cfg.max_message_size)
        count = len(held)
        size = sum(map(len, held)) if count <= UNREAD_ITEMS else None
        if size is not None and size <= limit:
            return
        if lane:
            what, wanted, call = f"{count} records' worth of stream data", "a message", "recv()"
        else:
            what, wanted, call = f"{count} messages", "stream data", "recv_message()"
        if size is not None:
            what += f" ({size} bytes)"
        raise UnreadLimitReached(
            f"{what} wait unread while the socket waits for {wanted}: read them first with {call}"
        )

    def _grow_rbuf(self) -> None:
        """Read RECV_BUFFER_SIZE at a time from now on (a read filled the buffer),
        keeping what the direct path holds back."""
        rbuf = bytearray(RECV_BUFFER_SIZE)
        iend = self._iend
        if iend:
            rbuf[:iend] = self._rview[:iend]
        self._rbuf, self._rview = rbuf, memoryview(rbuf)

    def _feed(self, n: int, lane: bool = False) -> None:
        """Give the bytes held back and ``n`` bytes read after them (0: end of
        file) to the Connection; collect its events.

        ``lane``: when nothing was held back and the read is exactly one
        record holding one message, ``Connection._take_message`` opens it
        in one C call and the message goes straight to the queue
        (request/response traffic over :meth:`send_message` and
        :meth:`recv_message`); anything else it takes as ``receive_data``
        would, or declines and the read takes the general path."""
        try:
            with self._state_lock:
                start, end = self._ipos, self._iend + n
                self._ipos = self._iend = 0
                taken = self._receive_message(self._rview[:end]) if lane and n and not start else 0
                if taken:
                    start = end
                if end > start:
                    self._receive(self._rview[start:end])
                if not n and not self._read_shut:  # (after our SHUT_RD: no end from the peer)
                    self._conn.receive_eof()
                if taken != _LONE_MESSAGE:  # (a lone message leaves no event and no output)
                    self._drain()
                    self._take_output()
        except BaseException:  # (see _receive): its alert goes out now
            self._flush_nowait()
            raise
        if self._queued:
            self._flush_nowait()
        if self._error is not None and self._conn.session is not None:
            self._shutdown_tcp()  # failed after the handshake: the alert is out (if it could be)

    def _drain(self) -> None:
        """Sort the Connection's events into the buffers (state lock held)."""
        conn = self._conn
        while (event := conn.next_event()) is not None:
            if type(event) is DataReceived:
                self._rmore.append(event.data)
            elif type(event) is MessagesReceived:
                self._msgs.extend(event.messages)
            elif type(event) is ConnectionClosed:
                self._eof = True
                if event.error is not None and self._error is None:
                    self._error = event.error
            elif type(event) is _EarlyDataReceived:
                # Held until the handshake completes (then read first), and
                # dropped if it fails: data from a peer that never finished
                # its handshake (a replayed first flight) is never read.
                early: Any = event
                self._early.append(early.data)
            # HandshakeCompleted (conn.session tells), KeysUpdated, AlertReceived: nothing.

    def _lost(self, exc: OSError) -> None:
        """Reading failed (a reset...): the Connection ends as at an end of file."""
        with self._state_lock:
            self._conn.receive_eof()
            self._drain()
            self._take_output()
        if self._error is None:
            self._error = ConnectionLost(f"the connection was lost: {exc}")
        if self._error.__cause__ is None:
            self._error.__cause__ = exc
        self._eof = True

    # ---------------------------------------------------------------- sending

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        """Seal and send ``data``; returns ``len(data)`` (all of it is accepted).

        Blocking mode: returns once everything is written to the socket.
        With a timeout: a ``TimeoutError`` means the data *was* accepted
        (sealed) but part of it is not written yet; it stays queued and is
        written first by the next call on the socket (do not send it again).
        Except before the handshake has completed: a timeout in the implicit
        handshake accepted nothing (``session`` is still None; call again).
        Non-blocking: what the socket does not take at once stays queued and
        is written by the next call; ``WantWriteError`` means earlier output
        still waits and *nothing* of ``data`` was accepted (retry with the
        same data). ``send(b"")`` just writes what is queued.

        Raises:
            TypeError: ``data`` is not bytes-like.  ValueError: non-zero flags.
            nautilus.ClosedError: the connection is closed (by either side, or
                after an error, which it is chained from).
            TimeoutError, nautilus.WantWriteError, nautilus.WantReadError: see above
                (WantReadError: the implicit handshake waits for the peer).
            nautilus.HandshakeError and subclasses: the implicit handshake failed.
            OSError: the socket failed (``BrokenPipeError``...), or is closed.
        """
        if type(data) is bytes:
            n = len(data)
        else:
            n = _nbytes(data)
            data = _as_buffer(data)
        if type(flags) is not int or flags:
            _check_flags("send", flags)
        if not self._ready:
            self._prepare_write()
        if n and not self._timed_rekey:
            timeout = self.gettimeout()
            if timeout is None:
                self._send_direct(data, n)
                return n
            if timeout and self._send_timed(data, n, timeout):
                return n
        self._submit(_DATA, data)
        return n

    def sendall(self, data: ReadableBuffer, flags: int = 0) -> None:
        """Seal ``data`` in one call and write it with one socket ``sendall``.

        Same semantics as :meth:`send` (which also sends everything).

        Raises:
            as :meth:`send`.
        """
        # send()'s body, not a call to it: a call is ~1% of a 4 KiB sendall.
        if type(data) is bytes:
            n = len(data)
        else:
            n = _nbytes(data)
            data = _as_buffer(data)
        if type(flags) is not int or flags:
            _check_flags("sendall", flags)
        if not self._ready:
            self._prepare_write()
        if n and not self._timed_rekey:
            timeout = self.gettimeout()
            if timeout is None:
                self._send_direct(data, n)
                return
            if timeout and self._send_timed(data, n, timeout):
                return
        self._submit(_DATA, data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a binary file's contents (read and sealed in Python: no ``os.sendfile``).

        Reads from ``offset`` (0: from the file's current position), at most
        ``count`` bytes (None: to the end of the file). Returns the number of
        bytes sent. The file position is left after them, also when the call
        raises: it counts a chunk whose write raised ``TimeoutError`` (that
        write accepted it, see :meth:`send`), not one whose write raised
        ``WantWriteError`` (nothing of it was accepted).

        Raises:
            TypeError: ``file`` is not a file object (no ``read()``),
                ``offset`` or ``count`` is not an int.
            ValueError: ``file`` is open in text mode, ``offset`` negative,
                ``count`` not positive.
            as :meth:`sendall` otherwise.
        """
        if not callable(getattr(file, "read", None)):
            raise TypeError(
                f"file must be a file object opened in binary mode, not {type(file).__name__}"
            )
        mode = getattr(file, "mode", "b")
        if isinstance(file, io.TextIOBase) or (isinstance(mode, str) and "b" not in mode):
            raise ValueError("file should be opened in binary mode")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise TypeError(f"offset must be an int, not {type(offset).__name__}")
        if offset < 0:
            raise ValueError(f"offset must be non-negative, got {offset}")
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int):
                raise TypeError(f"count must be an int or None, not {type(count).__name__}")
            if count <= 0:
                raise ValueError(f"count must be positive, got {count}")
        if offset:
            file.seek(offset)
            start: int | None = offset
        else:
            try:
                start = file.tell()
            except (AttributeError, OSError):  # not seekable: the position is not restored
                start = None
        total = 0
        read = 0
        conn = self._conn
        try:
            while count is None or total < count:
                want = RECV_BUFFER_SIZE if count is None else min(RECV_BUFFER_SIZE, count - total)
                chunk = file.read(want)
                if not chunk:
                    break
                read += len(chunk)
                before = conn._bytes_sent
                try:
                    self.sendall(chunk)
                except TimeoutError:
                    # The write was accepted (sealed, part of it queued), unless
                    # the timeout came first (the implicit handshake's writes).
                    if conn._bytes_sent != before:
                        total += len(chunk)
                    raise
                total += len(chunk)
        finally:
            if read != total and start is not None:
                file.seek(start + total)  # what was read and not sent goes back
        return total

    def send_message(self, message: ReadableBuffer) -> None:
        """Send one message of the message API (delivered whole by the peer's ``recv_message``).

        Same write semantics as :meth:`send`.

        Raises:
            TypeError: not bytes-like.
            nautilus.MessageTooLarge: over the context's ``max_message_size``;
                nothing was sent and the socket stays usable.
            as :meth:`send` otherwise.
        """
        if type(message) is bytes and self._ready and self._send_lone(message):
            return
        self.send_messages((message,))

    def _send_lone(self, message: bytes) -> bool:
        """The message lane of :meth:`send_message` (blocking mode, or a
        timeout): one message framed and sealed as one record
        (``Connection._seal_message``, one C call) and written at once, as
        :meth:`_submit` writes. False, having done nothing, where the general
        path must take it: non-blocking mode, earlier output still waiting, a
        key update due or scheduled, a message too large for one record or
        over ``max_message_size``, the connection closed."""
        timeout = self.gettimeout()
        if timeout == 0.0 or self._timed_rekey:
            return False
        with self._write_lock:
            if self._unsent is not None:
                return False
            try:
                with self._state_lock:  # (a reader queues output under it: checked with the seal)
                    sealed = None if self._queued else self._conn._seal_message(message)
                if sealed is None:
                    return False
                if timeout is None:
                    self._write_all(sealed)
                else:  # accepted: what the socket does not take now waits in _unsent (see send)
                    self._unsent = memoryview(sealed)
                    self._write_out(timeout, nowait=False)
            except BlockingIOError:  # made non-blocking meanwhile: accepted, the rest queued
                pass
            except BaseException as exc:  # (a record sealed and dropped: see _check_interrupted)
                self._check_interrupted(exc)
                raise
        if self._queued:  # a reader queued output while we held the lock
            self._flush_nowait()
        return True

    def send_messages(self, messages: Iterable[ReadableBuffer]) -> None:
        """Send many messages, framed together and sealed in one call (all or nothing).

        Raises:
            TypeError: ``messages`` is one bytes-like object or str, or holds
                something that is not bytes-like.
            nautilus.MessageTooLarge: one is over ``max_message_size``; none was sent.
            as :meth:`send` otherwise.
        """
        items = _iter_messages(messages)
        try:
            batch = [_as_buffer(m) for m in items]
        except TypeError as exc:
            raise TypeError(f"a message must be bytes-like: {exc}") from None
        conn = self._conn  # the limit its connection was made with
        limit = (self._context if conn is None else conn._cfg).max_message_size
        for m in batch:
            n = _nbytes(m)
            if n > limit:
                raise MessageTooLarge(
                    f"a message of {n} bytes exceeds max_message_size ({limit} bytes)"
                )
        if not self._ready:
            self._prepare_write()
        self._submit(_MESSAGES, batch)

    def update_keys(self, request_peer: bool = True) -> None:
        """Ratchet the sending keys now; with ``request_peer``, ask the peer to
        ratchet its own (it does so before it sends its next data).

        The peer refuses more than 64 key updates in a row with no data
        between them (within one second): it closes the connection with a
        protocol violation. Send data between bursts of updates.

        Raises:
            TypeError: ``request_peer`` is not a bool.
            nautilus.ClosedError: the connection is closed.
            as :meth:`send` otherwise (the key update is written like data).
        """
        if not isinstance(request_peer, bool):
            raise TypeError(f"request_peer must be a bool, not {type(request_peer).__name__}")
        if not self._ready:
            self._prepare_write()
        self._submit(_KEY_UPDATE, request_peer)
        self._push_next_write()  # (a request right behind it would wait for its ACK)

    def export_keying_material(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material bound to this session (channel binding), as in RFC 5705.

        Raises:
            TypeError: ``label``/``context`` not bytes, ``length`` not an int.
            ValueError: ``length`` not in 1..8160.
            nautilus.ClosedError: the handshake has not completed, or the
                connection is closed or failed (its secrets are wiped then).
        """
        with self._state_lock:
            return self._conn.export_keying_material(label, context, length)

    def _prepare_write(self) -> None:
        """Slow path of the writers: closed socket, implicit handshake, the
        first writes after the handshake."""
        if self._fd_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if not self._hs_done:
            with self._hs_lock:
                self._handshake_locked()
        if self._push:
            self._push_write()

    def _push_next_write(self) -> None:
        """A small record of the protocol's own has just been written (the
        handshake's last, the client's Finished or the server's tickets; a
        key update): the next write is to leave at once (:meth:`_push_write`)."""
        if self._push == _PUSH_DONE:  # (TCP_NODELAY is still ours from the last one)
            self._push = _PUSH_AGAIN
        elif self._ready and _raw_family(self) in _TCP_FAMILIES:
            self._push = _PUSH_NEXT
            self._ready = False  # (the next writer goes by _prepare_write)

    def _push_write(self) -> None:
        """Let the write after a record of the protocol's own leave at once.

        The peer may not acknowledge that record at once (delayed ACKs: 40 ms
        on Linux), and with Nagle's algorithm on, the application's next small
        write (a request, a greeting) would wait for that ACK, for a write it
        did not make. So that write goes with ``TCP_NODELAY``, and the next
        writer turns Nagle back on, as the application had it; its own writes
        in a row then behave as over ``ssl`` or a plain socket.
        """
        push = self._push
        if push == _PUSH_NEXT:
            if self._nodelay_for_now():
                self._push = _PUSH_DONE
                return  # (_ready stays False: the next writer comes back here)
        elif push == _PUSH_AGAIN:
            self._push = _PUSH_DONE
            return
        elif push == _PUSH_DONE:
            self._nagle_on()
        self._push = _PUSH_NONE
        self._ready = not self._fd_closed

    def _send_direct(self, data: bytes | bytearray | memoryview, n: int) -> None:
        """The bulk path of :meth:`send`/:meth:`sendall` in blocking mode.

        The content is sealed straight from ``data`` into a reusable buffer,
        at most ``_WRITE_PIECE`` bytes at a time, and each piece written
        before the next is sealed: no per-call allocation. One C call
        (``nt_seal_send``) seals a piece and sends it without waiting; what
        the socket does not take at once is written with ``sendall`` after
        the state lock is released (so a reader thread is never held up by a
        full socket).
        This is the fast branch of ``Connection._seal_application``: the same
        key-update budget (``Connection._budget``), checked and counted by the
        C call; where it does not apply (a key update is due, the connection is
        closed) the rest goes through the Connection as in :meth:`_submit`.
        The record limit is enforced in C (a ``nautilus.RecordLimitReached``,
        nothing sealed), so no nonce is reused.
        Output a reader queued meanwhile was sealed earlier: it goes first.
        """
        state_lock = self._state_lock
        write_lock = self._write_lock
        write_lock.acquire()
        pos = 0  # (sealed so far)
        try:
            if self._unsent is not None or self._queued:  # an earlier timeout left output
                self._write_out(None, nowait=False)
            if n <= self._wfit and type(data) is bytes:  # the common case, in short
                rc = self._seal_send_one(data, n)
                if rc != _NT_DUE:
                    pos = n
                    if rc == _NT_PARTIAL:  # the rest, with the state lock released
                        self._write_all(self._wview[self._out_len[1] : self._out_len[0]])
            while pos < n:
                step = n - pos if n - pos <= _WRITE_PIECE else _WRITE_PIECE
                state_lock.acquire()
                try:
                    conn = self._conn
                    sealer = conn._sealer  # None once closed (set after the handshake)
                    handle = None if sealer is None else sealer._handle
                    if handle is None:
                        break
                    rc = self._seal_piece(conn, handle, data, pos, step)
                    if rc == _NT_DUE:
                        break
                    earlier = self._queued
                    if earlier:
                        self._queued = []
                    pos += step
                    if rc == _NT_PARTIAL:  # the rest is written below, unlocked
                        out = self._wview[self._out_len[1] : self._out_len[0]]
                finally:
                    state_lock.release()
                if earlier:
                    earlier_out = earlier[0] if len(earlier) == 1 else b"".join(earlier)
                    self._write_all(earlier_out, out if rc == _NT_PARTIAL else None)
                elif rc == _NT_PARTIAL:  # the rest of the piece, unlocked
                    self._write_all(out)
            if pos < n:
                self._seal_rest(data, pos)
                pos = n
                self._write_out(None, nowait=False)
        except BaseException as exc:
            self._end_bulk_write(data, pos, n, exc)
        finally:
            write_lock.release()
        if self._queued:  # a reader queued output while we held the lock
            self._flush_nowait()

    def _seal_send_one(self, data: bytes, n: int) -> int:
        """The common case of the bulk writers, in short (write lock held): seal
        ``data`` (``n`` bytes, at most ``_wfit``) as one record that fits the
        buffer as it is, and send it, in one C call that never waits (under the
        state lock, taken here). Returns NT_OK (all sent), NT_PARTIAL (the
        rest is ``_wview[_out_len[1]:_out_len[0]]``) or NT_DUE, having sealed
        nothing: a key update due, the connection closed, a smaller record
        size, output a reader queued (anything for the writer's general loop)."""
        rc = _NT_DUE
        state_lock = self._state_lock
        state_lock.acquire()  # (not ``with``: twice as slow, ~2% of a 4 KiB sendall)
        try:
            conn = self._conn
            sealer = conn._sealer
            if sealer is not None and n <= conn._send_fragment and not self._queued:
                handle = sealer._handle
                if handle is not None:
                    rc = _nt_seal_send(handle, conn._budget, self.fileno(), _APP_DATA, data, n,
                                       self._wptr, n + _OVERHEAD, self._out_len)  # fmt: skip
                    if rc != _NT_OK and rc != _NT_PARTIAL:
                        if rc != _NT_DUE:
                            _b.check(rc, "seal")
                    else:
                        conn._bytes_sent += n
        finally:
            state_lock.release()
        return rc

    def _seal_piece(
        self,
        conn: Connection,
        handle: Any,
        data: bytes | bytearray | memoryview,
        pos: int,
        step: int,
    ) -> int:
        """Seal ``data[pos:pos + step]`` into the reused buffer and send it (state
        lock held): one C call, which never waits, so the lock may be held.

        Only seals if a reader queued output that must go first (fd -1). The
        key's budget is checked and counted in the same call: ``NT_DUE``
        (nothing sealed) when a key update is due first. Returns ``NT_OK``
        (all sent), ``NT_PARTIAL`` (the rest is ``_wview[_out_len[1]:
        _out_len[0]]``) or ``NT_DUE``; raises on a sealing failure.
        """
        frag = conn._send_fragment  # the sealer's record size
        need = step + (step + frag - 1) // frag * _OVERHEAD  # checked by nt_seal
        if need > len(self._wbuf):
            self._grow_wbuf(need)
        fd = -1 if self._queued else self.fileno()
        if pos == 0 and type(data) is bytes:
            rc: int = _nt_seal_send(handle, conn._budget, fd, _APP_DATA, data, step,
                                    self._wptr, need, self._out_len)  # fmt: skip
        else:
            with _from_buffer(data) as src:
                rc = _nt_seal_send(handle, conn._budget, fd, _APP_DATA, src + pos, step,
                                   self._wptr, need, self._out_len)  # fmt: skip
        if rc != _NT_OK and rc != _NT_PARTIAL:
            if rc != _NT_DUE:
                _b.check(rc, "seal")
        else:
            conn._bytes_sent += step
        return rc

    def _grow_wbuf(self, need: int) -> None:
        """A larger reusable buffer for sealing (write lock held)."""
        wbuf = bytearray(need)
        self._wbuf, self._wview = wbuf, memoryview(wbuf)
        self._wptr = _from_buffer(wbuf, require_writable=True)
        self._wfit = need - _OVERHEAD

    def _send_timed(self, data: bytes | bytearray | memoryview, n: int, timeout: float) -> bool:
        """The bulk path of :meth:`send`/:meth:`sendall` with a timeout.

        As in :meth:`_send_direct`, the content is sealed into a reusable
        buffer at most ``_WRITE_PIECE`` bytes at a time, by one C call that
        also sends each piece without waiting: no ``poll()`` before a write
        that the socket can take at once (CPython's socket calls wait first
        whenever a timeout is set) and no allocation. What the socket does not
        take is copied out of the buffer and written with the timeout before
        the next piece is sealed, as :meth:`_submit` writes. The timeout's
        promise holds: on ``TimeoutError`` the rest of ``data`` is sealed too
        and queued behind what is waiting (``data`` accepted, see :meth:`send`).

        Returns False, with nothing sealed, where the general path must take
        the call: earlier output still waiting, a key update due first, the
        connection closed.
        """
        write_lock = self._write_lock
        write_lock.acquire()
        pos = 0  # (sealed so far)
        try:
            if self._unsent is not None or self._queued:
                return False
            state_lock = self._state_lock
            if n <= self._wfit and type(data) is bytes:  # the common case, in short
                rc = self._seal_send_one(data, n)
                if rc != _NT_DUE:
                    pos = n
                    if rc == _NT_PARTIAL:  # the buffer is reused: the rest waits as a copy
                        out_len = self._out_len
                        self._unsent = memoryview(self._wview[out_len[1] : out_len[0]].tobytes())
                        self._write_out(timeout, nowait=False)
            while pos < n:
                step = n - pos if n - pos <= _WRITE_PIECE else _WRITE_PIECE
                rc = _NT_DUE
                state_lock.acquire()
                try:
                    conn = self._conn
                    sealer = conn._sealer  # None once closed
                    handle = None if sealer is None else sealer._handle
                    if handle is not None:
                        rc = self._seal_piece(conn, handle, data, pos, step)
                        if rc == _NT_PARTIAL:  # the buffer is reused: the rest waits as a copy
                            rest = self._wview[self._out_len[1] : self._out_len[0]]
                            self._queued.append(rest.tobytes())
                finally:
                    state_lock.release()
                if rc == _NT_DUE:  # a key update first (or closed): the Connection's path
                    if pos == 0:
                        return False
                    break
                pos += step
                if self._queued:
                    self._write_out(timeout, nowait=False)
            if pos < n:
                self._seal_rest(data, pos)
                pos = n
                self._write_out(timeout, nowait=False)
        except BaseException as exc:
            self._end_bulk_write(data, pos, n, exc)
        finally:
            write_lock.release()
        if self._queued:  # a reader queued output while we held the lock
            self._flush_nowait()
        return True

    def _seal_rest(self, data: bytes | bytearray | memoryview, pos: int) -> None:
        """Seal ``data[pos:]`` through the Connection and queue it (write lock held)."""
        with self._state_lock:
            self._conn.send_data(data if not pos else memoryview(data).cast("B")[pos:])
            self._take_output()

    def _submit(self, kind: int, payload: Any) -> None:
        """Seal ``payload`` and write it after everything queued, in order (see :meth:`send`)."""
        timeout = self.gettimeout()
        with self._write_lock:
            if timeout == 0.0 and (self._unsent is not None or self._queued):
                try:
                    self._write_out(timeout, nowait=False)
                except BlockingIOError:
                    raise WantWriteError(
                        errno.EAGAIN, "earlier output still waits for the socket"
                    ) from None
            try:
                with self._state_lock:
                    conn = self._conn
                    if self._timed_rekey:  # keys that are due for renewal by age go first
                        conn.handle_timer(time.time())
                    if kind == _DATA:
                        conn.send_data(payload)
                    elif kind == _MESSAGES:
                        conn.send_messages(payload)
                    else:
                        conn.update_keys(payload)
                    out = conn.data_to_send()
                    if out and (self._unsent is not None or self._queued):
                        self._queued.append(out)  # after older output, in order
                        out = b""
                if out:
                    if timeout is None:  # the common case: one write, nothing queued
                        self._write_all(out)
                    else:
                        self._unsent = memoryview(out)
                if self._unsent is not None or self._queued:
                    self._write_out(timeout, nowait=False)
            except BlockingIOError:  # non-blocking (or made so by another thread meanwhile):
                pass  # accepted, what the socket did not take is queued
            except BaseException as exc:  # (records sealed and dropped: see _check_interrupted)
                self._check_interrupted(exc)
                raise
        if self._queued:  # a reader queued output while we held the lock
            self._flush_nowait()

    # ------------------------------------------------------------ the writing

    def _take_output(self) -> None:
        """Move the Connection's output to the queue (state lock held)."""
        out = self._conn.data_to_send()
        if out:
            self._queued.append(out)

    def _write_out(self, timeout: float | None, *, nowait: bool) -> None:
        """Write what is unsent, then everything queued, in order (write lock held).

        ``nowait``: never block (one attempt per buffer). Raises what the
        socket raises; what was not written stays in ``_unsent``.
        """
        while True:
            view = self._unsent
            if view is None:
                if not self._queued:
                    return
                with self._state_lock:
                    queued = self._queued
                    self._queued = []
                buf = queued[0] if len(queued) == 1 else b"".join(queued)
                if timeout is None and not nowait:
                    self._write_all(buf)
                    continue
                view = memoryview(buf)
            self._unsent = view
            try:
                if nowait:
                    sent = _send_nowait(self, view)  # (BlockingIOError: not writable)
                    self._unsent = view[sent:] if sent < len(view) else None
                    if self._unsent is not None:
                        raise BlockingIOError(errno.EAGAIN, "the socket took part of the data")
                    continue
                while view:
                    try:
                        sent = _send_nowait(self, view)  # (usually writable: no poll first)
                    except BlockingIOError:
                        sent = _raw_send(self, view)  # waits, for the socket's timeout at most
                    view = view[sent:]
                    self._unsent = view if view else None
            except BaseException as exc:
                self._check_interrupted(exc)
                raise

    def _end_bulk_write(
        self, data: bytes | bytearray | memoryview, pos: int, n: int, exc: BaseException
    ) -> None:
        """A bulk write of ``n`` bytes stopped by ``exc`` after sealing
        ``data[:pos]`` (write lock held). Another thread gave the socket a
        timeout, or made it non-blocking, during the call (TimeoutError,
        BlockingIOError): all of ``data`` is accepted (the rest sealed and
        queued), and the call ends as a timed-out write (raising) or a
        non-blocking send (returning) does. Anything else is raised as it is,
        a signal handler's exception having failed the connection
        (:meth:`_check_interrupted`, also for a handler's TimeoutError)."""
        if self._check_interrupted(exc) or not isinstance(exc, (TimeoutError, BlockingIOError)):
            raise exc
        if pos < n:
            self._seal_rest(data, pos)
        if isinstance(exc, TimeoutError):
            raise exc

    def _write_all(
        self, buf: bytes | bytearray | memoryview, then: memoryview | None = None
    ) -> None:
        """Write all of ``buf``, then of ``then``, as socket ``sendall`` does (write
        lock held, nothing unsent before them).

        Unlike ``sendall``, a write that raises without breaking the connection
        (another thread made the socket non-blocking or gave it a timeout
        meanwhile) keeps what was not written in ``_unsent``, first in line
        (copied: the seal buffer is reused). The stream must go on with the
        rest of the record it cut: another record behind half of one makes the
        peer fail, or wait for ever. A signal handler's exception leaves the
        part written unknown: the connection fails (:meth:`_write_interrupted`).
        """
        view = memoryview(buf)
        try:
            while True:
                while view:
                    view = view[_raw_send(self, view) :]
                if then is None:
                    return
                view, then = then, None
        except BaseException as exc:
            if self._check_interrupted(exc):
                raise
            broken = isinstance(exc, OSError) and not isinstance(
                exc, (TimeoutError, BlockingIOError)
            )  # (EPIPE, a reset...: nothing more can be written; later writes say so)
            rest = b"" if broken else view.tobytes() + (b"" if then is None else then.tobytes())
            if rest:
                self._unsent = memoryview(rest)
            raise

    def _check_interrupted(self, exc: BaseException) -> bool:
        """(a write raising ``exc``; write lock held) Whether ``exc`` may hide
        how much of the write was done, which fails the connection
        (:meth:`_write_interrupted`, once). So it may when it is not the
        socket's own error nor one of ours about the write's input: a signal
        handler's (KeyboardInterrupt...). Python runs the handler as a call
        returns, and drops its result: the count of a partial send, or a
        piece sealed and partly sent by one C call, or a record sealed and not
        yet written. A TimeoutError on a socket without a timeout is a
        handler's too."""
        if isinstance(exc, (NautilusError, TypeError, ValueError)):
            return False  # (ours: raised before anything of theirs was sealed)
        if isinstance(exc, OSError) and not (
            isinstance(exc, TimeoutError) and self.gettimeout() is None
        ):
            return False
        if not self._conn.is_closed:  # (not failed yet)
            self._write_interrupted(exc)
        return True

    def _write_interrupted(self, exc: BaseException) -> None:
        """A write ended by ``exc`` after the kernel took an unknown part of it
        (:meth:`_check_interrupted`; write lock held). The stream can go on neither
        from where the write began (those bytes twice) nor after it (bytes
        missing): either way the peer would take the next record for a forged
        one. Nothing more is written: the connection fails with
        ``ConnectionLost`` (later calls raise ``ClosedError``; no alert, which
        could not follow a cut record) and TCP is shut down, so that the peer
        sees the end without close_notify."""
        error = ConnectionLost(
            f"a write was interrupted ({type(exc).__name__}) after an unknown part of it "
            "was written: nothing more can be written"
        )
        with self._state_lock:
            self._queued = []
            self._conn._fail(error, None)
            self._drain()
            self._conn.data_to_send()  # (nothing: no alert)
        self._unsent = None
        self._ready = False
        self._push = _PUSH_NONE
        self._shutdown_tcp()

    def _flush_nowait(self) -> None:
        """Write queued output if that needs no waiting: neither for the write
        lock (a writer holding it writes what was queued before releasing it)
        nor for the socket. Errors are left for the next call to meet."""
        while self._unsent is not None or self._queued:
            if not self._write_lock.acquire(blocking=False):
                return
            try:
                self._write_out(self.gettimeout(), nowait=True)
            except OSError:
                return
            finally:
                self._write_lock.release()

    # ---------------------------------------------------------------- closing

    def shutdown(self, how: int) -> None:
        """Shut the connection down: ``SHUT_WR``/``SHUT_RDWR`` send close_notify first.

        Nautilus has no half-close: after ``SHUT_WR`` (or ``SHUT_RDWR``) the
        session is over in both directions; :meth:`recv` returns what was
        already received, then ``b""``. ``SHUT_RD`` ends reading only.
        The TCP socket is then shut down as asked; ``close()`` still has to
        release it.

        It does not wait for a writer in another thread: if one is in the
        middle of a call (a ``sendall`` blocked on a full socket buffer, say),
        the close_notify is not sent (it may only follow the rest of that
        writer's output) and TCP is shut down at once, which wakes the writer
        with an ``OSError`` (``BrokenPipeError``...). The peer then reads what
        arrived, and the connection ends without close_notify
        (``ConnectionLost``). Blocked readers are woken too (``b""``).

        Raises:
            TypeError, ValueError: ``how`` is not SHUT_RD, SHUT_WR or SHUT_RDWR.
            OSError: the socket is closed or not connected; writing the
                close_notify failed. TimeoutError: its write timed out.
        """
        if isinstance(how, bool) or not isinstance(how, int):
            raise TypeError(f"how must be an int, not {type(how).__name__}")
        if how not in _SHUT_MODES:
            raise ValueError(f"how must be SHUT_RD, SHUT_WR or SHUT_RDWR, got {how}")
        if self._fd_closed:
            raise OSError(errno.EBADF, "the socket is closed")
        if how != socket.SHUT_RD:
            try:
                self._goodbye(raise_errors=True, wait_for_writer=False)
            finally:
                self._end_ticket_reading()  # (what arrives from now on is not read)
        before = self._eof, self._read_shut
        # Set first: a reader blocked in another thread wakes as soon as TCP
        # is shut down, and its empty read is then no truncation by the peer.
        self._eof = True
        self._read_shut = how != socket.SHUT_WR
        try:
            super().shutdown(how)
        except BaseException:  # (not connected...): the socket is as it was
            self._eof, self._read_shut = before
            raise

    def close(self) -> None:
        """Send close_notify and close the socket (idempotent).

        As for plain sockets, the connection stays open until the last
        ``makefile()`` object is closed too; close_notify goes out then.
        Writing it follows the socket's mode (blocking: until written; with a
        timeout: at most that long; non-blocking: one try). What has already
        arrived is read first, so that the kernel closes rather than resets;
        what the kernel still holds back (Nagle, ``TCP_CORK``) is pushed out
        before the socket is let go, so that a reset by bytes arriving at the
        last moment cannot drop it.

        Raises:
            Nothing: errors while writing the close_notify are ignored.
        """
        super().close()

    def _goodbye(self, *, raise_errors: bool, wait_for_writer: bool = True) -> None:
        """Close the Connection (close_notify once the handshake has begun) and write it.

        Without ``wait_for_writer`` (shutdown), the write lock is waited for at
        most _WRITER_GRACE: enough for a holder that never blocks (a reader
        writing its output without waiting); one that still holds it is taken
        as a writer blocked on the socket, and the close_notify stays unsent
        (it may only follow that writer's output). Shutting TCP down wakes it.
        """
        if not self._connected:
            return
        if self._started:  # (before: nothing arrived is ours to read, see _real_close)
            self._absorb_arrived()
        with self._state_lock:
            self._conn.close()
            self._take_output()
        self._eof = True
        self._ready = False
        self._push = _PUSH_NONE
        if self._unsent is None and not self._queued:
            return
        timeout = self.gettimeout()
        if timeout == 0.0:
            locked = self._write_lock.acquire(blocking=False)
        elif wait_for_writer:
            locked = self._write_lock.acquire(timeout=timeout if timeout else -1)
        else:
            grace = _WRITER_GRACE if timeout is None else min(timeout, _WRITER_GRACE)
            locked = self._write_lock.acquire(timeout=grace)
        if not locked:
            if not wait_for_writer:  # TCP is shut down next: this can never be written,
                with self._state_lock:  # and later writes must meet the ClosedError
                    self._queued = []
            return
        try:
            self._write_out(timeout, nowait=timeout == 0.0)
        except OSError:
            if raise_errors:
                raise
        finally:
            self._write_lock.release()

    def _absorb_arrived(self) -> None:
        """Before closing: feed what has already arrived (a session ticket, say).

        A socket closed with unread bytes in its kernel buffer is reset
        rather than closed, and a reset can destroy data the peer has not read
        yet. This reads, without waiting, what is there (if no reader is busy).
        """
        if not self._hs_done or self._eof or not self._read_lock.acquire(blocking=False):
            return
        try:
            if self._iend:  # held back by the direct path
                self._feed_held(self._iend)
            for n in self._arrived(self._rview):
                self._feed(n)
                if not n or self._eof:
                    return
        finally:
            self._read_lock.release()

    def _arrived(self, into: memoryview | bytearray) -> Iterator[int]:
        """Read into ``into``, without waiting, what is there: the size of each
        read (0: the end of the stream), up to 64 reads (read lock held)."""
        for _ in range(64):
            try:
                n = _recv_nowait(self, into)
            except OSError:  # (BlockingIOError: nothing more has arrived)
                return
            yield n

    def _discard_arrived(self) -> None:
        """Just before the descriptor is closed: read and drop what arrived
        since the close_notify was written (the peer's answer to a key update
        it was asked for, its own close_notify...). ``_absorb_arrived`` read
        what was there before; a write of queued output can take long after
        it. Unread bytes make the kernel reset rather than close, and a reset
        destroys what the peer has not read yet. (If no reader holds the lock.)
        A session ticket among them still goes to the session cache
        (Connection.close: a client without one reads on for it).
        """
        if not self._read_lock.acquire(blocking=False):
            return
        try:
            # (into the receive buffer: what it holds is of no use any more)
            for n in self._arrived(self._rview):
                if not n:
                    return
                with self._state_lock:  # closed: a client keeps a ticket from it
                    self._conn.receive_data(self._rview[:n])
        finally:
            self._read_lock.release()

    def _end_ticket_reading(self) -> None:
        """The closed Connection reads no more for a session ticket: the
        keys it kept for that go (Connection.close)."""
        if self._connected:
            with self._state_lock:
                self._conn.receive_eof()

    def _real_close(self) -> None:
        """Close for good (the last ``makefile()`` object is closed): close_notify, then the fd."""
        if not self._fd_closed:
            with contextlib.suppress(NautilusError):  # Connection.close() does not raise
                self._goodbye(raise_errors=False)
            # A handshake never started reads nothing: what arrived is the
            # peer's first flight, for whoever shares the descriptor (the
            # child a ForkingMixIn server forked before closing its copy).
            if self._connected and self._started:
                self._discard_arrived()
                self._end_ticket_reading()
                # Push out what the kernel may still hold back (Nagle waiting
                # for an ACK, or TCP_CORK): if bytes arrive between the last
                # read and close(), the kernel resets the connection and
                # drops unsent output, close_notify included.
                with contextlib.suppress(OSError):
                    _raw_setsockopt(self, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._fd_closed = True
            self._ready = False
            self._push = _PUSH_NONE
            self._eof = True
            # What was received and not read is gone with the socket (reads
            # now raise EBADF, as on a closed plain socket).
            self._rdata, self._rdview, self._rpos = b"", None, 0
            self._rmore.clear()
            self._early.clear()
            self._msgs.clear()
        super()._real_close()  # type: ignore[misc]

    def _shutdown_tcp(self) -> None:
        with contextlib.suppress(OSError):
            _raw_shutdown(self, socket.SHUT_RDWR)

    def detach(self) -> int:
        """Close the socket object without closing its file descriptor, which
        is returned (as ``socket.socket.detach``).

        Nothing more is written to the descriptor (no close_notify: it is the
        caller's now); the session's keys are dropped, and the object then
        behaves as a closed socket: its calls raise ``OSError(EBADF)``.
        """
        fd = super().detach()
        if not self._fd_closed:
            self._fd_closed = True
            self._ready = False
            self._push = _PUSH_NONE
            self._eof = True
            with self._state_lock:  # (nothing of its output is written: dropped)
                self._conn.close()
                self._conn.receive_eof()  # the keys kept to read tickets go too
                self._conn.data_to_send()
                while self._conn.next_event() is not None:
                    pass
                self._queued = []
                self._unsent = None
            self._rdata, self._rdview, self._rpos = b"", None, 0
            self._rmore.clear()
            self._early.clear()
            self._msgs.clear()
        return fd

    # ---------------------------------------------------- not for this socket

    def dup(self) -> NoReturn:
        """Not supported (as in ``ssl``).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError(f"can't dup() {self.__class__.__name__} instances")

    def recvfrom(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported on a connection. Raises ValueError (as ``ssl``)."""
        raise ValueError("recvfrom not allowed on instances of NautilusSocket")

    def recvfrom_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported on a connection. Raises ValueError (as ``ssl``)."""
        raise ValueError("recvfrom_into not allowed on instances of NautilusSocket")

    def sendto(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported on a connection. Raises ValueError (as ``ssl``)."""
        raise ValueError("sendto not allowed on instances of NautilusSocket")

    def recvmsg(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported. Raises NotImplementedError (as ``ssl``)."""
        raise NotImplementedError("recvmsg not allowed on instances of NautilusSocket")

    def recvmsg_into(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported. Raises NotImplementedError (as ``ssl``)."""
        raise NotImplementedError("recvmsg_into not allowed on instances of NautilusSocket")

    def sendmsg(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Not supported. Raises NotImplementedError (as ``ssl``)."""
        raise NotImplementedError("sendmsg not allowed on instances of NautilusSocket")


def wrap_socket(
    context: Context,
    sock: socket.socket,
    *,
    server_side: bool = False,
    expected_peer: PeerKey | str | None = None,
    do_handshake_on_connect: bool = True,
    server_name: str | None = None,
) -> NautilusSocket:
    """Wrap a TCP socket; what :meth:`nautilus.Context.wrap_socket` calls.

    ``sock`` is taken over (detached), as ``ssl`` does. A connected socket
    runs the handshake now when ``do_handshake_on_connect`` (it must then be
    in blocking or timeout mode); an unconnected client socket runs it in
    :meth:`NautilusSocket.connect`; otherwise the first I/O call, or
    :meth:`NautilusSocket.do_handshake`, runs it. A wrapped listening socket
    (``server_side=True``) hands out wrapped sockets from ``accept()``.

    ``server_name`` (clients) defaults to ``"host:port"`` of the peer address
    (of the address given to ``connect()`` for an unconnected socket).

    Raises:
        TypeError, ValueError: bad arguments (not a Context, not a stream
            socket, already wrapped, ``expected_peer``/``server_name`` on the
            server side, ``do_handshake_on_connect`` with a non-blocking
            socket, a server context without identity...), before any I/O.
        OSError: the socket is closed or failed.
        nautilus.HandshakeError and subclasses, TimeoutError: the handshake
            failed (the socket is closed).
    """
    if not isinstance(context, Context):
        raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
    if isinstance(sock, NautilusSocket):
        raise ValueError("the socket is already a NautilusSocket")
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("only stream (TCP) sockets can carry Nautilus")
    for name, value in (
        ("server_side", server_side),
        ("do_handshake_on_connect", do_handshake_on_connect),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    if sock.fileno() == -1:
        raise OSError(errno.EBADF, "the socket is closed")
    try:
        peer = sock.getpeername()
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.EINVAL):
            raise
        peer = None
    if not server_side and server_name is None and peer is not None:
        server_name = _default_server_name(peer)
    role = "server" if server_side else "client"
    conn = Connection(context, role, server_name=server_name, expected_peer=expected_peer)
    if do_handshake_on_connect and peer is not None and sock.gettimeout() == 0.0:
        raise ValueError("do_handshake_on_connect should not be specified for non-blocking sockets")
    wrapped = NautilusSocket._create(
        sock,
        context,
        conn,
        server_side=server_side,
        server_name=server_name,
        expected_peer=expected_peer,
        do_handshake_on_connect=do_handshake_on_connect,
        connected=peer is not None,
    )
    if do_handshake_on_connect and wrapped._connected:
        try:
            wrapped.do_handshake()
        except BaseException:
            wrapped.close()
            raise
    return wrapped


def _check_host_and_port(host: object, port: object, *, what: str, service_names: bool) -> None:
    """Check an address's host and port before any I/O, as connect() and bind()
    would after making a socket (``what`` prefixes the messages; with
    ``service_names`` the port may be a str, a service's name)."""
    if not isinstance(host, str):
        raise TypeError(f"{what}host must be a str, not {type(host).__name__}")
    if isinstance(port, bool) or not isinstance(port, (int, str) if service_names else int):
        kinds = "an int or a str" if service_names else "an int"
        raise TypeError(f"{what}port must be {kinds}, not {type(port).__name__}")
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ValueError(f"{what}port must be in 0..65535, got {port}")


def create_connection(
    address: tuple[str, int],
    *,
    context: Context,
    expected_peer: PeerKey | str | None = None,
    timeout: float | None = None,
    source_address: tuple[str, int] | None = None,
    server_name: str | None = None,
) -> NautilusSocket:
    """Connect over TCP like ``socket.create_connection``, then run the handshake.

    ``timeout`` (None: blocking; ``socket.getdefaulttimeout()`` when given
    ``socket._GLOBAL_DEFAULT_TIMEOUT``, as ``http.client`` does) stays the
    socket's timeout afterwards. ``server_name`` defaults to ``"host:port"``
    (``"[host]:port"`` for an IPv6 literal).

    Returns:
        The connected :class:`NautilusSocket`, its handshake completed.

    Raises:
        TypeError, ValueError: bad arguments (timeout 0, infinite or over
            1e9 s included: the handshake needs to block, for a bounded
            time), before any I/O.
        OSError: the TCP connection could not be made.
        TimeoutError: ``timeout`` expired (connecting or during the handshake).
        nautilus.NegotiationFailed, nautilus.AuthenticationFailed,
        nautilus.KeyAgreementFailed, nautilus.HandshakeTimeout,
        nautilus.ProtocolViolation, nautilus.SessionKeyDerivationFailed:
            the handshake failed (the socket is closed).
        nautilus.HandshakeError: the server closed the connection during the
            handshake without saying why.
    """
    if not isinstance(context, Context):
        raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError("address must be a (host, port) tuple")
    _check_host_and_port(*address, what="", service_names=True)
    if timeout is not None and timeout is not _DEFAULT_TIMEOUT:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
        if not 0 < timeout <= _MAX_TIMEOUT:
            raise ValueError(
                f"timeout must be positive and at most {_MAX_TIMEOUT:g} seconds "
                f"(or None to block), got {timeout}"
            )
    if source_address is not None:
        # Checked here, as bind() would (a socket is made and the address
        # looked up before socket.create_connection binds it, and it lets a
        # bind()'s OverflowError or TypeError out with the socket unclosed).
        if not isinstance(source_address, tuple) or len(source_address) != 2:
            raise TypeError("source_address must be a (host, port) tuple or None")
        _check_host_and_port(*source_address, what="source_address ", service_names=False)
    if server_name is None:
        server_name = _default_server_name(address)
    _check_client_arguments(server_name, expected_peer)
    # The Connection is made once TCP is connected: the SYN leaves sooner (a
    # client reconnecting in a loop waits for the server's accept).
    sock = socket.create_connection(address, timeout, source_address)
    try:
        conn = Connection(context, "client", server_name=server_name, expected_peer=expected_peer)
        wrapped = NautilusSocket._create(
            sock,
            context,
            conn,
            server_side=False,
            server_name=server_name,
            expected_peer=expected_peer,
            do_handshake_on_connect=True,
            connected=True,
        )
    except BaseException:
        sock.close()
        raise
    try:
        wrapped.do_handshake()
    except BaseException:
        wrapped.close()
        raise
    return wrapped
