"""Primitive benchmarks (`make bench`): Nautilus against cryptography and raw EVP.

Steps:

1. compile ``benchmarks/evp_driver.c`` against the OpenSSL that Nautilus
   builds with (``NAUTILUS_OPENSSL_DIR``, else ``build/openssl``; failing
   both, pkg-config's libcrypto, which is reported) into ``build/evp_driver``;
2. run it (raw EVP AES-256-GCM record throughput);
3. run ``bench_kem.py`` and ``bench_record.py`` under pytest-benchmark,
   writing ``benchmarks/results/primitives.json``;
4. run the driver again (the raw EVP figure is the better of the two runs, so
   the comparison is not flattered by a slow moment);
5. print the tables and the targets, and write
   ``benchmarks/results/latest-primitives.json``.

Targets are reported, not enforced: the exit status is non-zero only when
something fails to build or run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
DRIVER_SRC = BENCH / "evp_driver.c"
DRIVER_BIN = ROOT / "build" / "evp_driver"
PYTEST_JSON = RESULTS / "primitives.json"
SUMMARY_JSON = RESULTS / "latest-primitives.json"
BENCH_FILES = ["benchmarks/bench_kem.py", "benchmarks/bench_record.py"]

SIZES = (256, 1024, 16384)
IMPLS = ("batched", "single", "python-loop")
KEM_OPS = ("keygen", "encaps", "decaps")

# (description, op, size, kind, threshold); kind "loop" compares batched with the
# Python loop, "evp" with the raw EVP driver.
TARGETS = [
    ("16 KiB seal, batched >= 1.5x Python loop", "seal", 16384, "loop", 1.5),
    ("16 KiB open, batched >= 1.5x Python loop", "open", 16384, "loop", 1.5),
    ("16 KiB seal, batched >= 90% of raw EVP", "seal", 16384, "evp", 0.9),
    ("16 KiB open, batched >= 90% of raw EVP", "open", 16384, "evp", 0.9),
    ("256 B seal, batched >= 5x Python loop", "seal", 256, "loop", 5.0),
    ("256 B open, batched >= 5x Python loop", "open", 256, "loop", 5.0),
]


class BenchError(Exception):
    """Something failed to build or run."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, cwd=ROOT, text=True, check=False, **kwargs)


_PASSED = re.compile(r"::(\S+) PASSED\s+\[\s*(\d+)%\]")


