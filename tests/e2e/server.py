"""A real `python app.py` process for the browser tests, restartable on its port."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET = "e2e-fixed-test-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ChatServer:
    """One `python app.py` process; stop() and start() again reuse the same port."""

    def __init__(self, port: int, env: Mapping[str, str], log_path: Path) -> None:
        self.port = port
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "app.py"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        self.wait_healthy(deadline_s)

    def wait_healthy(self, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=0.5) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)  # polling an HTTP endpoint; there is no event to wait on
        self.stop()
        pytest.fail(f"/healthz did not answer 200 within {deadline_s}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait; returns the exit status (None if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
                pytest.fail(f"server ignored SIGTERM for {timeout}s:\n{self.log_tail()}")
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def register(self, username: str) -> dict[str, str]:
        """POST /api/clients directly, for tests that only need a token."""
        return register_client(self.url, username)


def register_client(base_url: str, username: str) -> dict[str, str]:
    """POST /api/clients on the server at `base_url`; the new client and its token."""
    request = urllib.request.Request(
        f"{base_url}/api/clients",
        data=json.dumps({"username": username}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201
        return json.loads(response.read())


def backend_env(bootstrap: str, redis_url: str, prefix: str) -> dict[str, str]:
    """Kafka and Redis settings with a topic and key prefix of their own, `prefix-<tag>`."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC": name,
        "KAFKA_FETCH_WAIT_MS": "10",
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"{name}:",
    }
