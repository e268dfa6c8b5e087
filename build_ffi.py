"""cffi build of Nautilus's C core (``nautilus._native``), and OpenSSL resolution.

The C core links libcrypto >= 3.5.  It is found, in this order:

1. ``NAUTILUS_OPENSSL_DIR`` (a prefix holding ``include/`` and ``lib/`` or ``lib64/``);
2. the system libcrypto, when ``pkg-config`` reports version 3.5 or newer;
3. a static OpenSSL 3.5 built once from Debian's source package into ``build/openssl``.

Step 3 runs ``apt-get source --download-only openssl`` against a private sources
list under ``build/apt`` (the system's apt configuration is not touched, and no root
is needed), unpacks the upstream tarball and builds ``libcrypto.a`` with ``-fPIC``.
If the mirror lacks the files of the newest version its index lists, the next older
version >= 3.5 in the same index is fetched instead.

Run ``python build_ffi.py --openssl`` to do only the resolution (the Makefile does);
setuptools imports ``ffibuilder`` from this file through ``cffi_modules``.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
BUILD = ROOT / "build"
OPENSSL_PREFIX = BUILD / "openssl"
OPENSSL_STAMP = OPENSSL_PREFIX / ".nautilus-built"
MIN_OPENSSL = (3, 5, 0)
# The Debian release whose OpenSSL is the 3.5 LTS series.
DEBIAN_SUITE = os.environ.get("NAUTILUS_DEBIAN_SUITE", "trixie")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Parts of OpenSSL that the C core does not use.
OPENSSL_CONFIG = [
    "no-shared",
    "-fPIC",
    "no-apps",
    "no-docs",
    "no-tests",
    "no-legacy",
    "no-engine",
    "no-comp",
    "no-dso",
    "no-module",
    "no-quic",
    "no-dtls",
    "no-srp",
    "no-ui-console",
    "no-deprecated",
]
OUR_WARNINGS = ["-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wvla", "-Wformat=2"]


class OpenSSLNotFound(RuntimeError):
    """No usable libcrypto >= 3.5 could be found or built."""


HOW_TO_FIX = """\
Nautilus needs OpenSSL's libcrypto >= 3.5 (for ML-KEM). None was found, and building
it from Debian's source package failed (see the reason above). Any one of these fixes it:
  * set NAUTILUS_OPENSSL_DIR to an OpenSSL >= 3.5 prefix (with include/ and lib/);
  * install OpenSSL >= 3.5 development files so that `pkg-config --modversion libcrypto`
    reports 3.5 or newer (Debian 13 "trixie": apt-get install libssl-dev pkg-config);
  * let the build fetch the source: it needs apt-get, perl, make, a C compiler,
    Debian's archive keyring ({keyring}) and a Debian mirror in the
    system's apt sources (or NAUTILUS_DEBIAN_MIRROR set to a mirror's URL).
