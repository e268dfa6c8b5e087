"""Smoke test of ``benchmarks/compare.py``: every scenario runs and verifies.

Not a timed test: each scenario runs for a fraction of a second, and only the
outcome is checked (positive figures; handshakes counted by the server too,
resumed ones resumed; every streamed byte and every message arrived and
matched; the memory scenario held its connections; the JSON, the tables and
the chart are written).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPARE = ROOT / "benchmarks" / "compare.py"
HS = {"ssl", "nautilus"}
THREE = {"plain", "ssl", "nautilus"}
EXPECTED = {
    "hs-seq": HS | {"plain"},
    "hs-seq-mutual": HS,
    "hs-conc": HS | {"plain"},
    "hs-conc-mutual": HS,
    "hs-resume": {
        "plain",
        "floor",
        "ssl",
        "ssl-resumed",
        "nautilus",
        "nautilus-psk_dhe",
        "nautilus-psk_only",
    },
    "stream-64k": THREE | {"nautilus-chacha"},
    "stream-4k": THREE | {"nautilus-chacha"},
    "socket-64k": THREE,
    "socket-4k": THREE,
    "msg-rr": THREE,
    "msg-oneway": THREE,
    "memory": THREE,
}
CONNECTIONS = 40
HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def run_compare(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    output = tmp_path / "transport.json"
    chart = tmp_path / "transport.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(COMPARE),
            "--rounds=1",
            "--round-seconds=0.1",
            "--warmup=0",
            "--concurrency=4",
            f"--connections={CONNECTIONS}",
            f"--output={output}",
            f"--chart={chart}",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary: dict[str, Any] = json.loads(output.read_text())
    if "--no-chart" in extra:
        assert not chart.exists()
    elif HAVE_MATPLOTLIB:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "no chart" in proc.stdout
    return summary, proc.stdout


def check_run(sc: dict[str, Any], name: str, run: dict[str, Any]) -> None:
    where = f"{sc['key']}/{name}"
    assert run["verified"] is True, where
    kind = sc["kind"]
    if kind in ("handshake", "resume"):
        assert run["handshakes"] > 0, where
        assert run["latency_ms"]["p50"] > 0, where
    if kind == "resume":
        assert run["resumed"] is (name in {"ssl-resumed", "nautilus-psk_dhe", "nautilus-psk_only"})
    if kind in ("stream", "socket"):
        assert run["bytes"] >= sc["write_size"] > 0, where
    if kind in ("rr", "oneway"):
        assert run["messages"] > 0, where
    if kind == "memory":
        assert run["connections"] == CONNECTIONS, where
        assert run["rss_after_kib"] > 0, where
    else:
        assert run["value"] > 0, where
        assert run["client_cpu"] > 0, where
        assert run["server_cpu"] >= 0, where


def test_every_scenario_runs_and_verifies(tmp_path: Path) -> None:
    summary, stdout = run_compare(tmp_path, "--no-uvloop")

    scenarios = {sc["key"]: sc for sc in summary["scenarios"]}
    assert set(scenarios) == set(EXPECTED)
    for key, contenders in EXPECTED.items():
        sc = scenarios[key]
        assert set(sc["contenders"]) == contenders, key
        for name, entry in sc["contenders"].items():
            where = f"{key}/{name}"
            assert entry["error"] is None, where
            assert entry["verified"] is True, where
            assert entry["median"] is not None, where
            (run,) = entry["rounds"]
            check_run(sc, name, run)
        if sc["kind"] != "memory":
            assert sc["ratios"]["nautilus_over_ssl"] > 0, key
    resume = scenarios["hs-resume"]["ratios"]
    assert resume["psk_dhe_over_nautilus_full"] > 0
    assert resume["psk_only_over_ssl_resumed"] > 0
    # The floor of a resumption does less than any handshake and more than TCP alone.
    rates = {n: e["median"] for n, e in scenarios["hs-resume"]["contenders"].items()}
    assert rates["floor"] > max(rates["nautilus-psk_only"], rates["ssl-resumed"])
    assert 0 < resume["floor_over_plain"] == pytest.approx(rates["floor"] / rates["plain"])
    bounds = [t["resumption_bound"] for t in summary["targets"] if "nautilus_full" in t["ratio"]]
    assert len(bounds) == 2
    assert all(b is not None and b["floor_us"] > 0 for b in bounds)
    assert scenarios["stream-4k"]["ratios"]["chacha_over_ssl"] > 0

    assert {t["scenario"] for t in summary["targets"]} <= set(EXPECTED)
    assert all(t["met"] in (True, False) for t in summary["targets"])
    assert summary["tls"]["version"] == "TLSv1.3"
    assert summary["tls"]["cipher"][0] == "TLS_AES_256_GCM_SHA384"
    assert summary["versions"]["ssl_openssl"]
    assert summary["versions"]["nautilus_openssl"]
    assert summary["machine"]["cpu_model"]
    assert isinstance(summary["machine"]["cpu_flags"], list)
    assert "commit" in summary["git"]
    assert summary["table"][0].startswith("scenario")
    assert "Nautilus" in stdout
    assert "Targets:" in stdout


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed (the bench extra)")
def test_uvloop_rows(tmp_path: Path) -> None:
    summary, _ = run_compare(tmp_path, "--only=uvloop-stream-4k,uvloop-msg-rr", "--no-chart")
    scenarios = {sc["key"]: sc for sc in summary["scenarios"]}
    assert set(scenarios) == {"uvloop-stream-4k", "uvloop-msg-rr"}
    unsupported = summary["settings"]["nautilus_unsupported_on"].get("uvloop")
    for sc in scenarios.values():
        assert sc["loop"] == "uvloop"
        for name, entry in sc["contenders"].items():
            if unsupported and name.startswith("nautilus"):
                assert entry["unsupported"] == unsupported
                continue
            assert entry["verified"] is True, name
            check_run(sc, name, entry["rounds"][0])
    if unsupported:
        pytest.xfail(f"Nautilus does not run on uvloop: {unsupported}")


def _report_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # _report imports _peers
    spec = importlib.util.spec_from_file_location(
        "bench_report", ROOT / "benchmarks" / "_report.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # NamedTuple classes look it up
    spec.loader.exec_module(module)
    return module


def test_the_floor_sends_what_a_psk_only_resumption_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOOR_SIZES, the floor contender's messages, are the sizes of a real
    psk_only resumption in the bench's settings (they went stale once when
    tickets grew): the client's hello, the server's flight with its ticket,
    the client's Finished, the server's close_notify."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import _peers

    import nautilus
    from nautilus.protocol.connection import Connection

    server_id = nautilus.Identity.generate("ed25519")
    sctx = _peers.nautilus_server_context(server_id, "", mutual=False, resumption="psk_only")
    cctx = _peers.nautilus_client_context(server_id.peer_id, None, resumption="psk_only")
    now = time.time()
    sizes = []
    for _ in range(2):  # a full handshake for the ticket, then the resumption
        client = Connection(cctx, "client", server_name="127.0.0.1:1")
        server = Connection(sctx, "server")
        client.start(now)
        server.start(now)
        hello = client.data_to_send()
        server.receive_data(hello, now)
        flight = server.data_to_send()
        client.receive_data(flight, now)
        finished = client.data_to_send()
        server.receive_data(finished, now)
        server.data_to_send()  # (tickets after a full handshake)
        server.close()
        close = server.data_to_send()
        client.receive_data(close, now)
        assert client.session is not None
        sizes.append((client.session.resumed, len(hello), len(flight), len(finished), len(close)))
    assert sizes[1] == (True, *_peers.FLOOR_SIZES)


def test_a_commit_made_during_a_run_marks_the_run_mixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit is read at the start and at the end of a run: servers started
    after a change imported other code, so such a run is not a clean one."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import compare

    clean = {"commit": "a" * 40, "dirty": False}
    assert compare.run_commit(clean, clean) == {**clean, "changed_during_run": False}
    later = {"commit": "b" * 40, "dirty": False}
    assert compare.run_commit(clean, later) == {**later, "dirty": True, "changed_during_run": True}
    assert compare.run_commit({**clean, "dirty": True}, clean)["dirty"] is True


def test_the_chart_is_drawn_when_every_contender_of_a_panel_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A panel whose scenarios all failed (no median: the memory scenario where
    /proc/self/status cannot be read) is left out, not a ZeroDivisionError."""
    pytest.importorskip("matplotlib")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import chart

    summary = json.loads((ROOT / "benchmarks" / "results" / "latest.json").read_text())
    for sc in summary["scenarios"]:
        if sc["kind"] == "memory":
            for entry in sc["contenders"].values():
                entry.update(median=None, min=None, max=None, error="failed")
    assert chart.render(summary, tmp_path / "chart.png") is None
    assert (tmp_path / "chart.png").stat().st_size > 0