def run_with_progress(cmd: list[str]) -> tuple[int, str]:
    """Run pytest -v, printing a progress line per benchmark done (its output is
    long and is kept, not shown, unless it fails); (return code, output)."""
    log("$ " + shlex.join(cmd))
    lines: list[str] = []
    with subprocess.Popen(
        cmd, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = _PASSED.search(line)
            if m:
                print(f"[primitives {int(m.group(2)):3d}%] {m.group(1)}", flush=True)
    return proc.returncode, "".join(lines)


# -- raw EVP driver ----------------------------------------------------------------------------


def openssl_flags() -> tuple[list[str], list[str], str]:
    """(compile flags, link arguments, where they came from), resolved as the build does."""
    env_dir = os.environ.get("NAUTILUS_OPENSSL_DIR")
    candidates = []
    if env_dir:
        candidates.append((Path(env_dir), "NAUTILUS_OPENSSL_DIR"))
    candidates.append((ROOT / "build" / "openssl", "build/openssl"))
    for prefix, origin in candidates:
        for libdir in ("lib", "lib64"):
            archive = prefix / libdir / "libcrypto.a"
            if archive.is_file() and (prefix / "include" / "openssl" / "evp.h").is_file():
                return (
                    [f"-I{prefix / 'include'}"],
                    [str(archive), "-lpthread", "-ldl"],
                    f"{origin} ({archive})",
                )
        if origin == "NAUTILUS_OPENSSL_DIR":
            log(f"NAUTILUS_OPENSSL_DIR={env_dir} has no static libcrypto.a; trying build/openssl")
    if shutil.which("pkg-config") is None:
        raise BenchError("no libcrypto.a in NAUTILUS_OPENSSL_DIR or build/openssl, no pkg-config")
    cflags = run(["pkg-config", "--cflags", "libcrypto"], capture_output=True)
    libs = run(["pkg-config", "--libs", "libcrypto"], capture_output=True)
    if cflags.returncode or libs.returncode:
        raise BenchError(
            "no libcrypto.a in NAUTILUS_OPENSSL_DIR or build/openssl, and "
            "pkg-config knows no libcrypto"
        )
    log(
        "WARNING: no static libcrypto.a found; the EVP driver uses pkg-config's libcrypto, "
        "which may not be the OpenSSL Nautilus is linked with"
    )
    return shlex.split(cflags.stdout), shlex.split(libs.stdout), "pkg-config libcrypto"


def build_driver() -> str:
    cflags, libs, origin = openssl_flags()
    DRIVER_BIN.parent.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cmd = [
        cc,
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        *cflags,
        str(DRIVER_SRC),
        *libs,
        "-o",
        str(DRIVER_BIN),
    ]
    if run(cmd).returncode:
        raise BenchError("compiling the EVP driver failed")
    return origin


def run_driver(seconds: float) -> dict[str, Any]:
    proc = run([str(DRIVER_BIN), str(seconds)], capture_output=True)
    if proc.returncode:
        raise BenchError(f"the EVP driver failed ({proc.returncode}): {proc.stderr.strip()}")
    try:
        data: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(f"the EVP driver printed no JSON: {exc}") from exc
    return data


def best_evp(runs: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per record size, the higher of each figure over the driver runs."""
    best: dict[int, dict[str, float]] = {}
    for data in runs:
        for row in data["results"]:
            fig = best.setdefault(int(row["size"]), {})
            for key, value in row.items():
                if key.endswith("bytes_per_s"):
                    fig[key] = max(fig.get(key, 0.0), float(value))
    return best


# -- pytest-benchmark --------------------------------------------------------------------------


def run_pytest(args: argparse.Namespace) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    if PYTEST_JSON.exists():
        PYTEST_JSON.unlink()
    cmd = [
        sys.executable, "-m", "pytest", *BENCH_FILES,
        "-p", "no:cacheprovider", "-q", "--benchmark-only",
        f"--benchmark-json={PYTEST_JSON.relative_to(ROOT)}",
        f"--benchmark-max-time={args.max_time}",
        "--benchmark-min-rounds=5",
        "--benchmark-warmup=on", "--benchmark-warmup-iterations=10",
        "--benchmark-columns=median,ops,rounds",
        "--benchmark-sort=name",
    ]  # fmt: skip
    if args.k:
        cmd += ["-k", args.k]
    if args.verbose:
        proc = run(cmd)
        if proc.returncode:
            raise BenchError(f"pytest failed ({proc.returncode})")
    else:
        returncode, output = run_with_progress(["-v" if c == "-q" else c for c in cmd])
        if returncode:
            print(output[-12000:])
            raise BenchError(f"pytest failed ({returncode})")
    try:
        data: dict[str, Any] = json.loads(PYTEST_JSON.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"no pytest-benchmark results in {PYTEST_JSON}: {exc}") from exc
    return data


def collect(data: dict[str, Any]) -> tuple[dict[tuple[str, str, int], Any], dict[Any, Any]]:
    """Index the benchmarks: records by (op, impl, size), KEMs by (alg, op, impl)."""
    records: dict[tuple[str, str, int], Any] = {}
    kems: dict[tuple[str, str, str], Any] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        median = float(bench["stats"]["median"])
        if info.get("kind") == "record":
            records[(info["op"], info["impl"], int(info["size"]))] = {
                "bytes_per_s": info["bytes"] / median,
                "median_s": median,
                "rounds": bench["stats"]["rounds"],
                "calls": info.get("calls"),
                "api": info.get("api"),
            }
        elif info.get("kind") == "kem":
            kems[(info["alg"], info["op"], info["impl"])] = {
                "ops_per_s": 1.0 / median,
                "median_s": median,
                "rounds": bench["stats"]["rounds"],
            }
    return records, kems


# -- report ------------------------------------------------------------------------------------


def mbs(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.0f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt_ratio(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:.0f}%" if pct else f"{value:.2f}x"


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def record_table(records: dict[Any, Any], evp: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for op in ("seal", "open"):
        for size in SIZES:
            fig = {impl: records.get((op, impl, size), {}).get("bytes_per_s") for impl in IMPLS}
            raw = evp.get(size, {}).get(f"{op}_bytes_per_s")
            rows.append(
                {
                    "op": op,
                    "size": size,
                    "batched_bytes_per_s": fig["batched"],
                    "single_bytes_per_s": fig["single"],
                    "python_loop_bytes_per_s": fig["python-loop"],
                    "raw_evp_bytes_per_s": raw,
                    "raw_evp_one_update_bytes_per_s": (
                        evp.get(size, {}).get("seal_one_update_bytes_per_s")
                        if op == "seal"
                        else None
                    ),
                    "batched_over_python_loop": ratio(fig["batched"], fig["python-loop"]),
                    "batched_over_raw_evp": ratio(fig["batched"], raw),
                    "single_over_python_loop": ratio(fig["single"], fig["python-loop"]),
                    "batched_calls": records.get((op, "batched", size), {}).get("calls"),
                }
            )
    return rows


def print_record_table(rows: list[dict[str, Any]], api: str | None) -> None:
    print()
    print(
        f"AES-256-GCM records, 1 MiB of content per pass, MB/s (1 MB = 10^6 B; median)"
        f"; Python loop = cryptography AESGCM {api or '?'}"
    )
    head = (
        f"{'op':<5} {'record':>7} {'batched':>9} {'single':>9} {'py loop':>9} "
        f"{'raw EVP':>9} {'batch/loop':>11} {'batch/EVP':>10} {'single/loop':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['op']:<5} {size_label(r['size']):>7} {mbs(r['batched_bytes_per_s']):>9} "
            f"{mbs(r['single_bytes_per_s']):>9} {mbs(r['python_loop_bytes_per_s']):>9} "
            f"{mbs(r['raw_evp_bytes_per_s']):>9} "
            f"{fmt_ratio(r['batched_over_python_loop']):>11} "
            f"{fmt_ratio(r['batched_over_raw_evp'], pct=True):>10} "
            f"{fmt_ratio(r['single_over_python_loop']):>12}"
        )
    print(
        "batched = 1 Nautilus call per 1 MiB (seal_into / open_packed); single = 1 call per record"
    )


def kem_table(kems: dict[Any, Any]) -> list[dict[str, Any]]:
    rows = []
    known = ["mlkem768", "mlkem1024", "x25519-mlkem768", "x25519-mlkem1024"]
    algs = sorted({k[0] for k in kems}, key=lambda a: (known.index(a) if a in known else 99, a))
    for alg in algs:
        for op in KEM_OPS:
            ours = kems.get((alg, op, "nautilus"), {}).get("ops_per_s")
            theirs = kems.get((alg, op, "cryptography"), {}).get("ops_per_s")
            rows.append(
                {
                    "alg": alg,
                    "op": op,
                    "nautilus_ops_per_s": ours,
                    "cryptography_ops_per_s": theirs,
                    "nautilus_over_cryptography": ratio(ours, theirs),
                }
            )
    return rows


def print_kem_table(rows: list[dict[str, Any]]) -> None:
    def ops(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    print()
    print(
        "KEM operations per second (median); hybrid on the cryptography side = its ML-KEM + "
        "X25519 composed as Nautilus does"
    )
    head = f"{'algorithm':<18} {'op':<7} {'Nautilus':>10} {'cryptography':>13} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['alg']:<18} {r['op']:<7} {ops(r['nautilus_ops_per_s']):>10} "
            f"{ops(r['cryptography_ops_per_s']):>13} "
            f"{fmt_ratio(r['nautilus_over_cryptography']):>7}"
        )


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(r["op"], r["size"]): r for r in rows}
    out = []
    for desc, op, size, kind, threshold in TARGETS:
        r = by_key.get((op, size), {})
        batched = r.get("batched_bytes_per_s")
        if kind == "loop":
            other, value = r.get("python_loop_bytes_per_s"), r.get("batched_over_python_loop")
            # The best batching could do: raw EVP speed over the Python loop.
            ceiling = ratio(r.get("raw_evp_bytes_per_s"), other)
            detail = (
                f"{fmt_ratio(value)} ({mbs(batched)} vs {mbs(other)} MB/s; need "
                f"{threshold:.1f}x; raw EVP itself would be {fmt_ratio(ceiling)})"
            )
        else:
            other, value = r.get("raw_evp_bytes_per_s"), r.get("batched_over_raw_evp")
            detail = (
                f"{fmt_ratio(value, pct=True)} ({mbs(batched)} vs {mbs(other)} MB/s; "
                f"need {threshold:.0%})"
            )
        met = None if value is None else value >= threshold  # None: not measured (-k)
        out.append(
            {"target": desc, "value": value, "threshold": threshold, "met": met, "detail": detail}
        )
    return out


def print_targets(targets: list[dict[str, Any]]) -> None:
    print()
    print("Targets (reported, not enforced)")
    for t in targets:
        status = {True: "met    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        print(f"  [{status}] {t['target']}: {t['detail']}")


# -- environment -------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict[str, Any]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        # (the results directory is excluded: it holds the outputs of earlier runs)
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!benchmarks/results",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": head, "dirty": bool(dirty.strip())}


def versions() -> dict[str, Any]:
    try:
        from nautilus import __version__ as nautilus_version
        from nautilus._bindings import OPENSSL_VERSION, aes_gcm_code
    except ImportError as exc:
        raise BenchError(f"cannot import nautilus (run `make build`): {exc}") from exc

    out: dict[str, Any] = {
        "nautilus": nautilus_version,
        "nautilus_openssl": OPENSSL_VERSION,
        # Nautilus's own AES-GCM (csrc/nt_gcm.c) or OpenSSL's: docs/record-layer.md
        "nautilus_aes_gcm": aes_gcm_code(),
    }
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        out["cryptography"] = cryptography.__version__
        out["cryptography_openssl"] = backend.openssl_version_text()
    except ImportError:
        out["cryptography"] = None
    return out


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short bounds (--max-time 0.15 --driver-seconds 0.2): about 15 s, noisier",
    )
    parser.add_argument(
        "--max-time",
        type=float,
        help="pytest-benchmark seconds per benchmark (default 1.0; --quick 0.15)",
    )
    parser.add_argument(
        "--driver-seconds",
        type=float,
        help="EVP driver seconds per measurement (default 0.5; --quick 0.2)",
    )
    parser.add_argument("-k", help="pytest -k expression (a subset; tables show '-' for the rest)")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show pytest's output (its own tables) as it runs",
    )
    args = parser.parse_args()
    if args.max_time is None:
        args.max_time = 0.15 if args.quick else 1.0
    if args.driver_seconds is None:
        args.driver_seconds = 0.2 if args.quick else 0.5

    started = time.monotonic()
    try:
        env = versions()
        origin = build_driver()
        log(f"EVP driver built against {origin}")
        evp_runs = [run_driver(args.driver_seconds)]
        bench_data = run_pytest(args)
        evp_runs.append(run_driver(args.driver_seconds))
    except BenchError as exc:
        print(f"[bench] error: {exc}", file=sys.stderr)
        return 1

    evp = best_evp(evp_runs)
    records, kems = collect(bench_data)
    api = next((r["api"] for r in records.values() if r.get("api")), None)
    rows = record_table(records, evp)
    kem_rows = kem_table(kems)
    targets = check_targets(rows)
    driver_openssl = evp_runs[0].get("openssl")

    print()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} CPUs); Python {platform.python_version()}")
    print(
        f"Nautilus {env['nautilus']} on {env['nautilus_openssl']}; EVP driver on "
        f"{driver_openssl} ({origin}); cryptography {env.get('cryptography')} on "
        f"{env.get('cryptography_openssl')}"
    )
    if driver_openssl != env["nautilus_openssl"]:
        print("WARNING: the EVP driver and Nautilus use different OpenSSL builds")
    if env["nautilus_aes_gcm"] != "openssl":
        print(
            f"Nautilus's AES-GCM runs on its own code ({env['nautilus_aes_gcm']}, csrc/nt_gcm.c), "
            "the EVP driver on OpenSSL's: the raw EVP figures are OpenSSL's speed, not a "
            "ceiling (NAUTILUS_AES_GCM=openssl compares like with like)"
        )
    print_record_table(rows, api)
    print_kem_table(kem_rows)
    print_targets(targets)

    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_commit(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "openssl_version": env["nautilus_openssl"],
        "versions": {**env, "evp_driver_openssl": driver_openssl},
        "evp_driver_openssl_from": origin,
        "baseline_api": api,
        "settings": {
            "max_time": args.max_time,
            "driver_seconds": args.driver_seconds,
            "k": args.k,
            "quick": args.quick,
        },
        "records": rows,
        "kem": kem_rows,
        "targets": targets,
        "raw_evp_runs": evp_runs,
        "pytest_benchmark_json": str(PYTEST_JSON.relative_to(ROOT)),
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    SUMMARY_JSON.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    log(
        f"wrote {SUMMARY_JSON.relative_to(ROOT)} and {PYTEST_JSON.relative_to(ROOT)} "
        f"in {summary['elapsed_s']} s"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C (its subprocesses get the signal too)
        print(
            f"\n[bench] interrupted: {SUMMARY_JSON.relative_to(ROOT)} not updated", file=sys.stderr
        )
        sys.exit(130)
