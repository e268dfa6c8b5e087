"""The client's SessionCache: bounds, LRU order, single use, expiry, the
optional 0600 file store, and StoredTicket's JSON form (docs/sessions.md)."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import logging
import math
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from protocol_helpers import NOW, Pair, cached_identity

from nautilus import Context, IdentityFileError, sessions
from nautilus.protocol.connection import Connection
from nautilus.sessions import MAX_TICKET_LIFETIME, SessionCache, StoredTicket

SERVER = cached_identity()
needs_fcntl = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: the file is not locked")


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


def test_expired_checks_now_as_take_does() -> None:
    """A NaN ``now`` made every ticket unexpired, a bool or a string was
    compared as it came: expired() refuses them with take()'s errors."""
    t = ticket(1)
    cache = SessionCache()
    cache.store("s", t)
    for bad in (True, False, "now", None, b"1", math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises((TypeError, ValueError)) as from_take:
            cache.take("s", bad)  # type: ignore[arg-type]
        with pytest.raises(from_take.type, match="now") as from_expired:
            t.expired(bad)  # type: ignore[arg-type]
        assert str(from_expired.value) == str(from_take.value)
    assert len(cache) == 1
    assert not t.expired(int(NOW))  # an int is a time, as for take()
    assert t.expired(NOW + 3600)


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


def test_the_bounds_are_read_only() -> None:
    """The bounds are checked at construction and cannot be changed after it:
    an assignment that skipped the checks (0, a float) would break store()."""
    cache = SessionCache(max_entries=3, tickets_per_server=2)
    for name in ("max_entries", "tickets_per_server"):
        with pytest.raises(AttributeError):
            setattr(cache, name, 0)
    assert (cache.max_entries, cache.tickets_per_server) == (3, 2)
    for n in range(5):
        cache.store("s", ticket(n))
    assert len(cache) == 2


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
        ({"path": 123}, TypeError),
        ({"path": b"/tmp/tickets.json"}, TypeError),
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


def test_store_take_and_key_check_their_arguments() -> None:
    cache = SessionCache()
    with pytest.raises(TypeError, match="key"):
        cache.store(1, ticket(1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ticket"):
        cache.store("s", "notaticket")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ticket"):
        cache.store("s", ticket(1).to_json())  # type: ignore[arg-type]
    assert len(cache) == 0
    cache.store("s", ticket(1))
    with pytest.raises(TypeError, match="key"):
        cache.take(None, NOW)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now"):
        cache.take("s", "now")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        cache.take("s", math.nan)
    assert len(cache) == 1  # a refused call takes nothing
    with pytest.raises(TypeError, match="server_id"):
        SessionCache.key(None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="address"):
        SessionCache.key("id", 443)  # type: ignore[arg-type]
    # A space in a server id let two servers share a key: "a b" + "c" == "a" + "b c".
    for server_id in ("a b", "", "a\nb"):
        with pytest.raises(ValueError, match="server_id"):
            SessionCache.key(server_id, "c")
    with pytest.raises(ValueError, match="NUL"):
        SessionCache(path="tickets\0.json")


def test_key_bounds_the_length_of_each_part() -> None:
    """key() took parts of any length: one store record of a server_name of
    megabytes put a shared file over the size a cache of small bounds reads,
    which then dropped every ticket in it as corrupt. Each part is bounded
    so that the largest record stays within the room the size bound gives it."""
    peer = SERVER.peer_id
    for address in ("h" * 253 + ":65535", "é" * 256, "\U0001f600" * 128):  # (up to 512 bytes)
        SessionCache.key("*", address)
    SessionCache.key("z" * 128, "a", "z" * 128, namespace="n" * 255)
    for address in ("h" * 513, "é" * 256 + "h", "h" * (5 << 20)):
        with pytest.raises(ValueError, match=r"^address is \d+ bytes .* at most 512") as err:
            SessionCache.key(peer, address)
        assert "hhhh" not in str(err.value)  # (its length, not the value)
    with pytest.raises(ValueError, match=r"^server_id .* at most 128"):
        SessionCache.key("z" * 129, "a")
    with pytest.raises(ValueError, match=r"^client_id .* at most 128"):
        SessionCache.key(peer, "a", "z" * 129)
    with pytest.raises(ValueError, match=r"^namespace .* 255"):
        SessionCache.key(peer, "a", namespace="n" * 256)


def test_a_server_name_too_long_for_a_cache_key_is_refused(tmp_path: Path) -> None:
    """A connection refuses, when it is made, a server_name that key() would
    refuse, rather than fail in start() (or when its ticket arrives)."""
    for name in ("h" * 513, "é" * 257):
        with pytest.raises(ValueError, match=r"^server_name is \d+ bytes .* at most 512"):
            Connection(Context(), "client", server_name=name)
    longest = "h" * 253 + ":65535"
    p = Pair.make(
        server={"tickets_per_handshake": 1},
        client={"session_cache": SessionCache(1, tickets_per_server=1, path=tmp_path / "c")},
        server_name=longest,
    )
    p.handshake()
    assert len(SessionCache(1, tickets_per_server=1, path=tmp_path / "c")) == 1


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
        ("cipher", "x", TypeError),
        ("cipher", 4866.0, TypeError),
        ("cipher", 99999, ValueError),
        ("age_add", "1", TypeError),
        ("age_add", -1, ValueError),
        ("max_early_data", True, TypeError),
        ("received", None, TypeError),
        ("received", "1800000000", TypeError),
        ("received", 10**400, ValueError),
        ("lifetime", 1e12, ValueError),
        ("psk", "", ValueError),
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


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("ticket", b"", ValueError),
        ("ticket", b"t" * 65536, ValueError),
        ("ticket", "ticket", TypeError),
        ("psk", b"", ValueError),
        ("psk", b"p" * 256, ValueError),
        ("psk", bytearray(32), TypeError),
        ("namespace", b"n" * 256, ValueError),
        ("server_key", None, TypeError),
        ("server_key", b"k" * 65536, ValueError),
        ("server_certificate", b"c" * 65536, ValueError),
        ("server_certificate", "", TypeError),
        ("cipher", -1, ValueError),
        ("cipher", 0x10000, ValueError),
        ("cipher", True, TypeError),
        ("cipher", 4866.0, TypeError),
        ("age_add", -1, ValueError),
        ("age_add", 2**32, ValueError),
        ("max_early_data", -5, ValueError),
        ("max_early_data", 2**32, ValueError),
        ("received", math.nan, ValueError),
        ("received", math.inf, ValueError),
        ("received", 10**400, ValueError),
        ("received", "now", TypeError),
        ("lifetime", 0.0, ValueError),
        ("lifetime", -1.0, ValueError),
        ("lifetime", MAX_TICKET_LIFETIME + 1, ValueError),
        ("lifetime", math.inf, ValueError),
        ("lifetime", False, TypeError),
    ],
)
def test_stored_ticket_checks_its_fields(field: str, value: object, error: type[Exception]) -> None:
    good = ticket(1)
    fields = {f: getattr(good, f) for f in good.to_json()}
    with pytest.raises(error, match=field) as info:
        StoredTicket(**{**fields, field: value})
    assert good.psk.hex() not in str(info.value)
    assert repr(good.psk) not in str(info.value)


def test_stored_ticket_accepts_the_extreme_values() -> None:
    t = StoredTicket(
        ticket=b"t" * 65535,
        psk=b"p" * 255,
        cipher=0xFFFF,
        server_key=b"k" * 65535,
        server_certificate=b"c" * 65535,
        received=0,
        lifetime=MAX_TICKET_LIFETIME,
        age_add=2**32 - 1,
        max_early_data=2**32 - 1,
        namespace=b"n" * 255,
    )
    assert StoredTicket.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert isinstance(t.received, float)
    fields = {f: getattr(t, f) for f in t.to_json()}
    assert StoredTicket(**{**fields, "ticket": b"t"}).ticket == b"t"  # 1 byte is enough


# ------------------------------------------------------------------ the file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def journal(path: Path) -> list[dict[str, object]]:
    """The file's lines as JSON: the header, then the records (docs/sessions.md 3.1)."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def test_file_is_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    assert not path.exists()  # nothing to save yet
    cache.store("s", ticket(1))
    assert mode(path) == 0o600
    header, *records = journal(path)
    assert header == {"format": "nautilus-session-cache-v2"}
    assert records == [{"op": "store", "key": "s", "ticket": ticket(1).to_json()}]
    # no temporary left; the lock file is private too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tickets.json", "tickets.json.lock"]
    assert mode(tmp_path / "tickets.json.lock") == 0o600


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
    # (the message said "[Errno 21] Is a directory: 3", the 3 a descriptor,
    # and "[Errno 0] not a regular file" for a device)
    with pytest.raises(IdentityFileError, match=r"cannot be read: Is a directory$"):
        SessionCache(path=tmp_path)
    with pytest.raises(IdentityFileError, match=r"cannot be read: not a regular file$"):
        SessionCache(path=os.devnull)


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


def _size_bound(max_entries: int, tickets_per_server: int) -> int:
    """The most of its file a cache reads (docs/sessions.md): the header, and
    32 KiB for each record of the longest journal its bounds allow (a
    compaction comes before 2 * tickets + 128 records), a torn line included."""
    header = b'{"format":"nautilus-session-cache-v2"}\n'
    return len(header) + 32 * 1024 * (2 * max_entries * tickets_per_server + 128 + 1)


def _journal_of_size(size: int, *records: dict[str, object]) -> bytes:
    """A journal of ``records``, made exactly ``size`` bytes long by a torn
    last line (one without its newline: not applied, not corrupt)."""
    data = _journal_bytes(*records)
    assert len(data) < size
    return data + b"x" * (size - len(data))


def test_a_file_over_the_size_bound_is_not_read_and_is_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge (or hostile) file is not read into memory: one over the bound
    is handled as a corrupt file, logged, and replaced at the next write."""
    path = tmp_path / "tickets.json"
    bound = _size_bound(1, 1)
    store = {"op": "store", "key": "s", "ticket": ticket(1).to_json()}
    _write(path, _journal_of_size(bound, store))
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        assert len(SessionCache(1, tickets_per_server=1, path=path)) == 1  # at the bound: read
        assert not caplog.records
        _write(path, _journal_of_size(bound + 1, store))
        cache = SessionCache(1, tickets_per_server=1, path=path)
    assert len(cache) == 0
    (record,) = [r for r in caplog.records if r.name == "nautilus.sessions"]
    assert "corrupt" in record.getMessage()
    assert f"over {bound} bytes" in record.getMessage()
    assert str(path) in record.getMessage()
    # The bound follows the cache's bounds: a larger cache reads that file.
    assert len(SessionCache(2, tickets_per_server=1, path=path)) == 1
    cache.store("t", ticket(2))  # the next write replaces it
    assert path.stat().st_size < 1000
    assert number(SessionCache(1, tickets_per_server=1, path=path).take("t", NOW)) == 2
    # A file that fstat shows over the bound (here a sparse one of 1 GiB) is not read at all.
    os.truncate(path, 1 << 30)

    def no_read(*args: object) -> None:
        raise AssertionError("a file over the bound was read")

    monkeypatch.setattr(sessions, "_read_at_most", no_read)
    assert len(SessionCache(1, tickets_per_server=1, path=path)) == 0


@needs_fcntl  # (the second part: bytes past the last line under the lock)
def test_a_file_grown_over_the_size_bound_is_not_read_and_is_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Also when the file grows past the bound while a cache follows it: the
    lines appended since it last looked, and the bytes past its last line
    found just before it appends, are not read."""
    path = tmp_path / "tickets.json"
    bound = _size_bound(1, 1)
    removal = json.dumps({"op": "remove", "key": "elsewhere", "ids": []}).encode() + b"\n"
    small = SessionCache(1, tickets_per_server=1, path=path)
    small.store("s", ticket(1))
    with path.open("ab") as fh:  # another writer's (valid) records, then a torn line
        fh.write(removal + b"x" * bound)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        assert small.take("s", NOW) is None
    assert f"over {bound} bytes" in caplog.text
    assert path.stat().st_size > bound  # a take of nothing writes nothing...
    small.store("t", ticket(2))  # ...the next write replaces the file
    assert path.stat().st_size < 1000
    assert number(SessionCache(1, tickets_per_server=1, path=path).take("t", NOW)) == 2

    caplog.clear()
    small.store("u", ticket(3))
    with small._lock, small._file_op():  # the cache holds the lock, has read the file...
        with path.open("ab") as fh:  # ...and a writer without the lock appends
            fh.write(removal + b"x" * bound)
        with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
            small._write_locked(sessions._store_line("v", ticket(4)))
    assert f"over {bound} bytes" in caplog.text
    assert path.stat().st_size < 1000  # replaced by what the cache holds: nothing
    assert len(SessionCache(1, tickets_per_server=1, path=path)) == len(small) == 0


def test_a_file_that_grows_past_the_size_bound_while_it_is_read_is_not_returned() -> None:
    """The size fstat showed was within the bound, and the file grew before
    the read: no more than the bound and one byte is read, and nothing is
    returned if the bound was passed."""
    bound = 100
    grown = io.BytesIO(b"x" * (bound + 1))
    assert sessions._read_at_most(grown, bound, 50) is None
    assert grown.tell() == bound + 1  # (read no further)
    assert sessions._read_at_most(io.BytesIO(b"x" * bound), bound, 50) == b"x" * bound


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


@pytest.mark.parametrize(
    ("field", "raw"),
    [
        ("received", "1" + "0" * 400),  # an int no float holds: OverflowError
        ("lifetime", "1" + "0" * 400),
        ("age_add", "1e999"),  # JSON gives inf
        ("max_early_data", "-1e999"),
        ("cipher", "NaN"),
        ("lifetime", "1e12"),  # beyond 7 days
        ("lifetime", "-1"),
        ("received", "Infinity"),
        ("cipher", "99999"),
        ("age_add", "-1"),
        ("age_add", str(2**40)),
        ("max_early_data", "-5"),
        ("ticket", json.dumps(base64.b64encode(b"x" * 70000).decode())),  # over 65535 bytes
        ("psk", '""'),
    ],
)
def test_overflowing_or_out_of_range_values_make_the_file_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, raw: str
) -> None:
    path = tmp_path / "tickets.json"
    entry = ticket(1).to_json()
    entry[field] = "@@"
    _write(path, _doc({"s": [entry]}).replace(b'"@@"', raw.encode()))
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache = SessionCache(path=path)
    assert len(cache) == 0
    (record,) = [r for r in caplog.records if r.name == "nautilus.sessions"]
    assert "corrupt" in record.getMessage()


def test_out_of_range_ticket_in_the_file_does_not_break_the_next_connection(
    tmp_path: Path,
) -> None:
    """A 70000-byte ticket once made start() raise OverflowError; it is now
    refused when the file is read, and the connection makes a full handshake."""
    path = tmp_path / "tickets.json"
    entry = dict(ticket(1).to_json(), ticket=base64.b64encode(b"x" * 70000).decode())
    _write(path, _doc({SessionCache.key("*", "srv:1"): [entry]}))
    p = Pair.make(client={"session_cache": SessionCache(path=path)}, server_name="srv:1")
    p.handshake()
    assert p.client.session is not None
    assert not p.client.session.resumed


def test_cache_file_in_a_directory_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityFileError, match="does not exist"):
        SessionCache(path=tmp_path / "missing" / "tickets.json")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(IdentityFileError, match="not a directory"):
        SessionCache(path=not_a_dir / "tickets.json")


@pytest.mark.parametrize("path", ["", ".", "/", "..", "dir/", "name/.", "sub/.."])
def test_a_path_with_no_file_name_is_refused(path: str) -> None:
    """A path that names a directory by its form (no file name) gets the
    documented IdentityFileError, not pathlib's ValueError about an empty name."""
    with pytest.raises(IdentityFileError, match="a directory"):
        SessionCache(path=path)


def test_a_file_name_too_long_for_the_temporary_files_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock file and a compaction's temporary file are named after the
    cache file, 14 bytes longer. A name too long for them used to be taken,
    and then every write failed (a warning, the tickets in memory only)."""
    limit = sessions._name_max(tmp_path) - sessions._TEMP_NAME_EXTRA
    with pytest.raises(ValueError, match=f"too long.*at most {limit} bytes"):
        SessionCache(path=tmp_path / ("t" * (limit + 1)))
    assert list(tmp_path.iterdir()) == []
    path = tmp_path / ("t" * limit)  # the longest name: stored, compacted, read back
    cache = SessionCache(path=path)
    inode, compactions = None, 0
    for n in range(1, 300):
        cache.store("a", ticket(n))
        assert number(cache.take("a", NOW)) == n
        if inode is not None and path.stat().st_ino != inode:
            compactions += 1  # the file replaced by a compaction
        inode = path.stat().st_ino
    assert compactions >= 1
    cache.store("a", ticket(300))
    assert number(SessionCache(path=path).take("a", NOW)) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, path.name + ".lock"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "nautilus.sessions" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


def test_unwritable_file_keeps_the_tickets_in_memory_and_warns_once_per_streak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    where = tmp_path / "cache"
    where.mkdir()
    path = where / "tickets.json"
    cache = SessionCache(path=path)
    shutil.rmtree(where)  # the directory is deleted while the cache is in use
    with caplog.at_level(logging.INFO, logger="nautilus.sessions"):
        for n in range(3):
            cache.store("s", ticket(n))  # none of these raises
        assert len(cache) == 3
        assert number(cache.take("s", NOW)) == 2
        cache.clear()
        cache.store("s", ticket(7))
        assert len(_warnings(caplog, "cannot be written")) == 1  # once, not once per call
        for message in [r.getMessage() for r in caplog.records]:
            for n in (0, 1, 2, 7):
                assert ticket(n).psk.hex() not in message
                assert ticket(n).to_json()["psk"] not in message
        where.mkdir()  # the directory is back: the next save writes what memory holds
        cache.store("s", ticket(8))
        reopened = SessionCache(path=path)
        assert [number(reopened.take("s", NOW)) for _ in range(2)] == [8, 7]
        shutil.rmtree(where)  # a new streak of failures is logged again
        cache.store("s", ticket(9))
        assert len(_warnings(caplog, "cannot be written")) == 2
    assert len(cache) == 1  # 7 and 8 were taken from the store by the reopened cache


def test_unwritable_cache_file_does_not_break_a_connection(tmp_path: Path) -> None:
    where = tmp_path / "cache"
    where.mkdir()
    cache = SessionCache(path=where / "tickets.json")
    shutil.rmtree(where)
    p = Pair.make(
        server={"tickets_per_handshake": 1},
        client={"session_cache": cache},
        server_name="srv:1",
    )
    p.handshake()  # the ticket arrives in receive_data: its save fails, quietly
    assert p.client.handshake_complete
    assert not p.client.is_closed
    assert len(cache) == 1
    p.server.send_data(b"after the ticket")
    p.pump()
    assert b"after the ticket" in b"".join(getattr(e, "data", b"") for e in p.client_events)
    q = Pair(p.client_ctx, p.server_ctx, {"server_name": "srv:1"})
    q.handshake()  # start() takes the ticket from memory: it resumes
    assert q.client.session is not None
    assert q.client.session.resumed


# -------------------------------------------------- several caches on one file


def test_two_caches_on_one_file_share_their_tickets(tmp_path: Path) -> None:
    """The file is the store: what one cache stores the other sees, and a
    ticket taken through one is gone for the other (single use)."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    a.store("server-A", ticket(1))
    b.store("server-B", ticket(2))  # b read a's ticket before writing: nothing lost
    assert len(a) == len(b) == 2
    assert number(b.take("server-A", NOW)) == 1
    assert a.take("server-A", NOW) is None
    assert number(a.take("server-B", NOW)) == 2
    assert b.take("server-B", NOW) is None
    a.store("server-C", ticket(3))
    b.clear()
    assert len(a) == 0
    a.store("server-D", ticket(4))
    path.unlink()  # deleting the file empties the store
    assert len(a) == 0
    assert b.take("server-D", NOW) is None


def test_unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    reads: list[Path] = []
    original = SessionCache._read_file

    def counting(self: SessionCache) -> tuple[bytes | None, tuple[int, int, int] | None]:
        reads.append(path)
        return original(self)

    monkeypatch.setattr(SessionCache, "_read_file", counting)
    a.store("s", ticket(1))
    a.store("s", ticket(2))
    assert number(a.take("s", NOW)) == 2
    assert len(a) == 1
    assert reads == []  # only a wrote the file: a stat tells a it is as a left it
    assert len(b) == 1
    assert len(reads) == 1  # b reads a's version once
    assert len(b) == 1
    assert len(reads) == 1


@needs_fcntl
def test_change_with_the_same_inode_size_and_mtime_is_read_again(tmp_path: Path) -> None:
    """A coarse clock and a reused inode can give another cache's write the
    (inode, size, mtime) this cache last saw: the lock file's generation still
    tells it to read the file again (single use across caches, nothing lost)."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    b.store("s", ticket(1))
    seen = os.stat(path)  # the version b wrote and recorded
    keep = tmp_path / "keep"
    os.link(path, keep)  # hold b's inode so that it can come back
    assert number(a.take("s", NOW)) == 1
    a.clear()  # a new file, of the header only
    a.store("s", ticket(2))  # appended: the same length as b's version
    new = path.read_bytes()
    assert len(new) == seen.st_size
    # Put a's version in b's inode with b's mtime: the triple b recorded.
    with open(keep, "r+b") as fh:
        fh.write(new)
        fh.truncate()
    os.replace(keep, path)
    os.utime(path, ns=(seen.st_atime_ns, seen.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (
        seen.st_ino,
        seen.st_size,
        seen.st_mtime_ns,
    )
    assert number(b.take("s", NOW)) == 2  # not ticket 1 again, which a took
    assert len(a) == len(b) == 0


def test_memory_is_authoritative_while_saves_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    a.store("A", ticket(1))

    def disk_full(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, "nautilus.sessions"):
        m.setattr(tempfile, "mkstemp", disk_full)  # no new file (a compaction)
        m.setattr(os, "write", disk_full)  # no append
        a.store("A", ticket(2))  # kept in memory only
    assert _warnings(caplog, "cannot be written")
    b.store("B", ticket(3))  # the file now holds A1 and B3, not A2
    assert len(a) == 2  # a does not read the file over its unsaved ticket
    a.store("C", ticket(4))  # this save works: what a holds replaces the file
    assert number(b.take("A", NOW)) == 2
    assert number(b.take("C", NOW)) == 4


@needs_fcntl
def test_lock_file_that_is_a_symbolic_link_is_not_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tickets.json"
    target = tmp_path / "elsewhere"
    (tmp_path / "tickets.json.lock").symlink_to(target)
    cache = SessionCache(path=path)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache.store("s", ticket(1))
        cache.store("s", ticket(2))
    assert not target.exists()
    assert len(_warnings(caplog, "cannot be locked")) == 1
    assert len(SessionCache(path=path)) == 2  # the cache still works, unlocked


_WORKER = """
import os, sys, time
from nautilus.sessions import SessionCache, StoredTicket

path, who, gate, count, now = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), 1.8e9
churn = sys.argv[5] == "churn"  # each process also takes its own ticket back at once
cache = SessionCache(max_entries=100_000, path=path)
while not os.path.exists(gate):
    time.sleep(0.001)
