"""Every rule about connection state lives in this file.

A connection is in exactly one :class:`State`. The handshake moves only along
:data:`HANDSHAKE_TRANSITIONS`: a (state, message type) pair that is not in the
table is a protocol violation (``unexpected_message``), by construction. Which
record content types a state accepts is :data:`CONTENT_ALLOWED`.
docs/protocol.md, section 4, is generated from these tables
(``python -m nautilus.protocol.state``).
"""

from __future__ import annotations

import enum

from nautilus.protocol.messages import MsgType
from nautilus.record import ContentType


class State(enum.Enum):
    """Connection states of both roles."""

    CLIENT_START = "client_start"
    CLIENT_WAIT_HELLO = "client_wait_hello"
    CLIENT_WAIT_RETRIED_HELLO = "client_wait_retried_hello"
    CLIENT_WAIT_EXTENSIONS = "client_wait_extensions"
    CLIENT_WAIT_IDENTITY = "client_wait_identity"
    CLIENT_WAIT_VERIFY = "client_wait_verify"
    CLIENT_WAIT_FINISHED = "client_wait_finished"
    SERVER_START = "server_start"
    SERVER_WAIT_HELLO = "server_wait_hello"
    SERVER_WAIT_RETRIED_HELLO = "server_wait_retried_hello"
    SERVER_WAIT_FLIGHT = "server_wait_flight"
    SERVER_WAIT_VERIFY = "server_wait_verify"
    SERVER_WAIT_FINISHED = "server_wait_finished"
    CONNECTED = "connected"
    CLOSED = "closed"

    # Members are singletons compared by identity: hash them as objects, in C.
    # (Enum's own __hash__ is a Python call, and the transition tables, the
    # state sets and the handshake's dispatch hash a state about a dozen times
    # per handshake on each side.)
    __hash__ = object.__hash__


S = State
M = MsgType

# (state, incoming handshake message) -> (handler method, states it may lead to)
HANDSHAKE_TRANSITIONS: dict[tuple[State, MsgType], tuple[str, frozenset[State]]] = {
    (S.CLIENT_WAIT_HELLO, M.HELLO_RETRY): (
        "_on_hello_retry",
        frozenset({S.CLIENT_WAIT_RETRIED_HELLO}),
    ),
    (S.CLIENT_WAIT_HELLO, M.SERVER_HELLO): (
        "_on_server_hello",
        frozenset({S.CLIENT_WAIT_EXTENSIONS}),
    ),
    (S.CLIENT_WAIT_RETRIED_HELLO, M.SERVER_HELLO): (
        "_on_server_hello",
        frozenset({S.CLIENT_WAIT_EXTENSIONS}),
    ),
    (S.CLIENT_WAIT_EXTENSIONS, M.ENCRYPTED_EXTENSIONS): (
        "_on_extensions",
        frozenset({S.CLIENT_WAIT_IDENTITY, S.CLIENT_WAIT_FINISHED}),  # full / resumed
    ),
    (S.CLIENT_WAIT_IDENTITY, M.IDENTITY): ("_on_identity", frozenset({S.CLIENT_WAIT_VERIFY})),
    (S.CLIENT_WAIT_VERIFY, M.VERIFY): ("_on_verify", frozenset({S.CLIENT_WAIT_FINISHED})),
    (S.CLIENT_WAIT_FINISHED, M.STEP_DATA): (
        "_on_step_data",
        frozenset({S.CLIENT_WAIT_FINISHED}),
    ),
    (S.CLIENT_WAIT_FINISHED, M.FINISHED): ("_on_server_finished", frozenset({S.CONNECTED})),
    (S.SERVER_WAIT_HELLO, M.CLIENT_HELLO): (
        "_on_client_hello",
        frozenset({S.SERVER_WAIT_FLIGHT, S.SERVER_WAIT_RETRIED_HELLO}),
    ),
    (S.SERVER_WAIT_RETRIED_HELLO, M.CLIENT_HELLO): (
        "_on_client_hello",
        frozenset({S.SERVER_WAIT_FLIGHT}),
    ),
    (S.SERVER_WAIT_FLIGHT, M.IDENTITY): ("_on_identity", frozenset({S.SERVER_WAIT_VERIFY})),
    (S.SERVER_WAIT_FLIGHT, M.STEP_DATA): (
        "_on_step_data",
        frozenset({S.SERVER_WAIT_FINISHED}),
    ),
    (S.SERVER_WAIT_FLIGHT, M.FINISHED): ("_on_client_finished", frozenset({S.CONNECTED})),
    (S.SERVER_WAIT_VERIFY, M.VERIFY): ("_on_verify", frozenset({S.SERVER_WAIT_FINISHED})),
    (S.SERVER_WAIT_FINISHED, M.STEP_DATA): (
        "_on_step_data",
        frozenset({S.SERVER_WAIT_FINISHED}),
    ),
    (S.SERVER_WAIT_FINISHED, M.FINISHED): ("_on_client_finished", frozenset({S.CONNECTED})),
    (S.CONNECTED, M.NEW_SESSION_TICKET): (
        "_on_new_session_ticket",  # client only (RECEIVED_BY_CLIENT_ONLY)
        frozenset({S.CONNECTED}),
    ),
}

