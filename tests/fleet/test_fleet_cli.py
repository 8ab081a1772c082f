"""``fleet-manager`` as an operator runs it: a separate process configured by environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.fleet.helpers import SECRET

REPO = Path(__file__).resolve().parents[2]


def fleet_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return env | values


def test_serve_refuses_to_start_without_secret(tmp_path: Path) -> None:
    db = tmp_path / "fleet.db"
    result = subprocess.run(
        [sys.executable, "-m", "fleet", "serve", "--port", str(free_port())],
        cwd=REPO,
        env=fleet_env(FLEET_DATABASE_URL=f"sqlite:///{db}"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "FLEET_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not db.exists()


def test_serve_answers_and_stops_cleanly_on_sigterm(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    port = free_port()
    log = tmp_path / "fleet.log"
    env = fleet_env(
        FLEET_DATABASE_URL=database_url,
        FLEET_MQTT_URL=mqtt_broker.url,
        FLEET_SECRET_KEY=SECRET,
        FLEET_HTTP_PORT=str(port),
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet", "serve"], cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        assert wait_for_port("127.0.0.1", port, timeout=30), log.read_text()
        deadline = time.monotonic() + 15
        while True:
            r = httpx.get(f"http://127.0.0.1:{port}/api/health")
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.json()["status"] == "ok", r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    subprocess.run(
        [sys.executable, "-m", "fleet", "migrate"],
        cwd=REPO,
        env=fleet_env(FLEET_DATABASE_URL=url),
        check=True,
        timeout=60,
        capture_output=True,
    )
    engine = sa.create_engine(url)
    try:
        assert "alerts" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
