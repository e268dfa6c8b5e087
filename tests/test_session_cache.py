"""The client's SessionCache: bounds, LRU order, single use, expiry, the
optional 0600 file store, and StoredTicket's JSON form (docs/sessions.md)."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from protocol_helpers import NOW, Pair, cached_identity

from nautilus import Context, IdentityFileError
from nautilus.sessions import SessionCache, StoredTicket

SERVER = cached_identity()


def ticket(n: int = 0, *, received: float = NOW, lifetime: float = 3600.0) -> StoredTicket:
    """A distinguishable ticket (its ``ticket`` bytes end with ``n``)."""
    return StoredTicket(
        ticket=b"opaque-ticket-" + n.to_bytes(4, "big"),
        psk=bytes([0xA5]) * 31 + bytes([n % 256]),
        cipher=0x1302,
        server_key=SERVER.public.to_bytes(),
        server_certificate=b"",
        received=received,
        lifetime=lifetime,
        age_add=1000 + n,
        max_early_data=0,
        namespace=b"nautilus",
    )


def number(t: StoredTicket | None) -> int:
    assert t is not None
    return int.from_bytes(t.ticket[-4:], "big")


# ------------------------------------------------------------------ in memory


def test_take_is_single_use_and_newest_first() -> None:
    cache = SessionCache()
    for n in (1, 2, 3):
        cache.store("s", ticket(n))
    assert len(cache) == 3
    assert number(cache.take("s", NOW)) == 3
    assert number(cache.take("s", NOW)) == 2
    assert number(cache.take("s", NOW)) == 1
    assert cache.take("s", NOW) is None
    assert len(cache) == 0


def test_take_skips_and_drops_expired_tickets() -> None:
    cache = SessionCache()
    cache.store("s", ticket(1, lifetime=100_000))
    cache.store("s", ticket(2, lifetime=10))
    cache.store("s", ticket(3, lifetime=20))
    assert number(cache.take("s", NOW + 50)) == 1  # 3 and 2 have expired
    assert len(cache) == 0
    cache.store("s", ticket(4, lifetime=10))
    assert cache.take("s", NOW + 10) is None  # expiry is exclusive of received + lifetime
    assert len(cache) == 0


def test_ticket_from_the_future_counts_as_expired() -> None:
    """A clock set back by more than a minute: the ticket's age is unknowable."""
    t = ticket(1, received=NOW)
    assert not t.expired(NOW - 60)
    assert t.expired(NOW - 61)
    cache = SessionCache()
    cache.store("s", t)
    assert cache.take("s", NOW - 61) is None


def test_servers_are_kept_apart() -> None:
    cache = SessionCache()
    a = SessionCache.key(SERVER.peer_id, "a:1")
    b = SessionCache.key(SERVER.peer_id, "b:1")
    anywhere = SessionCache.key("*", "a:1")
    assert len({a, b, anywhere, SessionCache.key(SERVER.peer_id, None)}) == 4
    cache.store(a, ticket(1))
    cache.store(b, ticket(2))
    assert cache.take(anywhere, NOW) is None
    assert number(cache.take(b, NOW)) == 2
    assert number(cache.take(a, NOW)) == 1


def test_tickets_per_server_keeps_the_newest() -> None:
    cache = SessionCache(tickets_per_server=2)
    for n in range(5):
        cache.store("s", ticket(n))
    assert len(cache) == 2
    assert [number(cache.take("s", NOW)) for _ in range(2)] == [4, 3]


def test_max_entries_evicts_the_least_recently_used_server() -> None:
    cache = SessionCache(max_entries=2)
    cache.store("a", ticket(1))
    cache.store("a", ticket(2))
    cache.store("b", ticket(3))
    assert number(cache.take("a", NOW)) == 2  # "a" is now the most recently used
    cache.store("c", ticket(4))  # evicts "b"
    assert cache.take("b", NOW) is None
    assert number(cache.take("a", NOW)) == 1
    assert number(cache.take("c", NOW)) == 4
    cache.store("d", ticket(5))
    cache.store("e", ticket(6))
    cache.store("f", ticket(7))
    assert len(cache) == 2
    assert cache.take("d", NOW) is None


def test_clear_forgets_everything() -> None:
    cache = SessionCache()
    cache.store("a", ticket(1))
    cache.store("b", ticket(2))
    cache.clear()
    assert len(cache) == 0
    assert cache.take("a", NOW) is None