taken = []
for n in range(count):
    ticket = StoredTicket(
        f"{who}-{n}".encode(), b"p" * 32, 0x1302, b"key", b"", now, 3600.0, 1, 0, b"nautilus"
    )
    cache.store(f"{who}-{n}", ticket)
    if cache.take(f"shared-{n}", now) is not None:
        taken.append(f"shared-{n}")
    if churn:
        assert cache.take(f"{who}-{n}", now) == ticket  # its own: no one else takes it
print(" ".join(taken))
"""


def _two_workers(mode: str, path: Path, gate: Path, count: int) -> tuple[list[str], list[str]]:
    """Seed ``path`` with ``count`` shared tickets, then run _WORKER (``mode``:
    "plain" or "churn") in two processes ("first", "second") started together;
    the shared tickets each took."""
    seed = SessionCache(max_entries=100_000, path=path)
    for n in range(count):
        seed.store(f"shared-{n}", ticket(n))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), who, str(gate), str(count), mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("first", "second")
    ]
    gate.touch()
    outputs = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        outputs.append(out.split())
    return outputs[0], outputs[1]


@needs_fcntl
def test_caches_in_two_processes_lose_nothing_and_take_each_ticket_once(tmp_path: Path) -> None:
    """Two processes at once on one file: every ticket either stores is kept,
    and each ticket in the file is taken by exactly one of them."""
    path = tmp_path / "tickets.json"
    count = 60
    first, second = _two_workers("plain", path, tmp_path / "go", count)
    assert not set(first) & set(second)  # no ticket handed out twice
    assert sorted(first + second) == sorted(f"shared-{n}" for n in range(count))
    kept = SessionCache(max_entries=100_000, path=path)
    assert len(kept) == 2 * count
    for who in ("first", "second"):
        for n in range(count):
            assert kept.take(f"{who}-{n}", 1.8e9) is not None


@needs_fcntl
def test_caches_in_two_processes_compacting_the_journal_keep_single_use(
    tmp_path: Path,
) -> None:
    """Two processes at once, each storing a ticket and taking it back while
    taking shared ones: the journal is compacted under them many times (the
    tickets held fall, the records grow), and still every shared ticket is
    taken exactly once and each process gets its own tickets back."""
    path = tmp_path / "tickets.json"
    count = 200
    first, second = _two_workers("churn", path, tmp_path / "go", count)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(f"shared-{n}" for n in range(count))
    # 200 seeds and 2 x 200 x 3 records written; far fewer are left: compacted.
    assert len(journal(path)) - 1 < 2 * count
    assert len(SessionCache(path=path)) == 0


# ----------------------------------------------------------------- the journal


def view(cache: SessionCache) -> list[tuple[str, list[int]]]:
    """What ``cache`` holds now (after reading the file), least recently used first."""
    len(cache)
    return [(key, [number(t) for t in tickets]) for key, tickets in cache._entries.items()]


def _ticket_id(t: StoredTicket) -> str:
    return hashlib.blake2b(t.ticket, digest_size=16).hexdigest()


def _store_record(key: str, n: int) -> dict[str, object]:
    return {"op": "store", "key": key, "ticket": ticket(n).to_json()}


def _journal_bytes(*records: dict[str, object]) -> bytes:
    lines = [{"format": "nautilus-session-cache-v2"}, *records]
    return b"".join(json.dumps(r).encode() + b"\n" for r in lines)


def test_a_change_is_appended_to_the_file_not_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(max_entries=1000, path=path)
    for n in range(300):
        cache.store(f"server-{n}", ticket(n))
    inode = path.stat().st_ino
    before = path.read_bytes()
    cache.store("server-new", ticket(1000))
    after = path.read_bytes()
    assert path.stat().st_ino == inode
    assert after.startswith(before)
    assert json.loads(after[len(before) :]) == _store_record("server-new", 1000)
    before = after
    assert number(cache.take("server-5", NOW)) == 5
    after = path.read_bytes()
    assert path.stat().st_ino == inode
    assert after.startswith(before)
    added = after[len(before) :]
    assert len(added) < 200
    assert added.endswith(b"\n")
    assert json.loads(added) == {"op": "remove", "key": "server-5", "ids": [_ticket_id(ticket(5))]}
    assert mode(path) == 0o600


def test_a_take_names_the_expired_tickets_it_drops(tmp_path: Path) -> None:
    """Replaying the journal gives every cache the state of the one that took."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    a.store("s", ticket(1, lifetime=100_000))
    a.store("s", ticket(2, lifetime=10))
    a.store("s", ticket(3, lifetime=20))
    assert view(b) == [("s", [1, 2, 3])]
    assert number(a.take("s", NOW + 50)) == 1  # 3 and 2 have expired: dropped on the way
    assert journal(path)[-1] == {
        "op": "remove",
        "key": "s",
        "ids": [_ticket_id(ticket(n)) for n in (3, 2, 1)],
    }
    assert view(b) == view(a) == []


