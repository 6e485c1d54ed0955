"""Settings: one frozen dataclass, read from the environment once."""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting that cannot be used; its message names the variable."""


class Secret:
    """A string that does not print itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """Everything an instance needs to know about its deployment."""

    host: str = "127.0.0.1"
    port: int = 8080
    kafka_bootstrap_servers: str | None = None
    kafka_topic: str = "chat.messages"
    kafka_partitions: int = 8
    kafka_fetch_wait_ms: int = 100
    kafka_security_protocol: str | None = None
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    kafka_ssl_ca_location: str | None = None
    redis_url: Secret | None = None
    redis_prefix: str = "chat:"
    secret_key: Secret = dataclasses.field(default_factory=lambda: Secret(secrets.token_hex(32)))
    secret_key_generated: bool = True
    instance_id: str = dataclasses.field(default_factory=lambda: default_instance_id({}))
    allowed_origins: tuple[str, ...] = ()
    log_format: str = "text"
    log_level: str = "INFO"
    history_limit: int = 1000
    send_rate: float = 5.0
    send_burst: int = 10
    frame_rate: float = 30.0
    frame_burst: int = 60
    max_connections_per_user: int = 10
    client_queue_size: int = 256
    ack_timeout: float = 5.0
    auth_timeout: float = 5.0
    presence_ttl: float = 15.0
    heartbeat: float = 20.0
    shutdown_timeout: float = 5.0

    @property
    def hosts(self) -> list[str]:
        """The addresses to listen on: HOST may list several, e.g. `0.0.0.0,::`."""
        return [h.strip() for h in self.host.split(",") if h.strip()]

    @property
    def distributed_bus(self) -> bool:
        """Whether messages travel over Kafka."""
        return self.kafka_bootstrap_servers is not None

    @property
    def distributed_history(self) -> bool:
        """Whether history, usernames and presence live in Redis."""
        return self.redis_url is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from the environment; raise SettingsError on a bad value."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def parse(name: str, default: T, convert: Callable[[str], T], check: str = "") -> T:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = convert(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a valid {check or 'value'}") from None
            return value

        def positive(name: str, default: T, convert: Callable[[str], T]) -> T:
            value = parse(name, default, convert, "number")
            if not math.isfinite(value) or value <= 0:  # type: ignore[operator, arg-type]
                raise SettingsError(f"{name}={get(name)!r} must be a number greater than 0")
            return value

        port = parse("PORT", 8080, int, "port number")
        if not 0 < port < 65536:
            raise SettingsError(f"PORT={port} must be between 1 and 65535")

        redis_url = get("REDIS_URL")
        if redis_url is not None:
            parts = urlsplit(redis_url)
            if parts.scheme not in ("redis", "rediss", "unix") or not (
                parts.hostname or parts.path
            ):
                raise SettingsError(
                    "REDIS_URL must look like redis://host:6379/0 or rediss://user:pass@host:6380"
                )
            try:
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError:
                raise SettingsError("REDIS_URL has an invalid port") from None

        bootstrap = get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap is not None:
            for server in bootstrap.split(","):
                host, sep, server_port = server.strip().rpartition(":")
                if not sep or not host or not server_port.isdigit():
                    raise SettingsError(
                        f"KAFKA_BOOTSTRAP_SERVERS={bootstrap!r} must be host:port[,host:port...]"
                    )

        topic = get("KAFKA_TOPIC") or "chat.messages"
        if len(topic) > 249 or not all(c.isalnum() or c in "._-" for c in topic):
            raise SettingsError(f"KAFKA_TOPIC={topic!r} is not a valid Kafka topic name")

        security = get("KAFKA_SECURITY_PROTOCOL")
        if security is not None:
            security = security.upper()
            if security not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
                raise SettingsError(
                    f"KAFKA_SECURITY_PROTOCOL={security!r} must be one of "
                    "PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"
                )
        mechanism = get("KAFKA_SASL_MECHANISM")
        if mechanism is not None:
            mechanism = mechanism.upper()
            if mechanism not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"):
                raise SettingsError(
                    f"KAFKA_SASL_MECHANISM={mechanism!r} must be one of "
                    "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER"
                )
        password = get("KAFKA_SASL_PASSWORD")

        log_format = (get("LOG_FORMAT") or "text").lower()
        if log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT={log_format!r} must be text or json")
        log_level = (get("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING or ERROR")

        origins = tuple(o.strip().rstrip("/") for o in (get("ALLOWED_ORIGINS") or "").split(","))
        for origin in origins:
            if origin and urlsplit(origin).scheme not in ("http", "https"):
                raise SettingsError(f"ALLOWED_ORIGINS entry {origin!r} must start with http(s)://")

        host = get("HOST") or "127.0.0.1"
        if not [h for h in host.split(",") if h.strip()]:
            raise SettingsError(f"HOST={host!r} names no address")
        ca_location = get("KAFKA_SSL_CA_LOCATION")
        if ca_location is not None and not os.access(ca_location, os.R_OK):
            raise SettingsError(f"KAFKA_SSL_CA_LOCATION={ca_location!r} is not a readable file")

        secret = get("SECRET_KEY")
        history_limit = positive("HISTORY_LIMIT", 1000, int)
        if history_limit < 1000:
            raise SettingsError("HISTORY_LIMIT must be at least 1000 (the contract keeps 1,000)")

        return cls(
            host=host,
            port=port,
            kafka_bootstrap_servers=bootstrap,
            kafka_topic=topic,
            kafka_partitions=positive("KAFKA_PARTITIONS", 8, int),
            kafka_fetch_wait_ms=positive("KAFKA_FETCH_WAIT_MS", 100, int),
            kafka_security_protocol=security,
            kafka_sasl_mechanism=mechanism,
            kafka_sasl_username=get("KAFKA_SASL_USERNAME"),
            kafka_sasl_password=Secret(password) if password else None,
            kafka_ssl_ca_location=ca_location,
            redis_url=Secret(redis_url) if redis_url else None,
            redis_prefix=get("REDIS_PREFIX") or "chat:",
            secret_key=Secret(secret) if secret else Secret(secrets.token_hex(32)),
            secret_key_generated=secret is None,
            instance_id=get("INSTANCE_ID") or default_instance_id(env),
            allowed_origins=tuple(o for o in origins if o),
            log_format=log_format,
            log_level=log_level,
            history_limit=history_limit,
            send_rate=positive("SEND_RATE", 5.0, float),
            send_burst=positive("SEND_BURST", 10, int),
            frame_rate=positive("FRAME_RATE", 30.0, float),
            frame_burst=positive("FRAME_BURST", 60, int),
            max_connections_per_user=positive("MAX_CONNECTIONS_PER_USER", 10, int),
            client_queue_size=positive("CLIENT_QUEUE_SIZE", 256, int),
            ack_timeout=positive("ACK_TIMEOUT", 5.0, float),
            auth_timeout=positive("AUTH_TIMEOUT", 5.0, float),
            presence_ttl=positive("PRESENCE_TTL", 15.0, float),
            heartbeat=positive("HEARTBEAT", 20.0, float),
            shutdown_timeout=positive("SHUTDOWN_TIMEOUT", 5.0, float),
        )


def default_instance_id(environ: Mapping[str, str]) -> str:
    """Name this instance: Fly's allocation id, else hostname-pid."""
    return environ.get("FLY_ALLOC_ID") or f"{socket.gethostname()}-{os.getpid()}"
