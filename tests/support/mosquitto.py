"""A private Mosquitto for tests that must stop, start or configure the broker.

With ``TEST_MQTT_URL`` set (CI: Mosquitto is installed) a missing ``mosquitto`` binary fails the
test; without it the test is skipped with the reason, so a laptop with only Python still passes.
The broker keeps its sessions on disk (``persistence true``), so a persistent subscriber (the
fleet manager with a fixed client id) gets what was published while it was reconnecting after
a broker restart, as in production.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_port
from tests.support.procs import stop


def mosquitto_binary() -> str:
    """The ``mosquitto`` path, or fail (``TEST_MQTT_URL`` set) / skip (not set)."""
    path = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if path is None:
        reason = "this test starts its own Mosquitto and the mosquitto binary is not installed"
        if os.environ.get("TEST_MQTT_URL"):
            pytest.fail(f"{reason} (TEST_MQTT_URL is set, so Mosquitto is expected)")
        pytest.skip(reason)
    return path


class PrivateMosquitto:
    """One Mosquitto on a free port in ``workdir``; :meth:`stop` and :meth:`start` at will."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.binary = mosquitto_binary()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            # Started as root, Mosquitto would switch to user "mosquitto", who cannot write here.
            f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
            f"log_dest file {workdir}/mosquitto.log\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n" + extra_conf
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port("127.0.0.1", self.port, timeout=10):
            self.stop()
            pytest.fail(f"private mosquitto did not start: {self.log()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM (Mosquitto saves its sessions), wait until it is gone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, 10.0)

    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> PrivateMosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
