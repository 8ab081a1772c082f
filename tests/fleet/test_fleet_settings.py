"""Configuration: environment variables, and refusing to run with default secrets."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from fleet.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("secret", [None, "", "changeme", "secret", "short"])
def test_refuses_missing_or_default_secret_outside_demo(secret: str | None) -> None:
    with pytest.raises(ValidationError, match="FLEET_SECRET_KEY"):
        Settings(secret_key=secret)


def test_refuses_admin_admin_outside_demo() -> None:
    with pytest.raises(ValidationError, match="FLEET_ADMIN_PASSWORD"):
        Settings(secret_key="x" * 32, admin_password="admin")


def test_demo_runs_without_secrets() -> None:
    settings = Settings(demo=True)
    assert settings.effective_admin_password == "admin"
    assert settings.signing_key


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("FLEET_WEBHOOK_URLS", "https://a.example/hook, http://b.example/x?key=1")
    monkeypatch.setenv("FLEET_MQTT_URL", "mqtt://fleet:p%40ss@broker.example:2883")
    monkeypatch.setenv("FLEET_HTTP_PORT", "8123")
    monkeypatch.setenv("FLEET_WEBHOOK_SECRET", "w" * 24)
    settings = Settings()
    assert settings.webhook_urls == ["https://a.example/hook", "http://b.example/x?key=1"]
    assert (settings.mqtt_host, settings.mqtt_port) == ("broker.example", 2883)
    assert (settings.mqtt_username, settings.mqtt_password) == ("fleet", "p@ss")
    assert settings.mqtt_display == "mqtt://broker.example:2883"
    assert settings.http_port == 8123
    assert settings.base_url == "http://127.0.0.1:8123"
    assert settings.effective_admin_password is None


def test_webhooks_need_their_own_secret_outside_demo() -> None:
    with pytest.raises(ValidationError, match="FLEET_WEBHOOK_SECRET"):
        Settings(secret_key="k" * 32, webhook_urls="https://a.example/hook")
    with pytest.raises(ValidationError, match="not the same"):
        Settings(
            secret_key="k" * 32, webhook_secret="k" * 32, webhook_urls="https://a.example/hook"
        )
    demo = Settings(demo=True, webhook_urls="https://a.example/hook")
    assert demo.webhook_key != demo.signing_key


def test_rejects_bad_urls() -> None:
    with pytest.raises(ValidationError, match="FLEET_MQTT_URL"):
        Settings(secret_key="k" * 32, mqtt_url="http://broker")
    with pytest.raises(ValidationError, match="FLEET_WEBHOOK_URLS"):
        Settings(secret_key="k" * 32, webhook_urls="ftp://x")
