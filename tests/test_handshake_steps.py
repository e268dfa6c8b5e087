"""Custom handshake steps (CustomProtocolStep), the Handshake editing API, a
replaced AuthenticationStep, and what a step's hooks see (StepContext)."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any, NoReturn

import pytest
from protocol_helpers import (
    NOW,
    Pair,
    assert_closed_with,
    cached_identity,
    drain_events,
    event_types,
    patch_method,
    pump,
    received_data,
    split_plain_handshake,
    split_records,
)

from nautilus import (
    AlertReceived,
    AuthenticationFailed,
    AuthenticationStep,
    ClosedError,
    ConnectionClosed,
    ConnectionLost,
    Context,
    CustomProtocolStep,
    Handshake,
    HandshakeCompleted,
    HandshakeError,
    HandshakeStep,
    NegotiationFailed,
    PeerKey,
    ProtocolViolation,
    State,
    StepContext,
)
from nautilus.protocol.connection import _MAX_STEP_PAYLOAD, Connection
from nautilus.protocol.messages import (
    MAX_HANDSHAKE_MESSAGE,
    RECORD_SEALED,
    Finished,
    MsgType,
    StepData,
)
from nautilus.protocol.steps import (
    MAX_CUSTOM_STEPS,
    MAX_CUSTOM_STEPS_SIZE,
    FinishedStep,
    KeyExchangeStep,
)

CORE = ["nautilus/key-exchange", "nautilus/authentication", "nautilus/finished"]


def handshake_with(*steps: HandshakeStep) -> Handshake:
    hs = Handshake()
    for step in steps:
        hs.add(step)
    return hs


def run(
    server_steps: tuple[HandshakeStep, ...] = (),
    client_steps: tuple[HandshakeStep, ...] = (),
    *,
    server: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
) -> Pair:
    server_opts = dict(server or {}, handshake=handshake_with(*server_steps))
    client_opts = dict(client or {}, handshake=handshake_with(*client_steps))
    pair = Pair.make(server=server_opts, client=client_opts)
    pair.connect()
    return pair


def steps_of(events: list[object]) -> tuple[str, ...]:
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1, events
    return done[0].session.steps


# ------------------------------------------------------------------ access token

TOKEN_KEY = os.urandom(32)


def _token_step(token: bytes) -> tuple[CustomProtocolStep, CustomProtocolStep]:
    def client_payload(ctx: StepContext, server_payload: bytes | None) -> bytes:
        assert server_payload is None
        return token

    def verify(ctx: StepContext, payload: bytes | None) -> None:
        want = hmac.new(TOKEN_KEY, b"alice", hashlib.sha256).digest()
        if payload is None or not hmac.compare_digest(payload, want):
            raise ValueError("bad access token")

    sid = "example.com/access-token/1"
    return (
        CustomProtocolStep(sid, required=True, verify_client_payload=verify),
        CustomProtocolStep(sid, required=True, client_payload=client_payload),
    )


def test_access_token_accepted() -> None:
    good = hmac.new(TOKEN_KEY, b"alice", hashlib.sha256).digest()
    server_step, client_step = _token_step(good)
    pair = run((server_step,), (client_step,))
    assert steps_of(pair.client_events) == ("example.com/access-token/1",)
    assert steps_of(pair.server_events) == ("example.com/access-token/1",)


def test_access_token_rejected_fails_on_both_sides() -> None:
    server_step, client_step = _token_step(b"forged" * 5)
    pair = run((server_step,), (client_step,))
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "bad access token" in str(pair.server.error)
    assert "example.com/access-token/1" in str(pair.server.error)
    assert "HandshakeCompleted" not in event_types(pair.server_events)
    # The client had finished its side (1-RTT) and then learns of the rejection.
    assert event_types(pair.client_events) == [
        "HandshakeCompleted",
        "AlertReceived",
        "ConnectionClosed",
    ]
    assert pair.client_events[1] == AlertReceived(42, "authentication_failed")
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)


def test_a_completed_handshake_drops_the_step_payloads_and_state() -> None:
    """The payloads (an access token...) and the hooks' scratch state serve the
    handshake only: once it completes, neither side keeps them."""
    sid = "example.com/access-token/1"
    token = b"bearer-token-" + os.urandom(16)

    def server_payload(ctx: StepContext) -> bytes:
        ctx.state["challenge"] = b"challenge"
        return b"challenge"

    def client_payload(ctx: StepContext, payload: bytes | None) -> bytes:
        ctx.state["token"] = token
        return token

    pair = run(
        (CustomProtocolStep(sid, server_payload=server_payload),),
        (CustomProtocolStep(sid, client_payload=client_payload),),
    )
    assert pair.server.handshake_complete, pair.server.error
    assert pair.client.handshake_complete, pair.client.error
    for conn in (pair.server, pair.client):
        assert conn._peer_payloads == {}
        assert conn._step_state == {}


@pytest.mark.parametrize("rejecting", ["server", "client"])
def test_a_failed_handshake_drops_the_step_payloads_and_state(rejecting: str) -> None:
    """A step payload may be a secret (an access token): a handshake that fails
    drops the payloads received and the hooks' scratch state, as a completed
    one does, on both sides."""
    sid = "example.com/access-token/1"
    token, challenge = b"bearer-token-" + os.urandom(16), b"challenge-" + os.urandom(16)

    def server_payload(ctx: StepContext) -> bytes:
        ctx.state["challenge"] = challenge
        return challenge

    def client_payload(ctx: StepContext, payload: bytes | None) -> bytes:
        ctx.state["token"] = token
        if rejecting == "client":
            raise ValueError("the client rejects the server")
        return token

    def verify(ctx: StepContext, payload: bytes | None) -> None:
        raise ValueError("the server rejects the client")

    pair = run(
        (CustomProtocolStep(sid, server_payload=server_payload, verify_client_payload=verify),),
        (CustomProtocolStep(sid, client_payload=client_payload),),
    )
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    failed = pair.server if rejecting == "server" else pair.client
    assert f"{rejecting} rejects" in str(failed.error)
    for conn in (pair.server, pair.client):
        assert conn._peer_payloads == {}
        assert conn._step_state == {}


# ----------------------------------------------------------------- proof of work


def _leading_zero_bits(digest: bytes) -> int:
    n = int.from_bytes(digest, "big")
    return len(digest) * 8 - n.bit_length()


class ProofOfWork(HandshakeStep):
    """Server: a challenge; client: a nonce with ``bits`` leading zero bits of
    SHA-256(challenge || nonce); server: the check."""

    protocol_id = "example.com/pow/1"
    required = True

    def __init__(self, bits: int = 8, *, cheat: bool = False, max_bits: int = 16) -> None:
        self.bits = bits
        self.cheat = cheat
        self.max_bits = max_bits
        self.tries = 0

    def server_payload(self, ctx: StepContext) -> bytes:
        challenge = os.urandom(16) + bytes([self.bits])
        ctx.state["challenge"] = challenge
        return challenge

    def client_payload(self, ctx: StepContext, server_payload: bytes | None) -> bytes:
        assert server_payload is not None
        assert len(server_payload) == 17
        bits = server_payload[16]
        if bits > self.max_bits:
            raise AuthenticationFailed(f"proof of work of {bits} bits is too expensive")
        for nonce in range(1 << 24):
            self.tries += 1
            candidate = nonce.to_bytes(8, "big")
            good = _leading_zero_bits(hashlib.sha256(server_payload + candidate).digest()) >= bits
            if good != self.cheat:  # a cheater sends the first nonce that does not qualify
                return candidate
        raise AssertionError("no nonce found")

    def verify_client_payload(self, ctx: StepContext, payload: bytes | None) -> None:
        challenge = ctx.state["challenge"]
        if payload is None or len(payload) != 8:
            raise ValueError("missing proof of work")
        digest = hashlib.sha256(challenge + payload).digest()
        if _leading_zero_bits(digest) < challenge[16]:
            raise ValueError("insufficient proof of work")


def test_proof_of_work_step() -> None:
    client_pow = ProofOfWork()
    pair = run((ProofOfWork(bits=10),), (client_pow,))
    assert steps_of(pair.server_events) == ("example.com/pow/1",)
    assert steps_of(pair.client_events) == ("example.com/pow/1",)
    assert client_pow.tries >= 1


def test_proof_of_work_cheater_is_rejected() -> None:
    pair = run((ProofOfWork(bits=12),), (ProofOfWork(cheat=True),))
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "insufficient proof of work" in str(pair.server.error)
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)


def test_client_refuses_an_expensive_challenge() -> None:
    pair = run((ProofOfWork(bits=40),), (ProofOfWork(max_bits=16),))
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "too expensive" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert AlertReceived(42, "authentication_failed") in pair.server_events


# ------------------------------------------------------------- rejections, errors


def test_client_hook_raising_a_plain_exception_is_authentication_failed() -> None:
    def boom(ctx: StepContext, payload: bytes | None) -> bytes:
        raise RuntimeError("server payload looks wrong")

    sid = "example.com/check"
    pair = run(
        (CustomProtocolStep(sid, server_payload=lambda ctx: b"x"),),
        (CustomProtocolStep(sid, client_payload=boom),),
    )
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "example.com/check" in str(pair.client.error)
    assert "server payload looks wrong" in str(pair.client.error)
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)


def test_hook_raising_a_handshake_error_keeps_its_class() -> None:
    def refuse(ctx: StepContext) -> bytes:
        raise NegotiationFailed("no compatible policy")

    sid = "example.com/policy"
    pair = run((CustomProtocolStep(sid, server_payload=refuse),), (CustomProtocolStep(sid),))
    assert_closed_with(pair.server, pair.server_events, NegotiationFailed)
    assert str(pair.server.error) == "no compatible policy"
    # The peer learns only "authentication_failed".
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)


@pytest.mark.parametrize("base", [ValueError, NegotiationFailed, AuthenticationFailed])
@pytest.mark.parametrize("raiser", ["hook", "trust rule"])
def test_an_exception_whose_str_fails_still_fails_the_handshake_cleanly(
    raiser: str, base: type[Exception]
) -> None:
    """Outside code may raise an exception whose ``__str__`` raises: the
    handshake fails with an alert and the connection closes all the same
    (receive_data does not raise, nothing is left half-open)."""

    class Unprintable(base):  # type: ignore[valid-type,misc]
        def __str__(self) -> str:
            raise RuntimeError("str() failed")

    def refuse(*_args: object, **_kwargs: object) -> NoReturn:
        raise Unprintable()

    if raiser == "hook":
        sid = "example.com/unprintable"
        pair = Pair.make(
            server={"handshake": handshake_with(CustomProtocolStep(sid, server_payload=refuse))},
            client={"handshake": handshake_with(CustomProtocolStep(sid))},
        )
        failing, other = pair.server, pair.client
    else:

        class Refuse(AuthenticationStep):
            def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
                return refuse()

        pair = Pair.make(client=_client_with_policy(Refuse()))
        failing, other = pair.client, pair.server
    pair.connect()
    assert failing.is_closed
    assert isinstance(failing.error, HandshakeError)
    assert not failing._in_hook
    assert failing._keys is None
    assert other.is_closed


@pytest.mark.parametrize("side", ["server", "client"])
def test_hook_returning_a_non_bytes_value(side: str) -> None:
    sid = "example.com/bad-return"
    if side == "server":
        server_step = CustomProtocolStep(sid, server_payload=lambda ctx: "text")  # type: ignore[arg-type,return-value]
        client_step = CustomProtocolStep(sid)
    else:
        server_step = CustomProtocolStep(sid)
        client_step = CustomProtocolStep(sid, client_payload=lambda ctx, p: bytearray(b"x"))  # type: ignore[arg-type,return-value]
    pair = run((server_step,), (client_step,))
    me, peer = (pair.server, pair.client) if side == "server" else (pair.client, pair.server)
    my_events, peer_events = (
        (pair.server_events, pair.client_events)
        if side == "server"
        else (pair.client_events, pair.server_events)
    )
    assert_closed_with(me, my_events, HandshakeError)
    assert "must return bytes or None" in str(me.error)
    assert_closed_with(peer, peer_events, HandshakeError)
    assert AlertReceived(80, "internal_error") in peer_events


class _AsyncVerifyStep(CustomProtocolStep):
    """A subclass whose verify hook was written as a coroutine by mistake."""

    async def verify_client_payload(  # type: ignore[override]
        self, ctx: StepContext, payload: bytes | None
    ) -> None:
        raise ValueError("never runs")


@pytest.mark.parametrize("answer", ["false", "true", "zero", "coroutine"])
def test_verify_client_payload_fails_closed_on_any_answer_but_none(answer: str) -> None:
    """Only raising rejects the client: a verify hook written as a comparison
    (False for a wrong token) or as a coroutine (its check never runs)
    accepted every client before. Any answer but None now fails the
    handshake as a local error (docs/protocol.md, section 3.2)."""
    sid = "example.com/verify-answer"
    server_step: CustomProtocolStep
    if answer == "coroutine":
        server_step = _AsyncVerifyStep(sid, required=True)
    else:
        value = {"false": False, "true": True, "zero": 0}[answer]
        server_step = CustomProtocolStep(
            sid,
            required=True,
            verify_client_payload=lambda ctx, p: value,  # type: ignore[arg-type,return-value]
        )
    client_step = CustomProtocolStep(sid, client_payload=lambda ctx, p: b"wrong token")
    pair = run((server_step,), (client_step,))
    assert_closed_with(pair.server, pair.server_events, HandshakeError)
    assert "verify_client_payload must return None" in str(pair.server.error)
    assert not any(isinstance(e, HandshakeCompleted) for e in pair.server_events)
    assert AlertReceived(80, "internal_error") in pair.client_events


def test_async_hooks_are_refused_when_the_step_is_made() -> None:
    async def hook(ctx: StepContext, *args: object) -> None:
        return None

    for name in ("server_payload", "client_payload", "verify_client_payload"):
        with pytest.raises(TypeError, match=f"{name} must be a plain function"):
            CustomProtocolStep("a.example", **{name: hook})


# -------------------------------------------------------------- negotiation


def _counting_step(sid: str, calls: list[str], *, required: bool = False) -> CustomProtocolStep:
    def sp(ctx: StepContext) -> bytes:
        calls.append(f"{ctx.role}:server_payload:{sid}")
        return b"s"

    def cp(ctx: StepContext, payload: bytes | None) -> bytes:
        calls.append(f"{ctx.role}:client_payload:{sid}")
        return b"c"

    def vp(ctx: StepContext, payload: bytes | None) -> None:
        calls.append(f"{ctx.role}:verify:{sid}")

    return CustomProtocolStep(
        sid, required=required, server_payload=sp, client_payload=cp, verify_client_payload=vp
    )


@pytest.mark.parametrize("holder", ["server", "client"])
def test_optional_step_on_one_side_only_is_skipped(holder: str) -> None:
    calls: list[str] = []
    step = _counting_step("example.com/optional", calls)
    pair = run((step,) if holder == "server" else (), (step,) if holder == "client" else ())
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    assert steps_of(pair.client_events) == ()
    assert steps_of(pair.server_events) == ()
    assert calls == []


@pytest.mark.parametrize("holder", ["server", "client"])
def test_required_step_unsupported_by_the_peer(holder: str) -> None:
    calls: list[str] = []
    step = _counting_step("example.com/required", calls, required=True)
    pair = run((step,) if holder == "server" else (), (step,) if holder == "client" else ())
    assert_closed_with(pair.server, pair.server_events, NegotiationFailed)
    assert_closed_with(pair.client, pair.client_events, NegotiationFailed)
    assert "example.com/required" in str(pair.server.error)
    assert calls == []


def test_required_on_one_side_optional_on_the_other_runs() -> None:
    calls: list[str] = []
    pair = run(
        (_counting_step("example.com/s", calls, required=True),),
        (_counting_step("example.com/s", calls, required=False),),
    )
    assert steps_of(pair.client_events) == ("example.com/s",)
    assert calls == [
        "server:server_payload:example.com/s",
        "client:client_payload:example.com/s",
        "server:verify:example.com/s",
    ]


def test_steps_run_in_the_servers_order() -> None:
    calls: list[str] = []
    a_s, b_s = _counting_step("a.example/1", calls), _counting_step("b.example/1", calls)
    a_c, b_c = _counting_step("a.example/1", calls), _counting_step("b.example/1", calls)
    pair = run((a_s, b_s), (b_c, a_c))
    assert steps_of(pair.server_events) == ("a.example/1", "b.example/1")
    assert steps_of(pair.client_events) == ("a.example/1", "b.example/1")
    assert calls == [
        "server:server_payload:a.example/1",
        "server:server_payload:b.example/1",
        "client:client_payload:a.example/1",
        "client:client_payload:b.example/1",
        "server:verify:a.example/1",
        "server:verify:b.example/1",
    ]


def test_hooks_returning_none_send_nothing() -> None:
    seen: list[Any] = []
    sid = "example.com/silent"
    pair = run(
        (CustomProtocolStep(sid, verify_client_payload=lambda ctx, p: seen.append(("v", p))),),
        (CustomProtocolStep(sid, client_payload=lambda ctx, p: seen.append(("c", p))),),
    )
    assert pair.server.handshake_complete
    assert seen == [("c", None), ("v", None)]


# ------------------------------------------------------------------ StepContext


def test_step_context_sees_transcript_hash_peer_key_and_keeps_state() -> None:
    seen: list[tuple[str, StepContext, bytes, PeerKey | None]] = []
    client_ident = cached_identity("ed25519", 1)
    server_ident = cached_identity()

    def sp(ctx: StepContext) -> bytes:
        ctx.state["n"] = 1
        seen.append(("sp", ctx, ctx.transcript_hash, ctx.peer_key))
        return ctx.transcript_hash

    def cp(ctx: StepContext, payload: bytes | None) -> bytes:
        seen.append(("cp", ctx, ctx.transcript_hash, ctx.peer_key))
        assert payload is not None
        assert len(payload) == 32
        return payload

    def vp(ctx: StepContext, payload: bytes | None) -> None:
        ctx.state["n"] += 1
        seen.append(("vp", ctx, ctx.transcript_hash, ctx.peer_key))
        # The client echoed the hash the server saw when it sent its payload.
        assert payload == seen[0][2]

    sid = "example.com/binding"
    pair = run(
        (CustomProtocolStep(sid, server_payload=sp, verify_client_payload=vp),),
        (CustomProtocolStep(sid, client_payload=cp),),
        server={"namespace": "ns/1", "client_auth": "required"},
        client={"namespace": "ns/1", "identity": client_ident},
    )
    assert pair.server.handshake_complete
    (_, sctx, sp_hash, sp_peer), (_, cctx, cp_hash, cp_peer), (_, vctx, vp_hash, vp_peer) = seen
    assert (sctx.role, cctx.role) == ("server", "client")
    assert sctx.namespace == cctx.namespace == "ns/1"
    assert sp_peer is None  # the client's identity comes later
    assert cp_peer == server_ident.public
    assert vp_peer == client_ident.public
    assert vctx is sctx
    assert vctx.state == {"n": 2}
    assert len({sp_hash, cp_hash, vp_hash}) == 3  # the transcript grows
    assert all(len(h) == 32 for h in (sp_hash, cp_hash, vp_hash))

    seen.clear()
    again = run(
        (CustomProtocolStep(sid, server_payload=sp, verify_client_payload=vp),),
        (CustomProtocolStep(sid, client_payload=cp),),
    )
    assert again.server.handshake_complete
    assert seen[0][2] != sp_hash  # bound to this handshake
    assert seen[2][3] is None  # no client authentication: no peer key for the server


# ------------------------------------------------------------- Handshake editing


def test_default_handshake() -> None:
    hs = Handshake()
    assert hs.ids() == CORE
    assert hs.custom_steps == ()
    assert type(hs.authentication) is AuthenticationStep
    assert [type(s) for s in hs.steps] == [KeyExchangeStep, AuthenticationStep, FinishedStep]
    assert all(s.core and s.required for s in hs.steps)
    assert "nautilus/finished" in repr(hs)


def test_add_insert_remove_replace() -> None:
    hs = Handshake()
    a = CustomProtocolStep("a.example")
    b = CustomProtocolStep("b.example", required=True)
    c = CustomProtocolStep("c.example")
    hs.add(a)
    hs.add(b)
    assert hs.ids() == [*CORE[:2], "a.example", "b.example", CORE[2]]
    hs.insert(2, c)
    assert hs.ids() == [*CORE[:2], "c.example", "a.example", "b.example", CORE[2]]
    assert hs.custom_steps == (c, a, b)
    assert hs.remove("a.example") is a
    assert hs.ids() == [*CORE[:2], "c.example", "b.example", CORE[2]]
    d = CustomProtocolStep("d.example")
    assert hs.replace("c.example", d) is c
    assert hs.custom_steps == (d, b)
    assert "required" in repr(b)
    assert "b.example" in repr(b)


def test_editing_refusals_leave_the_handshake_unchanged() -> None:
    hs = handshake_with(CustomProtocolStep("a.example"))
    before = hs.steps
    dup = CustomProtocolStep("a.example")
    with pytest.raises(ValueError, match="duplicate"):
        hs.add(dup)
    with pytest.raises(ValueError, match="duplicate"):
        hs.add(CustomProtocolStep("nautilus/finished"))
    with pytest.raises(ValueError, match="core step"):
        hs.remove("nautilus/authentication")
    with pytest.raises(ValueError, match="core step"):
        hs.remove("nautilus/key-exchange")
    with pytest.raises(ValueError, match="no step"):
        hs.remove("nope.example")
    with pytest.raises(ValueError, match="no step"):
        hs.replace("nope.example", CustomProtocolStep("x.example"))
    with pytest.raises(ValueError, match="after authentication"):
        hs.insert(1, CustomProtocolStep("early.example"))  # before authentication
    with pytest.raises(ValueError, match="after authentication"):
        hs.insert(0, CustomProtocolStep("first.example"))
    with pytest.raises(ValueError, match="after authentication"):
        hs.insert(len(hs.steps), CustomProtocolStep("last.example"))  # after Finished
    with pytest.raises(ValueError, match="can only be replaced by a AuthenticationStep"):
        hs.replace("nautilus/authentication", CustomProtocolStep("x.example"))
    with pytest.raises(ValueError, match="can only be replaced by a KeyExchangeStep"):
        hs.replace("nautilus/key-exchange", AuthenticationStep())
    with pytest.raises(ValueError, match="can only be replaced by a FinishedStep"):
        hs.replace("nautilus/finished", KeyExchangeStep())
    with pytest.raises(ValueError, match="duplicate"):
        hs.replace("a.example", CustomProtocolStep("nautilus/finished"))
    with pytest.raises(TypeError):
        hs.add("a.example")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hs.replace("a.example", object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate"):
        hs.add(AuthenticationStep())

    class SecondAuth(AuthenticationStep):
        protocol_id = "example.com/second-auth"

    with pytest.raises(ValueError, match="core steps"):
        hs.add(SecondAuth())  # a second core step
    assert hs.steps == before


@pytest.mark.parametrize(
    "core", ["nautilus/key-exchange", "nautilus/authentication", "nautilus/finished"]
)
def test_editing_with_arguments_of_the_wrong_type_is_a_type_error(core: str) -> None:
    """What is not a step, or not an id, is a TypeError for every editing call,
    core steps included (as documented), not a ValueError about ids."""
    hs = handshake_with(CustomProtocolStep("a.example"))
    before = hs.steps
    for target in (core, "a.example"):
        for wrong in ("x.example", None, object()):
            with pytest.raises(TypeError, match="must be HandshakeStep objects"):
                hs.replace(target, wrong)  # type: ignore[arg-type]
    for wrong_id in (5, None, b"a.example"):
        with pytest.raises(TypeError, match="protocol_id must be a str"):
            hs.remove(wrong_id)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="protocol_id must be a str"):
            hs.replace(wrong_id, CustomProtocolStep("b.example"))  # type: ignore[arg-type]
    for wrong_index in (1.0, "1", True, None):
        with pytest.raises(TypeError, match="index must be an int"):
            hs.insert(wrong_index, CustomProtocolStep("b.example"))  # type: ignore[arg-type]
    for far in (len(before) + 1, -len(before) - 1, 2**70):
        with pytest.raises(ValueError, match="is outside"):
            hs.insert(far, CustomProtocolStep("b.example"))

    class Careless(HandshakeStep):
        protocol_id = "c.example"
        required = "yes"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="required must be a bool, not str"):
        hs.add(Careless())
    assert hs.steps == before


def test_handshake_constructor_validates() -> None:
    ke, auth, fin = KeyExchangeStep(), AuthenticationStep(), FinishedStep()
    custom = CustomProtocolStep("c.example")
    assert Handshake([ke, auth, custom, fin]).custom_steps == (custom,)
    with pytest.raises(ValueError, match="core steps"):
        Handshake([auth, ke, fin])
    with pytest.raises(ValueError, match="core steps"):
        Handshake([ke, fin])
    with pytest.raises(ValueError, match="after authentication"):
        Handshake([ke, custom, auth, fin])
    with pytest.raises(TypeError):
        Handshake([ke, auth, "x", fin])  # type: ignore[list-item]


def test_custom_protocol_step_argument_checks() -> None:
    for bad in ("", "has space", "tab\tid", "é.example", "x" * 256):
        with pytest.raises(ValueError, match="protocol_id"):
            CustomProtocolStep(bad)
    assert CustomProtocolStep("x" * 255).protocol_id == "x" * 255
    with pytest.raises(TypeError):
        CustomProtocolStep(b"bytes.example")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CustomProtocolStep("a.example", required=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="server_payload"):
        CustomProtocolStep("a.example", server_payload=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="verify_client_payload"):
        CustomProtocolStep("a.example", verify_client_payload="no")  # type: ignore[arg-type]


def test_subclassed_step_with_a_bad_id_is_refused() -> None:
    class NoId(HandshakeStep):
        pass

    with pytest.raises(ValueError, match="protocol_id"):
        Handshake().add(NoId())


# ---------------------------------------------------------- AuthenticationStep


class HybridOnly(AuthenticationStep):
    """A policy: pinned and post-quantum (hybrid) keys only."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
        how = super().verify_peer(trust, key, **kwargs)
        self.calls.append(key.kind)
        if key.kind != "ed25519+ml-dsa-65":
            raise AuthenticationFailed(f"policy: {key.kind} keys are not accepted")
        return how


