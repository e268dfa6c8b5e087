"""Key encapsulation: ML-KEM-768/1024 (FIPS 203), X25519, and X25519+ML-KEM hybrids.

Names follow ``cryptography``'s hazmat layer::

    private = MLKEM768PrivateKey.generate()
    shared, ciphertext = private.public_key().encapsulate()
    assert private.decapsulate(ciphertext) == shared

Every class is backed by OpenSSL (>= 3.5) through the C core. The hybrid
classes are the key-exchange groups of the Nautilus handshake; their byte
layout (ML-KEM part first, then X25519) is described in ``docs/hybrid-kem.md``.
"""

from __future__ import annotations

import hmac
from typing import Any, ClassVar, NoReturn, TypeVar, cast

from nautilus import _bindings as _b

__all__ = [
    "GROUPS",
    "KEMPrivateKey",
    "KEMPublicKey",
    "MLKEM768PrivateKey",
    "MLKEM768PublicKey",
    "MLKEM1024PrivateKey",
    "MLKEM1024PublicKey",
    "X25519KEMPrivateKey",
    "X25519KEMPublicKey",
    "X25519MLKEM768PrivateKey",
    "X25519MLKEM768PublicKey",
    "X25519MLKEM1024PrivateKey",
    "X25519MLKEM1024PublicKey",
]

_Pub = TypeVar("_Pub", bound="KEMPublicKey")
_Priv = TypeVar("_Priv", bound="KEMPrivateKey")


def _group_of(cls: type[KEMPublicKey] | type[KEMPrivateKey]) -> str:
    """The group of a concrete key class; the base classes have none."""
    group: str | None = getattr(cls, "GROUP", None)
    if group is None:
        kind = "PublicKey" if issubclass(cls, KEMPublicKey) else "PrivateKey"
        raise TypeError(
            f"{cls.__name__} is a base class with no algorithm: use a concrete class, "
            f"such as X25519MLKEM768{kind} or MLKEM768{kind}"
        )
    return group