def quiet_summary(targets: list[dict[str, Any]]) -> dict[str, Any]:
    """What notes_lines() reads of a run's summary: ``targets``, a quiet machine."""
    return {
        "targets": targets,
        "interference": {"other_cores_max": None},
        "settings": {"connections_note": "", "uvloop_note": "", "nautilus_unsupported_on": {}},
        "scenarios": [],
    }


def test_a_target_above_plaintext_is_reported_out_of_reach(monkeypatch: pytest.MonkeyPatch) -> None:
    report = _report_module(monkeypatch)

    def contender(median: float) -> dict[str, Any]:
        return {"median": median}

    sc = {
        "key": "socket-4k",
        "kind": "socket",
        "contenders": {"plain": contender(1.9), "ssl": contender(1.6), "nautilus": contender(1.0)},
        "ratios": {"nautilus_over_ssl": 1.0 / 1.6},
    }
    (target,) = [t for t in report.TARGETS if t.scenario == "socket-4k"]
    assert report.plain_ceiling(sc, target) == pytest.approx(1.9 / 1.6)
    checked = report.check_targets([sc], 2)
    assert checked[0]["plain_ceiling"] == pytest.approx(1.9 / 1.6)
    summary = quiet_summary(checked)
    line = next(x for x in report.notes_lines(summary) if "NOT MET" in x)
    assert "OUT OF REACH here: plaintext itself reaches only 1.19x" in line
    # Within reach of plaintext: no such note.
    sc["contenders"]["plain"] = contender(4.0)
    checked = report.check_targets([sc], 2)
    assert checked[0]["plain_ceiling"] == pytest.approx(2.5)
    line = next(x for x in report.notes_lines({**summary, "targets": checked}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    # Messages: plaintext frames in Python, the message API in C, so plaintext's
    # figure is shown but not called a bound.
    (target,) = [t for t in report.TARGETS if t.scenario == "msg-oneway"]
    sc.update(key="msg-oneway", kind="oneway")
    sc["contenders"]["plain"] = contender(2.2)
    checked = report.check_targets([sc], 2)
    assert checked[0]["plain_ceiling"] == pytest.approx(2.2 / 1.6)
    line = next(x for x in report.notes_lines({**summary, "targets": checked}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    assert "plaintext reaches 1.38x (their framing is Python's" in line
    # asyncio streams: asyncio allocates a new object per plaintext read, while
    # Nautilus reads into its own buffer: no bound either.
    sc.update(key="stream-64k", kind="stream")
    checked = report.check_targets([sc], 2)
    line = next(x for x in report.notes_lines({**summary, "targets": checked}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    assert "plaintext reaches 1.38x (asyncio allocates plaintext's reads" in line
    # A ceiling that Nautilus passes in the same run is none (64 KiB streams
    # were called out of reach at 1.80x ssl with plaintext at 1.51x).
    sc.update(key="socket-4k", kind="socket")
    sc["contenders"]["plain"] = contender(1.9)
    sc["contenders"]["nautilus"] = contender(2.0)
    sc["ratios"] = {"nautilus_over_ssl": 2.0 / 1.6}  # 1.25x: under the 1.3x target
    checked = report.check_targets([sc], 2)
    assert checked[0]["met"] is False
    line = next(x for x in report.notes_lines({**summary, "targets": checked}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    assert "plaintext reaches 1.19x (Nautilus passes it in this run: no bound)" in line


def test_a_resumption_target_above_its_bound_is_reported_out_of_reach(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """psk_only / full <= 1 + (T(full) - T(psk_only)) / T(floor), per handshake."""
    report = _report_module(monkeypatch)
    # full 1000 us, psk_only 800 us, floor 250 us: at most 1 + 200/250 = 1.8x.
    rates = {"nautilus": 1000.0, "nautilus-psk_only": 1250.0, "floor": 4000.0}
    sc = {
        "key": "hs-resume",
        "kind": "resume",
        "contenders": {name: {"median": rate} for name, rate in rates.items()},
        "ratios": {"psk_only_over_nautilus_full": 1.25},
    }
    (target,) = [t for t in report.TARGETS if t.ratio == "psk_only_over_nautilus_full"]
    bound = report.resumption_bound(sc, target)
    assert bound == {
        "extra_us": pytest.approx(200.0),
        "floor_us": pytest.approx(250.0),
        "bound": pytest.approx(1.8),
        "round_bounds": None,  # (no rounds given)
    }

    def check() -> dict[str, Any]:
        (checked,) = [t for t in report.check_targets([sc], 2) if t["ratio"] == target.ratio]
        return checked

    checked = check()
    summary = quiet_summary([checked])
    (line,) = [x for x in report.notes_lines(summary) if "NOT MET" in x]
    assert "OUT OF REACH: at most 1.80x" in line
    assert "full handshakes take 200 us more" in line
    assert "messages alone take 250 us" in line
    assert "unless the resumption's own work" in line
    # Rounds whose own bounds reach the target: within the run's noise, no verdict.
    rounds = {"nautilus": (1000.0, 1000.0), "nautilus-psk_only": (1250.0, 2000.0)}
    rounds["floor"] = (4000.0, 4000.0)  # bounds 1.8x and 1 + 500/250 = 3.0x
    for name, values in rounds.items():
        sc["contenders"][name]["rounds"] = [
            {"round": n, "value": v} for n, v in enumerate(values, 1)
        ]
    checked = check()
    assert checked["resumption_bound"]["round_bounds"] == [pytest.approx(1.8), pytest.approx(3.0)]
    line = next(x for x in report.notes_lines({**summary, "targets": [checked]}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    assert "rounds range 1.80x-3.00x: within this run's noise" in line
    for contender in sc["contenders"].values():
        del contender["rounds"]
    # A resumption no faster than a full handshake: no bound at all.
    sc["contenders"]["nautilus-psk_only"] = {"median": 900.0}
    checked = check()
    line = next(x for x in report.notes_lines({**summary, "targets": [checked]}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    assert "no bound from the floor" in line
    sc["contenders"]["nautilus-psk_only"] = {"median": 1250.0}
    # A floor slow enough to leave room under the target: no such verdict.
    sc["contenders"]["floor"] = {"median": 10000.0}  # 100 us: 1 + 200/100 = 3.0x
    checked = check()
    assert checked["resumption_bound"]["bound"] == pytest.approx(3.0)
    line = next(x for x in report.notes_lines({**summary, "targets": [checked]}) if "NOT MET" in x)
    assert "OUT OF REACH" not in line
    # Without the floor (--contenders), no bound; other targets have none.
    del sc["contenders"]["floor"]
    assert report.resumption_bound(sc, target) is None
    (other,) = [t for t in report.TARGETS if t.ratio == "psk_only_over_ssl_resumed"]
    assert report.resumption_bound(sc, other) is None


def test_a_verdict_the_rounds_do_not_agree_on_is_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target whose round-by-round ratios fall on both sides of its threshold
    is reported as within the run's noise, whichever way its median went."""
    report = _report_module(monkeypatch)

    def contender(values: list[float]) -> dict[str, Any]:
        rounds = [{"round": i + 1, "value": v} for i, v in enumerate(values)]
        return {"median": sorted(values)[len(values) // 2], "rounds": rounds}

    ssl, nautilus = [1000.0, 800.0, 700.0], [1100.0, 1100.0, 1100.0]  # 1.10x, 1.375x, 1.57x
    sc = {
        "key": "socket-64k",
        "kind": "socket",
        "contenders": {"ssl": contender(ssl), "nautilus": contender(nautilus)},
        "ratios": {"nautilus_over_ssl": 1100.0 / 800.0},
    }
    (target,) = [t for t in report.TARGETS if t.scenario == "socket-64k"]
    assert report.ratio_contenders(target.ratio) == ("nautilus", "ssl")
    assert report.round_ratios(sc, target) == pytest.approx((1.1, 1100.0 / 700.0))
    (checked,) = report.check_targets([sc], 2)
    assert checked["met"] is True
    assert checked["within_noise"] is True
    assert report.target_cell([checked], "socket-64k", ("nautilus_over_ssl",)) == "met* >=1.3x ssl"
    summary = quiet_summary([checked])
    (line,) = [x for x in report.notes_lines(summary) if "within this run's noise" in x]
    assert "1.38x (met), but round by round 1.10x-1.57x" in line
    # Every round above the threshold: a plain verdict.
    sc["contenders"]["ssl"] = contender([800.0, 780.0, 820.0])
    (checked,) = report.check_targets([sc], 2)
    assert checked["within_noise"] is False
    assert report.target_cell([checked], "socket-64k", ("nautilus_over_ssl",)) == "met >=1.3x ssl"
    # Rounds are paired by their number, whatever order they are listed in.
    sc["contenders"]["nautilus"] = contender([900.0, 1100.0, 1300.0])
    sc["contenders"]["ssl"]["rounds"].reverse()
    assert report.round_ratios(sc, target) == pytest.approx((900.0 / 800.0, 1300.0 / 820.0))
    # Ratios of resumed handshakes name the Nautilus mode and the base.
    resumed = report.ratio_contenders("psk_only_over_ssl_resumed")
    assert resumed == ("nautilus-psk_only", "ssl-resumed")
    assert report.ratio_contenders("psk_dhe_over_nautilus_full") == ("nautilus-psk_dhe", "nautilus")
    assert report.ratio_contenders("latency_p50_nautilus_over_ssl") is None


def _peer_pids() -> set[int]:
    """Processes running benchmarks/_peers.py (the bench's servers)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"_peers.py" in cmdline:
                pids.add(int(entry.name))
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to list processes")
def test_ctrl_c_stops_the_run_and_its_servers(tmp_path: Path) -> None:
    """Interrupted (SIGINT to its process group, as Ctrl-C in a terminal
    does), the bench says so in one line (no traceback), exits 130, writes no
    result and leaves no server process behind."""
    before = _peer_pids()
    output = tmp_path / "transport.json"
    proc = subprocess.Popen(
        [sys.executable, str(COMPARE), "--only=stream-64k", "--rounds=3", "--round-seconds=5",
         "--warmup=0", "--no-chart", "--no-uvloop", f"--output={output}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # a process group of its own, as a terminal job has
        # Ctrl-C as a terminal delivers it, even when this run ignores SIGINT
        preexec_fn=functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # (progress lines) the first round has started
            if "round 1/3" in line:
                break
        assert _peer_pids() - before, "no server process was started"
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: to the whole group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: no results written" in err
    assert "Traceback" not in err
    assert not output.exists()
    deadline = time.monotonic() + 10
    while (left := _peer_pids() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"server processes left running: {sorted(left)}"


SHORT_FLOOR_RUN = ("--rounds", "1", "--round-seconds", "0.3")


def test_rr_floor_runs_every_contender_and_states_the_bound() -> None:
    """benchmarks/rr_floor.py (make bench-rr-floor): one short round each;
    every contender completes round trips whose echo it checked, and the
    bound line is derived from the figures printed above it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rr_floor.py"), *SHORT_FLOOR_RUN],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rates = {}
    for line in lines[1:5]:
        name, rate = line.split()[:2]
        rates[name] = float(rate.replace(",", ""))
    assert set(rates) == {"floor", "plain", "ssl", "nautilus"}
    assert all(rate > 0 for rate in rates.values())
    said = lines[5].split("at most ", 1)[1].split("x ssl", 1)[0]
    assert float(said) == pytest.approx(rates["floor"] / rates["ssl"], abs=0.006)
