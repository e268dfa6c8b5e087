"""The report of ``benchmarks/compare.py``: targets, the tables, the closing notes.

Everything here reads the summary ``compare.py`` builds (the same dict it
writes as ``benchmarks/results/latest.json``); nothing here measures.
"""

from __future__ import annotations

import statistics
from typing import Any, NamedTuple

import _peers

COLUMNS = ("plain", "ssl", "nautilus")
SATURATED = 0.85
"""A process using this many cores (of its one thread) is taken as CPU-bound."""
LEGEND = (
    "Handshake: connect, handshake, the server closes (close_notify), the client closes; "
    "latency: connect to handshake done.",
    "Throughput: from the first write until the server has read the end of the stream.",
    "Messages: Nautilus = its message API (asyncio Channel); plain and ssl = asyncio streams "
    "with a 4-byte length prefix.",
    "Memory: growth of the server's RSS / idle connections (lower is better). CPU: process "
    "CPU time per unit on each side, median over the rounds.",
)


def fmt(value: float | None, unit: str = "") -> str:
    """A figure for the tables: 3 significant digits or so; k and M above 10,000."""
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f}"
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# -- targets -----------------------------------------------------------------------------------


class Target(NamedTuple):
    scenario: str
    ratio: str  # a key of the scenario's ratios, or "median:<contender>"
    short: str  # as the table shows it
    description: str
    threshold: float
    at_most: bool = False  # True: the value must not exceed the threshold


def _targets() -> list[Target]:
    out = []
    for key, what in (
        ("hs-seq", "sequential server-auth"),
        ("hs-seq-mutual", "sequential mutual"),
        ("hs-conc", "concurrent server-auth"),
        ("hs-conc-mutual", "concurrent mutual"),
        ("hs-resume", "blocking sockets"),
    ):
        out.append(
            Target(
                key,
                "nautilus_over_ssl",
                ">=1.0x ssl",
                f"full handshakes/s, {what}: >= 1.0x ssl",
                1.0,
            )
        )
        out.append(
            Target(
                key,
                "latency_p50_nautilus_over_ssl",
                "p50 <=ssl",
                f"full handshake median latency, {what}: <= ssl",
                1.0,
                at_most=True,
            )
        )
    for mode, vs_full in (("psk_dhe", 1.5), ("psk_only", 2.5)):
        out.append(
            Target(
                "hs-resume",
                f"{mode}_over_ssl_resumed",
                ">=2.0x ssl res.",
                f"resumed handshakes/s, {mode}: >= 2.0x ssl resumed",
                2.0,
            )
        )
        out.append(
            Target(
                "hs-resume",
                f"{mode}_over_nautilus_full",
                f">={vs_full:.1f}x full",
                f"resumed handshakes/s, {mode}: >= {vs_full:.1f}x Nautilus full",
                vs_full,
            )
        )
    for key, size in (("stream-64k", "64 KiB"), ("stream-4k", "4 KiB")):
        out.append(
            Target(
                key,
                "nautilus_over_ssl",
                ">=2.0x ssl",
                f"asyncio stream, {size} writes: >= 2.0x ssl",
                2.0,
            )
        )
        out.append(
            Target(
                key,
                "nautilus_over_plain",
                ">=0.8x plain",
                f"asyncio stream, {size} writes: >= 0.8x plain",
                0.8,
            )
        )
    for key, size in (("socket-64k", "64 KiB"), ("socket-4k", "4 KiB")):
        out.append(
            Target(
                key,
                "nautilus_over_ssl",
                ">=1.3x ssl",
                f"blocking sockets, {size} sendall: >= 1.3x ssl.SSLSocket",
                1.3,
            )
        )
    out.append(
        Target("msg-rr", "nautilus_over_ssl", ">=2.0x ssl", "256 B round trips/s: >= 2.0x ssl", 2.0)
    )
    out.append(
        Target(
            "msg-oneway",
            "nautilus_over_ssl",
            ">=2.0x ssl",
            "256 B one-way messages/s: >= 2.0x ssl",
            2.0,
        )
    )
    out.append(
        Target(
            "memory",
            "median:nautilus",
            "<=32 KiB",
            "server memory per idle connection: <= 32 KiB",
            32.0,
            at_most=True,
        )
    )
    return out


