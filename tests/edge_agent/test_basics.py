"""Agent config, pseudonyms, session numbers and the outbox's durability."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, load_config
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_TELEMETRY, Outbox
from edge_agent.privacy import Pseudonymiser
from edge_agent.session import next_session

GOOD = """
gateway_id = "gw-1"
state_dir = "{state}"
site_key = "0123456789abcdef0123"

[site]
site_id = "s1"
units = [{{unit_id = "1-101", building = "1"}}]
sensors = [{{sensor_id = "ble-1", location = "unit", unit_id = "1-101"}}]

[ble]
source = "feed://127.0.0.1:9999"
sensors = [{{sensor_id = "ble-1", mac = "A4:C1:38:AA:00:01"}}]
"""


def test_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(GOOD.format(state=tmp_path))
    cfg = load_config(path)
    assert cfg.gateway_id == "gw-1"
    assert cfg.rules.ebike_charging.min_duration_s == 120.0
    assert "0123456789abcdef0123" not in repr(cfg)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(lambda s: s.replace("gw-1", "gw 1/#"), "gateway_id", id="bad-gateway-id"),
        pytest.param(
            lambda s: s.replace('"0123456789abcdef0123"', '"short"'), "site_key", id="short-key"
        ),
        pytest.param(
            lambda s: s + "\nheartbeat_intervall_s = 3\n", "heartbeat_intervall_s", id="typo"
        ),
        pytest.param(
            lambda s: s.replace('mac = "A4:C1:38:AA:00:01"', 'mac = "nope"'),
            "ble.sensors.0.mac",
            id="bad-mac",
        ),
        pytest.param(
            lambda s: s.replace('unit_id = "1-101"}]\n\n[ble]', 'unit_id = "9-999"}]\n\n[ble]'),
            "unknown unit_id",
            id="dangling-unit",
        ),
        pytest.param(lambda s: s.replace("[site]", "[site"), "not valid TOML", id="broken-toml"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.toml"
    path.write_text(mutate(GOOD.format(state=tmp_path)))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert "0123456789abcdef0123" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_pseudonyms_are_keyed_and_stable() -> None:
    a = Pseudonymiser(b"site-a-key-000000")
    b = Pseudonymiser(b"site-b-key-000000")
    assert a.card("3104992211") == a.card("003104992211") == a.card(" 3104992211\r\n")
    assert a.card("3104992211") != b.card("3104992211")
    assert a.card("3104992211") != a.card("3104992212")
    assert len(a.card("1")) == 32 and "3104992211" not in a.card("3104992211")
    assert "site-a-key" not in repr(a)


def test_session_increments_across_restarts(tmp_path: Path) -> None:
    assert [next_session(tmp_path) for _ in range(3)] == [1, 2, 3]


async def test_outbox_survives_reopen_and_orders_by_priority(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db")
    ob.put("t/telemetry", b"tele-1", PRIORITY_TELEMETRY)
    ob.put("t/alert", b"alert-1", PRIORITY_ALERT)
    ob.put("t/telemetry", b"tele-2", PRIORITY_TELEMETRY)
    ob.close()
    ob = Outbox(tmp_path / "outbox.db")
    rows = ob.fetch(ob.cursor(), 10)
    assert [r.payload for r in rows] == [b"alert-1", b"tele-1", b"tele-2"]
    ob.ack([rows[0].key])
    await ob.flush()
    assert ob.depth() == 2
    age = ob.oldest_age_s()
    assert age is not None and age >= 0
    ob.close()
    ob = Outbox(tmp_path / "outbox.db")
    assert [r.payload for r in ob.fetch(ob.cursor(), 10)] == [b"tele-1", b"tele-2"]
    ob.close()
