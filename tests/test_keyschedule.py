"""The key schedule against a hand computation: HKDF-Expand-Label's layout, the
TLS 1.3-shaped secret chain, key updates, Finished MACs and the exporter."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

import nautilus
from nautilus import _bindings
from nautilus.protocol import keyschedule as ks
from nautilus.record import RecordOpener, RecordSealer, key_size

EMPTY_HASH = hashlib.sha256(b"").digest()
ZEROS = bytes(32)


def hand_info(label: bytes, context: bytes, length: int) -> bytes:
    full = b"nautilus1 " + label
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + bytes([len(context)]) + context


def hand_expand_label(secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA256(), length, hand_info(label, context, length)).derive(secret)


def rfc5869_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def rfc5869_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def label_of(secret: bytes, label: bytes, context: bytes, length: int = 32) -> bytes:
    return rfc5869_expand(secret, hand_info(label, context, length), length)


SECRET = bytes(range(32))


def test_label_layout_bytes() -> None:
    info = hand_info(b"key", b"", 16)
    assert info == b"\x00\x10\x0dnautilus1 key\x00"
    assert ks.LABEL_PREFIX == b"nautilus1 "
    assert hand_info(b"c hs traffic", b"\xaa" * 32, 32)[:3] == b"\x00\x20\x16"


@pytest.mark.parametrize(
    ("label", "context", "length"),
    [
        (b"key", b"", 16),
        (b"key", b"", 32),
        (b"iv", b"", 12),
        (b"c hs traffic", EMPTY_HASH, 32),
        (b"exporter", b"\x01" * 255, 100),
        (b"", b"", 1),
        (b"x" * 245, b"ctx", 8160),
    ],
)
def test_expand_label_matches_hand_computation(label: bytes, context: bytes, length: int) -> None:
    got = ks.expand_label(SECRET, label, context, length)
    assert got == hand_expand_label(SECRET, label, context, length)
    assert got == label_of(SECRET, label, context, length)
    assert len(got) == length


def test_expand_label_separates_its_inputs() -> None:
    base = ks.expand_label(SECRET, b"key", b"", 32)
    assert ks.expand_label(SECRET, b"key ", b"", 32) != base
    assert ks.expand_label(SECRET, b"key", b"\x00", 32) != base
    assert ks.expand_label(bytes(32), b"key", b"", 32) != base
    # The length is part of the info: a shorter output is not a prefix.
    assert ks.expand_label(SECRET, b"key", b"", 16) != base[:16]


def test_expand_label_refuses_oversized_fields() -> None:
    with pytest.raises(ValueError, match="got 32, 246, 0 and 32"):
        ks.expand_label(SECRET, b"x" * 246, b"", 32)  # label over 255 bytes with prefix
    with pytest.raises(ValueError, match="got 32, 3, 256 and 32"):
        ks.expand_label(SECRET, b"key", b"c" * 256, 32)
    with pytest.raises(ValueError, match=r"length in 1\.\.8160; got 32, 3, 0 and 8161"):
        ks.expand_label(SECRET, b"key", b"", 255 * 32 + 1)
    with pytest.raises(ValueError, match="got 32, 3, 0 and 0"):
        ks.expand_label(SECRET, b"key", b"", 0)
    with pytest.raises(ValueError, match=r"32-byte secret.*got 31,"):
        ks.expand_label(SECRET[:31], b"key", b"", 32)


def test_hkdf_extract_and_finished_mac_are_hmac() -> None:
    th = hashlib.sha256(b"transcript").digest()
    assert ks.hkdf_extract(b"", SECRET) == rfc5869_extract(ZEROS, SECRET)
    assert ks.hkdf_extract(b"salt", SECRET) == rfc5869_extract(b"salt", SECRET)
    assert ks.hkdf_extract(b"s" * 64, b"") == rfc5869_extract(b"s" * 64, b"")
    with pytest.raises(ValueError, match="wrong length"):
        ks.hkdf_extract(b"s" * 65, SECRET)  # salts are hashes here: at most one block
    finished_key = label_of(SECRET, b"finished", b"")
    assert ks.finished_mac(SECRET, th) == hmac.new(finished_key, th, hashlib.sha256).digest()


def opened(opener: RecordOpener, records: bytes) -> list[tuple[int, bytes]]:
    return [(r.content_type, r.data) for r in opener.open(records).records]


@pytest.mark.parametrize("cipher", ["aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"])
def test_record_layer_keyed_from_a_secret_in_c(cipher: str) -> None:
    """RecordSealer/Opener._from_secret derive key and IV in C: records they seal
    open with the hand-derived key and IV, and the other way round."""
    size = key_size(cipher)
    key, iv = label_of(SECRET, b"key", b"", size), label_of(SECRET, b"iv", b"", 12)
    sealer = RecordSealer._from_secret(cipher, SECRET, 16384)
    with RecordOpener(cipher, key, iv) as opener:
        assert opened(opener, sealer.seal(b"hello", 23)) == [(23, b"hello")]
    with RecordSealer(cipher, key, iv) as hand_sealer:
        opener2 = RecordOpener._from_secret(cipher, SECRET, 16384)
        assert opened(opener2, hand_sealer.seal(b"world", 23)) == [(23, b"world")]
    # A key update: rekeyed from the next secret, the sequence restarts.
    nxt = ks.next_traffic_secret(SECRET)
    sealer._rekey_from_secret(nxt)
    assert sealer.sequence == 0
    k2, iv2 = label_of(nxt, b"key", b"", size), label_of(nxt, b"iv", b"", 12)
    with RecordOpener(cipher, k2, iv2) as opener3:
        assert opened(opener3, sealer.seal(b"after", 23)) == [(23, b"after")]
    with pytest.raises(ValueError, match="wrong length"):
        RecordSealer._from_secret(cipher, SECRET[:31], 16384)
    sealer.close()
    opener2.close()


def test_derive_secret_is_expand_label_of_the_transcript_hash() -> None:
    th = hashlib.sha256(b"transcript").digest()
    assert ks.derive_secret(SECRET, b"c ap traffic", th) == label_of(SECRET, b"c ap traffic", th)


def test_traffic_keys() -> None:
    for cipher, size in (("aes-128-gcm", 16), ("aes-256-gcm", 32), ("chacha20-poly1305", 32)):
        key, iv = ks.traffic_keys(SECRET, cipher)
        assert key == label_of(SECRET, b"key", b"", size)
        assert iv == label_of(SECRET, b"iv", b"", 12)
    assert ks.traffic_keys(SECRET, "aes-256-gcm")[0] != ks.traffic_keys(bytes(32), "aes-256-gcm")[0]


def test_next_traffic_secret_chain() -> None:
    chain = [SECRET]
    for _ in range(5):
        chain.append(ks.next_traffic_secret(chain[-1]))
    assert len(set(chain)) == len(chain)
    for prev, nxt in itertools.pairwise(chain):
        assert nxt == label_of(prev, b"traffic upd", b"")
        assert len(nxt) == 32
    # Deterministic, one-way in the sense that it never loops back here.
    assert ks.next_traffic_secret(SECRET) == chain[1]


# -------------------------------------------------------------------- schedule

SHARED = hashlib.sha256(b"shared secret").digest()
TH1 = hashlib.sha256(b"hello..server hello").digest()
TH2 = hashlib.sha256(b"hello..server finished").digest()
TH3 = hashlib.sha256(b"hello..client finished").digest()


def hand_schedule(shared: bytes, psk: bytes = ZEROS) -> dict[str, bytes]:
    early = rfc5869_extract(ZEROS, psk)
    hs = rfc5869_extract(label_of(early, b"derived", EMPTY_HASH), shared)
    master = rfc5869_extract(label_of(hs, b"derived", EMPTY_HASH), ZEROS)
    return {
        "handshake_secret": hs,
        "client_hs": label_of(hs, b"c hs traffic", TH1),
        "server_hs": label_of(hs, b"s hs traffic", TH1),
        "master": master,
        "client_app": label_of(master, b"c ap traffic", TH2),
        "server_app": label_of(master, b"s ap traffic", TH2),
        "exporter": label_of(master, b"exp master", TH2),
        "resumption": label_of(master, b"res master", TH3),
    }


def run_schedule(shared: bytes = SHARED, psk: bytes | None = None) -> ks.KeySchedule:
    sched = ks.KeySchedule(psk)
    sched.handshake(shared, TH1)
    sched.application(TH2)
    sched.resumption_secret(TH3)
    return sched


def test_key_schedule_matches_hand_computation() -> None:
    sched = run_schedule()
    for name, value in hand_schedule(SHARED).items():
        assert getattr(sched, name) == value, name


def test_key_schedule_with_psk_matches_hand_computation() -> None:
    psk = b"\x07" * 32
    sched = run_schedule(psk=psk)
    assert sched.client_app == hand_schedule(SHARED, psk)["client_app"]
    assert sched.client_app != run_schedule().client_app


def test_key_schedule_with_a_hybrid_sized_secret_matches_hand_computation() -> None:
    shared = bytes(range(64))  # x25519-mlkem768: 64 bytes
    sched = run_schedule(shared=shared)
    for name, value in hand_schedule(shared).items():
        assert getattr(sched, name) == value, name


def test_binder_matches_hand_computation() -> None:
    psk = b"\x09" * 32
    early = rfc5869_extract(ZEROS, psk)
    finished_key = label_of(label_of(early, b"res binder", EMPTY_HASH), b"finished", b"")
    assert ks.KeySchedule(psk).binder(TH1) == hmac.new(finished_key, TH1, hashlib.sha256).digest()


def test_stage_calls_refuse_bad_lengths() -> None:
    """The C stages check every length (the Python layer passes them unchecked)."""
    with pytest.raises(ValueError, match="binder: an input has the wrong length"):
        _bindings.ks_binder(SECRET[:31], TH1)
    with pytest.raises(ValueError, match="Finished MAC: an input has the wrong length"):
        _bindings.ks_finished(SECRET, TH1 + b"x")
    with pytest.raises(ValueError, match="application secrets: an input has the wrong length"):
        _bindings.ks_application(SECRET, TH1[:16])
    with pytest.raises(ValueError, match="handshake secrets: an input has the wrong length"):
        _bindings.ks_handshake(SECRET, bytes(_bindings.KDF_MAX_SHARED + 1), TH1)
    with pytest.raises(ValueError, match="handshake secrets: invalid argument"):
        _bindings.ks_handshake(SECRET, b"", TH1)
    assert len(_bindings.ks_handshake(SECRET, bytes(_bindings.KDF_MAX_SHARED), TH1)) == 4 * 32
    sched = ks.KeySchedule()
    with pytest.raises(nautilus.SessionKeyDerivationFailed, match="handshake key derivation"):
        sched.handshake(bytes(_bindings.KDF_MAX_SHARED + 1), TH1)
    assert sched.client_hs == sched.master == b""  # nothing half-derived is kept


def test_secrets_differ_per_direction_and_stage() -> None:
    sched = run_schedule()
    values = [
        sched.client_hs,
        sched.server_hs,
        sched.client_app,
        sched.server_app,
        sched.exporter,
        sched.resumption,
        sched.master,
        sched.handshake_secret,
    ]
    assert all(len(v) == 32 for v in values)
    assert len(set(values)) == len(values)


def test_secrets_depend_on_shared_secret_and_transcript() -> None:
    a = ks.KeySchedule()
    a.handshake(SHARED, TH1)
    b = ks.KeySchedule()
    b.handshake(hashlib.sha256(b"other").digest(), TH1)
    c = ks.KeySchedule()
    c.handshake(SHARED, hashlib.sha256(b"other transcript").digest())
    assert a.client_hs != b.client_hs
    assert a.server_hs != b.server_hs
    assert a.client_hs != c.client_hs
    assert a.server_hs != c.server_hs
    assert a.master != b.master
    assert a.master == c.master  # the master secret does not take the transcript
    a.application(TH2)
    c.application(TH3)
    assert a.client_app != c.client_app
    assert a.server_app != c.server_app
    assert a.exporter != c.exporter


def test_wipe_handshake_keeps_only_what_the_connection_needs() -> None:
    sched = run_schedule()
    app = (sched.client_app, sched.server_app, sched.exporter, sched.resumption)
    sched.wipe_handshake()
    assert sched.client_hs == sched.server_hs == sched.master == sched.handshake_secret == b""
    assert (sched.client_app, sched.server_app, sched.exporter, sched.resumption) == app


@pytest.mark.parametrize("client", [True, False])
def test_update_traffic_replaces_the_secret_of_one_direction(client: bool) -> None:
    sched = run_schedule()
    hand = hand_schedule(SHARED)
    mine, other = ("client_app", "server_app") if client else ("server_app", "client_app")
    expected = hand[mine]
    for _ in range(3):
        expected = label_of(expected, b"traffic upd", b"")
        assert sched.update_traffic(client) == expected
        assert getattr(sched, mine) == expected  # generation 0 is no longer held
    assert getattr(sched, other) == hand[other]
    assert (sched.exporter, sched.resumption) == (hand["exporter"], hand["resumption"])
    held = [getattr(sched, name) for name in ks.KeySchedule.__slots__]
    assert hand[mine] not in held


def test_wipe_drops_every_secret() -> None:
    sched = run_schedule(psk=SECRET)
    sched.wipe()
    assert all(getattr(sched, name) == b"" for name in ks.KeySchedule.__slots__)


# ---------------------------------------------------------------------- Finished


def test_finished_mac_matches_hand_computation() -> None:
    key = label_of(SECRET, b"finished", b"")
    assert ks.finished_mac(SECRET, TH2) == hmac.new(key, TH2, hashlib.sha256).digest()
    assert ks.finished_mac(SECRET, TH2) != ks.finished_mac(SECRET, TH3)
    assert ks.finished_mac(SECRET, TH2) != ks.finished_mac(bytes(32), TH2)


def test_finished_ok_accepts_only_the_exact_mac() -> None:
    mac = ks.finished_mac(SECRET, TH2)
    assert ks.finished_ok(mac, bytes(mac)) is True
    for bit in range(len(mac) * 8):
        bad = bytearray(mac)
        bad[bit // 8] ^= 1 << (bit % 8)
        assert ks.finished_ok(mac, bytes(bad)) is False
    for bad in (b"", mac[:-1], mac + b"\x00", bytes(32), b"\x00" + mac[1:]):
        assert ks.finished_ok(mac, bad) is False


def test_finished_ok_uses_a_constant_time_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(ks.hmac, "compare_digest", spy)
    mac = ks.finished_mac(SECRET, TH2)
    assert ks.finished_ok(mac, mac) is True
    assert ks.finished_ok(mac, bytes(32)) is False
    assert calls == [(mac, mac), (mac, bytes(32))]


# ---------------------------------------------------------------------- exporter


def test_export_matches_hand_computation() -> None:
    sched = run_schedule()
    secret = label_of(sched.exporter, b"EXPORTER-x", EMPTY_HASH)
    want = label_of(secret, b"exporter", hashlib.sha256(b"ctx").digest(), 64)
    assert sched.export(b"EXPORTER-x", b"ctx", 64) == want


@pytest.mark.parametrize("length", [1, 16, 32, 33, 1000, 255 * 32])
def test_export_lengths(length: int) -> None:
    sched = run_schedule()
    out = sched.export(b"label", b"", length)
    assert len(out) == length
    # The length is bound into the output.
    if length > 1:
        assert sched.export(b"label", b"", length - 1) != out[: length - 1]


def test_export_separates_labels_and_contexts() -> None:
    sched = run_schedule()
    base = sched.export(b"a", b"", 32)
    assert sched.export(b"b", b"", 32) != base
    assert sched.export(b"a", b"\x00", 32) != base
    # A long context is hashed first, so any length works.
    assert len(sched.export(b"a", b"c" * 100_000, 32)) == 32


def test_hash_size_and_constants() -> None:
    assert ks.HASH_SIZE == 32
    assert ks.EMPTY_HASH == EMPTY_HASH
    assert ks.ZEROS == ZEROS


def test_c_kdf_calls_refuse_wrong_output_and_secret_lengths() -> None:
    """Lengths the Python layer always gets right, asked of C directly: a wrong
    one is refused before anything is written."""
    ffi, lib = _bindings.ffi, _bindings.lib
    out = ffi.new("uint8_t[]", 200)
    for n in (31, 33):
        ffi.memmove(out, b"\xaa" * 200, 200)
        assert lib.nt_hkdf_extract(b"salt", 4, b"ikm", 3, out, n) == lib.NT_ERR_LENGTH
        assert lib.nt_hkdf_expand_label(SECRET[:n] + bytes(max(0, n - 32)), n, b"key", 3,
                                         ffi.NULL, 0, out, 16) == lib.NT_ERR_LENGTH  # fmt: skip
        for stage, want in ((lib.nt_ks_binder, 32), (lib.nt_ks_finished, 32),
                            (lib.nt_ks_application, 96)):  # fmt: skip
            assert stage(SECRET, 32, TH1, 32, out, want - 32 + n) == lib.NT_ERR_LENGTH
            assert stage(SECRET, 32, TH1 + b"x", n, out, want) == lib.NT_ERR_LENGTH
            assert stage(SECRET + b"x", n, TH1, 32, out, want) == lib.NT_ERR_LENGTH
        assert lib.nt_ks_handshake(SECRET, 32, b"s", 1, TH1, 32, out, 96 + n) == lib.NT_ERR_LENGTH
        assert ffi.buffer(out, 200)[:] == b"\xaa" * 200
        handle = ffi.new("nt_aead **")
        rc = lib.nt_aead_new_from_secret(lib.NT_AEAD_AES_256_GCM, 1, SECRET + b"x", n, handle)
        assert rc == lib.NT_ERR_LENGTH
        assert handle[0] == ffi.NULL