TARGETS = _targets()


def target_value(sc: dict[str, Any], t: Target) -> float | None:
    if t.ratio.startswith("median:"):
        entry = sc["contenders"].get(t.ratio.split(":", 1)[1])
        return None if entry is None else entry["median"]
    value = sc["ratios"].get(t.ratio)
    return None if value is None else float(value)


# What a target's ratio compares Nautilus with, for the plaintext ceiling below.
_BASES = (
    ("_over_ssl_resumed", "ssl-resumed"),
    ("_over_nautilus_full", "nautilus"),
    ("_over_ssl", "ssl"),
)


def plain_ceiling(sc: dict[str, Any], t: Target) -> float | None:
    """The ratio plaintext itself reaches against the target's baseline (same run).

    Plaintext (TCP and asyncio or blocking sockets with no protocol) does a subset
    of Nautilus's work in the stream and handshake scenarios, so when even
    plaintext stays under a ``>=`` target there, the target cannot be reached
    on this machine. Not so for messages (see ``ceiling_binds``).
    """
    if t.at_most or t.ratio.startswith(("median:", "latency")):
        return None
    base = next((b for suffix, b in _BASES if t.ratio.endswith(suffix)), None)
    plain = sc["contenders"].get("plain") or {}
    other = sc["contenders"].get(base or "") or {}
    if base is None or not plain.get("median") or not other.get("median"):
        return None
    return float(plain["median"] / other["median"])


# Scenarios where plaintext's figure is no bound on Nautilus's, and why.
_NO_CEILING = {
    # plaintext frames its messages in Python over asyncio streams, the message API in C
    "rr": "their framing is Python's, the message API's is C",
    "oneway": "their framing is Python's, the message API's is C",
    # asyncio's TCP transport reads plaintext into a new 256 KiB bytes object per
    # read (heap or mmap, see "Plaintext's two speeds" in benchmarks/README.md);
    # Nautilus's adapter reads into its own buffer, reused: not a subset of its
    # work, and Nautilus has measured above plaintext at both write sizes
    "stream": "asyncio allocates plaintext's reads, Nautilus reads into its own buffer",
}


def resumption_bound(sc: dict[str, Any], t: Target) -> dict[str, float] | None:
    """The most a resumption mode can reach against Nautilus's full handshakes, if
    the work both handshakes do cost nothing (same run; None when not measured).

    A full handshake does what a resumption does (but open the ticket), plus its
    own extra (signatures, the key exchange for psk_only): ``extra`` = T(full) -
    T(mode), per sequential handshake. A resumption cannot take less than its
    messages alone, ``floor`` = T(floor contender: TCP connect, the same
    messages, no work). Cutting work both do lowers T(full) by as much, so
    T(full)/T(mode) <= 1 + extra/floor: ``bound``. A target above it is out of
    reach: only making full handshakes slower, or the resumption's own work
    (opening the ticket, the binders, issuing the next ticket) nearly free as
    well, would raise the bound, by at most that work over ``floor``.
    """
    if not t.ratio.endswith("_over_nautilus_full"):
        return None
    name = "nautilus-" + t.ratio.removesuffix("_over_nautilus_full")
    rates = [(sc["contenders"].get(c) or {}).get("median") for c in ("nautilus", name, "floor")]
    if not all(rates):
        return None

    def extra_and_floor(
        full_rate: float, mode_rate: float, floor_rate: float
    ) -> tuple[float, float]:
        """(T(full) - T(mode), T(floor)) in us per handshake, from three rates."""
        return 1e6 / full_rate - 1e6 / mode_rate, 1e6 / floor_rate

    extra, floor = extra_and_floor(*rates)
    # The same bound round by round (each round runs every contender once):
    # the median's verdict stands only where every round's agrees.
    by_round = [
        {r.get("round"): r.get("value") for r in (sc["contenders"][c].get("rounds") or ())}
        for c in ("nautilus", name, "floor")
    ]
    per_round = []
    for n, full_rate in by_round[0].items():
        mode_rate, floor_rate = by_round[1].get(n), by_round[2].get(n)
        if full_rate and mode_rate and floor_rate:
            round_extra, round_floor = extra_and_floor(full_rate, mode_rate, floor_rate)
            per_round.append(1.0 + round_extra / round_floor)
    return {
        "extra_us": extra,
        "floor_us": floor,
        "bound": 1.0 + max(extra, 0.0) / floor,
        "round_bounds": [min(per_round), max(per_round)] if len(per_round) >= 2 else None,
    }