def test_cache_is_safe_to_share_between_threads() -> None:
    cache = SessionCache(tickets_per_server=1000)
    for n in range(400):
        cache.store("s", ticket(n))
    taken: list[int] = []

    def worker() -> None:
        while (t := cache.take("s", NOW)) is not None:
            taken.append(number(t))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(taken) == list(range(400))  # each ticket handed out exactly once


def test_context_uses_its_own_cache_unless_given_one() -> None:
    a, b = Context(), Context()
    assert a.session_cache is not b.session_cache
    shared = SessionCache()
    assert Context(session_cache=shared).session_cache is shared


def test_contexts_sharing_a_cache_share_tickets() -> None:
    shared = SessionCache()
    p = Pair.make(
        server={"tickets_per_handshake": 1},
        client={"session_cache": shared},
        server_name="srv:1",
    )
    p.handshake()
    other_client = Context(trusted_peers=[SERVER.public], session_cache=shared)
    q = Pair(other_client, p.server_ctx, {"server_name": "srv:1"})
    q.handshake()
    assert q.client.session is not None
    assert q.client.session.resumed


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_entries": 0}, ValueError),
        ({"max_entries": -1}, ValueError),
        ({"max_entries": 1.5}, TypeError),
        ({"max_entries": True}, TypeError),
        ({"max_entries": "10"}, TypeError),
        ({"tickets_per_server": 0}, ValueError),
        ({"tickets_per_server": None}, TypeError),
        ({"tickets_per_server": False}, TypeError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        SessionCache(**kwargs)  # type: ignore[arg-type]


def test_the_psk_is_not_in_any_repr(tmp_path: Path) -> None:
    t = ticket(7)
    cache = SessionCache(path=tmp_path / "tickets.json")
    cache.store("s", t)
    encoded = t.to_json()["psk"]
    for text in (repr(t), str(t), repr(cache), str(cache), repr([t]), f"{t!s}"):
        assert t.psk.hex() not in text
        assert repr(t.psk) not in text
        assert encoded not in text
    assert "psk" not in repr(t)
    assert repr(cache) == f"<SessionCache 1 tickets file={str(tmp_path / 'tickets.json')!r}>"


# ------------------------------------------------------------------- JSON form


def test_stored_ticket_json_round_trip() -> None:
    t = ticket(9)
    data = t.to_json()
    assert json.loads(json.dumps(data)) == data
    assert StoredTicket.from_json(data) == t
    assert set(data) == {
        "ticket",
        "psk",
        "cipher",
        "server_key",
        "server_certificate",
        "received",
        "lifetime",
        "age_add",
        "max_early_data",
        "namespace",
    }


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("psk", "not base64!", ValueError),
        ("ticket", 123, TypeError),
        ("cipher", "x", ValueError),
        ("received", None, TypeError),
        ("namespace", "====", ValueError),
    ],
)
def test_stored_ticket_from_bad_json(field: str, value: object, error: type[Exception]) -> None:
    data = ticket(1).to_json()
    data[field] = value
    with pytest.raises(error):
        StoredTicket.from_json(data)
    del data[field]
    with pytest.raises(KeyError):
        StoredTicket.from_json(data)


# ------------------------------------------------------------------ the file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    assert not path.exists()  # nothing to save yet
    cache.store("s", ticket(1))
    assert mode(path) == 0o600
    data = json.loads(path.read_text())
    assert data["format"] == "nautilus-session-cache-v1"
    assert list(data["servers"]) == ["s"]
    assert [p.name for p in tmp_path.iterdir()] == ["tickets.json"]  # no temporary left


