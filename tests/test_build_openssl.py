"""build_ffi.py's download of OpenSSL's source package, with apt replaced by fakes.

The fakes stand in for ``apt-cache showsrc`` and ``apt-get source``: a mirror
whose index lists versions whose files it may not hold (seen in CI: an index
naming 3.5.9-1~deb13u1, whose files answered 404, beside 3.5.7-1~deb13u2).
"""

from __future__ import annotations

import importlib.util
import os
import stat
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def build_ffi() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nautilus_build_ffi", ROOT / "build_ffi.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (only setup.py's cffi run resolves OpenSSL)
    return module


def fake_apt(bin_dir: Path, listed: list[str], held: set[str]) -> Path:
    """apt-cache listing ``listed``; apt-get fetching only the versions in ``held``.

    Each ``apt-get source`` call appends its argument to the returned file."""
    calls = bin_dir / "calls"
    versions = "".join(f"Package: openssl\\nVersion: {v}\\n\\n" for v in listed)
    scripts = {
        "apt-cache": f'#!/bin/sh\nprintf "{versions}"\n',
        "apt-get": (
            "#!/bin/sh\n"
            'for arg in "$@"; do last="$arg"; done\n'
            f'echo "$last" >> {calls}\n'
            'case "$last" in\n'
            + "".join(
                f'  "openssl={v}") touch "openssl_{v.split("-")[0]}.orig.tar.gz" '
                f'"openssl_{v}.dsc"; exit 0;;\n'
                for v in sorted(held)
            )
            # (apt may have fetched some files of a version before one fails)
            + '  *) touch "partial_${last#openssl=}.dsc"\n'
            + '     echo "E: Failed to fetch $last  404  Not Found"; exit 100;;\n'
            "esac\n"
        ),
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return calls


@pytest.fixture
def apt_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    bin_dir, src = tmp_path / "bin", tmp_path / "src"
    bin_dir.mkdir()
    src.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir, src, tmp_path / "build.log"


def test_versions_sort_by_their_numbers(build_ffi: ModuleType) -> None:
    versions = ["3.5.7-1~deb13u2", "3.5.10-1", "3.5.7-1~deb13u10", "3.5.9-1~deb13u1"]
    assert sorted(versions, key=build_ffi._version_key, reverse=True) == [
        "3.5.10-1",
        "3.5.9-1~deb13u1",
        "3.5.7-1~deb13u10",
        "3.5.7-1~deb13u2",
    ]


def test_the_newest_version_is_fetched_when_the_mirror_has_it(
    build_ffi: ModuleType, apt_dirs: tuple[Path, Path, Path]
) -> None:
    bin_dir, src, log = apt_dirs
    calls = fake_apt(
        bin_dir, ["3.5.7-1~deb13u2", "3.5.9-1~deb13u1"], {"3.5.7-1~deb13u2", "3.5.9-1~deb13u1"}
    )
    tarballs = build_ffi._fetch_openssl_source([], src, log)
    assert [t.name for t in tarballs] == ["openssl_3.5.9.orig.tar.gz"]
    assert calls.read_text().split() == ["openssl=3.5.9-1~deb13u1"]


def test_an_older_version_is_fetched_when_the_newest_files_are_missing(
    build_ffi: ModuleType, apt_dirs: tuple[Path, Path, Path]
) -> None:
    bin_dir, src, log = apt_dirs
    # 3.0 is below the minimum: never tried, even though the mirror holds it.
    listed = ["3.0.15-1~deb12u1", "3.5.7-1~deb13u2", "3.5.9-1~deb13u1"]
    calls = fake_apt(bin_dir, listed, {"3.5.7-1~deb13u2", "3.0.15-1~deb12u1"})
    tarballs = build_ffi._fetch_openssl_source([], src, log)
    assert [t.name for t in tarballs] == ["openssl_3.5.7.orig.tar.gz"]
    assert calls.read_text().split() == ["openssl=3.5.9-1~deb13u1", "openssl=3.5.7-1~deb13u2"]
    assert "404" in log.read_text()  # the failed attempt stays in the build log
    assert sorted(p.name for p in src.iterdir()) == [  # the failed one's files are gone
        "openssl_3.5.7-1~deb13u2.dsc",
        "openssl_3.5.7.orig.tar.gz",
    ]


def test_when_no_version_can_be_fetched_the_error_names_them_all(
    build_ffi: ModuleType, apt_dirs: tuple[Path, Path, Path]
) -> None:
    bin_dir, src, log = apt_dirs
    fake_apt(bin_dir, ["3.5.7-1~deb13u2", "3.5.9-1~deb13u1"], set())
    with pytest.raises(build_ffi.OpenSSLNotFound) as info:
        build_ffi._fetch_openssl_source([], src, log)
    message = str(info.value)
    assert "none of the 2 OpenSSL source versions" in message
    assert "3.5.9-1~deb13u1, 3.5.7-1~deb13u2" in message
    assert "404" in message  # the last attempt's output
    assert list(src.iterdir()) == []  # nothing half-downloaded is left


def test_without_a_version_list_apt_picks_as_before(
    build_ffi: ModuleType, apt_dirs: tuple[Path, Path, Path]
) -> None:
    bin_dir, src, log = apt_dirs
    calls = fake_apt(bin_dir, [], set())
    (bin_dir / "apt-cache").write_text("#!/bin/sh\nexit 100\n")
    with pytest.raises(build_ffi.OpenSSLNotFound, match="command failed"):
        build_ffi._fetch_openssl_source([], src, log)
    assert calls.read_text().split() == ["openssl"]
