"""The handshake engine: a :class:`Handshake` is an ordered list of steps.

Three core steps are the protocol itself and always present, in this order:
key exchange, authentication, Finished. Applications add
:class:`CustomProtocolStep` objects between authentication and Finished; they
run inside the encrypted handshake, after key agreement and before Finished.

A custom step has up to three hooks, all optional:

* ``server_payload(ctx)``: bytes the server sends in its flight (or None);
* ``client_payload(ctx, server_payload)``: bytes the client answers with (or
  None); it may raise to reject the server;
* ``verify_client_payload(ctx, payload)``: the server's check of the answer;
  it raises to reject the client. It must return None: any other answer
  (``False``...) fails the handshake too, rather than accept the client.

Hooks are plain functions, run synchronously inside the handshake:
:class:`CustomProtocolStep` refuses an ``async def`` hook (``TypeError``), and
a hook that returns a coroutine fails the handshake.

A step runs only when both sides support its protocol id (the hellos carry the
ids); a step marked ``required`` that the peer lacks fails the handshake with
:class:`nautilus.NegotiationFailed`. A hook that raises fails the handshake with
:class:`nautilus.AuthenticationFailed` (or the :class:`nautilus.HandshakeError`
it raised).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from nautilus.identity import Certificate, PeerKey, TrustStore

_ID_RE = re.compile(r"[\x21-\x7e]{1,255}")  # the whole id (fullmatch: no trailing newline)

MAX_CUSTOM_STEPS = 255
"""Most custom steps in a handshake (the hellos count them in one byte)."""
MAX_CUSTOM_STEPS_SIZE = 16384
"""Most bytes the custom steps' offers take in the ClientHello: the sum of
``len(protocol_id) + 2`` over the custom steps (the rest of the hello, a
resumption ticket included, must fit in a 64 KiB handshake message)."""


@dataclass
class StepContext:
    """What a step's hooks can see of the handshake in progress."""

    role: str
    """"client" or "server": the side running the hook."""
    namespace: str
    transcript_hash: bytes
    """SHA-256 of the transcript so far (binds a payload to this handshake)."""
    peer_key: PeerKey | None
    """The peer's authenticated identity key, when known."""
    state: dict[str, Any] = field(default_factory=dict, repr=False)
    """Scratch space kept for this step for the whole handshake (left out of
    the repr: hooks may keep tokens there)."""


class HandshakeStep:
    """Base class of handshake steps."""

    protocol_id: str = ""
    required: bool = False
    core: ClassVar[bool] = False

    def server_payload(self, ctx: StepContext) -> bytes | None:
        """Bytes for the server's flight, or None to send nothing."""
        return None

    def client_payload(self, ctx: StepContext, server_payload: bytes | None) -> bytes | None:
        """Bytes for the client's flight, or None; raise to reject the server."""
        return None

    def verify_client_payload(self, ctx: StepContext, payload: bytes | None) -> None:
        """Server-side check of the client's payload; raise to reject the client."""
        return None

    def __repr__(self) -> str:
        req = " required" if self.required else ""
        return f"<{type(self).__name__} {self.protocol_id!r}{req}>"


class KeyExchangeStep(HandshakeStep):
    """Core: the hybrid key exchange (group negotiation, key shares)."""

    protocol_id = "nautilus/key-exchange"
    required = True
    core = True


class AuthenticationStep(HandshakeStep):
    """Core: identities, signatures over the transcript, and the trust decision.

    Replace it with a subclass that overrides :meth:`verify_peer` to add a
    trust rule; the signature checks stay in the protocol.
    """

    protocol_id = "nautilus/authentication"
    required = True
    core = True

    def verify_peer(
        self,
        trust: TrustStore,
        key: PeerKey,
        *,
        certificate: Certificate | None,
        name: str | None,
        now: float,
        expected_peer: PeerKey | str | None,
    ) -> str:
        """Decide whether ``key`` is trusted; return how (see TrustStore.verify).

        The answer must be a non-empty str (it becomes ``SessionInfo.trust``);
        anything else (``False``, ``None``...) rejects the peer, as raising does.
        ``trust`` may record what it decides (a first use in the known-peers
        file); for a key read from a session ticket, which did not prove
        itself in this handshake, it is given a store that records nothing.

        Raises:
            nautilus.AuthenticationFailed: not trusted.
        """
        return trust.verify(
            key, certificate=certificate, name=name, now=now, expected_peer=expected_peer
        )