def test_file_survives_a_new_cache_and_take_is_persisted(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    first = SessionCache(path=path)
    first.store("a", ticket(1))
    first.store("a", ticket(2))
    first.store("b", ticket(3))
    second = SessionCache(path=path)
    assert len(second) == 3
    assert second.take("a", NOW) == ticket(2)  # equal in every field, PSK included
    third = SessionCache(path=path)  # what the second took is gone for everyone
    assert number(third.take("a", NOW)) == 1
    assert third.take("a", NOW) is None
    assert number(third.take("b", NOW)) == 3
    assert len(SessionCache(path=path)) == 0


def test_file_keeps_the_lru_order(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("a", ticket(1))
    cache.store("b", ticket(2))
    cache.store("a", ticket(3))  # "a" is now the most recent
    reopened = SessionCache(max_entries=2, path=path)
    reopened.store("c", ticket(4))  # evicts "b", the least recently used
    assert reopened.take("b", NOW) is None
    assert number(reopened.take("a", NOW)) == 3


@pytest.mark.parametrize("bad_mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o700 | 0o007])
def test_file_accessible_to_others_is_refused(tmp_path: Path, bad_mode: int) -> None:
    path = tmp_path / "tickets.json"
    SessionCache(path=path).store("s", ticket(1))
    path.chmod(bad_mode)
    with pytest.raises(IdentityFileError, match="other users"):
        SessionCache(path=path)


def test_owner_only_modes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    SessionCache(path=path).store("s", ticket(1))
    path.chmod(0o400)
    assert len(SessionCache(path=path)) == 1


def test_symlinked_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    SessionCache(path=real).store("s", ticket(1))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with pytest.raises(IdentityFileError, match="cannot be read"):
        SessionCache(path=link)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_an_identity_file_error(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    SessionCache(path=path).store("s", ticket(1))
    path.chmod(0o000)
    with pytest.raises(IdentityFileError, match="cannot be read"):
        SessionCache(path=path)


def test_directory_as_cache_path_is_an_identity_file_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError):
        SessionCache(path=tmp_path)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _doc(servers: object, fmt: str = "nautilus-session-cache-v1") -> bytes:
    return json.dumps({"format": fmt, "servers": servers}).encode()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff\xfe garbage",
        b"{not json",
        b"[]",
        b'"a string"',
        _doc({}, fmt="something-else"),
        json.dumps({"format": "nautilus-session-cache-v1"}).encode(),
        _doc([]),
        _doc({"s": "not a list"}),
        _doc({"s": [{"ticket": "AA=="}]}),
        _doc({"s": [dict(ticket(1).to_json(), psk="%%%")]}),
        _doc({"s": [dict(ticket(1).to_json(), cipher=[1])]}),
    ],
    ids=[
        "empty",
        "binary",
        "bad-json",
        "list",
        "string",
        "other-format",
        "no-servers",
        "servers-list",
        "entry-not-list",
        "ticket-missing-fields",
        "bad-base64",
        "bad-type",
    ],
)
def test_corrupt_file_is_logged_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "tickets.json"
    _write(path, content)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache = SessionCache(path=path)
    assert len(cache) == 0
    (record,) = [r for r in caplog.records if r.name == "nautilus.sessions"]
    assert "corrupt" in record.getMessage()
    assert str(path) in record.getMessage()
    cache.store("s", ticket(1))  # the next save replaces the corrupt file
    assert mode(path) == 0o600
    assert number(SessionCache(path=path).take("s", NOW)) == 1


def test_corrupt_entry_voids_the_whole_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """All or nothing: a file with one bad ticket is not half loaded."""
    path = tmp_path / "tickets.json"
    _write(path, _doc({"good": [ticket(1).to_json()], "bad": [{"ticket": 5}]}))
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache = SessionCache(path=path)
    assert len(cache) == 0
    assert caplog.records


def test_cache_file_with_a_client_connection(tmp_path: Path) -> None:
    """End to end: tickets persisted by one client context resume from another."""
    path = tmp_path / "tickets.json"
    p = Pair.make(
        server={"tickets_per_handshake": 2},
        client={"session_cache": SessionCache(path=path)},
        server_name="srv:1",
    )
    p.handshake()
    assert mode(path) == 0o600
    saved = path.read_bytes()
    assert SERVER.peer_id.encode() not in saved  # keyed by "*": no expected_peer
    later = Context(trusted_peers=[SERVER.public], session_cache=SessionCache(path=path))
    q = Pair(later, p.server_ctx, {"server_name": "srv:1"})
    q.handshake()
    assert q.client.session is not None
    assert q.client.session.resumed


def test_deeply_nested_corrupt_file_is_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    _write(path, b"[" * 100_000)
    cache = SessionCache(path=path)
    assert len(cache) == 0


def test_file_is_0600_even_if_its_temporary_path_already_exists(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    tmp = tmp_path / f".tickets.json.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.touch()
    tmp.chmod(0o644)  # planted by someone else, or left over
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    assert mode(path) == 0o600


def test_bounds_hold_after_loading_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    big = SessionCache(path=path, tickets_per_server=10)
    for n in range(6):
        big.store("s", ticket(n))
    small = SessionCache(path=path, tickets_per_server=2)
    assert len(small) <= 2