def ceiling_binds(sc: dict[str, Any]) -> bool:
    """Whether plaintext's figure bounds Nautilus's in this scenario."""
    return sc.get("kind") not in _NO_CEILING


def ratio_contenders(ratio: str) -> tuple[str, str] | None:
    """The two contenders whose throughputs a target's ratio divides (None for
    latency, CPU and plain medians)."""
    if ratio.startswith(("median:", "latency", "cpu_")):
        return None
    for suffix, base in (*_BASES, ("_over_plain", "plain")):
        if ratio.endswith(suffix):
            head = ratio[: -len(suffix)]
            return ("nautilus" if head == "nautilus" else f"nautilus-{head}"), base
    return None


def round_ratios(sc: dict[str, Any], t: Target) -> tuple[float, float] | None:
    """The lowest and highest ratio of the two contenders round by round (each
    round runs every contender once, in rotated order); None without two rounds."""
    pair = ratio_contenders(t.ratio)
    if pair is None:
        return None
    num, den = (sc["contenders"].get(name) or {} for name in pair)
    base = {r.get("round"): r.get("value") for r in den.get("rounds") or ()}
    ratios = [
        r["value"] / base[r.get("round")]
        for r in num.get("rounds") or ()
        if r.get("value") and base.get(r.get("round"))
    ]
    return (min(ratios), max(ratios)) if len(ratios) >= 2 else None


def check_targets(scenarios: list[dict[str, Any]], cpu_count: int) -> list[dict[str, Any]]:
    by_key = {sc["key"]: sc for sc in scenarios}
    out = []
    for t in TARGETS:
        sc = by_key.get(t.scenario)
        if sc is None:
            continue
        value = target_value(sc, t)
        met = None
        if value is not None:
            met = value <= t.threshold if t.at_most else value >= t.threshold
        shortfall = None
        if met is False and value:
            # how far off: the factor by which the figure must improve
            shortfall = value / t.threshold if t.at_most else t.threshold / value
        spread = None if t.at_most else round_ratios(sc, t)
        out.append(
            {
                "scenario": t.scenario,
                "ratio": t.ratio,
                "target": t.description,
                "short": t.short,
                "threshold": t.threshold,
                "at_most": t.at_most,
                "value": value,
                "met": met,
                "improvement_needed": shortfall,
                "limit": limiting_side(sc, t, cpu_count),
                "plain_ceiling": plain_ceiling(sc, t),
                "ceiling_binds": ceiling_binds(sc),
                "ceiling_note": _NO_CEILING.get(sc.get("kind", "")),
                "resumption_bound": resumption_bound(sc, t),
                # The rounds' own ratios; the verdict is within the run's noise
                # when they fall on both sides of the threshold.
                "round_ratios": None if spread is None else list(spread),
                "within_noise": spread is not None and spread[0] < t.threshold <= spread[1],
            }
        )
    return out