"""


class OpenSSLLocation:
    """Where libcrypto's headers and library are, and how to link it.

    (A plain class: cffi executes this file outside ``sys.modules``, where
    dataclasses cannot resolve their annotations.)
    """

    def __init__(
        self,
        include_dirs: list[str],
        library_dirs: list[str] | None = None,
        libraries: list[str] | None = None,
        extra_objects: list[str] | None = None,
        extra_link_args: list[str] | None = None,
        origin: str = "",
    ) -> None:
        self.include_dirs = include_dirs
        self.library_dirs = library_dirs or []
        self.libraries = libraries or []
        self.extra_objects = extra_objects or []
        self.extra_link_args = extra_link_args or []
        self.origin = origin


def _log(msg: str) -> None:
    print(f"[nautilus-build] {msg}", file=sys.stderr, flush=True)


def _version_from_header(include_dir: Path) -> tuple[int, int, int] | None:
    header = include_dir / "openssl" / "opensslv.h"
    try:
        text = header.read_text()
    except OSError:
        return None
    parts = []
    for name in ("MAJOR", "MINOR", "PATCH"):
        m = re.search(rf"#\s*define\s+OPENSSL_VERSION_{name}\s+(\d+)", text)
        if not m:
            return None
        parts.append(int(m.group(1)))
    return (parts[0], parts[1], parts[2])


def _from_prefix(prefix: Path, origin: str) -> OpenSSLLocation:
    include = prefix / "include"
    version = _version_from_header(include)
    if version is None:
        raise OpenSSLNotFound(f"{origin}: no openssl/opensslv.h under {include}")
    if version < MIN_OPENSSL:
        raise OpenSSLNotFound(f"{origin}: OpenSSL {'.'.join(map(str, version))} is older than 3.5")
    for libdir in (prefix / "lib", prefix / "lib64"):
        static = libdir / "libcrypto.a"
        shared = sorted(libdir.glob("libcrypto.so*"))
        if shared and prefix != OPENSSL_PREFIX:
            return OpenSSLLocation(
                include_dirs=[str(include)],
                library_dirs=[str(libdir)],
                libraries=["crypto"],
                extra_link_args=[f"-Wl,-rpath,{libdir}"],
                origin=f"{origin} ({'.'.join(map(str, version))}, shared, {libdir})",
            )
        if static.exists():
            return OpenSSLLocation(
                include_dirs=[str(include)],
                extra_objects=[str(static)],
                libraries=["pthread", "dl"],
                origin=f"{origin} ({'.'.join(map(str, version))}, static, {static})",
            )
    raise OpenSSLNotFound(f"{origin}: no libcrypto under {prefix}/lib or {prefix}/lib64")


def _from_pkg_config() -> OpenSSLLocation | None:
    if shutil.which("pkg-config") is None:
        return None
    try:
        ver = subprocess.run(
            ["pkg-config", "--modversion", "libcrypto"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except subprocess.CalledProcessError:
        return None
    nums = tuple(int(x) for x in re.findall(r"\d+", ver)[:3])
    if len(nums) < 2 or nums < MIN_OPENSSL[: len(nums)]:
        _log(f"system libcrypto is {ver}; Nautilus needs >= 3.5")
        return None

    def flags(opt: str) -> list[str]:
        out = subprocess.run(
            ["pkg-config", opt, "libcrypto"], capture_output=True, text=True, check=True
        ).stdout
        return out.split()

    incs = [f[2:] for f in flags("--cflags-only-I")] or ["/usr/include"]
    libdirs = [f[2:] for f in flags("--libs-only-L")]
    return OpenSSLLocation(
        include_dirs=incs,
        library_dirs=libdirs,
        libraries=["crypto"],
        extra_link_args=[f"-Wl,-rpath,{d}" for d in libdirs],
        origin=f"system libcrypto {ver} (pkg-config)",
    )


def _system_debian_mirror() -> str | None:
    """The first Debian archive URI in the system's apt sources, if any."""
    if os.environ.get("NAUTILUS_DEBIAN_MIRROR"):
        return os.environ["NAUTILUS_DEBIAN_MIRROR"].rstrip("/")
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    uris: list[str] = []
    for name in files:
        if not (name.endswith(".list") or name.endswith(".sources")):
            continue
        try:
            text = Path(name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            if line.startswith("URIs:"):
                uris.extend(line.split()[1:])
            elif line.startswith(("deb ", "deb-src ")):
                uris.extend(tok for tok in line.split() if "://" in tok)
    for uri in uris:
        if re.search(r"/debian/?$", uri):
            return uri.rstrip("/")
    return None


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        raise OpenSSLNotFound(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            + "\n".join("    " + t for t in tail)
            + f"\n  (full log: {log})"
        )


def _version_key(version: str) -> list[tuple[int, int | str]]:
    """A sort key that orders Debian versions by their runs of digits and letters.

    Good enough for the versions of one source package in one suite (``3.5.7-1~deb13u2``
    before ``3.5.7-1~deb13u10`` before ``3.5.9-1~deb13u1``); dpkg's full rules (``~``
    sorting before everything) do not matter between such versions.
    """
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d]+", version)]