def _client_with_policy(policy: AuthenticationStep) -> dict[str, Any]:
    hs = Handshake()
    old = hs.replace("nautilus/authentication", policy)
    assert type(old) is AuthenticationStep
    assert hs.authentication is policy
    return {"handshake": hs}


def _second_client_with_a_ticket(policy: AuthenticationStep) -> Connection:
    """A client Connection (not started) of a context with ``policy`` whose
    cache holds a ticket from a first, full handshake with the server."""
    pair = Pair.make(
        server={"tickets_per_handshake": 1},
        client=_client_with_policy(policy),
        server_name="srv:1",
    )
    pair.handshake()
    assert len(pair.client_ctx.session_cache) == 1
    return Connection(pair.client_ctx, "client", server_name="srv:1")


@pytest.mark.parametrize(("kind", "ok"), [("ed25519", False), ("ed25519+ml-dsa-65", True)])
def test_replaced_authentication_step_adds_a_rule(kind: str, ok: bool) -> None:
    policy = HybridOnly()
    server_ident = cached_identity(kind)
    pair = Pair.make(server_ident, client=_client_with_policy(policy))
    pair.connect()
    assert policy.calls == [kind]
    if ok:
        assert pair.client.handshake_complete
        assert pair.server.handshake_complete
        assert pair.client.session.trust == "pinned"
    else:
        assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
        assert "policy" in str(pair.client.error)
        assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)