def limiting_side(sc: dict[str, Any], t: Target, cpu_count: int) -> str | None:
    """What the CPU times say limits Nautilus's runs: a process or the whole machine saturated,
    or neither (the two sides wait for each other)."""
    name = "nautilus"
    if "psk_dhe" in t.ratio:
        name = "nautilus-psk_dhe"
    elif "psk_only" in t.ratio:
        name = "nautilus-psk_only"
    entry = sc["contenders"].get(name) or {}
    client, server = entry.get("client_cores"), entry.get("server_cores")
    if client is None or server is None:
        return None
    other = entry.get("other_cores") or 0.0
    cores = f"client {client:.2f} cores, server {server:.2f}, other programs {other:.2f}"
    busiest = "client" if client >= server else "server"
    if max(client, server) >= SATURATED:
        return f"the {busiest} process is CPU-bound ({cores})"
    if client + server + other >= SATURATED * cpu_count:
        return f"the machine's {cpu_count} CPUs are saturated, the {busiest} busiest ({cores})"
    return f"no CPU is saturated ({cores}): the two sides wait for each other"


# -- report ------------------------------------------------------------------------------------


class Row(NamedTuple):
    label: str
    plain: str
    ssl: str
    nautilus: str
    over_ssl: str
    over_plain: str
    target: str


def cell(entry: dict[str, Any] | None, unit: str = "") -> str:
    if entry is None:
        return "-"
    if entry["median"] is None:
        if entry.get("unsupported"):
            return "unsupported"
        return "FAILED" if entry["error"] else "-"
    text = fmt(entry["median"], unit)
    if entry["min"] != entry["max"]:
        text += f" ({fmt(entry['min'], unit)}-{fmt(entry['max'], unit)})"
    return text


def ratio_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def latency_cell(entry: dict[str, Any] | None) -> str:
    lat = (entry or {}).get("latency_ms")
    return f"{lat['p50']:.2f} / {lat['p99']:.2f}" if lat else "-"


def latency_row(
    cons: dict[str, Any], r: dict[str, Any], base: str, name: str, ratio: str, target: str
) -> Row:
    """The ``latency ms, p50 / p99`` row under a handshake row: ``name`` against ``base``."""
    return Row(
        "  latency ms, p50 / p99",
        "-",
        latency_cell(cons.get(base)),
        latency_cell(cons.get(name)),
        ratio_cell(r[ratio]),
        "-",
        target,
    )


def target_cell(targets: list[dict[str, Any]], key: str, ratios: tuple[str, ...]) -> str:
    parts = []
    for t in targets:
        if t["scenario"] == key and t["ratio"] in ratios:
            status = {True: "met", False: "NOT MET", None: "n/a"}[t["met"]]
            mark = "*" if t.get("within_noise") else ""
            parts.append(f"{status}{mark} {t['short']}")
    return "; ".join(parts) or "-"