def test_another_cache_reads_only_what_was_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tickets.json"
    a = SessionCache(max_entries=1000, path=path)
    for n in range(300):
        a.store(f"server-{n}", ticket(n))
    b = SessionCache(max_entries=1000, path=path)
    assert len(b) == 300
    whole: list[Path] = []
    tails: list[int] = []
    read_file, read_tail = SessionCache._read_file, SessionCache._read_tail

    def counting_file(self: SessionCache) -> tuple[bytes | None, object]:
        whole.append(path)
        return read_file(self)

    def counting_tail(self: SessionCache) -> object:
        got = read_tail(self)
        tails.append(-1 if got is None else len(got[0]))
        return got

    monkeypatch.setattr(SessionCache, "_read_file", counting_file)
    monkeypatch.setattr(SessionCache, "_read_tail", counting_tail)
    size = path.stat().st_size
    a.store("server-new", ticket(1000))
    assert number(a.take("server-7", NOW)) == 7
    appended = path.stat().st_size - size
    assert tails == []  # a wrote both: it has nothing to read
    assert number(b.take("server-new", NOW)) == 1000
    assert b.take("server-7", NOW) is None  # taken through a: single use
    assert whole == []
    assert tails == [appended]  # b read a's two records, once, and nothing else
    assert len(b) == len(a) == 299
    assert whole == []


