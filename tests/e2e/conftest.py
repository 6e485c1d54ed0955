"""Fixtures for the browser tests: Debian's Chromium and a real `python app.py` process."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from .server import TEST_SECRET, ChatServer, backend_env, free_port

CHROMIUM = Path("/usr/bin/chromium")
# Settings that would switch the server to distributed backends; the embedded ones
# are the default for these tests unless CHAT_E2E_DISTRIBUTED=1 asks otherwise.
BACKEND_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "KAFKA_TOPIC", "REDIS_PREFIX")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here drives Chromium."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": str(CHROMIUM),
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture
def server_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server's environment: embedded backends, unless CHAT_E2E_DISTRIBUTED=1."""
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARS}
    env.update(HOST="127.0.0.1", SECRET_KEY=TEST_SECRET, PYTHONUNBUFFERED="1")
    if os.environ.get("CHAT_E2E_DISTRIBUTED") == "1":
        env.update(distributed_vars(request))
    return env


def distributed_vars(request: pytest.FixtureRequest) -> dict[str, str]:
    """Kafka and Redis settings: from a `distributed_env` fixture if the suite has one,
    else from its `broker` and `redis_server` fixtures, with a topic and prefix of our own."""
    try:
        extra = request.getfixturevalue("distributed_env")
    except pytest.FixtureLookupError:
        broker = request.getfixturevalue("broker")
        redis = request.getfixturevalue("redis_server")
        extra = backend_env(broker.bootstrap, redis.url, "e2e")
    assert isinstance(extra, Mapping), f"distributed_env gave {type(extra).__name__}, not a mapping"
    return {k: str(v) for k, v in extra.items()}


@pytest.fixture
def server(server_env: dict[str, str], tmp_path: Path) -> Iterator[ChatServer]:
    """A fresh server per test, so every test starts with empty rooms."""
    port = free_port()
    chat = ChatServer(port, {**server_env, "PORT": str(port)}, tmp_path / "server.log")
    chat.start()
    try:
        yield chat
    finally:
        chat.stop()


@pytest.fixture
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1100, "height": 800}}
