"""The agent loads a device stack only when a device of that kind is configured.

pymodbus, the BLE stack (bleak and the project's BTHome decoder; ``cryptography`` only for a
sensor with a bindkey) and pyserial are several MiB resident; a gateway without such devices
must not carry them (issue 4's memory goal, docs/benchmarks.md). bthome-ble with habluetooth and
the D-Bus libraries (13 MiB) is a development dependency only: the agent never loads it. The agent runs as a real process through ``edge-agent run``
against the real broker; once it has sent a heartbeat it reports which modules it has loaded.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from contract import topics
from tests.conftest import BrokerEndpoint, free_port
from tests.edge_agent.control_helpers import base_config, gateway_id, listening, modbus_section

# The real `edge-agent run` entry point, plus a SIGUSR1 handler that writes sys.modules.
CHILD = """
import signal, sys
from pathlib import Path
out = Path(sys.argv[2])
def dump(*_):
    out.write_text("\\n".join(sorted(sys.modules)))
signal.signal(signal.SIGUSR1, dump)
from edge_agent.cli import main
main(["run", "--config", sys.argv[1]])
"""

STACKS = {
    "pymodbus": "pymodbus",
    "ble": "bleak",
    "bthome": "bthome_ble",
    "habluetooth": "habluetooth",
    "cryptography": "cryptography",
    "dbus": "dbus_fast",
    "pyserial": "serial",
    "scan tools": "edge_agent.scan_cli",
}


async def loaded_modules(tmp_path: Path, broker: BrokerEndpoint, **devices: Any) -> set[str]:
    gw = gateway_id()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tomli_w.dumps(base_config(gw, tmp_path / "state", broker, **devices)))
    out = tmp_path / "modules.txt"
    async with listening(broker, gw) as up:
        with (tmp_path / "agent.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD, str(cfg), str(out), stdout=log, stderr=log
            )
            try:
                await up.wait(topics.Up.HEARTBEAT, timeout=60)  # drivers are built by now
                proc.send_signal(signal.SIGUSR1)
                async with asyncio.timeout(30):
                    while not out.exists():
                        await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    return set(out.read_text().split())


def stacks_in(modules: set[str]) -> set[str]:
    return {name for name, module in STACKS.items() if module in modules}


async def test_an_agent_without_modbus_ble_or_serial_devices_loads_none_of_their_stacks(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    modules = await loaded_modules(tmp_path, mqtt_broker)
    assert "edge_agent.agent" in modules and "aiomqtt" in modules  # it really ran
    assert stacks_in(modules) == set()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("modbus", {"pymodbus", "pyserial"}),  # pymodbus imports pyserial itself
        ("ble", {"ble"}),  # sensors in clear, adverts from the feed
        ("ble-encrypted", {"ble", "cryptography"}),  # a bindkey: AES-CCM
        ("serial", {"pyserial"}),
    ],
)
async def test_each_stack_is_loaded_when_its_devices_are_configured(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, kind: str, expected: set[str]
) -> None:
    # Nothing answers on these addresses: the drivers are built, then fail and retry.
    sensor: dict[str, str] = {"sensor_id": "ble-1", "mac": "A4:C1:38:AA:00:01"}
    keyed = {**sensor, "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}
    feed = f"feed://127.0.0.1:{free_port()}"
    options: dict[str, dict[str, Any]] = {
        "modbus": {"modbus_tcp": modbus_section(free_port(), interval_s=1.0)},
        "ble": {"ble": {"source": feed, "sensors": [sensor]}},
        "ble-encrypted": {"ble": {"source": feed, "sensors": [keyed]}},
        "serial": {"serial_readers": [{"reader_id": "r-1", "url": str(tmp_path / "no-such-tty")}]},
    }
    modules = await loaded_modules(tmp_path, mqtt_broker, **options[kind])
    assert stacks_in(modules) == expected