def test_the_journal_is_compacted_to_the_live_tickets_in_lru_order(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    reader = SessionCache(path=path)
    cache.store("a", ticket(1))
    cache.store("b", ticket(2))
    cache.store("a", ticket(3))
    cache.store("c", ticket(4))
    assert number(cache.take("a", NOW)) == 3  # "a" is now the most recently used
    live = [("b", 2), ("c", 4), ("a", 1)]
    inode = path.stat().st_ino
    compactions = 0

    def check(expected: list[tuple[str, int]]) -> None:
        nonlocal inode, compactions
        records = path.read_bytes().count(b"\n") - 1
        assert records <= 2 * len(expected) + 128  # compacted before it grows past this
        if path.stat().st_ino != inode:  # compacted: the live tickets, in LRU order
            inode = path.stat().st_ino
            compactions += 1
            assert journal(path)[1:] == [_store_record(k, n) for k, n in expected]
            assert mode(path) == 0o600

    for n in range(10, 400):
        cache.store("x", ticket(n))
        check([*live, ("x", n)])
        assert number(cache.take("x", NOW)) == n
        check(live)
        if n % 50 == 0:
            assert view(reader) == [(k, [t]) for k, t in live]
    assert compactions >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tickets.json", "tickets.json.lock"]
    assert view(reader) == view(SessionCache(path=path)) == [(k, [t]) for k, t in live]
    assert len(cache._lines) <= cache._records + 1  # its memory of lines is bounded too


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_caches_interleaving_keep_single_use_and_identical_views(
    tmp_path: Path, seed: int
) -> None:
    """Two caches on one file, and an in-memory cache given the same calls:
    every take gives what the in-memory one gives, and after every call both
    file caches hold what it holds, in the same order (through appends,
    evictions, expiry and compactions)."""
    rng = random.Random(seed)
    path = tmp_path / "tickets.json"
    bounds = {"max_entries": 5, "tickets_per_server": 3}
    caches = [SessionCache(path=path, **bounds), SessionCache(path=path, **bounds)]
    model = SessionCache(**bounds)
    appended = replaced = 0
    for n in range(1500):
        cache = rng.choice(caches)
        key = f"server-{rng.randrange(7)}"
        before = path.stat().st_ino if path.exists() else None
        roll = rng.random()
        if roll < 0.5:
            t = ticket(n, lifetime=rng.choice([10.0, 3600.0]))
            cache.store(key, t)
            model.store(key, t)
        elif roll < 0.995:
            now = rng.choice([NOW, NOW + 100])
            got = cache.take(key, now)
            expected = model.take(key, now)
            assert (got and number(got)) == (expected and number(expected))
        else:
            cache.clear()
            model.clear()
        after = path.stat().st_ino if path.exists() else None
        if before is not None:
            appended += before == after
            replaced += before != after
        assert view(caches[0]) == view(caches[1]) == view(model)
    assert appended > 1000
    assert replaced >= 5


def test_a_torn_last_line_is_ignored_and_dropped_by_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An append cut short (a crash, a full disk) leaves a last line without
    its newline: that record is not applied, nothing is logged, and the next
    write drops it before appending."""
    path = tmp_path / "tickets.json"
    follower = SessionCache(path=path)
    writer = SessionCache(path=path)
    writer.store("s", ticket(1))
    writer.store("s", ticket(2))
    assert view(follower) == [("s", [1, 2])]
    torn = json.dumps(_store_record("s", 3)).encode()[:-40]
    with open(path, "ab") as fh:
        fh.write(torn)
    with caplog.at_level(logging.INFO, logger="nautilus.sessions"):
        assert view(SessionCache(path=path)) == [("s", [1, 2])]
        assert view(follower) == [("s", [1, 2])]
        assert view(writer) == [("s", [1, 2])]
        follower.store("s", ticket(4))
        assert path.read_bytes().endswith(b"\n")
        assert [r for r in journal(path) if r.get("op") == "store"] == [
            _store_record("s", n) for n in (1, 2, 4)
        ]
        assert view(writer) == view(SessionCache(path=path)) == [("s", [1, 2, 4])]
    assert not [r for r in caplog.records if r.name == "nautilus.sessions"]


def test_a_torn_last_line_read_with_the_whole_file_is_dropped_by_the_next_write(
    tmp_path: Path,
) -> None:
    """As above, for a cache that reads the file whole (a new one): the torn
    bytes are not part of what it has applied, and its first append drops them."""
    path = tmp_path / "tickets.json"
    writer = SessionCache(path=path)
    writer.store("s", ticket(1))
    with open(path, "ab") as fh:
        fh.write(json.dumps(_store_record("s", 2)).encode()[:-40])
    late = SessionCache(path=path)
    assert view(late) == [("s", [1])]
    late.store("s", ticket(3))
    assert path.read_bytes().endswith(b"\n")
    assert [r for r in journal(path) if r.get("op") == "store"] == [
        _store_record("s", n) for n in (1, 3)
    ]
    assert view(SessionCache(path=path)) == view(writer) == [("s", [1, 3])]


def test_a_removal_of_a_ticket_no_longer_held_removes_nothing(tmp_path: Path) -> None:
    """Two caches that took one ticket at once (the lock was not exclusive)
    write two removals of it: the second removes no other ticket."""
    path = tmp_path / "tickets.json"
    twice = {"op": "remove", "key": "s", "ids": [_ticket_id(ticket(3))]}
    _write(
        path,
        _journal_bytes(*(_store_record("s", n) for n in (1, 2, 3)), twice, twice),
    )
    assert view(SessionCache(path=path)) == [("s", [1, 2])]
    other = {"op": "remove", "key": "s", "ids": [_ticket_id(ticket(9))]}
    _write(path, _journal_bytes(_store_record("s", 1), _store_record("s", 2), other))
    assert view(SessionCache(path=path)) == [("s", [1, 2])]


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        b"",  # an empty line
        json.dumps({"op": "store", "key": "s"}).encode(),
        json.dumps({"op": "store", "key": 5, "ticket": ticket(9).to_json()}).encode(),
        json.dumps(
            {"op": "store", "key": "s", "ticket": {**ticket(9).to_json(), "psk": "%"}}
        ).encode(),
        json.dumps({"op": "remove", "key": "s", "ids": "not a list"}).encode(),
        json.dumps({"op": "rename", "key": "s"}).encode(),
        b"[1, 2]",
    ],
    ids=["bad-json", "empty-line", "no-ticket", "key-not-str", "bad-base64", "ids", "op", "list"],
)
def test_a_corrupt_record_in_the_middle_voids_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bad: bytes
) -> None:
    path = tmp_path / "tickets.json"
    good = _journal_bytes(_store_record("s", 1), _store_record("t", 2))
    _write(path, good)
    follower = SessionCache(path=path)
    assert view(follower) == [("s", [1]), ("t", [2])]  # the same journal, whole, is fine
    _write(path, good + bad + b"\n" + json.dumps(_store_record("u", 3)).encode() + b"\n")
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        assert len(SessionCache(path=path)) == 0  # read whole
        assert len(follower) == 0  # read from where it was: the bad record voids it all
    messages = [r.getMessage() for r in caplog.records if r.name == "nautilus.sessions"]
    assert len(messages) == 2
    assert all("corrupt" in m and str(path) in m for m in messages)
    inode = path.stat().st_ino
    follower.store("v", ticket(4))  # the next write replaces the file
    assert path.stat().st_ino != inode
    assert mode(path) == 0o600
    assert journal(path)[1:] == [_store_record("v", 4)]
    assert view(SessionCache(path=path)) == [("v", [4])]


def test_a_file_of_format_v1_is_read_and_rewritten_as_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    _write(
        path, _doc({"a": [ticket(1).to_json(), ticket(2).to_json()], "b": [ticket(3).to_json()]})
    )
    cache = SessionCache(path=path)
    other = SessionCache(path=path)
    assert view(cache) == [("a", [1, 2]), ("b", [3])]
    assert json.loads(path.read_bytes())["format"] == "nautilus-session-cache-v1"  # only read
    assert number(cache.take("b", NOW)) == 3  # the first write: a journal replaces it
    header, *records = journal(path)
    assert header == {"format": "nautilus-session-cache-v2"}
    assert records == [_store_record("a", 1), _store_record("a", 2)]
    assert mode(path) == 0o600
    assert view(other) == [("a", [1, 2])]
    assert other.take("b", NOW) is None


def test_a_file_of_format_v1_is_read_within_the_cache_bounds(tmp_path: Path) -> None:
    """A file of format v1 written by a cache with larger bounds: the newest
    tickets of each server, and the most recently used servers, are kept."""
    path = tmp_path / "tickets.json"
    servers = {
        "a": [ticket(n).to_json() for n in (1, 2, 3)],
        "b": [ticket(4).to_json()],
        "c": [ticket(5).to_json(), ticket(6).to_json()],
    }
    _write(path, _doc(servers))
    few_tickets = SessionCache(tickets_per_server=2, path=path)
    assert view(few_tickets) == [("a", [2, 3]), ("b", [4]), ("c", [5, 6])]
    assert len(few_tickets) == 5
    few_servers = SessionCache(max_entries=2, path=path)
    assert view(few_servers) == [("b", [4]), ("c", [5, 6])]
    assert len(few_servers) == 3


def test_a_journal_header_of_another_format_makes_the_file_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first line that is a JSON object of another format (a later version,
    another program's file) is not a journal header: its records are not applied."""
    path = tmp_path / "tickets.json"
    header = json.dumps({"format": "nautilus-session-cache-v3"}).encode() + b"\n"
    _write(path, header + json.dumps(_store_record("s", 1)).encode() + b"\n")
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache = SessionCache(path=path)
    assert len(cache) == 0
    assert "corrupt" in caplog.text
    assert cache.take("s", NOW) is None


def test_caches_with_other_bounds_apply_their_own(tmp_path: Path) -> None:
    """Each cache applies its own bounds to what it reads; a take through the
    smaller one removes only the ticket it took."""
    path = tmp_path / "tickets.json"
    big = SessionCache(tickets_per_server=4, path=path)
    small = SessionCache(tickets_per_server=1, path=path)
    for n in (1, 2, 3):
        big.store("s", ticket(n))
    assert view(small) == [("s", [3])]
    assert number(small.take("s", NOW)) == 3
    assert view(small) == []
    assert view(big) == [("s", [1, 2])]
    small.store("s", ticket(4))
    assert view(big) == [("s", [1, 2, 4])]
    assert view(small) == [("s", [4])]


@needs_fcntl
def test_a_symbolic_link_put_in_place_of_the_file_is_not_written_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    target = tmp_path / "elsewhere"
    shutil.copy(path, target)
    target.chmod(0o600)
    planted = target.read_bytes()
    path.unlink()
    path.symlink_to(target)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache.store("s", ticket(2))
    assert _warnings(caplog, "cannot be read")  # the link is not read through either
    assert target.read_bytes() == planted
    assert not path.is_symlink()
    assert mode(path) == 0o600
    assert journal(path)[1:] == [_store_record("s", 1), _store_record("s", 2)]


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_file_opened_to_others_is_not_appended_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    """No ticket is written into a file others can read: it is replaced. Also
    if its mode changes during the operation, after this cache read it."""
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    old = tmp_path / "old"
    os.link(path, old)
    before = old.read_bytes()
    if when == "before":
        path.chmod(0o644)
    else:
        refresh = SessionCache._refresh_locked

        def then_chmod(self: SessionCache) -> None:
            refresh(self)
            path.chmod(0o644)

        monkeypatch.setattr(SessionCache, "_refresh_locked", then_chmod)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache.store("s", ticket(2))
    if when == "before":
        assert _warnings(caplog, "other users")
    monkeypatch.undo()
    assert old.read_bytes() == before
    assert mode(path) == 0o600
    assert view(SessionCache(path=path)) == [("s", [1, 2])]


def test_the_same_ticket_stored_twice_is_removed_newest_first(tmp_path: Path) -> None:
    """A removal names tickets by their opaque bytes: with two alike, every
    cache removes the newest, as the take did."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    a.store("s", ticket(1, lifetime=10))
    a.store("s", ticket(1, lifetime=3600))
    assert len(b) == 2
    assert a.take("s", NOW) == ticket(1, lifetime=3600)
    assert len(a) == len(b) == 1
    assert a._entries == b._entries == {"s": [ticket(1, lifetime=10)]}


def test_a_short_append_is_taken_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk may write part of a line: it is truncated away, the failure
    is logged once, memory keeps the ticket, and the next write that works
    writes the file whole."""
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    other = SessionCache(path=path)
    cache.store("s", ticket(1))
    before = path.read_bytes()
    write = os.write

    def half(fd: int, data: bytes) -> int:
        return write(fd, data[: len(data) // 2])

    with monkeypatch.context() as m, caplog.at_level(logging.WARNING, "nautilus.sessions"):
        m.setattr(os, "write", half)
        cache.store("s", ticket(2))
        assert len(_warnings(caplog, "cannot be written")) == 1
    assert path.read_bytes() == before  # no torn line left
    assert view(other) == [("s", [1])]
    assert view(cache) == [("s", [1, 2])]  # memory is authoritative
    cache.store("t", ticket(3))
    assert view(other) == [("s", [1, 2]), ("t", [3])]
    for message in [r.getMessage() for r in caplog.records]:
        assert ticket(2).to_json()["psk"] not in message


def test_a_ticket_stored_twice_is_kept_twice_by_a_compaction(tmp_path: Path) -> None:
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    t = ticket(1)
    cache.store("s", t)
    cache.store("s", t)  # the same object again
    inode = path.stat().st_ino
    n = 10
    while path.stat().st_ino == inode:  # until a compaction
        cache.store("x", ticket(n))
        cache.take("x", NOW)
        n += 1
    assert [r for r in journal(path)[1:] if r["key"] == "s"] == [_store_record("s", 1)] * 2
    assert view(SessionCache(path=path)) == view(cache) == [("s", [1, 1])]


@needs_fcntl
def test_a_compaction_that_reuses_the_inode_is_read_whole(tmp_path: Path) -> None:
    """A compacted file in the inode a cache followed, longer, with a newline
    where the cache's last line ended: it looks appended to, but the lock
    file's compaction epoch changed, so the cache reads it whole (it does not
    hand out a ticket taken meanwhile)."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    b.store("s", ticket(1))
    followed = path.stat().st_size  # where b's last line ends
    keep = tmp_path / "keep"
    os.link(path, keep)  # hold b's inode so that it can come back
    assert number(a.take("s", NOW)) == 1
    a.clear()  # a new file
    a.store("s", ticket(2))  # a line as long as b's last one
    a.store("t", ticket(3))
    new = path.read_bytes()
    assert new[followed - 1 : followed] == b"\n"
    with open(keep, "r+b") as fh:
        fh.write(new)
        fh.truncate()
    os.replace(keep, path)
    assert view(b) == [("s", [2]), ("t", [3])]


def test_a_file_rewritten_in_place_is_read_whole(tmp_path: Path) -> None:
    """Not an append, though the file kept its inode and grew: the byte before
    the part a cache has not read is not the newline it read there."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    a.store("s", ticket(1))
    replacement = _journal_bytes(_store_record("other-server", 7), _store_record("t", 8))
    assert len(replacement) > path.stat().st_size
    with open(path, "r+b") as fh:  # the same inode, longer, by no cache
        fh.write(replacement)
    assert view(a) == [("other-server", [7]), ("t", [8])]


def test_a_file_cut_short_in_place_is_read_whole(tmp_path: Path) -> None:
    """The same inode, now shorter than what a cache has applied (cut by no
    cache, so no counter of the lock file changed): the cache reads it whole
    rather than keep the tickets the file no longer holds."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    a.store("s", ticket(1))
    first = path.stat().st_size
    a.store("t", ticket(2))
    inode = path.stat().st_ino
    os.truncate(path, first)  # the last record gone
    assert path.stat().st_ino == inode
    assert view(a) == [("s", [1])]
    assert a.take("t", NOW) is None


def test_a_corrupt_file_rewritten_in_place_is_read_again(tmp_path: Path) -> None:
    """A cache that found the file corrupt (so it replaces it at its next
    write) still reads it again when it changes in place, by no cache."""
    path = tmp_path / "tickets.json"
    _write(path, b"{not json")
    a = SessionCache(path=path)
    assert view(a) == []
    replacement = _journal_bytes(_store_record("s", 7))
    with open(path, "r+b") as fh:  # the same inode, by no cache
        fh.write(replacement)
    assert view(a) == [("s", [7])]


def test_without_fcntl_changes_are_seen_by_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where fcntl does not exist (Windows) the file is not locked: appends
    are seen by the file's size, a compaction by its inode."""
    monkeypatch.setattr(sessions, "_fcntl", None)
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    b = SessionCache(path=path)
    a.store("s", ticket(1))
    assert view(b) == [("s", [1])]
    whole: list[Path] = []
    read_file = SessionCache._read_file

    def counting(self: SessionCache) -> tuple[bytes | None, object]:
        whole.append(path)
        return read_file(self)

    monkeypatch.setattr(SessionCache, "_read_file", counting)
    a.store("s", ticket(2))
    assert number(b.take("s", NOW)) == 2
    assert view(a) == [("s", [1])]
    assert whole == []  # appended: read from where each cache was
    a.clear()
    assert view(b) == []
    assert len(whole) == 1  # replaced: read whole
    assert not (tmp_path / "tickets.json.lock").exists()


# ------------------------------------------------ the lock file: replaced, forked, not a file


@needs_fcntl
def test_a_lock_file_made_again_is_noticed(tmp_path: Path) -> None:
    """The lock file deleted between operations (a stale-lock cleanup): its
    counters start again from 0, and on ext4 the new file may get the old
    inode number. A cache that saw the old lock file reads the cache file
    whole: it took a ticket another cache had cleared."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    a.store("s", ticket(1))
    a.clear()
    a.store("s", ticket(1))
    os.unlink(f"{path}.lock")
    b = SessionCache(path=path)
    b.clear()
    b.clear()
    b.store("s", ticket(2))  # counters and sizes as a last left them
    assert number(a.take("s", NOW)) == 2
    assert b.take("s", NOW) is None


@needs_fcntl
def test_records_written_without_the_lock_are_kept_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache holding the lock finds complete records past what it read:
    another cache wrote without the lock (the lock file was deleted while in
    use). They are applied, not dropped as a torn line, and it is logged."""
    path = tmp_path / "tickets.json"
    a = SessionCache(path=path)
    a.store("s", ticket(1))
    b = SessionCache(path=path)
    assert number(b.take("s", NOW)) == 1
    b.store("t", ticket(2))
    with a._lock, a._file_op():  # a holds the lock, and has read the file...
        appended = path.read_bytes()
    os.unlink(f"{path}.lock")
    b.store("u", ticket(3))  # ...b, on a new lock file, appends meanwhile
    with (
        caplog.at_level(logging.WARNING, logger="nautilus.sessions"),
        a._lock,
        a._file_locked() as fd,
    ):
        a._lock_fd = fd
        try:  # (a's write, as if its operation had not re-read the file)
            a._write_locked(sessions._store_line("v", ticket(4)))
        finally:
            a._lock_fd = -1
    assert path.read_bytes().startswith(appended)
    assert "was not exclusive" in caplog.text
    fresh = SessionCache(path=path)
    assert sorted(number(fresh.take(k, NOW)) for k in ("t", "u", "v")) == [2, 3, 4]


@needs_fcntl
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_an_operation_neither_blocks_nor_hangs(tmp_path: Path) -> None:
    """fork() while a thread of the parent is inside an operation: the child
    used to inherit the held lock (its own operations waited for ever) and
    the flock'd descriptor (the parent's operations waited for the child)."""
    import fcntl

    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    with cache._lock, cache._file_op():  # as another thread would, mid-operation
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                import signal

                signal.alarm(10)  # a hang ends the child, and fails the test
                os.write(done_w, b"r")  # running (the fork hooks have run)
                os.read(go_r, 1)
                cache.store("child", ticket(2))
                code = 0 if number(cache.take("s", NOW)) == 1 else 2
            finally:
                os.write(done_w, bytes([code]))
                os._exit(code)
    assert os.read(done_r, 1) == b"r"
    # The parent's operation has ended: nobody holds the lock file now.
    fd = os.open(f"{path}.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child held it
    finally:
        os.close(fd)
    os.write(go_w, b"x")
    assert os.read(done_r, 1) == b"\x00"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert number(cache.take("child", NOW)) == 2
    for end in (go_r, go_w, done_r, done_w):
        os.close(end)


def test_a_child_forked_while_a_thread_opens_or_closes_the_lock_file_does_not_hang(
    tmp_path: Path,
) -> None:
    """A thread of the parent loops over operations while the main thread
    forks: a fork between the lock file's opening and its recording, or
    between its closing and forgetting it, left the child a copy of the
    flock'd descriptor it did not know of (its first operation then waited for
    ever, and the parent's for the child's end). The child closes every
    descriptor of a cache's lock file."""
    import signal

    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            cache.take("nothing-here", NOW)

    thread = threading.Thread(target=worker)
    thread.start()
    codes = []
    try:
        for _ in range(40):
            pid = os.fork()
            if pid == 0:  # the child: one ordinary operation, or SIGALRM ends it
                signal.alarm(2)
                os._exit(0 if len(cache) == 1 else 1)
            _, status = os.waitpid(pid, 0)
            codes.append(os.waitstatus_to_exitcode(status))
    finally:
        stop.set()
        thread.join()
    assert codes == [0] * 40
    assert number(cache.take("s", NOW)) == 1


def test_an_in_memory_cache_starts_empty_in_a_forked_child() -> None:
    """Tickets are single use: a child made by fork() must not resume with the
    tickets its parent will use too (a cache with a file hands each out once)."""
    cache = SessionCache()
    cache.store("s", ticket(1))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, bytes([len(cache)]))
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.close(r)
    os.waitpid(pid, 0)
    assert number(cache.take("s", NOW)) == 1


def test_a_relative_path_stays_the_file_it_named_after_a_chdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path is made absolute at construction: a daemon's later chdir()
    does not make the cache forget its tickets and start a file elsewhere."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    cache = SessionCache(path="tickets.json")
    cache.store("s", ticket(1))
    monkeypatch.chdir(tmp_path / "two")
    assert number(cache.take("s", NOW)) == 1
    assert list((tmp_path / "two").iterdir()) == []


def test_a_fifo_at_the_path_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A FIFO put where the cache file or its lock file goes: refused (or, for
    the lock, the cache works unlocked), never an open() that waits for ever."""
    path = tmp_path / "tickets.json"
    os.mkfifo(path)
    with pytest.raises(IdentityFileError, match="not a regular file"):
        SessionCache(path=path)
    os.unlink(path)
    os.mkfifo(f"{path}.lock")
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    assert number(SessionCache(path=path).take("s", NOW)) == 1


def test_a_compaction_syncs_the_new_file_before_the_rename_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash cannot be simulated: the test checks that each replacement of
    the file syncs the new file's descriptor before renaming it over the
    journal, and the directory's after (where a directory can be opened)."""
    path = tmp_path / "tickets.json"
    events: list[tuple[str, int]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        st = os.fstat(fd)
        events.append(("fsync dir" if stat.S_ISDIR(st.st_mode) else "fsync file", st.st_ino))
        fsync(fd)

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        inode = os.stat(src).st_ino
        replace(src, dst)
        events.append(("replace", inode))

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))  # the first write makes the file: a replacement
    for n in range(2, 300):  # compactions
        cache.store("s", ticket(n))
        assert number(cache.take("s", NOW)) == n
    cache.clear()  # a file of its header alone: a replacement too
    replaced = [i for i, (what, _) in enumerate(events) if what == "replace"]
    assert len(replaced) >= 3
    directory = tmp_path.stat().st_ino
    for i in replaced:
        inode = events[i][1]
        assert events[i - 1] == ("fsync file", inode)  # the new file, on the disk, then renamed
        if hasattr(os, "O_DIRECTORY"):
            assert events[i + 1] == ("fsync dir", directory)


def test_a_compaction_that_cannot_be_synced_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed fsync is a failed write: the journal is not replaced (nor the
    temporary file left), the tickets stay in memory, and it is logged."""
    path = tmp_path / "tickets.json"
    cache = SessionCache(path=path)
    cache.store("s", ticket(1))
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache.clear()  # a replacement
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "tickets.json.lock") == [
        "tickets.json"
    ]
    assert "cannot be written" in caplog.text
    assert len(cache) == 0  # memory: authoritative while writes fail
    monkeypatch.undo()
    cache.store("t", ticket(2))  # the next write replaces the file with what memory holds
    assert view(SessionCache(path=path)) == [("t", [2])]


def test_a_compaction_removes_the_temporary_files_of_unfinished_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process killed between writing a compacted file and renaming it left
    that file, PSKs included: the next compaction (made under the lock, when
    no other is in progress) deletes it, and nothing else."""
    path = tmp_path / "tickets.json"
    leftover = tmp_path / ".tickets.json.k3_x9q0z.tmp"  # a name mkstemp gives
    leftover.write_bytes(b"a compacted journal, with its PSKs")
    kept = [
        tmp_path / ".tickets.json.short.tmp",  # not mkstemp's 8 characters
        tmp_path / ".other.json.k3_x9q0z.tmp",  # another cache's
        tmp_path / "tickets.json.bak",
    ]
    for other in kept:
        other.write_bytes(b"x")
    cache = SessionCache(path=path)
    with caplog.at_level(logging.WARNING, logger="nautilus.sessions"):
        cache.store("s", ticket(1))  # the first write makes the file: a compaction
    assert not leftover.exists()
    assert all(other.exists() for other in kept)
    assert any(".tickets.json.k3_x9q0z.tmp" in r.getMessage() for r in caplog.records)
    assert view(SessionCache(path=path)) == [("s", [1])]
