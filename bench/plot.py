#!/usr/bin/env python3
"""Plot p99 (and p50) latency against deliveries/s, one line per server, from a results file.

    python bench/plot.py bench/results/20261204-170543.jsonl            # writes ...jsonl.png
    python bench/plot.py bench/results/a.jsonl bench/results/b.jsonl --out ladder.png

Several files may be given (each ladder run writes its own); rate results are grouped
by server and instance count, and a step measured more than once (same server,
instances and target rate) is plotted from its latest run, so a rerun of a disturbed
step replaces it. Idle results are listed in the title.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker

COLORS = {"ours": "tab:blue", "socketio": "tab:orange"}
MARKERS = {1: "^", 2: "o", 3: "D"}


def load(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="PNG to write (default: the first file + .png)")
    args = p.parse_args(argv)
    rows = load(args.results)

    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in rows:
        if "error" in r:
            continue
        step = r.get("step") or r.get("target_deliveries_per_s") or r.get("clients")
        key = (r.get("server", r.get("target")), r.get("embedded"), r["instances"], r["mode"], step)
        if key not in latest or r["time"] >= latest[key]["time"]:
            latest[key] = r
    rows = list(latest.values())

    lines: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    idle: list[str] = []
    for r in rows:
        if "error" in r:
            continue
        server = r.get("server", r.get("target", "?"))
        if r.get("embedded"):
            server += " (embedded)"
        if r.get("mode") == "rate" and r["latency_ms"]["p99"] is not None:
            lines[(server, r["instances"])].append(r)
        elif r.get("mode") == "idle":
            kb = [s["rss_kb_per_conn"] for s in r["servers"] if s.get("url")]
            if kb:
                idle.append(
                    f"{server} x{r['instances']} idle {r['clients'] // r['instances']}/inst: "
                    f"{sum(kb) / len(kb):.1f} KB/conn"
                )

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for (server, instances), points in sorted(lines.items()):
        points.sort(key=lambda r: r["target_deliveries_per_s"])
        x = [r["deliveries_per_s"] for r in points]
        color = COLORS.get(server.split()[0])
        marker = MARKERS.get(instances, "o")
        label = f"{server} x{instances}"
        p99 = [r["latency_ms"]["p99"] for r in points]
        p50 = [r["latency_ms"]["p50"] for r in points]
        ax.plot(x, p99, marker=marker, ls="-", color=color, label=f"{label} p99")
        ax.plot(
            x, p50, marker=marker, ls="--", color=color, alpha=0.5, mfc="none", label=f"{label} p50"
        )
        for r, xi in zip(points, x, strict=True):
            if r["lost"] or r.get("disconnects"):
                ax.annotate(
                    f"lost {r['lost']}",
                    (xi, r["latency_ms"]["p99"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(4, 4),
                )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("deliveries/s achieved (messages/s x clients in the room)")
    ax.set_ylabel("send -> receive latency, ms (log)")
    clients = sorted({r["connected"] for pts in lines.values() for r in pts})
    title = f"Latency vs throughput, {', '.join(map(str, clients))} clients in one room"
    if idle:
        title += "\n" + "; ".join(idle)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = args.out or args.results[0].with_suffix(args.results[0].suffix + ".png")
    fig.savefig(out, dpi=120)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
