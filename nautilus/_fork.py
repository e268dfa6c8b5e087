"""Locks that a child process gets anew after ``fork()``.

A thread of the parent may hold one of an object's locks at the instant
another thread forks: the child, which has only the forking thread, would wait
for that lock for ever. Objects that keep ``threading.Lock`` attributes
register them here when they are made; a child made by ``os.fork()`` (as
``multiprocessing`` does by default on Linux) gets new, unlocked ones. The
state such a lock guarded is as the parent's thread left it; what each object
keeps is consistent between its own operations, not inside one.
(``KeyPool`` and ``SessionCache`` have their own hooks: they also let go of
what the child must not share with the parent.)
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TypeVar

_T = TypeVar("_T")

_OWNERS: weakref.WeakKeyDictionary[object, tuple[str, ...]] = weakref.WeakKeyDictionary()
"""Each registered object and the names of its lock attributes."""


def renew_locks_after_fork(owner: object, *names: str) -> None:
    """Give ``owner`` new locks in its ``names`` attributes in a forked child."""
    _OWNERS[owner] = names


def live_members(members: weakref.WeakSet[_T]) -> list[_T]:
    """The objects in ``members`` now, copied in one step. Iterating a
    WeakSet while another thread adds to it raises RuntimeError ("Set changed
    size during iteration"), as a before-fork hook did when another thread
    made a Context at that instant; copying its set of references is one call
    into C, which no other thread interrupts."""
    refs: set[weakref.ref[_T]] = members.data  # type: ignore[attr-defined]
    return [obj for ref in list(refs) if (obj := ref()) is not None]


def _after_fork_in_child() -> None:
    for owner, names in list(_OWNERS.items()):
        for name in names:
            object.__setattr__(owner, name, threading.Lock())


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