class FinishedStep(HandshakeStep):
    """Core: the Finished MACs that confirm both sides hold the same keys."""

    protocol_id = "nautilus/finished"
    required = True
    core = True


class CustomProtocolStep(HandshakeStep):
    """An application step; give hooks as callables or override the methods.

    Args:
        protocol_id: 1 to 255 printable ASCII characters, unique in a handshake
            (for example ``"example.com/access-token/1"``).
        required: fail the handshake if the peer does not support this step.

    Raises:
        TypeError, ValueError: a bad protocol id or a hook that is not callable.
    """

    def __init__(
        self,
        protocol_id: str,
        *,
        required: bool = False,
        server_payload: Callable[[StepContext], bytes | None] | None = None,
        client_payload: Callable[[StepContext, bytes | None], bytes | None] | None = None,
        verify_client_payload: Callable[[StepContext, bytes | None], None] | None = None,
    ) -> None:
        self.protocol_id = _check_id(protocol_id)
        if not isinstance(required, bool):
            raise TypeError(f"required must be a bool, not {type(required).__name__}")
        self.required = required
        for name, fn in (
            ("server_payload", server_payload),
            ("client_payload", client_payload),
            ("verify_client_payload", verify_client_payload),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable")
            if inspect.iscoroutinefunction(fn):
                raise TypeError(
                    f"{name} must be a plain function: hooks run synchronously inside "
                    "the handshake, so an async function would never run"
                )
        self._server_payload = server_payload
        self._client_payload = client_payload
        self._verify = verify_client_payload

    def server_payload(self, ctx: StepContext) -> bytes | None:
        return self._server_payload(ctx) if self._server_payload else None

    def client_payload(self, ctx: StepContext, server_payload: bytes | None) -> bytes | None:
        return self._client_payload(ctx, server_payload) if self._client_payload else None

    def verify_client_payload(self, ctx: StepContext, payload: bytes | None) -> None:
        if self._verify is not None:
            return self._verify(ctx, payload)  # (anything but None fails the handshake)
        return None


def _check_id_type(protocol_id: object) -> str:
    if not isinstance(protocol_id, str):
        raise TypeError(f"protocol_id must be a str, not {type(protocol_id).__name__}")
    return protocol_id


def _check_step(step: object) -> HandshakeStep:
    if not isinstance(step, HandshakeStep):
        raise TypeError(f"handshake steps must be HandshakeStep objects, not {step!r}")
    return step


def _check_id(protocol_id: object) -> str:
    protocol_id = _check_id_type(protocol_id)
    if not _ID_RE.fullmatch(protocol_id):
        raise ValueError(
            f"protocol_id must be 1-255 printable ASCII characters without spaces: {protocol_id!r}"
        )
    return protocol_id


_CORE_ORDER = (KeyExchangeStep, AuthenticationStep, FinishedStep)


class Handshake:
    """An ordered, editable list of handshake steps.

    Raises (every editing call):
        TypeError: not a HandshakeStep, a protocol id that is not a str, a
            step whose ``required`` is not a bool, or an index that is not an int.
        ValueError: a duplicate id, an unknown id, an index out of range, a
            custom step placed outside
            the authentication..Finished span, removal of a core step, or more
            custom steps than a hello carries (over :data:`MAX_CUSTOM_STEPS`
            steps, or ids over :data:`MAX_CUSTOM_STEPS_SIZE` bytes in all).
    """

    def __init__(self, steps: Iterable[HandshakeStep] | None = None) -> None:
        self._steps: list[HandshakeStep] = (
            list(steps) if steps is not None else [cls() for cls in _CORE_ORDER]
        )
        self._validate(self._steps)

    @property
    def steps(self) -> tuple[HandshakeStep, ...]:
        """All steps in order."""
        return tuple(self._steps)

    @property
    def custom_steps(self) -> tuple[HandshakeStep, ...]:
        """The non-core steps, in the order they run."""
        return tuple(s for s in self._steps if not s.core)

    @property
    def authentication(self) -> AuthenticationStep:
        """The (possibly replaced) authentication step."""
        for s in self._steps:
            if isinstance(s, AuthenticationStep):
                return s
        raise AssertionError("validated handshakes always have an authentication step")

    def ids(self) -> list[str]:
        """Protocol ids in order."""
        return [s.protocol_id for s in self._steps]

    def add(self, step: HandshakeStep) -> None:
        """Append a custom step (it runs just before Finished)."""
        self.insert(len(self._steps) - 1, step)

    def insert(self, index: int, step: HandshakeStep) -> None:
        """Insert ``step`` at ``index`` of :attr:`steps` (an int from
        ``-len(steps)`` to ``len(steps)``, as for ``list.insert``)."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index must be an int, not {type(index).__name__}")
        if not -len(self._steps) <= index <= len(self._steps):
            raise ValueError(f"index {index} is outside -{len(self._steps)}..{len(self._steps)}")
        candidate = list(self._steps)
        candidate.insert(index, step)
        self._validate(candidate)
        self._steps = candidate

    def remove(self, protocol_id: str) -> HandshakeStep:
        """Remove and return the step with ``protocol_id`` (core steps stay)."""
        i = self._index(protocol_id)
        if self._steps[i].core:
            raise ValueError(
                f"{protocol_id!r} is a core step of the protocol and cannot be removed"
            )
        return self._steps.pop(i)

    def replace(self, protocol_id: str, step: HandshakeStep) -> HandshakeStep:
        """Put ``step`` in place of the step with ``protocol_id``; return the old one.

        A core step may only be replaced by a subclass of its own class.
        """
        _check_step(step)
        i = self._index(protocol_id)
        old = self._steps[i]
        if old.core:
            base = next(cls for cls in _CORE_ORDER if isinstance(old, cls))
            if not isinstance(step, base):
                raise ValueError(f"{protocol_id!r} can only be replaced by a {base.__name__}")
        candidate = list(self._steps)
        candidate[i] = step
        self._validate(candidate)
        self._steps = candidate
        return old

    def _index(self, protocol_id: str) -> int:
        _check_id_type(protocol_id)
        for i, s in enumerate(self._steps):
            if s.protocol_id == protocol_id:
                return i
        raise ValueError(f"no step with protocol id {protocol_id!r}")

    @staticmethod
    def _validate(steps: list[HandshakeStep]) -> None:
        seen: set[str] = set()
        custom = size = 0
        for s in steps:
            _check_id(_check_step(s).protocol_id)
            if not isinstance(s.required, bool):
                raise TypeError(
                    f"step {s.protocol_id!r}: required must be a bool, "
                    f"not {type(s.required).__name__}"
                )
            if s.protocol_id in seen:
                raise ValueError(f"duplicate handshake step id {s.protocol_id!r}")
            seen.add(s.protocol_id)
            if not s.core:
                custom += 1
                size += len(s.protocol_id) + 2  # id<8> and the required flag
        if custom > MAX_CUSTOM_STEPS:
            raise ValueError(
                f"a handshake has at most {MAX_CUSTOM_STEPS} custom steps, got {custom}"
            )
        if size > MAX_CUSTOM_STEPS_SIZE:
            raise ValueError(
                f"the custom steps' ids take {size} bytes of the ClientHello "
                f"(len(protocol_id) + 2 each); at most {MAX_CUSTOM_STEPS_SIZE} are allowed"
            )
        core = [s for s in steps if s.core]
        if len(core) != 3 or not all(
            isinstance(s, cls) for s, cls in zip(core, _CORE_ORDER, strict=True)
        ):
            raise ValueError("the core steps must be key exchange, authentication, Finished")
        positions = [i for i, s in enumerate(steps) if s.core]
        for i, s in enumerate(steps):
            if not s.core and not positions[1] < i < positions[2]:
                raise ValueError(
                    f"custom step {s.protocol_id!r} must come after authentication "
                    "and before Finished"
                )

    def __repr__(self) -> str:
        return f"<Handshake {self.ids()}>"
