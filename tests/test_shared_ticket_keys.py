"""Ticket keys derived from a secret that processes not forked from one
another share (``TicketKeys.share_secret``): docs/sessions.md section 2.4."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from protocol_helpers import (
    NOW,
    Pair,
    cached_identity,
    in_a_child_forked_with_locks_held,
    ticket_contents,
)

import nautilus
from nautilus import Context, Identity, IdentityFileError
from nautilus.protocol.events import EarlyDataReceived
from nautilus.sessions import (
    _MAX_RETIRED_KEYS,
    MAX_SHARED_SECRET,
    MIN_SHARED_SECRET,
    SessionCache,
    TicketContents,
    TicketKeys,
    write_ticket_secret,
)

SECRET = bytes.fromhex("5f1c" * 16)  # (any 32 bytes will do in a test)
ROTATION, LIFETIME = 3600.0, 7200.0
LINK = NOW / ROTATION  # NOW starts a link of the default schedule exactly
assert int(LINK) == LINK
SERVER = cached_identity()
SERVER_NAME = "srv:1"
CACHE_KEY = SessionCache.key("*", SERVER_NAME)


def _contents(issued: float = NOW) -> TicketContents:
    return ticket_contents(issued, LIFETIME)


def _keys(
    secret: bytes | bytearray | None = SECRET,
    rotation: float = ROTATION,
    lifetime: float = LIFETIME,
) -> TicketKeys:
    """Ticket keys as a process (a restarted one, or one on another machine)
    makes them, from ``secret``."""
    keys = TicketKeys(rotation, lifetime)
    keys.share_secret(secret)
    return keys


def _seal(keys: TicketKeys, now: float) -> bytes:
    return keys.seal(_contents(now), now)


def _opens(keys: TicketKeys, ticket: bytes, now: float) -> bool:
    return keys.open(ticket, now) is not None


# ------------------------------------------------------------- one secret, one schedule


def test_keys_from_one_secret_open_each_others_tickets_whenever_each_was_made() -> None:
    a = _keys()
    ticket = _seal(a, NOW + 10)
    b = _keys()  # first used a few minutes later: another process, or a restart
    assert _opens(b, ticket, NOW + 300)
    assert _seal(b, NOW + 300)[:8] == ticket[:8]  # the same key, in the same interval
    assert _opens(a, _seal(b, NOW + 300), NOW + 301)
    assert b.shares_secret
    # Another secret, or none: other keys.
    assert not _opens(_keys(bytes(32)), ticket, NOW + 300)
    assert not _opens(_keys(None), ticket, NOW + 300)
    assert not _keys(None).shares_secret
    # The rotation interval is part of each key: processes must agree on it.
    assert not _opens(_keys(rotation=ROTATION / 2), ticket, NOW + 300)


def test_the_shared_schedule_counts_its_intervals_from_1970() -> None:
    """Key n is current from n * rotation seconds, whenever a process first
    used the keys: two processes started at different times change keys at
    the same instants."""
    early, late = _keys(), _keys()
    _seal(early, NOW - 5000)
    boundary = NOW + ROTATION  # (a multiple of the rotation)
    before = _seal(early, boundary - 0.001)
    assert _seal(late, boundary - 1000)[:8] == before[:8]  # late's first use
    after = _seal(late, boundary)
    assert after[:8] != before[:8]
    assert _seal(early, boundary + ROTATION - 0.001)[:8] == after[:8]
    assert _seal(early, boundary + ROTATION)[:8] != after[:8]


@pytest.mark.parametrize("rotation", [ROTATION, LIFETIME / (_MAX_RETIRED_KEYS - 1)])
def test_a_shared_key_opens_its_tickets_for_one_lifetime_after_its_interval(
    rotation: float,
) -> None:
    """A key stops sealing at the end of its interval and opens for one
    lifetime after that, in a process started at any time in between (with
    the most rotations per lifetime that the settings allow too)."""
    end = (LINK + 1) * rotation  # the end of the interval in which NOW lies
    ticket = _seal(_keys(rotation=rotation), end - 0.001)
    assert _opens(_keys(rotation=rotation), ticket, end + LIFETIME - 0.001)
    if rotation == ROTATION:  # (the end of the lifetime is exact in floating point)
        assert _opens(_keys(rotation=rotation), ticket, end + LIFETIME)
    assert not _opens(_keys(rotation=rotation), ticket, end + LIFETIME + 0.001)
    one = _keys(rotation=rotation)  # one process, through every interval
    for t in (end - 0.001, end, end + LIFETIME / 2, end + LIFETIME - 0.001):
        assert _opens(one, ticket, t), t
    assert not _opens(one, ticket, end + LIFETIME + 0.001)


def test_a_process_whose_clock_is_a_little_ahead_is_understood() -> None:
    """A process whose clock is ahead seals with the next interval's key a
    little early: the others open its tickets already. Two intervals ahead
    is too far."""
    end = (LINK + 1) * ROTATION
    ahead = _seal(_keys(), end + 1)
    behind = _keys()
    assert _opens(behind, ahead, end - 5)
    assert not _opens(_keys(), _seal(_keys(), end + ROTATION + 1), end - 5)
    # A clock a little behind: the others still open the previous key's tickets.
    assert _opens(_keys(), _seal(_keys(), end - 1), end + 5)


def test_a_stale_time_from_another_thread_keeps_the_window() -> None:
    """Times a little out of order around a key change (connections of
    several threads) seal under the key of their own interval, and make no key
    again; a clock set back by over an interval makes the window again."""
    keys = _keys()
    end = (LINK + 1) * ROTATION
    late = _seal(keys, end + 1)
    made = dict(keys._window)
    assert _seal(keys, end - 1)[:8] != late[:8]  # the previous interval's key
    assert keys._window == made  # (nothing made again)
    assert _opens(keys, late, end - 1)
    assert _seal(keys, end - 2 * ROTATION)[:8] not in {late[:8]}
    assert keys._window_at is not None
    assert keys._window_at[0] == LINK - 1
    assert not _opens(keys, late, end - 2 * ROTATION)  # (two intervals ahead of this clock)
    assert _opens(keys, late, end + 2)


def test_the_window_of_keys_is_bounded_and_grows_by_one_key_per_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rotation = LIFETIME / (_MAX_RETIRED_KEYS - 1)
    keys = _keys(rotation=rotation)
    derived: list[int] = []
    derive = TicketKeys._derive_locked

    def counting(self: TicketKeys, link: int, rot: float) -> Any:
        derived.append(link)
        return derive(self, link, rot)

    monkeypatch.setattr(TicketKeys, "_derive_locked", counting)
    first = math.floor(NOW / rotation)
    _seal(keys, (first + 0.5) * rotation)
    assert len(derived) == len(keys._window) <= _MAX_RETIRED_KEYS + 2
    for step in range(1, 40):
        derived.clear()
        _seal(keys, (first + step + 0.5) * rotation)
        assert derived == [first + step + 1]  # (the next interval's)
        assert len(keys._by_id) == len(keys._window) <= _MAX_RETIRED_KEYS + 2


# ------------------------------------------------------------------ changing the secret


def test_keys_made_before_sharing_keep_opening_for_one_lifetime() -> None:
    keys = TicketKeys(ROTATION, LIFETIME)
    own = _seal(keys, NOW)  # this process's own chain
    keys.share_secret(SECRET)
    shared = _seal(keys, NOW + 10)  # the switch happens at the next time passed
    assert shared[:8] != own[:8]
    assert _opens(_keys(), shared, NOW + 10)
    assert _opens(keys, own, NOW + 10 + LIFETIME)
    assert not _opens(keys, own, NOW + 10 + LIFETIME + 1)


def test_a_key_of_its_own_unused_since_its_interval_ended_opens_one_lifetime_after_it() -> None:
    """The switch happens at the next time passed, maybe long after the last
    one: the key of the process's own chain retires at the end of its
    interval then, not at the switch (its tickets do not open for longer
    than the schedule promises)."""
    keys = TicketKeys(ROTATION, LIFETIME)
    own = _seal(keys, NOW)  # current from NOW to NOW + ROTATION
    keys.share_secret(SECRET)
    assert _opens(keys, own, NOW + ROTATION + LIFETIME)  # the switch, within its lifetime
    keys = TicketKeys(ROTATION, LIFETIME)
    own = _seal(keys, NOW)
    keys.share_secret(SECRET)
    assert not _opens(keys, own, NOW + ROTATION + LIFETIME + 10)  # the switch, after it
    assert not _opens(keys, own, NOW + ROTATION + 2 * LIFETIME)


def test_a_new_secret_takes_over_and_the_old_ones_tickets_keep_opening() -> None:
    keys = _keys()
    old = _seal(keys, NOW)
    keys.share_secret(bytes(range(40)))
    new = _seal(keys, NOW + 20)
    assert _opens(_keys(bytes(range(40))), new, NOW + 20)
    assert not _opens(_keys(), new, NOW + 20)
    assert _opens(keys, old, NOW + 20 + LIFETIME)  # retired when the new secret took over
    assert not _opens(keys, old, NOW + 20 + LIFETIME + 1)
    assert _opens(keys, new, NOW + 20 + LIFETIME)


def test_to_stop_sharing_gives_the_process_keys_of_its_own() -> None:
    keys = _keys()
    shared = _seal(keys, NOW)
    keys.share_secret(None)
    assert not keys.shares_secret
    own = _seal(keys, NOW + 20)
    assert not _opens(_keys(), own, NOW + 20)
    assert _opens(keys, own, NOW + 20)
    assert _opens(keys, shared, NOW + 20 + LIFETIME)
    assert not _opens(keys, shared, NOW + 20 + LIFETIME + 1)
    keys.rotate(NOW + 30)  # (its own keys rotate again)
    assert _seal(keys, NOW + 30)[:8] != own[:8]


def test_to_stop_sharing_when_nothing_is_shared_changes_no_key() -> None:
    """share_secret(None) on keys of the process's own is a no-op: the key in
    use stays (the chain is not renewed, so forked processes keep it too)."""
    keys = TicketKeys(ROTATION, LIFETIME)
    own = _seal(keys, NOW)
    keys.share_secret(None)
    assert not keys.shares_secret
    assert _seal(keys, NOW + 20)[:8] == own[:8]


def test_rotate_is_refused_while_the_keys_follow_a_shared_secret() -> None:
    """rotate() in one process cannot change the others' keys: it says so,
    and changes nothing."""
    keys = _keys()
    before = _seal(keys, NOW)
    with pytest.raises(RuntimeError, match="shared secret"):
        keys.rotate(NOW + 1)
    assert keys.shares_secret
    assert _seal(keys, NOW + 2)[:8] == before[:8]
    with pytest.raises(TypeError):  # (its own argument is still checked first)
        keys.rotate("now")  # type: ignore[arg-type]


def test_retire_all_forgets_the_secret_too() -> None:
    keys = _keys()
    shared = _seal(keys, NOW)
    keys.retire_all()
    assert not keys.shares_secret
    assert not _opens(keys, shared, NOW + 1)
    after = _seal(keys, NOW + 2)
    assert not _opens(_keys(), after, NOW + 2)  # its own keys now
    assert keys._shared is None


@pytest.mark.parametrize(
    ("secret", "error", "words"),
    [
        ("a" * 32, TypeError, "must be bytes, bytearray or None, not str"),
        (memoryview(SECRET), TypeError, "not memoryview"),
        (12345, TypeError, "not int"),
        (SECRET[: MIN_SHARED_SECRET - 1], ValueError, "got 31"),
        (b"\x01" * (MAX_SHARED_SECRET + 1), ValueError, "got 4097"),
        (b"", ValueError, "got 0"),
    ],
)
def test_a_bad_secret_is_refused_and_the_keys_stay(
    secret: object, error: type[Exception], words: str
) -> None:
    keys = _keys()
    before = _seal(keys, NOW)
    with pytest.raises(error, match=words) as info:
        keys.share_secret(secret)  # type: ignore[arg-type]
    assert SECRET.hex() not in str(info.value)
    assert repr(SECRET) not in str(info.value)
    assert keys.shares_secret
    assert _seal(keys, NOW + 1)[:8] == before[:8]


def test_a_bytearray_secret_is_taken_and_the_keys_do_not_follow_its_changes() -> None:
    secret = bytearray(SECRET)
    keys = _keys(secret)
    secret[:] = bytes(len(secret))  # the caller wipes its copy
    assert _seal(keys, NOW)[:8] == _seal(_keys(), NOW)[:8]


def test_a_new_rotation_interval_means_new_keys_and_the_old_ones_retire() -> None:
    keys = _keys()
    old = _seal(keys, NOW)
    keys.set_timing(ROTATION / 2, LIFETIME)
    new = _seal(keys, NOW + 10)
    assert new[:8] != old[:8]
    assert _opens(_keys(rotation=ROTATION / 2), new, NOW + 10)
    assert _opens(keys, old, NOW + 10 + LIFETIME)
    assert not _opens(keys, old, NOW + 10 + LIFETIME + 1)
    keys.set_timing(ROTATION / 2, LIFETIME / 2)  # a lifetime alone: the same keys
    assert _seal(keys, NOW + 20)[:8] == new[:8]
    # An interval so close that `now` falls in a link of the same number.
    keys.set_timing(ROTATION / 2 + 0.0005, LIFETIME)
    assert _seal(keys, NOW + 30)[:8] == _seal(_keys(rotation=ROTATION / 2 + 0.0005), NOW + 30)[:8]
    assert keys._window_at is not None
    assert keys._window_at[0] == 2 * LINK - 1  # (the link that was the previous one)


def test_a_longer_lifetime_opens_older_tickets_at_once() -> None:
    keys = _keys()
    end = (LINK + 1) * ROTATION
    ticket = _seal(keys, end - 1)
    later = end + LIFETIME + ROTATION / 2
    keys.set_timing(ROTATION, LIFETIME / 2)
    assert not _opens(keys, ticket, later)
    keys.set_timing(ROTATION, 2 * LIFETIME)  # in the same interval: the window grows
    assert _opens(keys, ticket, later)


def test_a_time_too_far_from_1970_for_the_interval_is_refused_and_nothing_changes() -> None:
    keys = _keys(rotation=1e-300, lifetime=1e-300)
    with pytest.raises(ValueError, match=r"now \(1\.8e\+09 s\) is too far"):
        _seal(keys, NOW)
    with pytest.raises(ValueError, match="too far"):
        keys.open(b"\x00" * 64, NOW)
    fine = _keys()
    ticket = _seal(fine, NOW)
    with pytest.raises(ValueError, match="too far"):
        fine.seal(_contents(NOW), 1e300)
    assert _opens(fine, ticket, NOW + 1)


# ------------------------------------------------------------------ fork and threads


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_another_thread_held_the_keys_keeps_the_secret() -> None:
    """A child whose keys' lock was held by another thread at the fork forgets
    the keys (they may be half-changed) but not the shared secret, which is
    swapped whole: it makes them again, and still shares them."""
    keys = _keys()
    ticket = _seal(keys, NOW)
    read_end, write_end = os.pipe()

    def child() -> None:
        os.close(read_end)
        assert keys._window == {}  # forgotten...
        assert keys.shares_secret  # ...but not the secret
        assert _opens(keys, ticket, NOW + 1)
        os.write(write_end, _seal(keys, NOW + 2))

    in_a_child_forked_with_locks_held([keys._lock], child)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        sealed_in_child = pipe.read()
    assert _opens(keys, sealed_in_child, NOW + 3)


def test_a_new_secret_replaces_the_old_one_at_once_for_a_child_forked_meanwhile() -> None:
    """A child forked while another thread is in share_secret() (its lock
    held: the child keeps the secret, forgets the keys) must find the old
    secret or the new one: at every line run under the lock, one is there."""
    keys = _keys()
    seen: list[bool] = []
    watched = {TicketKeys.share_secret.__code__, TicketKeys._wipe_shared_locked.__code__}

    def line(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and keys._lock.locked():
            seen.append(keys._shared is not None)
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line if frame.f_code in watched else None

    previous = sys.gettrace()  # (a coverage tracer: put back after)
    sys.settrace(call)
    try:
        keys.share_secret(bytes(range(32)))
    finally:
        sys.settrace(previous)
    assert seen  # (the lines under the lock were seen)
    assert all(seen)
    assert _seal(keys, NOW)[:8] == _seal(_keys(bytes(range(32))), NOW)[:8]


# ------------------------------------------------------------- through the protocol


def _server(**settings: Any) -> Context:
    ctx = Context(SERVER, tickets_per_handshake=1, **settings)
    ctx.ticket_keys.share_secret(SECRET)
    return ctx


def _first_session(server_ctx: Context, **client: Any) -> Pair:
    p = Pair(
        Context(trusted_peers=[SERVER.public], **client),
        server_ctx,
        {"server_name": SERVER_NAME},
    )
    p.handshake()
    return p


def _resumed(p: Pair, server_ctx: Context, now: float = NOW, **start: Any) -> Pair:
    q = Pair(p.client_ctx, server_ctx, {"server_name": SERVER_NAME}, now)
    q.client.start(now, **start)
    q.server.start(now)
    q.pump()
    assert q.client.session is not None
    assert q.server.session is not None
    return q


def test_a_restarted_server_with_the_secret_resumes_its_clients() -> None:
    p = _first_session(_server())
    q = _resumed(p, _server(), now=NOW + 600)  # a new Context: as after a restart
    assert q.client.session is not None
    assert q.client.session.resumed
    assert q.server.session is not None
    assert q.server.session.resumed
    # Without the secret (the default), the same restart gives a full handshake.
    p = _first_session(_server())
    q = _resumed(p, Context(SERVER, tickets_per_handshake=1), now=NOW + 600)
    assert q.client.session is not None
    assert not q.client.session.resumed


def test_another_server_with_the_secret_resumes_but_refuses_the_early_data() -> None:
    """Each context has its own replay cache: early data is accepted only by
    the one that issued the ticket (its zone), never by another sharing the keys."""
    issuer, other = _server(early_data=True), _server(early_data=True)
    p = _first_session(issuer, early_data=True)  # the client holds a ticket of issuer's
    q = _resumed(p, other, early_data=b"request")
    assert q.server.session is not None
    assert q.server.session.resumed
    assert not q.server.session.early_data_accepted
    assert not [e for e in q.server_events if isinstance(e, EarlyDataReceived)]
    # The client's ticket is other's now: issuer resumes it, without the early data.
    q = _resumed(q, issuer, early_data=b"request")
    assert q.server.session is not None
    assert q.server.session.resumed
    assert not q.server.session.early_data_accepted
    q = _resumed(q, issuer, early_data=b"request")  # a ticket of issuer's own again
    assert q.server.session is not None
    assert q.server.session.early_data_accepted
    received = b"".join(e.data for e in q.server_events if isinstance(e, EarlyDataReceived))
    assert received == b"request"


# ----------------------------------------------------------------- the secret in a file


def _secret_file(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(content)
    path.chmod(mode)
    return path


def _from_file(path: Path) -> TicketKeys:
    keys = TicketKeys(ROTATION, LIFETIME)
    keys.share_secret_file(path)
    return keys


def test_a_written_secret_file_is_private_random_and_never_replaced_unasked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tickets.secret"
    write_ticket_secret(path)
    first = path.read_bytes()
    assert len(first) == MIN_SHARED_SECRET == 32
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        write_ticket_secret(path)
    assert path.read_bytes() == first
    write_ticket_secret(str(path), overwrite=True)
    assert path.read_bytes() != first  # (32 fresh random bytes)
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tickets.secret"]  # no temporary left


def test_writing_a_secret_never_follows_a_symbolic_link(tmp_path: Path) -> None:
    """As Identity.save: a dangling link is something there (nothing is made
    where it points); overwrite replaces the link itself, not its target."""
    target = tmp_path / "elsewhere"
    link = tmp_path / "tickets.secret"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_ticket_secret(link)
    assert not target.exists()
    target.write_bytes(b"not to be touched")
    write_ticket_secret(link, overwrite=True)
    assert not link.is_symlink()
    assert len(link.read_bytes()) == 32
    assert target.read_bytes() == b"not to be touched"


def test_a_secret_file_makes_the_keys_its_bytes_make(tmp_path: Path) -> None:
    from_file = _from_file(_secret_file(tmp_path / "s", SECRET))
    assert from_file.shares_secret
    ticket = _seal(from_file, NOW + 10)
    assert _opens(_keys(SECRET), ticket, NOW + 20)
    assert _opens(from_file, _seal(_keys(SECRET), NOW + 30), NOW + 40)
    # A written file: two servers given it open each other's tickets.
    path = tmp_path / "written"
    write_ticket_secret(path)
    a, b = _from_file(path), _from_file(path)
    assert _opens(b, _seal(a, NOW), NOW + 1)
    assert not _opens(from_file, _seal(a, NOW), NOW + 1)


def test_the_bytes_read_from_a_secret_file_are_wiped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given: list[Any] = []
    share = TicketKeys.share_secret

    def spy(self: TicketKeys, secret: bytes | bytearray | None) -> None:
        given.append(secret)
        share(self, secret)

    monkeypatch.setattr(TicketKeys, "share_secret", spy)
    keys = _from_file(_secret_file(tmp_path / "s", SECRET))
    assert keys.shares_secret
    assert len(given) == 1
    assert isinstance(given[0], bytearray)
    assert given[0] == bytes(len(SECRET))  # zeros once the keys are derived


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o010])
def test_a_secret_file_others_may_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secret_file(tmp_path / "s", SECRET, mode)
    keys = TicketKeys(ROTATION, LIFETIME)
    with pytest.raises(IdentityFileError) as exc:
        keys.share_secret_file(path)
    message = str(exc.value)
    assert f"permissions {mode:04o}" in message
    assert f"chmod 600 '{path}'" in message
    assert not keys.shares_secret


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_secret_file_is_accepted(tmp_path: Path, mode: int) -> None:
    assert _from_file(_secret_file(tmp_path / "s", SECRET, mode)).shares_secret


@pytest.mark.parametrize("size", [0, 1, MIN_SHARED_SECRET - 1, MAX_SHARED_SECRET + 1, 100_000])
def test_a_secret_file_of_the_wrong_size_is_refused_without_showing_it(
    tmp_path: Path, size: int
) -> None:
    content = (b"\xa7" + b"Q" * 64) * (size // 65 + 1)
    path = _secret_file(tmp_path / "s", content[:size])
    keys = TicketKeys(ROTATION, LIFETIME)
    with pytest.raises(IdentityFileError) as exc:  # (a ValueError)
        keys.share_secret_file(path)
    message = str(exc.value)
    assert str(path) in message
    assert str(MAX_SHARED_SECRET if size > MAX_SHARED_SECRET else MIN_SHARED_SECRET) in message
    assert "QQQQ" not in message
    assert "\\xa7" not in message
    assert not keys.shares_secret


@pytest.mark.parametrize("size", [MIN_SHARED_SECRET, MAX_SHARED_SECRET])
def test_a_secret_file_of_either_bound_is_accepted(tmp_path: Path, size: int) -> None:
    content = os.urandom(size)
    ticket = _seal(_from_file(_secret_file(tmp_path / "s", content)), NOW)
    assert _opens(_keys(content), ticket, NOW + 1)


def test_a_secret_path_that_is_no_regular_file_or_missing_is_refused(tmp_path: Path) -> None:
    keys = TicketKeys(ROTATION, LIFETIME)
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(IdentityFileError, match="is not a regular file"):
        keys.share_secret_file(directory)
    with pytest.raises(IdentityFileError, match="does not exist"):
        keys.share_secret_file(tmp_path / "missing")
    with pytest.raises(TypeError):
        keys.share_secret_file(b"/a/bytes/path")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        keys.share_secret_file(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="NUL"):
        keys.share_secret_file("a\0b")
    assert not keys.shares_secret
    with pytest.raises(TypeError):
        write_ticket_secret(tmp_path / "x", overwrite=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        write_ticket_secret(3)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_a_secret_file_behind_a_symbolic_link_is_checked_as_an_identity_file_is(
    tmp_path: Path,
) -> None:
    """Identity.load follows a link and checks what it leads to: so here."""
    real = _secret_file(tmp_path / "real", SECRET)
    link = tmp_path / "link"
    link.symlink_to(real)
    assert _opens(_from_file(link), _seal(_keys(SECRET), NOW), NOW + 1)
    real.chmod(0o644)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        _from_file(link)
    identity = tmp_path / "id"
    Identity.generate().save(identity)
    identity.chmod(0o644)
    (tmp_path / "id-link").symlink_to(identity)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        Identity.load(tmp_path / "id-link")  # (the same policy)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(IdentityFileError, match="does not exist"):
        _from_file(dangling)


def test_a_refused_secret_file_leaves_the_shared_secret_in_use(tmp_path: Path) -> None:
    keys = _keys(SECRET)
    with pytest.raises(IdentityFileError):
        keys.share_secret_file(_secret_file(tmp_path / "short", b"x" * 8))
    assert keys.shares_secret
    assert _opens(keys, _seal(_keys(SECRET), NOW), NOW + 1)


# ----------------------------------------------------------- separate processes, for real

_SERVE_ONE = textwrap.dedent(
    """
    import socket, sys
    import nautilus
    identity, port, share = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "share"
    ctx = nautilus.Context(nautilus.Identity.load(identity))
    if share:
        ctx.ticket_keys.share_secret(bytes.fromhex(sys.stdin.readline()))
    with socket.create_server(("127.0.0.1", port)) as listener:
        print(listener.getsockname()[1], flush=True)
        listener.settimeout(30)
        raw, _ = listener.accept()
        with ctx.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(30)
            conn.sendall(conn.recv(100))
            print(conn.session.resumed, flush=True)
    """
)


class _ServerProcess:
    """A server in a new interpreter (not forked from this one), serving one
    connection on ``port`` (0: any)."""

    def __init__(self, identity: Path, port: int, *, share: bool) -> None:
        here = str(Path(nautilus.__file__).resolve().parent.parent)  # (this checkout's package)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_ONE, str(identity), str(port), "share" if share else ""],
            cwd=here,
            env={**os.environ, "PYTHONPATH": here},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(SECRET.hex() + "\n")
        self.proc.stdin.close()
        self.port = int(self.proc.stdout.readline())

    def exchange(self, client_ctx: Context) -> tuple[bool, bool]:
        """(client resumed, server resumed) after one echo."""
        with nautilus.create_connection(
            ("127.0.0.1", self.port), context=client_ctx, timeout=30
        ) as conn:
            conn.sendall(b"hello")
            assert conn.recv(100) == b"hello"
            assert conn.session is not None
            client_resumed = conn.session.resumed
        assert self.proc.stdout is not None
        server_resumed = self.proc.stdout.readline().strip() == "True"
        assert self.proc.wait(30) == 0
        return client_resumed, server_resumed


@pytest.mark.parametrize("share", [True, False])
def test_a_server_restarted_as_a_new_process_resumes_with_the_shared_secret(
    tmp_path: Path, share: bool
) -> None:
    """The use the setting is for: processes that are not forked from one
    another (a restart here; workers started on their own, or other machines,
    alike). Without the secret the new process cannot open the old one's ticket."""
    identity = tmp_path / "server.key"
    Identity.generate().save(identity)
    client_ctx = Context(trusted_peers=[Identity.load(identity).public])
    first = _ServerProcess(identity, 0, share=share)
    assert first.exchange(client_ctx) == (False, False)
    assert len(client_ctx.session_cache) == 1
    second = _ServerProcess(identity, first.port, share=share)  # the restart
    assert second.exchange(client_ctx) == (share, share)


def test_a_time_back_in_the_previous_interval_seals_when_the_lifetime_is_shorter() -> None:
    """With a lifetime shorter than the interval (allowed: ticket_lifetime 600
    under the default rotation), a window made over a lifetime into an
    interval still has the previous interval's key: a time back in that
    interval (a clock stepped back, a stale time) seals and opens under it,
    and raises nothing."""
    lifetime = 600.0
    keys = _keys(lifetime=lifetime)
    start = LINK * ROTATION
    _seal(keys, start + lifetime + 100)  # first used after a lifetime in the interval
    back = start - 100  # in the previous interval
    ticket = keys.seal(_contents(back), back)
    assert ticket[:8] == _seal(_keys(lifetime=lifetime), back)[:8]
    assert _opens(keys, ticket, back + 1)
    assert not _opens(keys, ticket, start + lifetime + 1)  # (its lifetime is over)
