"""The chart of ``benchmarks/compare.py``'s results (``benchmarks/results/latest.png``).

Left: every ratio Nautilus/ssl (and the resumption ratios; for handshake
latency, ssl/Nautilus, so that higher is better everywhere) as one bar each,
green where its target is met, red where not, grey without a target, with a
line at 1.0 and a black tick at each target. Right: the absolute figures
(throughput, handshakes, messages, memory).

``compare.py`` calls :func:`render`; by hand::

    python benchmarks/chart.py [benchmarks/results/latest.json [out.png]]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
COLORS = {
    "plain": "#9e9e9e",
    "ssl": "#4c72b0",
    "ssl-resumed": "#8fa8d6",
    "nautilus": "#dd8452",
    "nautilus-chacha": "#c44e52",
    "nautilus-psk_dhe": "#e8a87c",
    "nautilus-psk_only": "#b5651d",
}
NAMES = {
    "plain": "plain",
    "ssl": "ssl",
    "ssl-resumed": "ssl resumed",
    "nautilus": "Nautilus",
    "nautilus-chacha": "Nautilus ChaCha20",
    "nautilus-psk_dhe": "Nautilus psk_dhe",
    "nautilus-psk_only": "Nautilus psk_only",
}
MET, NOT_MET, NO_TARGET = "#55a868", "#c44e52", "#b0b0b0"


class Bar:
    def __init__(self, label: str, value: float, target: dict[str, Any] | None, uv: bool) -> None:
        self.label, self.value, self.target, self.uv = label, value, target, uv


def short_title(sc: dict[str, Any]) -> str:
    loop = "uvloop: " if sc["loop"] == "uvloop" else ""
    titles = {
        "hs-seq": "handshakes, sequential",
        "hs-seq-mutual": "handshakes, sequential, mutual",
        "hs-conc": f"handshakes, {sc['concurrency']} concurrent",
        "hs-conc-mutual": f"handshakes, {sc['concurrency']} concurrent, mutual",
        "stream-64k": "asyncio stream, 64 KiB writes",
        "stream-4k": "asyncio stream, 4 KiB writes",
        "socket-64k": "blocking socket, 64 KiB",
        "socket-4k": "blocking socket, 4 KiB",
        "msg-rr": "256 B round trips",
        "msg-oneway": "256 B one-way messages",
        "memory": "memory per connection",
    }
    return loop + titles.get(sc["key"].removeprefix("uvloop-"), str(sc["title"]))


def ratio_bars(summary: dict[str, Any]) -> list[Bar]:
    targets = {(t["scenario"], t["ratio"]): t for t in summary["targets"]}
    bars: list[Bar] = []

    def add(sc: dict[str, Any], key: str, label: str, invert: bool = False) -> None:
        """A bar for a ratio; ``invert``: a lower-is-better ratio drawn as its inverse."""
        value = sc["ratios"].get(key)
        if value is None or (invert and value == 0):
            return
        target = targets.get((sc["key"], key))
        if invert:
            value = 1.0 / value
            if target is not None:
                target = {**target, "threshold": 1.0 / target["threshold"]}
        bars.append(Bar(label, value, target, sc["loop"] == "uvloop"))

    for sc in summary["scenarios"]:
        title = short_title(sc)
        kind = sc["kind"]
        if kind == "memory":
            continue
        if kind == "resume":
            add(sc, "nautilus_over_ssl", "blocking full handshakes")
            add(
                sc,
                "latency_p50_nautilus_over_ssl",
                "blocking full handshakes: latency, ssl / Nautilus",
                invert=True,
            )
            for mode in ("psk_dhe", "psk_only"):
                add(sc, f"{mode}_over_ssl_resumed", f"resumed {mode} / ssl resumed")
                add(sc, f"{mode}_over_nautilus_full", f"resumed {mode} / Nautilus full")
            continue
        add(sc, "nautilus_over_ssl", title)
        if kind == "handshake":
            add(sc, "latency_p50_nautilus_over_ssl", f"{title}: latency, ssl / Nautilus", True)
        if kind == "stream":
            add(sc, "chacha_over_ssl", f"{title} (ChaCha20)")
            add(sc, "nautilus_over_plain", f"{title}: Nautilus / plain")
    return bars


def grouped(
    ax: Any,
    summary: dict[str, Any],
    kinds: tuple[str, ...],
    contenders: tuple[str, ...],
    ylabel: str,
    title: str,
    *,
    log: bool = False,
    values: bool = False,
) -> None:
    """Grouped bars of the medians (with the range as error bars) for some scenarios.

    ``log``: a logarithmic axis; ``values``: each median written above its bar.
    """
    scenarios = [sc for sc in summary["scenarios"] if sc["kind"] in kinds]
    present = [c for c in contenders if any(c in sc["contenders"] for sc in scenarios)]
    if not scenarios or not present:
        ax.set_visible(False)
        return
    # Each scenario's bars are centred on its label, among the contenders it has
    # (the handshake scenarios run two or three of the five).
    shown = [
        [c for c in present if (sc["contenders"].get(c) or {}).get("median") is not None]
        for sc in scenarios
    ]
    most = max(map(len, shown), default=0)
    if not most:  # every contender failed in every scenario of the panel
        ax.set_visible(False)
        return
    width = 0.8 / most
    for name in present:
        xs, ys, lo, hi = [], [], [], []
        for j, sc in enumerate(scenarios):
            if name not in shown[j]:
                continue
            entry = sc["contenders"][name]
            xs.append(j + (shown[j].index(name) - (len(shown[j]) - 1) / 2) * width)
            ys.append(entry["median"])
            lo.append(entry["median"] - entry["min"])
            hi.append(entry["max"] - entry["median"])
        ax.bar(
            xs,
            ys,
            width,
            yerr=[lo, hi],
            capsize=2,
            label=NAMES[name],
            color=COLORS[name],
            error_kw={"elinewidth": 0.8},
        )
        if values:
            for x, y in zip(xs, ys, strict=True):
                ax.text(x, y, f"{y:.3g}", ha="center", va="bottom", fontsize=7)
    if log:
        ax.set_yscale("log")
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([short_title(sc) for sc in scenarios], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    # Outside the axes, on the right: inside, it covered bars.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0.0)
    ax.grid(axis="y", alpha=0.3)


def render(summary: dict[str, Any], path: Path) -> str | None:
    """Draw the chart into ``path``; None on success, else why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import to_rgba
        from matplotlib.patches import Patch
    except ImportError as exc:
        return f"matplotlib is not installed ({exc}); pip install -e '.[bench]'"
    bars = ratio_bars(summary)
    fig = plt.figure(figsize=(18, max(13.0, 0.34 * len(bars) + 3.0)))
    grid = fig.add_gridspec(5, 2, width_ratios=(1.1, 1), hspace=1.1, wspace=0.3)

    ax = fig.add_subplot(grid[:, 0])
    ys = list(range(len(bars)))[::-1]
    colors = [
        to_rgba(
            NO_TARGET if b.target is None else (MET if b.target["met"] else NOT_MET),
            0.55 if b.uv else 1.0,
        )
        for b in bars
    ]
    ax.barh(ys, [b.value for b in bars], color=colors)
    for y, b in zip(ys, bars, strict=True):
        noisy = b.target is not None and b.target.get("within_noise")
        ax.text(b.value, y, f" {b.value:.2f}x" + ("*" if noisy else ""), va="center", fontsize=7)
        if b.target is not None:
            ax.plot([b.target["threshold"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
        if noisy:  # the rounds' own ratios, on both sides of the target
            ax.plot(b.target["round_ratios"], [y, y], color="black", lw=1)
    ax.axvline(1.0, color="black", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels([b.label for b in bars], fontsize=8)
    ax.set_xlabel(
        "Nautilus / the contender named (ssl unless said); higher is better; "
        "dashed: parity; black tick: target; pale: uvloop;\n"
        "*: the rounds' own ratios (thin line) fall on both sides of the target: "
        "within the run's noise"
    )
    ax.set_title("Ratios of medians", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(
        handles=[
            Patch(color=MET, label="target met"),
            Patch(color=NOT_MET, label="target not met"),
            Patch(color=NO_TARGET, label="no target"),
        ],
        fontsize=8,
        loc="lower right",
    )

    grouped(
        fig.add_subplot(grid[0, 1]),
        summary,
        ("stream", "socket"),
        ("plain", "ssl", "nautilus", "nautilus-chacha"),
        "MB/s",
        "Throughput (median, range)",
    )
    grouped(
        fig.add_subplot(grid[1, 1]),
        summary,
        ("handshake", "resume"),
        ("ssl", "nautilus", "ssl-resumed", "nautilus-psk_dhe", "nautilus-psk_only"),
        "handshakes/s",
        "Handshakes per second (resume: blocking sockets)",
    )
    grouped(
        fig.add_subplot(grid[2, 1]),
        summary,
        ("rr",),
        ("plain", "ssl", "nautilus"),
        "round trips/s",
        "256-byte request/response",
    )
    grouped(
        fig.add_subplot(grid[3, 1]),
        summary,
        ("oneway",),
        ("plain", "ssl", "nautilus"),
        "messages/s",
        "256-byte one-way messages",
    )
    mem_ax = fig.add_subplot(grid[4, 1])
    grouped(
        mem_ax,
        summary,
        ("memory",),
        ("plain", "ssl", "nautilus"),
        "KiB (log)",
        "Server memory per idle connection (lower is better; dotted: 32 KiB target)",
        log=True,
        values=True,
    )
    if mem_ax.get_visible():
        mem_ax.axhline(32, color="black", lw=1, ls=":")

    machine, git = summary["machine"], summary["git"]
    commit = (git.get("commit") or "unknown")[:10] + ("+" if git.get("dirty") else "")
    fig.suptitle(
        f"Nautilus vs Python ssl (TLS 1.3) vs plaintext, 127.0.0.1 - {machine['cpu_model']}, "
        f"{machine['cpu_count']} CPUs - {summary['date'][:10]} - commit {commit}",
        fontsize=12,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90, bbox_inches="tight")
    except OSError as exc:
        return f"cannot write {path}: {exc}"
    finally:
        plt.close(fig)
    return None


def main() -> int:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    problem = render(json.loads(source.read_text()), target)
    if problem is not None:
        print(f"no chart: {problem}", file=sys.stderr)
        return 1
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