class KEMPublicKey:
    """A KEM public key (for a hybrid, the client's key share).

    Subclasses fix the algorithm; instances are immutable.
    """

    GROUP: ClassVar[str]
    """The key-exchange group name used by the handshake."""

    __slots__ = ("_handle", "_raw")

    _handle: Any
    _raw: bytes

    def __init__(self, *args: object, **kwargs: object) -> None:
        name = type(self).__name__
        raise TypeError(
            f"use {name}.from_public_bytes() or a private key's public_key() to make a {name}"
        )

    @classmethod
    def _wrap(cls: type[_Pub], handle: Any, raw: bytes) -> _Pub:
        """Internal: the key for a C key handle (None: made from ``raw`` when
        first needed) and its raw encoding."""
        self = cls.__new__(cls)
        self._handle = handle
        self._raw = raw
        return self

    def _live(self) -> Any:
        """The C handle, a public-only one made on first use for the public key
        of a private key (which must not keep the private key's material alive)."""
        handle = self._handle
        if handle is None:
            handle = self._handle = _b.kem_from_public(self.GROUP, self._raw)
        return handle

    @classmethod
    def public_bytes_length(cls) -> int:
        """Length in bytes of the public key.

        Raises:
            TypeError: called on the base class :class:`KEMPublicKey`.
        """
        return _b.KEM_SIZES[_group_of(cls)].public

    @classmethod
    def ciphertext_length(cls) -> int:
        """Length in bytes of a ciphertext made by :meth:`encapsulate`.

        Raises:
            TypeError: called on the base class :class:`KEMPublicKey`.
        """
        return _b.KEM_SIZES[_group_of(cls)].ciphertext

    @classmethod
    def from_public_bytes(cls: type[_Pub], data: bytes) -> _Pub:
        """Load a public key from its raw encoding.

        Raises:
            TypeError: ``data`` is not bytes-like, or called on the base class.
            ValueError: wrong length.
            nautilus.InvalidKey (a ValueError): malformed, or an ML-KEM key whose
                coefficients are not reduced modulo q (FIPS 203 section 7.2).
        """
        raw = _b.as_bytes("public key", data, cls.public_bytes_length())
        return cls._wrap(_b.kem_from_public(cls.GROUP, raw), raw)

    def public_bytes_raw(self) -> bytes:
        """The raw public key."""
        return self._raw

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Make a fresh shared secret for the holder of the private key.

        Returns ``(shared_secret, ciphertext)``.

        Raises:
            nautilus.InvalidKey: the X25519 part gives the all-zero secret
                (a low-order public key).
        """
        return _b.kem_encapsulate(self.GROUP, self._live(), None)

    def _encapsulate_with_ephemeral(self, ephemeral: X25519KEMPrivateKey) -> tuple[bytes, bytes]:
        """:meth:`encapsulate`, with a prepared X25519 key for the X25519 part.

        ``ephemeral`` must be fresh and must not be used again (the handshake's
        ephemeral-key pool hands each one out once). Returns
        ``(shared_secret, ciphertext)``.

        Raises:
            TypeError: ``ephemeral`` is not an X25519KEMPrivateKey.
            nautilus.ClosedError: this key has no X25519 part.
            nautilus.InvalidKey: the X25519 part gives the all-zero secret.
        """
        if not isinstance(ephemeral, X25519KEMPrivateKey):
            raise TypeError(
                f"ephemeral must be an X25519KEMPrivateKey, not {type(ephemeral).__name__}"
            )
        return _b.kem_encapsulate(self.GROUP, self._live(), None, ephemeral._handle)

    def _encapsulate_with_entropy(self, entropy: bytes) -> tuple[bytes, bytes]:
        """Deterministic encapsulation, for known-answer tests only."""
        data = _b.as_bytes("entropy", entropy, _b.KEM_SIZES[self.GROUP].entropy)
        return _b.kem_encapsulate(self.GROUP, self._live(), data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KEMPublicKey):
            return NotImplemented
        return self.GROUP == other.GROUP and hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((self.GROUP, self._raw))

    def __copy__(self: _Pub) -> _Pub:
        return self  # immutable

    def __deepcopy__(self: _Pub, memo: object) -> _Pub:
        return self

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Pickled as its encoding, never as the C handle.
        return (type(self).from_public_bytes, (self._raw,))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._raw[:8].hex()}...>"


class KEMPrivateKey:
    """A KEM private key. Subclasses fix the algorithm.

    The key material lives in OpenSSL and is wiped when the object is freed.
    """

    GROUP: ClassVar[str]
    PUBLIC_KEY_CLASS: ClassVar[type[KEMPublicKey]]

    __slots__ = ("_handle", "_public")

    _handle: Any
    _public: KEMPublicKey

    def __init__(self, *args: object, **kwargs: object) -> None:
        name = type(self).__name__
        ways = [f"{name}.generate()", f"{name}.from_seed_bytes()"]
        if hasattr(type(self), "from_expanded_bytes"):
            ways.append(f"{name}.from_expanded_bytes()")
        raise TypeError(f"use {', '.join(ways[:-1])} or {ways[-1]} to make a {name}")

    @classmethod
    def _wrap(cls: type[_Priv], handle: Any) -> _Priv:
        """Internal: the key for a C key handle."""
        self = cls.__new__(cls)
        self._handle = handle
        # (no handle of its own until it is used: sharing the private key's
        # would keep that key's material alive as long as the public key)
        self._public = cls.PUBLIC_KEY_CLASS._wrap(None, _b.kem_public_bytes(handle))
        return self

    @classmethod
    def seed_length(cls) -> int:
        """Length in bytes of the seed taken by :meth:`from_seed_bytes`.

        Raises:
            TypeError: called on the base class :class:`KEMPrivateKey`.
        """
        return _b.KEM_SIZES[_group_of(cls)].seed

    @classmethod
    def generate(cls: type[_Priv]) -> _Priv:
        """A new random key pair.

        Raises:
            TypeError: called on the base class :class:`KEMPrivateKey`.
        """
        return cls._wrap(_b.kem_generate(_group_of(cls), None))

    @classmethod
    def from_seed_bytes(cls: type[_Priv], data: bytes) -> _Priv:
        """Derive the key pair from a seed (see :meth:`private_bytes_raw`).

        Raises:
            TypeError: ``data`` is not bytes-like, or called on the base class.
            ValueError: wrong length.
        """
        seed = _b.as_bytes("seed", data, cls.seed_length())
        return cls._wrap(_b.kem_generate(cls.GROUP, seed))

    def public_key(self) -> KEMPublicKey:
        """The matching public key."""
        return self._public

    def private_bytes_raw(self) -> bytes:
        """The seed this key derives from (ML-KEM: d || z, 64 bytes).

        Raises:
            nautilus.ClosedError: the key was loaded from its expanded form and
                has no seed.
        """
        return _b.kem_seed_bytes(self._handle)

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Recover the shared secret from ``ciphertext``.

        For ML-KEM a altered ciphertext yields an unrelated (implicit-rejection)
        secret, never an error, as FIPS 203 requires.

        Raises:
            TypeError: ``ciphertext`` is not bytes-like.
            ValueError: wrong length.
            nautilus.InvalidKey: the X25519 part is a low-order point.
        """
        ct = _b.as_bytes("ciphertext", ciphertext, _b.KEM_SIZES[self.GROUP].ciphertext)
        return _b.kem_decapsulate(self.GROUP, self._handle, ct)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} public={self._public.public_bytes_raw()[:8].hex()}...>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} cannot be copied or pickled (it holds a private key)"
        )