# Messages only a client may receive. ``connected`` is the one state both
# roles share: there a server refuses these as it refuses a pair missing from
# the table above (unexpected_message), before their body is decoded.
RECEIVED_BY_CLIENT_ONLY = frozenset({M.NEW_SESSION_TICKET})

# Transitions made by local actions rather than by a received message.
LOCAL_TRANSITIONS: dict[tuple[State, str], State] = {
    (S.CLIENT_START, "start"): S.CLIENT_WAIT_HELLO,
    (S.SERVER_START, "start"): S.SERVER_WAIT_HELLO,
}

HANDSHAKE_STATES = frozenset(s for s in State if s not in (S.CONNECTED, S.CLOSED))

# Which record content types each state accepts from the peer. Alerts are always
# accepted (until closed); handshake messages only where the table above has a
# row; application data and key updates only once connected.
CONTENT_ALLOWED: dict[State, frozenset[int]] = {
    s: frozenset({ContentType.ALERT, ContentType.HANDSHAKE}) for s in HANDSHAKE_STATES
}
CONTENT_ALLOWED[S.CONNECTED] = frozenset(
    {
        ContentType.ALERT,
        ContentType.APPLICATION_DATA,
        ContentType.KEY_UPDATE,
        ContentType.MESSAGE,
        ContentType.HANDSHAKE,  # NewSessionTicket only (the table above)
    }
)
# Closed: nothing is accepted. (A client that closed before its first
# session ticket arrived still reads the server's records for tickets alone,
# and stops reading at anything else, without an answer or an error:
# Connection._read_after_close, docs/sessions.md section 2.1.)
CONTENT_ALLOWED[S.CLOSED] = frozenset()

# Early data (0-RTT): a server that accepted it reads, right after the
# ClientHello, exactly the number of application-data records the hello
# announced, under the early traffic keys; one that refused it skips them
# unread. This is the only application data accepted before `connected`.

# States in which a plaintext (not yet encrypted) handshake record may arrive.
PLAINTEXT_HANDSHAKE_STATES = frozenset(
    {
        S.CLIENT_WAIT_HELLO,
        S.CLIENT_WAIT_RETRIED_HELLO,
        S.SERVER_WAIT_HELLO,
        S.SERVER_WAIT_RETRIED_HELLO,
    }
)


def transition(state: State, msg: MsgType, *, client: bool) -> tuple[str, frozenset[State]] | None:
    """The handler and allowed next states for ``msg`` received in ``state``
    by a client (``client``) or a server, or None: a protocol violation."""
    if not client and msg in RECEIVED_BY_CLIENT_ONLY:
        return None
    return HANDSHAKE_TRANSITIONS.get((state, msg))


def diagram() -> str:
    """A Markdown table of the transitions, for docs/protocol.md."""
    lines = ["| State | Receives | Goes to |", "|---|---|---|"]
    for (state, action), nxt in LOCAL_TRANSITIONS.items():
        lines.append(f"| `{state.value}` | (local: {action}) | `{nxt.value}` |")
    for (state, msg), (_handler, nexts) in HANDSHAKE_TRANSITIONS.items():
        goes = ", ".join(f"`{n.value}`" for n in sorted(nexts, key=lambda s: s.value))
        who = " (client only)" if msg in RECEIVED_BY_CLIENT_ONLY else ""
        lines.append(f"| `{state.value}` | {msg.name}{who} | {goes} |")
    return "\n".join(lines)