def table_rows(summary: dict[str, Any]) -> list[Row]:
    targets = summary["targets"]
    rows: list[Row] = []
    for sc in summary["scenarios"]:
        cons, r, key = sc["contenders"], sc["ratios"], sc["key"]

        def tcell(*names: str, key: str = key) -> str:
            return target_cell(targets, key, names)

        lat = "latency_p50_nautilus_over_ssl"

        if sc["kind"] == "resume":
            rows.append(
                Row(
                    f"{sc['title']}, full handshakes",
                    cell(cons.get("plain")),
                    cell(cons.get("ssl")),
                    cell(cons.get("nautilus")),
                    ratio_cell(r["nautilus_over_ssl"]),
                    ratio_cell(r["nautilus_over_plain"]),
                    tcell("nautilus_over_ssl"),
                )
            )
            rows.append(latency_row(cons, r, "ssl", "nautilus", lat, tcell(lat)))
            for mode in ("psk_dhe", "psk_only"):
                name = f"nautilus-{mode}"
                rows.append(
                    Row(
                        f"{sc['title']}, resumed: {mode} (ssl: resumed)",
                        cell(cons.get("plain")),
                        cell(cons.get("ssl-resumed")),
                        cell(cons.get(name)),
                        ratio_cell(r[f"{mode}_over_ssl_resumed"]),
                        ratio_cell(r.get(f"{mode}_over_plain")),
                        tcell(f"{mode}_over_ssl_resumed"),
                    )
                )
                lat_mode = f"latency_p50_{mode}_over_ssl_resumed"
                rows.append(latency_row(cons, r, "ssl-resumed", name, lat_mode, "-"))
                rows.append(
                    Row(
                        f"  {mode} / Nautilus full handshakes",
                        "-",
                        "-",
                        ratio_cell(r[f"{mode}_over_nautilus_full"]),
                        "-",
                        "-",
                        tcell(f"{mode}_over_nautilus_full"),
                    )
                )
            if cons.get("floor"):
                rows.append(
                    Row(
                        f"{sc['title']}, floor: a resumption's messages, no work",
                        cell(cons.get("plain")),
                        "-",
                        cell(cons.get("floor")),
                        "-",
                        ratio_cell(r.get("floor_over_plain")),
                        "-",
                    )
                )
            continue
        rows.append(
            Row(
                sc["title"],
                cell(cons.get("plain")),
                cell(cons.get("ssl")),
                cell(cons.get("nautilus")),
                ratio_cell(r["nautilus_over_ssl"]),
                ratio_cell(r["nautilus_over_plain"]),
                tcell("nautilus_over_ssl", "nautilus_over_plain", "median:nautilus"),
            )
        )
        if sc["kind"] == "handshake":
            rows.append(latency_row(cons, r, "ssl", "nautilus", lat, tcell(lat)))
        if sc["kind"] == "stream":
            rows.append(
                Row(
                    "  Nautilus with ChaCha20-Poly1305",
                    "-",
                    "-",
                    cell(cons.get("nautilus-chacha")),
                    ratio_cell(r["chacha_over_ssl"]),
                    ratio_cell(r["chacha_over_plain"]),
                    "-",
                )
            )
    return rows


