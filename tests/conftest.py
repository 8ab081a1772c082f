"""Shared fixtures: the real MQTT broker and the real database.

With ``TEST_MQTT_URL`` / ``TEST_DATABASE_URL`` set (CI sets both, see ``.ci/run``) the suite runs
against that Mosquitto and that PostgreSQL, and a service that does not answer fails the tests
that need it. Without them, an embedded amqtt broker runs in a subprocess and SQLite files are
used, so a laptop needs nothing installed by hand.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pytest
import sqlalchemy as sa


@dataclass(frozen=True)
class BrokerEndpoint:
    host: str
    port: int
    kind: str  # "external" (Mosquitto in CI) or "embedded" (amqtt)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[BrokerEndpoint]:
    url = os.environ.get("TEST_MQTT_URL")
    if url:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 1883
        if not wait_for_port(host, port, timeout=5):
            pytest.fail(f"TEST_MQTT_URL={url} is set but no broker answers there")
        yield BrokerEndpoint(host, port, "external")
        return
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_for_port("127.0.0.1", port):
            pytest.fail("embedded amqtt broker did not start")
        yield BrokerEndpoint("127.0.0.1", port, "embedded")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database for one test (PostgreSQL in CI, SQLite otherwise)."""
    base = os.environ.get("TEST_DATABASE_URL")
    if not base:
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"TEST_DATABASE_URL={base} is set but the database does not answer: {exc}")
    try:
        yield sa.engine.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
