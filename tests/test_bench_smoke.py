"""Smoke test of ``benchmarks/compare.py``: every scenario runs and verifies.

Not a timed test: each scenario runs for a fraction of a second, and only the
outcome is checked (positive figures; handshakes counted by the server too;
every streamed byte arrived and matched).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "benchmarks" / "compare.py"
EXPECTED = {
    "hs-seq": {"ssl", "nautilus"},
    "hs-seq-mutual": {"ssl", "nautilus"},
    "hs-conc": {"ssl", "nautilus"},
    "hs-conc-mutual": {"ssl", "nautilus"},
    "stream-64k": {"plain", "ssl", "nautilus"},
    "stream-4k": {"plain", "ssl", "nautilus"},
}


def test_every_scenario_runs_and_verifies(tmp_path: Path) -> None:
    output = tmp_path / "transport.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(COMPARE),
            "--rounds=1",
            "--round-seconds=0.1",
            "--warmup=0",
            "--concurrency=4",
            f"--output={output}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(output.read_text())

    scenarios = {sc["key"]: sc for sc in summary["scenarios"]}
    assert set(scenarios) == set(EXPECTED)
    for key, contenders in EXPECTED.items():
        sc = scenarios[key]
        assert set(sc["contenders"]) == contenders, key
        for name, entry in sc["contenders"].items():
            where = f"{key}/{name}"
            assert entry["error"] is None, where
            assert entry["verified"] is True, where
            assert entry["median"] > 0, where
            (run,) = entry["rounds"]
            assert run["verified"] is True, where
            if sc["kind"] == "handshake":
                assert run["handshakes"] > 0, where
                assert entry["latency_ms"]["p50"] > 0, where
            else:
                assert run["bytes"] >= sc["write_size"] > 0, where
        assert sc["ratios"]["nautilus_over_ssl"] > 0, key

    assert summary["tls"]["version"] == "TLSv1.3"
    assert summary["tls"]["cipher"][0] == "TLS_AES_256_GCM_SHA384"
    assert summary["versions"]["ssl_openssl"]
    assert summary["versions"]["nautilus_openssl"]
    assert "Nautilus" in proc.stdout