def test_replaced_authentication_step_still_requires_base_trust() -> None:
    policy = HybridOnly()
    pair = Pair.make(
        cached_identity("ed25519+ml-dsa-65"), pin=False, client=_client_with_policy(policy)
    )
    pair.connect()
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert policy.calls == []  # the base check failed first


def test_authentication_step_may_name_its_own_trust() -> None:
    class Directory(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            if key != cached_identity().public:
                raise AuthenticationFailed("not in the directory")
            return "directory"

    pair = Pair.make(pin=False, client=_client_with_policy(Directory()))
    pair.connect()
    assert pair.client.session is not None
    assert pair.client.session.trust == "directory"


@pytest.mark.parametrize("answer", [False, None, 0, "", b"pinned"])
def test_a_trust_rule_that_returns_no_name_rejects_the_peer(answer: object) -> None:
    """verify_peer must return how the peer was trusted (a non-empty str) or
    raise. ``return False`` reads like a refusal: it used to accept the peer,
    with False as the session's trust."""

    class Sloppy(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            return answer  # type: ignore[return-value]

    pair = Pair.make(pin=False, client=_client_with_policy(Sloppy()))
    pair.connect()
    assert pair.client.session is None
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert "must return how the peer was trusted" in str(pair.client.error)


def test_server_side_authentication_step_checks_clients() -> None:
    client_ident = cached_identity("ed25519", 1)
    policy = HybridOnly()
    hs = Handshake()
    hs.replace("nautilus/authentication", policy)
    pair = Pair.make(
        server={
            "handshake": hs,
            "client_auth": "required",
            "trusted_peers": [client_ident.public],
        },
        client={"identity": client_ident},
    )
    pair.connect()
    assert policy.calls == ["ed25519"]
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert isinstance(pair.client_events[-1], ConnectionClosed)


def test_server_side_custom_rule_runs_without_a_trust_store() -> None:
    class RejectAll(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            raise AuthenticationFailed("closed for maintenance")

    hs = Handshake()
    hs.replace("nautilus/authentication", RejectAll())
    pair = Pair.make(
        server={"handshake": hs, "client_auth": "required"},
        client={"identity": cached_identity("ed25519", 1)},
    )
    pair.connect()
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)


def test_a_replaced_authentication_step_can_be_replaced_again() -> None:
    hs = Handshake()
    first = HybridOnly()
    hs.replace("nautilus/authentication", first)
    assert hs.replace("nautilus/authentication", AuthenticationStep()) is first
    assert type(hs.authentication) is AuthenticationStep


@pytest.mark.parametrize("size", [1, 20_000, 65_000, _MAX_STEP_PAYLOAD])
def test_large_step_payloads_span_several_records(size: int) -> None:
    sid = "example.com/blob"
    received: list[bytes | None] = []
    blob = os.urandom(size)

    def echo(ctx: StepContext, payload: bytes | None) -> bytes | None:
        received.append(payload)
        return payload

    pair = run(
        (
            CustomProtocolStep(
                sid, server_payload=lambda ctx: blob, verify_client_payload=lambda c, p: None
            ),
        ),
        (CustomProtocolStep(sid, client_payload=echo),),
    )
    assert pair.server.handshake_complete
    assert received == [blob]


@pytest.mark.parametrize("size", [_MAX_STEP_PAYLOAD + 1, 70_000])
def test_step_payload_over_the_message_limit_fails_the_handshake(size: int) -> None:
    # Handshake messages are limited to 64 KiB: the sending side refuses an
    # oversized payload itself (its own step is at fault) and tells the peer.
    # The bound leaves room for the longest step id, whatever this one's length.
    sid = "example.com/too-big"
    pair = run(
        (CustomProtocolStep(sid, server_payload=lambda ctx: bytes(size)),),
        (CustomProtocolStep(sid),),
    )
    assert_closed_with(pair.server, pair.server_events, HandshakeError)
    assert "at most" in str(pair.server.error)
    assert_closed_with(pair.client, pair.client_events, HandshakeError)
    assert "internal_error" in str(pair.client.error)


# ------------------------------------------------------ hooks that close their side


def _sealed_only(wire: bytes) -> bool:
    return all(rec[0] == RECORD_SEALED for rec in split_records(wire))


def pair_with_a_step_hook(sid: str, hook: str, fn: Callable[..., bytes]) -> Pair:
    """A pair agreeing on one step whose ``hook`` (server_payload, client_payload
    or verify_client_payload) is ``fn``; its other hooks answer normally."""
    server_step = CustomProtocolStep(
        sid,
        server_payload=fn if hook == "server_payload" else (lambda ctx: b"challenge"),
        verify_client_payload=fn if hook == "verify_client_payload" else None,
    )
    client_step = CustomProtocolStep(
        sid, client_payload=fn if hook == "client_payload" else (lambda c, p: b"answer")
    )
    return Pair.make(
        server={"handshake": handshake_with(server_step)},
        client={"handshake": handshake_with(client_step)},
    )


@pytest.mark.parametrize("hook", ["server_payload", "client_payload", "verify_client_payload"])
def test_a_hook_that_closes_its_connection_ends_the_handshake(hook: str) -> None:
    """close() from a step's hook is final: the handshake stops there, no message
    follows the close_notify (none in plaintext), no HandshakeCompleted, and the
    call that ran the hook returns normally."""
    sid = "example.com/closer"
    closing: dict[str, Pair] = {}
    closer = "client" if hook == "client_payload" else "server"

    def close_own(ctx: StepContext, *args: object) -> bytes:
        getattr(closing["pair"], closer).close()
        return b"payload"

    pair = pair_with_a_step_hook(sid, hook, close_own)
    closing["pair"] = pair
    pair.start()
    conn = getattr(pair, closer)
    hello = pair.client.data_to_send()
    pair.server.receive_data(hello, NOW)  # the server's hook runs here
    flight = pair.server.data_to_send()
    if hook == "server_payload":
        messages, sealed = split_plain_handshake(flight)
        assert [m for m, _ in messages] == [MsgType.SERVER_HELLO]
        assert len(split_records(sealed)) == 1  # the close_notify alone: no flight after it
        pair.client.receive_data(flight, NOW)
    else:
        pair.client.receive_data(flight, NOW)  # the client's hook runs here
        out = pair.client.data_to_send()
        assert _sealed_only(out)
        if hook == "client_payload":
            assert len(split_records(out)) == 1  # close_notify; no StepData, no Finished
            pair.server.receive_data(out, NOW)
        else:
            pair.server.receive_data(out, NOW)  # the server's check runs here
            out = pair.server.data_to_send()
            assert _sealed_only(out)
            assert len(split_records(out)) == 1
            pair.client.receive_data(out, NOW)
    pair.collect()
    assert conn.is_closed
    assert conn.error is None
    assert conn.get_timer() is None
    events = pair.client_events if closer == "client" else pair.server_events
    assert "HandshakeCompleted" not in event_types(events)
    with pytest.raises(ClosedError):
        conn.send_data(b"x")
    pair.pump()  # the peer learns of the close
    peer = pair.server if closer == "client" else pair.client
    assert peer.is_closed
    if hook == "verify_client_payload":  # the client had completed (1-RTT): a clean close
        assert peer.error is None
    else:
        assert isinstance(peer.error, HandshakeError)


def test_a_trust_rule_that_closes_its_connection_ends_the_handshake() -> None:
    holder: dict[str, Pair] = {}

    class CloseOnSight(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            holder["pair"].client.close()
            return "pinned"

    pair = Pair.make(client=_client_with_policy(CloseOnSight()))
    holder["pair"] = pair
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    out = pair.client.data_to_send()
    assert _sealed_only(out)
    assert len(split_records(out)) == 1
    assert pair.client.is_closed
    assert pair.client.error is None
    assert drain_events(pair.client) == []


def test_a_trust_rule_that_closes_its_connection_at_start_sends_no_hello() -> None:
    """start() runs the trust rule on a cached ticket's server: a rule that
    closes the connection there stops start(), before any hello is made."""
    closing: dict[str, Connection] = {}

    class CloseWhenAsked(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            if "conn" in closing:
                closing["conn"].close()
            return "pinned"

    client = _second_client_with_a_ticket(CloseWhenAsked())
    closing["conn"] = client
    client.start(NOW)
    assert client.is_closed
    assert client.data_to_send() == b""
    assert client.next_event() is None
    assert client.error is None


@pytest.mark.parametrize("call", ["receive_data", "start"])
def test_a_hook_that_feeds_its_own_connection_fails_the_handshake(call: str) -> None:
    """A step hook runs inside its connection's receive_data(): calling it (or
    start()) again from there would process input in the middle of
    processing. It raises RuntimeError, which fails the handshake as any
    failing hook does; nothing was processed twice."""
    sid = "example.com/reentrant"
    holder: dict[str, Pair] = {}
    seen: list[BaseException] = []

    def reenter(ctx: StepContext) -> bytes:
        server = holder["pair"].server
        try:
            if call == "receive_data":
                server.receive_data(b"\x16\x00\x00\x01\x00", NOW)
            else:
                server.start(NOW)
        except RuntimeError as exc:
            seen.append(exc)
            raise
        return b"challenge"

    pair = Pair.make(
        server={"handshake": handshake_with(CustomProtocolStep(sid, server_payload=reenter))},
        client={"handshake": handshake_with(CustomProtocolStep(sid))},
    )
    holder["pair"] = pair
    pair.connect()
    assert len(seen) == 1
    assert f"{call}() called by a handshake step hook" in str(seen[0])
    assert_closed_with(pair.server, pair.server_events, AuthenticationFailed)
    assert "reentrant" in str(pair.server.error)
    assert pair.client.is_closed


def test_a_trust_rule_that_feeds_its_own_connection_fails_the_handshake() -> None:
    holder: dict[str, Pair] = {}
    seen: list[BaseException] = []

    class Reenter(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            try:
                holder["pair"].client.receive_data(b"", NOW)
            except RuntimeError as exc:
                seen.append(exc)
                raise
            return "pinned"

    pair = Pair.make(client=_client_with_policy(Reenter()))
    holder["pair"] = pair
    pair.connect()
    assert len(seen) == 1
    assert "receive_data() called by a handshake step hook or trust rule" in str(seen[0])
    assert_closed_with(pair.client, pair.client_events, AuthenticationFailed)
    assert pair.server.is_closed
    assert not pair.client._in_hook  # (the flag does not outlive the rule)


class Interrupt(BaseException):
    """Not an Exception, as KeyboardInterrupt, SystemExit, asyncio.CancelledError
    (a KeyboardInterrupt of our own would stop pytest)."""


def _failed_locally(conn: Connection, call: str) -> None:
    """``conn`` was failed by an Interrupt raised from inside ``call``()."""
    events = drain_events(conn)
    assert_closed_with(conn, events, HandshakeError)
    assert f"{call}() was interrupted by Interrupt" in str(conn.error)
    assert isinstance(conn.error.__cause__, Interrupt)
    assert "HandshakeCompleted" not in event_types(events)
    assert not conn._in_hook
    assert conn.get_timer() is None


@pytest.mark.parametrize("hook", ["server_payload", "client_payload", "verify_client_payload"])
def test_a_hook_raising_a_base_exception_fails_the_connection_then_it_propagates(
    hook: str,
) -> None:
    """docs/protocol.md, section 3.2: KeyboardInterrupt and the like from a hook
    say nothing about the peer, and are not swallowed: the connection fails
    locally (internal_error sent, closed, ConnectionClosed with a HandshakeError
    caused by it) and the exception leaves receive_data(). It left the
    connection open in the middle of its handshake before."""
    sid = "example.com/interrupted"
    side = "client" if hook == "client_payload" else "server"

    def interrupt(ctx: StepContext, *args: object) -> bytes:
        raise Interrupt(hook)

    pair = pair_with_a_step_hook(sid, hook, interrupt)
    pair.start()
    with pytest.raises(Interrupt, match=hook):
        pump(pair.client, pair.server)
    conn, peer = (pair.client, pair.server) if side == "client" else (pair.server, pair.client)
    _failed_locally(conn, "receive_data")
    peer.receive_data(conn.data_to_send(), NOW)  # the alert
    events = drain_events(peer)
    assert AlertReceived(80, "internal_error") in events
    # The client had completed its side (1-RTT) when the server checked its payload.
    assert_closed_with(
        peer, events, ConnectionLost if hook == "verify_client_payload" else HandshakeError
    )


def test_a_trust_rule_raising_a_base_exception_fails_the_connection_then_it_propagates() -> None:
    class Interrupting(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            raise Interrupt("trust rule")

    pair = Pair.make(client=_client_with_policy(Interrupting()))
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    with pytest.raises(Interrupt):
        pair.client.receive_data(pair.server.data_to_send(), NOW)
    _failed_locally(pair.client, "receive_data")
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    events = drain_events(pair.server)
    assert AlertReceived(80, "internal_error") in events
    assert_closed_with(pair.server, events, HandshakeError)


def test_a_trust_rule_raising_a_base_exception_in_start_fails_the_connection() -> None:
    """The trust rule also runs in start(), on the server of a cached ticket:
    nothing was sent yet, so nothing is (no alert)."""
    armed: list[bool] = []

    class Interrupting(AuthenticationStep):
        def verify_peer(self, trust: Any, key: PeerKey, **kwargs: Any) -> str:
            if armed:
                raise Interrupt("trust rule")
            return super().verify_peer(trust, key, **kwargs)

    client = _second_client_with_a_ticket(Interrupting())
    armed.append(True)
    with pytest.raises(Interrupt):
        client.start(NOW)
    _failed_locally(client, "start")
    assert client.data_to_send() == b""


def test_an_interruption_after_the_handshake_is_connection_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same for an interruption of a connected connection (a signal
    handler's KeyboardInterrupt while it acts on a record): ConnectionLost."""
    pair = Pair.make()
    pair.handshake()

    def interrupted(payload: bytes) -> None:
        raise Interrupt("signal")

    patch_method(monkeypatch, pair.client, "_on_key_update", interrupted)
    pair.server.update_keys()
    with pytest.raises(Interrupt):
        pair.client.receive_data(pair.server.data_to_send(), NOW)
    events = drain_events(pair.client)
    assert_closed_with(pair.client, events, ConnectionLost)
    assert isinstance(pair.client.error.__cause__, Interrupt)
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    events = drain_events(pair.server)
    assert AlertReceived(80, "internal_error") in events
    assert_closed_with(pair.server, events, ConnectionLost)


def test_a_server_closing_before_an_agreed_step_is_verified_sends_no_data() -> None:
    """close() right after the server's flight sends what the server wrote
    first only when nothing but the client's Finished is awaited: here the
    client's step payload (a wrong password) is still to be checked, so the
    data is not sent to it."""
    sid = "example.com/password"

    def check(ctx: StepContext, payload: bytes) -> None:
        if payload != b"secret":
            raise ValueError("wrong password")

    pair = Pair.make(
        server={"handshake": handshake_with(
            CustomProtocolStep(sid, required=True, verify_client_payload=check)
        )},
        client={"handshake": handshake_with(
            CustomProtocolStep(sid, client_payload=lambda ctx, p: b"wrong")
        )},
    )  # fmt: skip
    pair.start()
    pair.server.receive_data(pair.client.data_to_send(), NOW)
    pair.server.send_data(b"for a client that passed the step only")
    pair.server.close()
    pair.client.receive_data(pair.server.data_to_send(), NOW)
    assert received_data(drain_events(pair.client)) == b""


# ------------------------------------------------------------ step id and count bounds


@pytest.mark.parametrize("bad", ["abc\n", "x" * 255 + "\n", "\nabc", "ab\ncd"])
def test_a_step_id_with_a_newline_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="protocol_id"):
        CustomProtocolStep(bad)


def test_custom_steps_are_bounded_by_what_a_hello_carries() -> None:
    hs = Handshake()
    for i in range(MAX_CUSTOM_STEPS):
        hs.add(CustomProtocolStep(f"s{i}"))
    with pytest.raises(ValueError, match="at most 255 custom steps, got 256"):
        hs.add(CustomProtocolStep("one.too.many"))
    assert len(hs.custom_steps) == MAX_CUSTOM_STEPS  # the refused add changed nothing
    long_ids = [CustomProtocolStep(f"{i:03d}".ljust(255, "x")) for i in range(64)]
    with pytest.raises(ValueError, match="ids take"):
        Handshake([KeyExchangeStep(), AuthenticationStep(), *long_ids, FinishedStep()])


def test_custom_steps_at_the_size_bound_still_connect() -> None:
    """63 ids of 255 characters and one of 191: exactly MAX_CUSTOM_STEPS_SIZE
    bytes of offers; the ClientHello (and a retried one) still fits."""
    ids = [f"{i:03d}".ljust(255, "x") for i in range(63)]
    ids.append("last".ljust(MAX_CUSTOM_STEPS_SIZE - 63 * 257 - 2, "y"))
    assert sum(len(i) + 2 for i in ids) == MAX_CUSTOM_STEPS_SIZE
    at_bound = handshake_with(*(CustomProtocolStep(i) for i in ids))
    with pytest.raises(ValueError, match="ids take 16387 bytes"):
        at_bound.add(CustomProtocolStep("z"))  # three bytes more
    pair = Pair.make(
        server={"handshake": at_bound},
        client={
            "handshake": handshake_with(*(CustomProtocolStep(i) for i in ids)),
            "groups": ["x25519", "x25519-mlkem1024"],  # a retry, with the largest share
        },
    )
    assert pair.handshake() == 5  # hello, retry, hello again, the server's flight, the client's
    assert len(steps_of(pair.client_events)) == 64
    assert pair.client.session is not None
    assert pair.client.session.group == "x25519-mlkem1024"


def test_start_takes_nothing_when_its_hello_cannot_be_encoded() -> None:
    """A step id made invalid after it was checked: start() raises ValueError
    before it takes the cached ticket, a key share or a deadline."""
    pair = Pair.make(server={"tickets_per_handshake": 1}, server_name="srv:1")
    pair.handshake()
    cache = pair.client_ctx.session_cache
    key = pair.client._cache_key()
    assert key is not None
    step = CustomProtocolStep("example.com/ok")
    pair.client_ctx.handshake = handshake_with(step)
    step.protocol_id = "x" * 300  # changed behind the Handshake's back
    conn = Connection(pair.client_ctx, "client", server_name="srv:1")
    taken = dict(pair.client_ctx._key_pool._taken)
    with pytest.raises(ValueError, match="ClientHello cannot be encoded"):
        conn.start(NOW)
    assert conn.state is State.CLIENT_START
    assert conn.get_timer() is None
    assert conn.data_to_send() == b""
    assert pair.client_ctx._key_pool._taken == taken  # no key share taken
    assert conn._kem is None
    assert not conn._took_keys
    assert cache.take(key, NOW) is not None  # the ticket is still there


def test_start_refuses_a_hello_over_the_handshake_message_limit() -> None:
    """Step ids lengthened after they were checked, each still encodable, so
    that the hello and a key share would be over 64 KiB (which the server
    refuses): start() raises ValueError and sends nothing."""
    steps = [CustomProtocolStep(f"example.com/{i}") for i in range(255)]
    ctx = Context(trusted_peers=[cached_identity().public])
    ctx.handshake = handshake_with(*steps)
    for i, step in enumerate(steps):
        step.protocol_id = f"{i:03d}" + "x" * 252  # 255 bytes: the most an id holds
    conn = Connection(ctx, "client")
    with pytest.raises(ValueError, match=f"would exceed {MAX_HANDSHAKE_MESSAGE} bytes"):
        conn.start(NOW)
    assert conn.state is State.CLIENT_START
    assert conn.data_to_send() == b""


def test_a_step_context_repr_leaves_out_the_hooks_scratch_state() -> None:
    ctx = StepContext("server", "default", bytes(32), None, state={"token": "s3cret-token"})
    assert "s3cret-token" not in repr(ctx)
    assert "server" in repr(ctx)  # (the rest is shown)
    assert ctx.state == {"token": "s3cret-token"}


_SID = "example.com/a"


@pytest.mark.parametrize(
    ("liar", "protocol_id", "payload", "agreed"),
    [
        ("server", "other.example", b"x", True),  # a step not agreed
        ("server", _SID, b"again", True),  # after the honest data: sent twice
        ("server", _SID, b"x", False),  # no step agreed at all
        ("server", "a\x00b", b"x", True),  # an id no step may have
        ("client", "other.example", b"x", True),
        ("client", _SID, b"again", True),
        ("client", _SID, b"x", False),
        ("client", _SID, b"x" * 65000, True),
    ],
)
def test_step_data_the_handshake_did_not_agree_is_an_unexpected_message(
    monkeypatch: pytest.MonkeyPatch, liar: str, protocol_id: str, payload: bytes, agreed: bool
) -> None:
    seen: list[tuple[str, bytes | None]] = []

    def verify(ctx: StepContext, p: bytes | None) -> None:
        seen.append(("server", p))

    def answer(ctx: StepContext, p: bytes | None) -> bytes:
        seen.append(("client", p))
        return b"c"

    def steps(step: HandshakeStep) -> Handshake:
        h = Handshake()
        if agreed:
            h.add(step)
        return h

    server_step = CustomProtocolStep(
        _SID, server_payload=lambda ctx: b"s", verify_client_payload=verify
    )
    client_step = CustomProtocolStep(_SID, client_payload=answer)
    pair = Pair.make(
        server={"handshake": steps(server_step)}, client={"handshake": steps(client_step)}
    )
    dishonest = pair.server if liar == "server" else pair.client
    honest_send = Connection._send_handshake

    def send(msg: Any) -> None:  # the lie goes just before the Finished, sealed
        if isinstance(msg, Finished):
            honest_send(dishonest, StepData(protocol_id, payload))
        honest_send(dishonest, msg)

    patch_method(monkeypatch, dishonest, "_send_handshake", send)
    pair.connect()
    victim, victim_events, liar_events = (
        (pair.client, pair.client_events, pair.server_events)
        if liar == "server"
        else (pair.server, pair.server_events, pair.client_events)
    )
    assert_closed_with(victim, victim_events, ProtocolViolation)
    assert "unexpected_message" in str(victim.error)
    assert AlertReceived(10, "unexpected_message") in liar_events
    assert dishonest.is_closed
    assert all(p != payload for _, p in seen), seen  # no hook was shown the lie
