"""Fleet manager configuration, read from ``FLEET_*`` environment variables.

Parsed once at the edge of the program (the CLI or the demo builds a :class:`Settings` and hands
it to :func:`fleet.app.create_app`); nothing below reads the environment again. Outside demo
mode the manager refuses to start with a missing or well-known secret, because the secret signs
login tokens and webhook payloads: a default one would let anyone forge both.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "FLEET_"

# Secrets that appear in examples and templates; accepting them outside demo mode would make a
# forgotten configuration step look like a working installation.
_WELL_KNOWN_SECRETS = frozenset(
    {"", "changeme", "change-me", "changethis", "secret", "secret-key", "demo", "admin"}
)
MIN_SECRET_LENGTH = 32  # HS256 wants a key at least as long as its hash (RFC 7518 3.2)
DEMO_SECRET_KEY = "demo-only-insecure-secret-key-never-use-in-production"  # noqa: S105 - used only with FLEET_DEMO=1
DEMO_ADMIN_PASSWORD = "admin"  # noqa: S105 - used only with FLEET_DEMO=1


class DatabaseSettings(BaseSettings):
    """Just the database, for commands that need nothing else (``fleet-manager migrate``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str = "sqlite:///./fleet.db"


class RegisterSettings(DatabaseSettings):
    """The database and how the register's times are shown (``fleet-manager import``)."""

    display_timezone: str = "Asia/Shanghai"


class Settings(RegisterSettings):
    """Everything the fleet manager needs to know about its surroundings."""

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_client_id: str | None = Field(
        default=None,
        description=(
            "Fixed MQTT client id. When set, ingest uses a persistent session (clean_session "
            "off) so QoS 1 messages sent while the manager is down are delivered on reconnect. "
            "Each ingest process needs its own id."
        ),
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        description="Subscribe through $share/<group>/ so several ingest workers split the load.",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    secret_key: SecretStr | None = None
    webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "Key for the X-Signature HMAC of webhook bodies; required outside demo mode when "
            "webhook URLs are set. Never the token key: a receiver must not be able to mint "
            "login tokens."
        ),
    )
    token_ttl_minutes: int = Field(default=60, ge=1)
    demo: bool = False
    admin_username: str = Field(default="admin", min_length=1)
    admin_password: SecretStr | None = None
    webhook_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    gateway_offline_after_s: float = Field(
        default=75.0,
        gt=0,
        description="A gateway with no message for this long is offline (a half-open "
        "connection the broker has not noticed): two missed 30 s heartbeats plus 15 s for a "
        "late one, so a dead gateway shows offline within 90 s of its last heartbeat.",
    )
    # Ingest and health at scale (docs/fleet.md, "Ingest" and "Health").
    ingest_enabled: bool = Field(
        default=True,
        description="Run MQTT ingest and the health monitor inside `fleet-manager serve`; "
        "false when dedicated `fleet-manager ingest` workers do it.",
    )
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="MQTT version ingest speaks: auto tries 5 and falls back to 3.1.1 (amqtt).",
    )
    ingest_batch_max: int = Field(default=500, ge=1, le=10_000)
    ingest_batch_ms: float = Field(
        default=50.0, gt=0, description="Longest wait to fill a batch after its first message."
    )
    ingest_connections: int = Field(
        default=8,
        ge=1,
        le=64,
        description="MQTT connections per ingest worker when subscribing through "
        "FLEET_MQTT_SHARED_GROUP (each adds the broker's in-flight window); 1 otherwise.",
    )
    health_grace_s: float | None = Field(
        default=None,
        ge=0,
        description="After ingest (re)connects, no gateway is timed out for this long "
        "(default FLEET_GATEWAY_OFFLINE_AFTER_S): a restart of the fleet manager is not an "
        "outage of every gateway.",
    )
    health_sweep_s: float = Field(default=5.0, gt=0)
    dedupe_retention_days: float = Field(default=14.0, gt=0)
    heartbeat_retention_days: float = Field(
        default=7.0,
        gt=0,
        description="How long each gateway's heartbeat history (the gateway page's charts) "
        "is kept.",
    )
    ingest_stats_interval_s: float = Field(default=5.0, gt=0)
    public_url: str | None = None
    forward_poll_s: float = Field(default=5.0, gt=0)
    forward_backoff_initial_s: float = Field(default=2.0, gt=0)
    forward_backoff_max_s: float = Field(default=300.0, gt=0)
    forward_max_attempts: int = Field(
        default=100,
        ge=1,
        description="Attempts before a delivery is marked failed (about 8 h at the 5 min cap).",
    )
    forward_timeout_s: float = Field(default=10.0, gt=0)
    # Alert lifecycle, reminders, email and reports (docs/alerts.md).
    smtp_host: str | None = None
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_from: str = "fleet@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    smtp_tls: bool = False
    dispatch_due_hours: float = Field(
        default=48.0, gt=0, description="Default time for the offline check (线下核查)."
    )
    rectify_days: float = Field(
        default=5.0, gt=0, description="Default rectification deadline (限期整改, seed 000)."
    )
    recheck_days: float = Field(
        default=3.0, gt=0, description="Extension after a failed re-check (seed 000)."
    )
    escalate_after_min: float = Field(
        default=30.0, gt=0, description="An unacknowledged high-severity alert escalates after."
    )
    reminder_repeat_h: float = Field(default=24.0, gt=0)
    lifecycle_tick_s: float = Field(default=60.0, gt=0)
    photo_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    report_hour: int = Field(
        default=9, ge=0, le=23, description="Local hour of the 14th/29th report run."
    )
    # Provisioning and desired config (docs/provisioning.md).
    broker_auth: Literal["dynsec", "embedded", "none"] = Field(
        default="none",
        description=(
            "How gateways are admitted by the broker: 'dynsec' (Mosquitto dynamic security, one "
            "client and role per gateway, managed over $CONTROL/dynamic-security/v1), "
            "'embedded' (the embedded amqtt broker reads FLEET_BROKER_AUTH_FILE) or 'none' "
            "(an open broker: demo and tests only)."
        ),
    )
    broker_admin_username: str | None = Field(
        default=None,
        description="dynsec: the broker client with dynamic-security rights "
        "(default: the user in FLEET_MQTT_URL)",
    )
    broker_admin_password: SecretStr | None = None
    broker_auth_file: Path | None = Field(
        default=None,
        description="embedded: the credentials file the fleet manager writes and the embedded "
        "broker (fleet-manager broker --auth-file) reads",
    )
    gateway_mqtt_url: str | None = Field(
        default=None,
        description="The broker address handed to gateways at enrollment "
        "(default: FLEET_MQTT_URL without its credentials)",
    )
    gateway_mqtt_ca_file: Path | None = Field(
        default=None, description="CA certificate (PEM) handed to gateways for mqtts"
    )
    enrollment_code_ttl_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    enroll_rate_limit: int = Field(
        default=10, ge=1, description="POST /api/enroll attempts per client IP per minute"
    )
    config_publish_retry_s: float = Field(
        default=30.0, gt=0, description="retry interval for desired configs not yet published"
    )
    broker_control_timeout_s: float = Field(default=10.0, gt=0)
    config_sweep_s: float = Field(
        default=3600.0,
        gt=0,
        description="re-assemble every gateway's desired config this often, for register "
        "changes made outside this process (changes made here are picked up at once)",
    )

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        """Accept ``FLEET_WEBHOOK_URLS=https://a,https://b`` as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_urls")
    @classmethod
    def _http_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"FLEET_WEBHOOK_URLS: not an http(s) URL: {url!r}")
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"FLEET_MQTT_URL must look like mqtt://host:port, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _embedded_speaks_311(cls, data: Any) -> Any:
        """The embedded broker (amqtt) never answers an MQTT 5 CONNECT that carries a user name,
        so with FLEET_BROKER_AUTH=embedded ingest must not probe for MQTT 5."""
        if isinstance(data, dict) and data.get("broker_auth") == "embedded":
            data.setdefault("mqtt_protocol", "3.1.1")
        return data

    @model_validator(mode="after")
    def _broker_auth_complete(self) -> Self:
        if self.broker_auth == "embedded" and self.broker_auth_file is None:
            raise ValueError(
                f"{ENV_PREFIX}BROKER_AUTH=embedded needs {ENV_PREFIX}BROKER_AUTH_FILE (the file "
                "the embedded broker reads its gateway credentials from)"
            )
        if self.broker_auth == "embedded" and not (self.mqtt_username and self.mqtt_password):
            raise ValueError(
                f"{ENV_PREFIX}BROKER_AUTH=embedded needs a user and password in "
                f"{ENV_PREFIX}MQTT_URL (mqtt://user:password@host:port): the fleet manager's "
                "own login on the embedded broker"
            )
        if self.broker_auth == "dynsec" and not all(self.broker_admin):
            raise ValueError(
                f"{ENV_PREFIX}BROKER_AUTH=dynsec needs the dynamic-security admin: "
                f"{ENV_PREFIX}BROKER_ADMIN_USERNAME and {ENV_PREFIX}BROKER_ADMIN_PASSWORD, or a "
                f"user and password in {ENV_PREFIX}MQTT_URL"
            )
        if self.gateway_mqtt_url is not None:
            parts = urlsplit(self.gateway_mqtt_url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(
                    f"{ENV_PREFIX}GATEWAY_MQTT_URL must look like mqtt://host:port, "
                    f"got {self.gateway_mqtt_url!r}"
                )
        return self

    @model_validator(mode="after")
    def _no_default_secrets(self) -> Self:
        if self.demo:
            return self
        secret = self.secret_key.get_secret_value() if self.secret_key else ""
        if secret.lower() in _WELL_KNOWN_SECRETS or len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"{ENV_PREFIX}SECRET_KEY must be set to a random string of at least "
                f"{MIN_SECRET_LENGTH} characters outside demo mode "
                f'(e.g. python -c "import secrets; print(secrets.token_urlsafe(32))")'
            )
        if self.webhook_urls:
            hook = self.webhook_secret.get_secret_value() if self.webhook_secret else ""
            if len(hook) < 16 or hook == secret:
                raise ValueError(
                    f"{ENV_PREFIX}WEBHOOK_SECRET must be set (at least 16 characters, not the same "
                    f"as {ENV_PREFIX}SECRET_KEY) when {ENV_PREFIX}WEBHOOK_URLS is set: receivers "
                    "verify the X-Signature header with it"
                )
        if self.admin_password is not None and (
            self.admin_password.get_secret_value() == DEMO_ADMIN_PASSWORD
        ):
            raise ValueError(
                f"{ENV_PREFIX}ADMIN_PASSWORD must not be {DEMO_ADMIN_PASSWORD!r} outside demo mode"
            )
        return self

    # Derived values: computed here so every consumer agrees on them.

    @property
    def signing_key(self) -> bytes:
        """Key for login tokens (JWT HS256)."""
        if self.secret_key is not None and self.secret_key.get_secret_value():
            return self.secret_key.get_secret_value().encode()
        return DEMO_SECRET_KEY.encode()

    @property
    def webhook_key(self) -> bytes:
        """Key for the webhook body HMAC."""
        if self.webhook_secret is not None and self.webhook_secret.get_secret_value():
            return self.webhook_secret.get_secret_value().encode()
        # Demo mode only (validated above): a key derived from, but never equal to, the token key.
        return hmac.new(self.signing_key, b"webhook-signature", hashlib.sha256).hexdigest().encode()

    @property
    def effective_admin_password(self) -> str | None:
        """The admin password to create the admin with, or None to create no admin."""
        if self.admin_password is not None:
            return self.admin_password.get_secret_value()
        return DEMO_ADMIN_PASSWORD if self.demo else None

    @property
    def base_url(self) -> str:
        """Where people reach the web pages (links in forwarded alerts point here)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.http_host}:{self.http_port}"

    @property
    def mqtt_tls(self) -> bool:
        return urlsplit(self.mqtt_url).scheme == "mqtts"

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        return urlsplit(self.mqtt_url).port or (8883 if self.mqtt_tls else 1883)

    @property
    def mqtt_username(self) -> str | None:
        user = urlsplit(self.mqtt_url).username
        return unquote(user) if user else None

    @property
    def mqtt_password(self) -> str | None:
        password = urlsplit(self.mqtt_url).password
        return unquote(password) if password is not None else None

    @property
    def mqtt_display(self) -> str:
        """The broker address for logs, without credentials."""
        scheme = "mqtts" if self.mqtt_tls else "mqtt"
        return f"{scheme}://{self.mqtt_host}:{self.mqtt_port}"

    @property
    def gateway_broker_url(self) -> str:
        """The broker address gateways are given at enrollment (never with credentials)."""
        if self.gateway_mqtt_url:
            parts = urlsplit(self.gateway_mqtt_url)
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
            return f"{parts.scheme}://{parts.hostname}:{port}"
        return self.mqtt_display

    @property
    def broker_admin(self) -> tuple[str | None, str | None]:
        """(username, password) of the dynsec admin client."""
        if self.broker_admin_username is not None:
            password = self.broker_admin_password
            return self.broker_admin_username, password.get_secret_value() if password else None
        return self.mqtt_username, self.mqtt_password