class _MLKEMPrivateKey(KEMPrivateKey):
    __slots__ = ()

    @classmethod
    def from_expanded_bytes(cls: type[_Priv], data: bytes) -> _Priv:
        """Load a FIPS 203 expanded decapsulation key (dk).

        Raises:
            TypeError: ``data`` is not bytes-like.
            ValueError: wrong length.
            nautilus.InvalidKey: fails the FIPS 203 section 7.3 checks (for
                example the embedded hash of the encapsulation key is wrong).
        """
        dk = _b.as_bytes("decapsulation key", data, _b.KEM_SIZES[cls.GROUP].private)
        return cls._wrap(_b.kem_from_private(cls.GROUP, dk))

    def private_bytes_expanded(self) -> bytes:
        """The FIPS 203 expanded decapsulation key (dk)."""
        return _b.kem_private_bytes(self._handle)


class MLKEM768PublicKey(KEMPublicKey):
    """ML-KEM-768 encapsulation key (1184 bytes)."""

    __slots__ = ()
    GROUP = "mlkem768"


class MLKEM768PrivateKey(_MLKEMPrivateKey):
    """ML-KEM-768 decapsulation key."""

    __slots__ = ()
    GROUP = "mlkem768"
    PUBLIC_KEY_CLASS = MLKEM768PublicKey

    def public_key(self) -> MLKEM768PublicKey:
        """The matching public key."""
        return cast(MLKEM768PublicKey, self._public)


class MLKEM1024PublicKey(KEMPublicKey):
    """ML-KEM-1024 encapsulation key (1568 bytes)."""

    __slots__ = ()
    GROUP = "mlkem1024"


class MLKEM1024PrivateKey(_MLKEMPrivateKey):
    """ML-KEM-1024 decapsulation key."""

    __slots__ = ()
    GROUP = "mlkem1024"
    PUBLIC_KEY_CLASS = MLKEM1024PublicKey

    def public_key(self) -> MLKEM1024PublicKey:
        """The matching public key."""
        return cast(MLKEM1024PublicKey, self._public)


class X25519KEMPublicKey(KEMPublicKey):
    """X25519 used as a KEM: encapsulation makes an ephemeral key pair, and its
    public key is the ciphertext."""

    __slots__ = ()
    GROUP = "x25519"


class X25519KEMPrivateKey(KEMPrivateKey):
    """X25519 private key used as a KEM (the seed is the private scalar)."""

    __slots__ = ()
    GROUP = "x25519"
    PUBLIC_KEY_CLASS = X25519KEMPublicKey


class X25519MLKEM768PublicKey(KEMPublicKey):
    """Hybrid client share: ML-KEM-768 encapsulation key || X25519 public key."""

    __slots__ = ()
    GROUP = "x25519-mlkem768"


class X25519MLKEM768PrivateKey(KEMPrivateKey):
    """Hybrid X25519 + ML-KEM-768; the shared secret is the 64-byte concatenation
    ML-KEM secret || X25519 secret."""

    __slots__ = ()
    GROUP = "x25519-mlkem768"
    PUBLIC_KEY_CLASS = X25519MLKEM768PublicKey


class X25519MLKEM1024PublicKey(KEMPublicKey):
    """Hybrid client share: ML-KEM-1024 encapsulation key || X25519 public key."""

    __slots__ = ()
    GROUP = "x25519-mlkem1024"


class X25519MLKEM1024PrivateKey(KEMPrivateKey):
    """Hybrid X25519 + ML-KEM-1024 (shared secret as for X25519MLKEM768)."""

    __slots__ = ()
    GROUP = "x25519-mlkem1024"
    PUBLIC_KEY_CLASS = X25519MLKEM1024PublicKey


GROUPS: dict[str, type[KEMPrivateKey]] = {
    cls.GROUP: cls
    for cls in (
        X25519MLKEM768PrivateKey,
        X25519MLKEM1024PrivateKey,
        MLKEM1024PrivateKey,
        MLKEM768PrivateKey,
        X25519KEMPrivateKey,
    )
}
"""Key-exchange groups by handshake name, in Nautilus's default preference order."""
