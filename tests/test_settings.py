"""Settings are read from the environment once, typed, and refused clearly when wrong."""

from __future__ import annotations

import pytest

from chat.settings import Secret, Settings, SettingsError


def test_defaults_are_the_contracts() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.kafka_bootstrap_servers is None and settings.redis_url is None
    assert settings.kafka_topic == "chat.messages"
    assert settings.secret_key_generated is True
    assert settings.history_limit == 1000
    assert not settings.distributed_bus and not settings.distributed_history


def test_instance_id_prefers_fly_alloc_id() -> None:
    assert Settings.from_env({"FLY_ALLOC_ID": "abc123"}).instance_id == "abc123"
    assert Settings.from_env({"FLY_ALLOC_ID": "abc", "INSTANCE_ID": "mine"}).instance_id == "mine"
    assert "-" in Settings.from_env({}).instance_id


def test_distributed_settings_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9093",
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "scram-sha-256",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
            "REDIS_URL": "rediss://default:pw@redis.example:6380/0",
            "SECRET_KEY": "s3cret",
            "HOST": "0.0.0.0,::",
            "ALLOWED_ORIGINS": "https://a.example, https://b.example/",
        }
    )
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka_sasl_password == Secret("p")
    assert settings.secret_key_generated is False
    assert settings.hosts == ["0.0.0.0", "::"]
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_secrets_do_not_print() -> None:
    settings = Settings.from_env({"SECRET_KEY": "hunter2", "REDIS_URL": "redis://:pw@h:1/0"})
    assert "hunter2" not in repr(settings) and "pw@" not in repr(settings)
    assert str(settings.secret_key) == "**********"


@pytest.mark.parametrize(
    "env",
    [
        {"PORT": "http"},
        {"PORT": "0"},
        {"PORT": "70000"},
        {"REDIS_URL": "http://localhost"},
        {"REDIS_URL": "redis://h:port/0"},
        {"KAFKA_BOOTSTRAP_SERVERS": "localhost"},
        {"KAFKA_TOPIC": "bad topic"},
        {"KAFKA_SECURITY_PROTOCOL": "TLS"},
        {"KAFKA_SASL_MECHANISM": "MAGIC"},
        {"SEND_RATE": "-1"},
        {"SEND_RATE": "nan"},
        {"ACK_TIMEOUT": "inf"},
        {"SEND_BURST": "1.5"},
        {"HISTORY_LIMIT": "10"},
        {"LOG_FORMAT": "xml"},
        {"LOG_LEVEL": "LOUD"},
        {"ALLOWED_ORIGINS": "*"},
        {"HOST": " , "},
        {"KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"},
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert next(iter(env)) in str(caught.value)
    assert "\n" not in str(caught.value)