def format_rows(heads: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A table: the first and last columns left-aligned, the others right-aligned."""
    widths = [max([len(head), *(len(r[i]) for r in rows)]) for i, head in enumerate(heads)]
    last = len(heads) - 1

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i in (0, last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [join(heads), "-" * len(join(heads))]
    lines += [join(row) for row in rows]
    return lines


def main_table(summary: dict[str, Any]) -> list[str]:
    heads = ("scenario", "plain", "ssl", "Nautilus", "N/ssl", "N/plain", "target")
    return format_rows(heads, list(table_rows(summary)))


def cpu_cell(entry: dict[str, Any] | None, unit: str) -> str:
    if entry is None or entry.get("client_cpu") is None:
        return "-"
    digits = 2 if unit == "s/GiB" else 1
    return f"{entry['client_cpu']:.{digits}f} / {entry['server_cpu']:.{digits}f}"


def cpu_table(summary: dict[str, Any]) -> list[str]:
    heads = ("CPU: client / server", "plain", "ssl", "Nautilus", "N/ssl", "N/plain")
    rows: list[tuple[str, ...]] = []
    for sc in summary["scenarios"]:
        unit, cons, r = sc["cpu_unit"], sc["contenders"], sc["ratios"]
        if unit is None:
            continue
        title = sc["title"]
        label = f"{title} ({unit})"
        if sc["kind"] == "resume":
            rows.append(
                (
                    f"{title}, full ({unit})",
                    "-",
                    cpu_cell(cons.get("ssl"), unit),
                    cpu_cell(cons.get("nautilus"), unit),
                    ratio_cell(r["cpu_nautilus_over_ssl"]),
                    "-",
                )
            )
            for mode in ("psk_dhe", "psk_only"):
                rows.append(
                    (
                        f"{title}, resumed: {mode} vs ssl ({unit})",
                        "-",
                        cpu_cell(cons.get("ssl-resumed"), unit),
                        cpu_cell(cons.get(f"nautilus-{mode}"), unit),
                        ratio_cell(r[f"cpu_{mode}_over_ssl_resumed"]),
                        "-",
                    )
                )
            continue
        rows.append(
            (
                label,
                *(cpu_cell(cons.get(c), unit) for c in COLUMNS),
                ratio_cell(r["cpu_nautilus_over_ssl"]),
                ratio_cell(r["cpu_nautilus_over_plain"]),
            )
        )
        if sc["kind"] == "stream":
            rows.append(
                (
                    "  Nautilus with ChaCha20-Poly1305",
                    "-",
                    "-",
                    cpu_cell(cons.get("nautilus-chacha"), unit),
                    ratio_cell(r["cpu_chacha_over_ssl"]),
                    "-",
                )
            )
    return format_rows(heads, rows)


def header_lines(summary: dict[str, Any]) -> list[str]:
    env, tls, settings, machine = (
        summary["versions"],
        summary["tls"],
        summary["settings"],
        summary["machine"],
    )
    git = summary["git"]
    commit = (git["commit"] or "unknown")[:12] + (
        " + changes made during the run"
        if git.get("changed_during_run")
        else " + local changes"
        if git["dirty"]
        else ""
    )
    cipher = tls["cipher"][0] if tls.get("cipher") else "?"
    group = tls["group"] or (
        f"{tls['group_setting']} (set on both sides; Python cannot report it"
        + (", the setting was checked to be effective)" if tls["group_setting_effective"] else ")")
    )
    flags = " ".join(machine["cpu_flags"]) or "none of note"
    loops = "asyncio" + (f" and uvloop {env['uvloop']}" if settings["uvloop"] else "")
    return [
        f"CPU: {machine['cpu_model']} ({machine['cpu_count']} CPUs; {flags}); "
        f"Linux {machine['kernel']}; Python {env['python']}; event loops: {loops}",
        f"ssl: {env['ssl_openssl']}; Nautilus {env['nautilus']}: {env['nautilus_openssl']}, "
        f"AES-GCM code {env.get('nautilus_aes_gcm', 'openssl')}; commit {commit}; "
        f"{summary['date']}",
        f"ssl: {tls['version']} {cipher}, group {group}, ECDSA P-256 self-signed certificates, "
        "no session tickets except for resumption",
        f"Nautilus: {_peers.NAUTILUS_GROUP}, {_peers.NAUTILUS_CIPHER} (ChaCha20-Poly1305 where "
        "said), Ed25519 identities, pinned trust, resumption off except for resumption",
        f"{settings['rounds']} rounds of {settings['round_seconds']:g} s per contender, order "
        f"rotated; median (min-max); ratios of medians; 1 MB = 10^6 B; memory: "
        f"{settings['connections']} connections, fresh server per measurement",
    ]


def notes_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    unmet = [t for t in summary["targets"] if t["met"] is False]
    met = [t for t in summary["targets"] if t["met"]]
    lines.append(f"Targets: {len(met)} of {len(summary['targets'])} met.")
    for t in unmet:
        value = t["value"]
        shown = f"{value:.1f} KiB" if t["ratio"].startswith("median:") else f"{value:.2f}x"
        need = t["improvement_needed"]
        ceiling = t.get("plain_ceiling")
        beyond = ""
        if ceiling is not None and ceiling < t["threshold"]:
            why = t.get("ceiling_note")
            if value is not None and value >= ceiling:  # (the same measure: a bound it passed)
                why = "Nautilus passes it in this run"
            beyond = (
                f"; OUT OF REACH here: plaintext itself reaches only {ceiling:.2f}x "
                "on the same measure"
                if t.get("ceiling_binds", True) and why is None
                else f"; plaintext reaches {ceiling:.2f}x ({why or 'not the same work'}: no bound)"
            )
        bound = t.get("resumption_bound")
        if bound is not None and bound["extra_us"] <= 0:
            beyond += (
                "; no bound from the floor: resumptions measured no faster than full "
                "handshakes here"
            )
        elif bound is not None and bound["bound"] < t["threshold"]:
            spread = bound.get("round_bounds")
            if spread is not None and spread[1] >= t["threshold"]:
                beyond += (
                    f"; at most {bound['bound']:.2f}x by the floor's bound, but its rounds "
                    f"range {spread[0]:.2f}x-{spread[1]:.2f}x: within this run's noise"
                )
            else:
                beyond += (
                    f"; OUT OF REACH: at most {bound['bound']:.2f}x even if the work both "
                    f"handshakes do cost nothing, unless the resumption's own work (the "
                    f"ticket, the binder, the next ticket) gets cheaper too (full handshakes "
                    f"take {bound['extra_us']:.0f} us more; a resumption's messages alone "
                    f"take {bound['floor_us']:.0f} us)"
                )
        lines.append(
            f"  NOT MET {t['target']}: {shown}; needs {need:.2f}x better{beyond}"
            + (f"; {t['limit']}" if t["limit"] else "")
        )
    for t in summary["targets"]:
        if t.get("within_noise"):
            low, high = t["round_ratios"]
            verdict = "met" if t["met"] else "not met"
            lines.append(
                f"  * within this run's noise: {t['target']}: {t['value']:.2f}x ({verdict}), "
                f"but round by round {low:.2f}x-{high:.2f}x: run again before reading it"
            )
    noise = summary["interference"]
    if noise["other_cores_max"] is not None:
        lines.append(
            f"Other programs used {noise['other_cores_median']:.2f} cores (median over the runs; "
            f"max {noise['other_cores_max']:.2f}; {noise['runs_with_other_over_0_1_core']} of "
            f"{noise['runs']} runs over 0.1); steal max {noise['steal_cores_max']:.2f} cores."
        )
        if noise["other_cores_max"] > 0.2:
            lines.append(
                "WARNING: the machine was busy during some runs: figures are noisy; compare "
                "the ranges, or run again on a quiet machine."
            )
    if summary["settings"]["connections_note"]:
        lines.append(summary["settings"]["connections_note"])
    if summary["settings"]["uvloop_note"]:
        lines.append(summary["settings"]["uvloop_note"])
    for loop, why in summary["settings"]["nautilus_unsupported_on"].items():
        lines.append(
            f"WARNING: Nautilus does not run on {loop}: {why}. Its {loop} rows are marked "
            "'unsupported' (not counted as a failure: the event loop is an optional extra)."
        )
    for sc in summary["scenarios"]:
        for name, entry in sc["contenders"].items():
            if entry["error"]:
                lines.append(f"FAILED {sc['key']} {name}: {entry['error']}")
    return lines


def print_report(summary: dict[str, Any]) -> None:
    print()
    print("\n".join(header_lines(summary)))
    print()
    print("\n".join(main_table(summary)))
    print()
    cpu = cpu_table(summary)
    if len(cpu) > 2:
        print("\n".join(cpu))
        print()
    print("\n".join(LEGEND))
    print("\n".join(notes_lines(summary)))


def interference(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """How busy the rest of the machine was during the measured runs."""
    runs = [r for sc in scenarios for e in sc["contenders"].values() for r in e["rounds"]]
    other = [r["other_cores"] for r in runs if r.get("other_cores") is not None]
    steal = [r["steal_cores"] for r in runs if r.get("steal_cores") is not None]
    return {
        "other_cores_median": statistics.median(other) if other else None,
        "other_cores_max": max(other) if other else None,
        "runs_with_other_over_0_1_core": sum(x > 0.1 for x in other),
        "runs": len(runs),
        "steal_cores_max": max(steal) if steal else None,
    }