def _source_versions(opts: list[str], log: Path) -> list[str]:
    """OpenSSL source versions >= 3.5 in the private index, newest first."""
    with log.open("ab") as fh:
        fh.write(b"\n$ apt-cache showsrc --only-source openssl\n")
    proc = subprocess.run(
        ["apt-cache", *opts, "showsrc", "--only-source", "openssl"],
        capture_output=True,
        text=True,
    )
    with log.open("ab") as fh:
        fh.write((proc.stdout + proc.stderr).encode())
    if proc.returncode != 0:
        return []
    versions = set()
    for line in proc.stdout.splitlines():
        if line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
            m = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
            if m and tuple(int(x) for x in m.groups()) >= MIN_OPENSSL:
                versions.add(version)
    return sorted(versions, key=_version_key, reverse=True)


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _fetch_openssl_source(opts: list[str], src: Path, log: Path) -> list[Path]:
    """Download OpenSSL's source package into ``src``; return its upstream tarballs.

    The newest version in the index is tried first.  A mirror can list a version whose
    files it does not (yet) hold, so on a failed download the next older version >= 3.5
    that the same signed index lists is tried; apt checks every file against the index's
    hashes either way.
    """
    versions = _source_versions(opts, log)
    # Without a version list (apt-cache failed), let apt pick as it always did.
    candidates = [f"openssl={v}" for v in versions] or ["openssl"]
    failures: list[str] = []
    for candidate in candidates:
        _empty(src)  # (what an earlier attempt fetched before it failed)
        try:
            _run(["apt-get", *opts, "-q", "source", "--download-only", candidate], log, cwd=src)
        except OpenSSLNotFound as exc:
            failures.append(str(exc))
            _log(f"could not download {candidate}; trying an older version if the index has one")
            continue
        return sorted(src.glob("openssl_*.orig.tar.*"))
    _empty(src)
    if len(failures) == 1:
        raise OpenSSLNotFound(failures[0])
    raise OpenSSLNotFound(
        f"none of the {len(candidates)} OpenSSL source versions could be downloaded "
        f"({', '.join(versions)}); the last attempt:\n{failures[-1]}"
    )


def build_openssl_from_debian() -> OpenSSLLocation:
    """Fetch Debian's OpenSSL source package and build a static libcrypto once."""
    if OPENSSL_STAMP.exists():
        return _from_prefix(OPENSSL_PREFIX, "build/openssl")
    for tool in ("apt-get", "perl", "make", "tar"):
        if shutil.which(tool) is None:
            raise OpenSSLNotFound(f"cannot build OpenSSL: `{tool}` is not installed")
    if not Path(DEBIAN_KEYRING).exists():
        raise OpenSSLNotFound(
            f"cannot fetch OpenSSL's source: {DEBIAN_KEYRING} is missing "
            "(apt-get install debian-archive-keyring)"
        )
    mirror = _system_debian_mirror()
    if mirror is None:
        raise OpenSSLNotFound(
            "cannot fetch OpenSSL's source: no Debian mirror in the apt sources; "
            "set NAUTILUS_DEBIAN_MIRROR to one"
        )
    apt = BUILD / "apt"
    src = BUILD / "openssl-src"
    log = BUILD / "openssl-build.log"
    for d in (apt / "lists" / "partial", apt / "cache" / "archives" / "partial", src):
        d.mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(f"deb-src [signed-by={DEBIAN_KEYRING}] {mirror} {DEBIAN_SUITE} main\n")
    opts = [
        f"-oDir::Etc::sourcelist={sources}",
        "-oDir::Etc::sourceparts=-",
        f"-oDir::State::Lists={apt / 'lists'}",
        f"-oDir::State::status={apt / 'status'}",
        f"-oDir::Cache={apt / 'cache'}",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=" + ("root" if os.geteuid() == 0 else os.environ.get("USER", "")),
    ]
    (apt / "status").touch()
    _log(f"building OpenSSL 3.5 from Debian's '{DEBIAN_SUITE}' source package (log: {log})")
    _run(["apt-get", *opts, "-q", "update"], log)
    tarballs = _fetch_openssl_source(opts, src, log)
    tarballs = [t for t in tarballs if not t.name.endswith(".asc")]
    if len(tarballs) != 1:
        raise OpenSSLNotFound(f"expected one openssl_*.orig.tar.* in {src}, found {tarballs}")
    m = re.match(r"openssl_(\d+)\.(\d+)\.(\d+)", tarballs[0].name)
    if not m or tuple(int(x) for x in m.groups()) < MIN_OPENSSL:
        raise OpenSSLNotFound(f"Debian '{DEBIAN_SUITE}' has {tarballs[0].name}, older than 3.5")
    with tarfile.open(tarballs[0]) as tar:
        top = {name.split("/", 1)[0] for name in tar.getnames()}
        if len(top) != 1:
            raise OpenSSLNotFound(f"unexpected layout in {tarballs[0].name}")
        tar.extractall(src, filter="data")
    tree = src / top.pop()
    jobs = str(os.cpu_count() or 2)
    if OPENSSL_PREFIX.exists():
        shutil.rmtree(OPENSSL_PREFIX)
    config = [
        "perl",
        "./Configure",
        f"--prefix={OPENSSL_PREFIX}",
        "--libdir=lib",
        f"--openssldir={OPENSSL_PREFIX / 'ssl'}",
        *OPENSSL_CONFIG,
    ]
    _run(config, log, cwd=tree)
    _run(["make", f"-j{jobs}", "build_libs"], log, cwd=tree)
    _run(["make", "install_dev"], log, cwd=tree)
    shutil.rmtree(tree)
    OPENSSL_STAMP.write_text(tarballs[0].name + "\n")
    _log(f"OpenSSL installed in {OPENSSL_PREFIX}")
    return _from_prefix(OPENSSL_PREFIX, "build/openssl")


