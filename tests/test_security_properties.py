"""Security properties of docs/protocol.md section 7 that no other test shows directly."""

from __future__ import annotations

from protocol_helpers import NOW, Pair, cached_identity, pump

from nautilus import Connection, Context, KeyAgreementFailed


def _recording_pair(client_auth: str = "off") -> tuple[Pair, list[bytes]]:
    server = cached_identity()
    client = cached_identity("ed25519", 1)
    pair = Pair.make(
        server,
        server={"client_auth": client_auth, "trusted_peers": [client.public]},
        client={"identity": client} if client_auth != "off" else None,
    )
    wire: list[bytes] = []

    def record(_src: Connection, _dst: Connection, data: bytes) -> bytes:
        wire.append(data)
        return data

    pair.start()
    pair.pump(record)
    assert pair.client.handshake_complete
    assert pair.server.handshake_complete
    return pair, wire


def test_identities_are_hidden_from_a_passive_observer() -> None:
    """Both identity keys (and the peer ids) travel only inside sealed records."""
    pair, wire = _recording_pair(client_auth="required")
    assert pair.server.session is not None
    assert pair.server.session.peer_id == cached_identity("ed25519", 1).peer_id
    everything = b"".join(wire)
    for ident in (cached_identity(), cached_identity("ed25519", 1)):
        assert ident.public.to_bytes() not in everything
        assert ident.public.to_bytes()[1:] not in everything  # the raw key alone
        assert ident.peer_id.encode() not in everything


def test_forward_secrecy_ephemeral_key_share_is_dropped() -> None:
    """Traffic keys come from a fresh KEM key pair that is discarded once used, and
    the handshake secrets are wiped: long-term keys alone open no past session."""
    pair, _ = _recording_pair()
    client = pair.client
    assert client._kem is None  # the ephemeral decapsulation key is gone
    for conn in (pair.client, pair.server):
        keys = conn._keys
        assert keys is not None
        assert keys.handshake_secret == b""
        assert keys.master == b""
        assert keys.client_hs == b""
        assert keys.server_hs == b""


def test_sessions_between_the_same_identities_have_unrelated_keys() -> None:
    """Session uniqueness: same identities, same contexts, yet every session's keys
    and exported material differ (fresh randoms and fresh KEM shares)."""
    server = cached_identity()
    sctx = Context(server)
    cctx = Context(trusted_peers=[server.public])
    exported, secrets = set(), set()
    for _ in range(5):
        c, s = Connection(cctx, "client"), Connection(sctx, "server")
        s.start(NOW)
        c.start(NOW)
        pump(c, s)
        assert c.handshake_complete
        assert s.handshake_complete
        material = c.export_keying_material(b"test", b"", 32)
        assert material == s.export_keying_material(b"test", b"", 32)
        exported.add(material)
        assert c._keys is not None
        secrets.add(c._keys.client_app)
    assert len(exported) == 5
    assert len(secrets) == 5


def test_a_new_identity_cannot_reuse_a_recorded_server_flight() -> None:
    """Replaying a recorded server flight to a new client fails: the new client's
    fresh key share makes the old flight undecryptable (key confirmation)."""
    server = cached_identity()
    sctx = Context(server)
    cctx = Context(trusted_peers=[server.public])
    c1, s1 = Connection(cctx, "client"), Connection(sctx, "server")
    s1.start(NOW)
    c1.start(NOW)
    s1.receive_data(c1.data_to_send(), NOW)
    recorded_server_flight = s1.data_to_send()
    c2 = Connection(cctx, "client")
    c2.start(NOW)
    c2.data_to_send()
    c2.receive_data(recorded_server_flight, NOW)
    assert c2.is_closed
    assert not c2.handshake_complete
    assert type(c2.error) is KeyAgreementFailed
