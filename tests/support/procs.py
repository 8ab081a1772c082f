"""Start the system's own programs as child processes, the way they run in production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


@contextmanager
def child(
    args: list[str], log_path: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m <args>``; on exit SIGTERM it (SIGKILL after 10 s)."""
    full_env = {**os.environ, **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    try:
        yield proc
    finally:
        stop(proc, 10.0)


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM a child still running, SIGKILL it after ``grace_s``, and reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_until(
    probe: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as exc:
            last_exc = exc
            result = None
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


E2E_ADMIN_PASSWORD = "e2e-pass-123"


def fleet_serve_env(
    *, database_url: str, mqtt_url: str, http_port: int, webhook_url: str, webhook_secret: str
) -> dict[str, str]:
    """The environment of a ``fleet serve`` child in the end-to-end tests: its database and
    broker, an HTTP port, one webhook, and the admin password ``E2E_ADMIN_PASSWORD``."""
    return {
        "FLEET_DATABASE_URL": database_url,
        "FLEET_MQTT_URL": mqtt_url,
        "FLEET_HTTP_PORT": str(http_port),
        "FLEET_SECRET_KEY": "e2e-secret-key-that-is-long-enough-0123456789",
        "FLEET_ADMIN_PASSWORD": E2E_ADMIN_PASSWORD,
        "FLEET_WEBHOOK_URLS": webhook_url,
        "FLEET_WEBHOOK_SECRET": webhook_secret,
        "FLEET_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
    }