def resolve_openssl() -> OpenSSLLocation:
    """Find libcrypto >= 3.5 in the documented order, building it if needed."""
    env_dir = os.environ.get("NAUTILUS_OPENSSL_DIR")
    if env_dir:
        return _from_prefix(Path(env_dir), "NAUTILUS_OPENSSL_DIR")
    if OPENSSL_STAMP.exists():
        return _from_prefix(OPENSSL_PREFIX, "build/openssl")
    found = _from_pkg_config()
    if found is not None:
        return found
    try:
        return build_openssl_from_debian()
    except OpenSSLNotFound as exc:
        raise OpenSSLNotFound(f"{exc}\n\n{HOW_TO_FIX.format(keyring=DEBIAN_KEYRING)}") from None


def _package_version() -> str:
    text = (ROOT / "nautilus" / "_version.py").read_text()
    m = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not m:
        raise RuntimeError("nautilus/_version.py has no __version__")
    return m.group(1)


def make_ffibuilder():  # type: ignore[no-untyped-def]
    from cffi import FFI

    location = resolve_openssl()
    _log(f"using {location.origin}")
    ffi = FFI()
    for header in sorted((CSRC / "cdef").glob("*.h")):
        ffi.cdef(header.read_text())
    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c"))
    compile_args = [*OUR_WARNINGS, "-O2", "-std=c11"]
    link_args = list(location.extra_link_args)
    if os.environ.get("NAUTILUS_SANITIZE"):
        san = [
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]
        compile_args += [*san, "-O1", "-g"]
        link_args += san
    ffi.set_source(
        "nautilus._native",
        '#include "nt_api.h"\n',
        sources=sources,
        include_dirs=[str(CSRC.relative_to(ROOT)), *location.include_dirs],
        library_dirs=location.library_dirs,
        libraries=location.libraries,
        extra_objects=location.extra_objects,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NT_PACKAGE_VERSION", f'"{_package_version()}"')],
    )
    return ffi


if __name__ == "__main__":
    if "--openssl" in sys.argv[1:]:
        try:
            print(resolve_openssl().origin)
        except OpenSSLNotFound as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    else:
        make_ffibuilder().compile(verbose=True)
elif __name__ == "__cffi__":  # (setup.py's cffi_modules runs this file under that name)
    ffibuilder = make_ffibuilder()
