"""The uplink over TLS (``mqtts://``) against a private Mosquitto whose gateway listener speaks
only TLS, with a server certificate from a CA made here.

- ``edge-agent run`` configured with ``mqtts://`` and ``mqtt.ca_file`` (as enrollment writes it)
  is born and reports over TLS; the same port refuses plain MQTT, so nothing went around TLS.
- A gateway given the wrong CA refuses the broker's certificate: the uplink says so in words an
  installer can act on, counts it, and keeps the message in its outbox; with the right CA the same
  message arrives. ``edge-agent doctor``'s broker check names the TLS failure.

With ``TEST_MQTT_URL`` set (CI) a missing ``mosquitto`` binary fails these tests
(tests/support/mosquitto.py); without it they are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import tomli_w

from contract.messages import Birth, CardSwipeEvent, encode
from contract.topics import Up, up
from edge_agent.config import MqttConfig
from edge_agent.doctor import check_broker
from edge_agent.outbox import PRIORITY_EVENT, Outbox
from edge_agent.session import MessageFactory
from edge_agent.uplink import Uplink
from tests.edge_agent.control_helpers import base_config, gateway_id
from tests.support.mosquitto import PrivateMosquitto
from tests.support.tls import Ca, make_ca, server_cert

T0 = dt.datetime(2026, 3, 1, 20, 0, tzinfo=dt.UTC)


@dataclass(frozen=True)
class TlsBroker:
    broker: PrivateMosquitto
    ca: Ca  # signed the broker's certificate
    other_ca: Ca  # a CA the broker has nothing to do with

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.broker.port}"


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    ca = make_ca(tmp_path, "test ca")
    other = make_ca(tmp_path, "other ca")
    certfile, keyfile = server_cert(tmp_path, ca)
    # The listener PrivateMosquitto declares takes these: it speaks TLS only.
    broker = PrivateMosquitto(
        tmp_path / "broker", extra_conf=f"certfile {certfile}\nkeyfile {keyfile}\n"
    )  # fails under CI without the mosquitto binary, skips otherwise
    with broker:
        yield TlsBroker(broker, ca, other)


@contextlib.asynccontextmanager
async def _observer(tls: TlsBroker, gw: str) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
    """(topic, payload) of everything the gateway publishes, through the TLS listener."""
    seen: list[tuple[str, dict[str, Any]]] = []
    context = ssl.create_default_context(cafile=str(tls.ca.pem))
    async with aiomqtt.Client("127.0.0.1", tls.broker.port, tls_context=context) as client:
        await client.subscribe(f"edge/v1/{gw}/up/#", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                seen.append((str(m.topic), json.loads(m.payload)))

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _until(probe: Any, what: str, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.05)
    assert probe(), what


def _of(seen: list[tuple[str, dict[str, Any]]], kind: Up) -> list[dict[str, Any]]:
    return [body for topic, body in seen if topic.endswith(f"/up/{kind}")]


async def test_edge_agent_run_reports_over_tls_and_the_port_refuses_plain_mqtt(
    tmp_path: Path, tls_broker: TlsBroker
) -> None:
    gw = gateway_id()
    config = base_config(gw, tmp_path / "state", tls_broker.url)
    config["mqtt"] = {"url": tls_broker.url, "ca_file": str(tls_broker.ca.pem)}
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tomli_w.dumps(config))

    # The gateway's port speaks TLS only: a plain MQTT client does not get in.
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", tls_broker.broker.port, timeout=5):
            pass

    async with _observer(tls_broker, gw) as seen:
        with (tmp_path / "agent.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                await _until(lambda: _of(seen, Up.HEARTBEAT), "a heartbeat over TLS", 60)
                proc.send_signal(signal.SIGTERM)
                await _until(lambda: _of(seen, Up.DEATH), "the death over TLS")
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    birth = _of(seen, Up.BIRTH)
    assert len(birth) == 1 and birth[0]["gw"] == gw and birth[0]["site_id"] == "s1"
    assert _of(seen, Up.HEARTBEAT)[0]["session"] == birth[0]["session"]
    assert _of(seen, Up.DEATH)[-1]["reason"] == "clean_stop"
    agent_log = (tmp_path / "agent.log").read_text()
    assert f"connected to 127.0.0.1:{tls_broker.broker.port} (MQTT 5)" in agent_log
    assert "TLS with the broker" not in agent_log


# paho-mqtt (2.x, Client._ssl_wrap_socket) does not close the socket when the TLS handshake
# fails; it is closed when the exception is dropped, with a ResourceWarning this ignores.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
async def test_a_wrong_ca_is_refused_counted_and_nothing_leaves_the_outbox(
    tmp_path: Path, tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.uplink")
    gw = gateway_id()
    factory = MessageFactory(gw, session=3)
    outbox = Outbox(tmp_path / "outbox.db", reserve_bytes=0)
    swipe = factory.make(
        CardSwipeEvent, reader_id="r-1", card="ab" * 16, unit_id="1-101", event_ts=T0
    )
    await outbox.put(up(gw, Up.CARD), encode(swipe), PRIORITY_EVENT, msg_id=swipe.id)
    wrong = MqttConfig(url=tls_broker.url, ca_file=tls_broker.other_ca.pem)

    def birth() -> Birth:
        return factory.make(Birth, agent_version="test", started_at=T0, site_id="s1")

    async with _observer(tls_broker, gw) as seen:
        uplink = Uplink(config=wrong, outbox=outbox, factory=factory, birth=birth)
        task = asyncio.create_task(uplink.run())
        try:
            await _until(lambda: uplink.counters["tls_failures"] >= 2, "two refused attempts")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Refused, counted, said in words an installer can act on; nothing went out or was lost.
        assert uplink.counters["connects"] == 0
        assert uplink.counters["connect_failures"] == uplink.counters["tls_failures"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings, "the refusal was not logged"
        assert all("TLS with the broker 127.0.0.1" in w for w in warnings), warnings
        assert "CERTIFICATE_VERIFY_FAILED" in warnings[0] and "mqtt.ca_file" in warnings[0]
        # A TLS refusal is not taken for a broker without MQTT 5 (no 3.1.1 retry).
        assert not any("MQTT 3.1.1" in r.getMessage() for r in caplog.records)
        assert outbox.depth() == 1
        assert seen == []

        # The installer's check says the same.
        check = await check_broker(wrong, gw, timeout_s=10.0)
        assert (check.result, check.todo) == ("fail", "broker_tls"), check
        assert "CERTIFICATE_VERIFY_FAILED" in check.detail

        # With the right CA the very same message arrives and leaves the outbox.
        right = wrong.model_copy(update={"ca_file": tls_broker.ca.pem})
        uplink = Uplink(config=right, outbox=outbox, factory=factory, birth=birth)
        task = asyncio.create_task(uplink.run())
        try:
            await _until(lambda: any(b["id"] == swipe.id for b in _of(seen, Up.CARD)), "the swipe")
            await _until(lambda: outbox.depth() == 0, "the outbox to empty")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert uplink.counters["tls_failures"] == 0 and uplink.counters["connects"] == 1
        assert [b["id"] for b in _of(seen, Up.CARD)] == [swipe.id]
    outbox.close()
