"""Gateway commands over the real broker (down/cmd -> up/cmd_result), matched by correlation
id: ping, restart_driver, rescan, upload_logs, reload_config; expired, unknown and repeated
commands; and logs that never carry secrets or raw card numbers."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w

from contract import topics
from contract.control import Command
from contract.messages import CommandResult
from edge_agent.agent import pseudonymised_site
from edge_agent.privacy import Pseudonymiser
from firmware_sim.card_reader import CardReaderSim
from firmware_sim.modbus_meters import ModbusMeterSim, constant_load
from tests.conftest import BrokerEndpoint
from tests.edge_agent.control_helpers import (
    SITE,
    Uplink,
    base_config,
    gateway_id,
    listening,
    make_agent,
    modbus_section,
    running,
)

UP = topics.Up
DOWN = topics.Down
CARD = "3104992211"
CARD2 = "0004417823"
UNREGISTERED = "2290017465"
SITE_KEY = "site-key-0123456789abcdef"


def _command(gw: str, name: str, **fields: Any) -> tuple[str, bytes]:
    cid = fields.pop("correlation_id", uuid.uuid4().hex)
    cmd = Command(gw=gw, correlation_id=cid, command=name, issued_at=datetime.now(UTC), **fields)  # type: ignore[arg-type]
    return cid, cmd.model_dump_json().encode()


async def _ask(up: Uplink, payload: bytes, cid: str, nth: int = 1) -> CommandResult:
    await up.publish(DOWN.COMMAND, payload)
    await up.wait(
        UP.CMD_RESULT,
        lambda m: len([r for r in up.of(UP.CMD_RESULT) if r.correlation_id == cid]) >= nth,
    )
    result: CommandResult = [r for r in up.of(UP.CMD_RESULT) if r.correlation_id == cid][nth - 1]
    return result


async def test_commands_are_answered_by_correlation_id(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)  # as `edge-agent run` sets it
    gw = gateway_id()
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        base = base_config(gw, tmp_path / "state", mqtt_broker, modbus_tcp=modbus_section(sim.port))
        agent = make_agent(base)
        driver = f"driver:modbus-tcp:127.0.0.1:{sim.port}"
        async with running(agent):
            await up.wait(UP.BIRTH)

            cid, payload = _command(gw, "ping")
            pong = await _ask(up, payload, cid)
            assert (pong.ok, pong.command, pong.detail) == (True, "ping", "pong")
            assert pong.data["session"] == agent.session

            # restart a driver by one of its devices; the same command id again is not executed
            cid, payload = _command(gw, "restart_driver", args={"device": "m-1-102"})
            first = await _ask(up, payload, cid)
            assert first.ok and first.detail == f"{driver.replace(':', ' ', 1)} restarted"
            assert agent.supervisor.stats()[driver].restarts == 1
            again = await _ask(up, payload, cid, nth=2)
            assert (again.ok, again.detail) == (True, first.detail)
            assert agent.supervisor.stats()[driver].restarts == 1
            assert agent.commands.counters["duplicates"] == 1

            cid, payload = _command(gw, "restart_driver", args={"driver": "no-such"})
            unknown_driver = await _ask(up, payload, cid)
            assert not unknown_driver.ok and "no driver or device 'no-such'" in str(
                unknown_driver.detail
            )

            past = datetime.now(UTC) - timedelta(seconds=5)
            cid, payload = _command(gw, "ping", expires_at=past)
            expired = await _ask(up, payload, cid)
            assert not expired.ok and "expired" in str(expired.detail)

            cid = uuid.uuid4().hex
            raw = Command(gw=gw, correlation_id=cid, command="ping", issued_at=datetime.now(UTC))
            bogus = raw.model_dump_json().replace('"ping"', '"format_disk"').encode()
            unknown = await _ask(up, bogus, cid)
            assert (unknown.ok, unknown.command) == (False, "format_disk")
            assert "unknown command 'format_disk'" in str(unknown.detail)

            # rescan: the birth is sent again with every device
            births = len(up.of(UP.BIRTH))
            cid, payload = _command(gw, "rescan")
            rescan = await _ask(up, payload, cid)
            assert rescan.ok and rescan.data["birth_sent"] is True
            assert rescan.data["restarted"] == []  # its meters answer: left alone
            assert set(rescan.data["devices"]) == {"m-1-101", "m-1-102"}
            birth = await up.wait(UP.BIRTH, lambda m: len(up.of(UP.BIRTH)) > births)
            assert {d.device_id for d in birth.devices} == {"m-1-101", "m-1-102"}

            cid, payload = _command(gw, "upload_logs", args={"lines": 20})
            logs = await _ask(up, payload, cid)
            assert logs.ok and 0 < len(logs.data["lines"]) <= 20
            assert any("restart_driver" in line for line in logs.data["lines"])


async def test_reload_config_rereads_the_toml(tmp_path: Path, mqtt_broker: BrokerEndpoint) -> None:
    gw = gateway_id()
    async with (
        ModbusMeterSim({1: constant_load(850.0), 2: constant_load(120.0)}) as sim,
        listening(mqtt_broker, gw) as up,
    ):
        base = base_config(gw, tmp_path / "state", mqtt_broker)
        path = tmp_path / "agent.toml"
        path.write_text(tomli_w.dumps(base))
        agent = make_agent(base, config_path=path)
        async with running(agent):
            await up.wait(UP.BIRTH)
            assert agent.drivers == []
            path.write_text(tomli_w.dumps({**base, "modbus_tcp": modbus_section(sim.port)}))
            cid, payload = _command(gw, "reload_config")
            result = await _ask(up, payload, cid)
            assert result.ok and "1 drivers" in str(result.detail)
            assert [d.name for d in agent.drivers] == [f"modbus-tcp:127.0.0.1:{sim.port}"]

            path.write_text("gateway_id = [broken")
            cid, payload = _command(gw, "reload_config")
            broken = await _ask(up, payload, cid)
            assert not broken.ok and "not valid TOML" in str(broken.detail)
            assert len(agent.drivers) == 1  # the running config stays


async def test_logs_never_carry_secrets_or_raw_card_numbers(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, caplog: Any
) -> None:
    gw = gateway_id()
    caplog.set_level(logging.DEBUG)
    async with CardReaderSim() as reader, listening(mqtt_broker, gw) as up:
        # one card registered by its number, one by its pseudonym (a fleet manager that never
        # held the number): both map to their flat, and the rules see pseudonyms only
        by_pseudonym = Pseudonymiser(SITE_KEY.encode()).card(CARD2)
        site = {
            **SITE,
            "cards": [
                {"card": CARD, "unit_id": "1-101"},
                {"card": by_pseudonym.upper(), "unit_id": "1-102"},  # as typed at the fleet
            ],
        }
        base = base_config(
            gw,
            tmp_path / "state",
            mqtt_broker,
            site=site,
            serial_readers=[{"reader_id": "r-1", "url": reader.path}],
        )
        agent = make_agent(base)
        async with running(agent):
            await up.wait(UP.BIRTH)
            await up.wait(UP.HEARTBEAT, lambda m: m.devices["r-1"].online)
            await reader.swipe(CARD)
            swipe = await up.wait(UP.CARD)
            assert swipe.unit_id == "1-101" and swipe.card != CARD
            await reader.swipe(CARD2)
            second = await up.wait(UP.CARD, lambda m: m.card == by_pseudonym)
            assert second.unit_id == "1-102"
            await reader.swipe(UNREGISTERED)  # not in any config: nothing could mask it
            stranger = await up.wait(UP.CARD, lambda m: m.unit_id is None)
            assert stranger.card == agent.pseudonymiser.card(UNREGISTERED)
            rules_site = pseudonymised_site(agent.config.site, agent.pseudonymiser)
            assert CARD not in rules_site.model_dump_json()
            assert {c.card for c in rules_site.cards} == {swipe.card, by_pseudonym}
            # a careless log line with the secrets in it is masked before any handler sees it
            logging.getLogger("edge_agent.test").warning(
                "oops: key=%s card=%s", SITE_KEY, "000" + CARD
            )
            cid, payload = _command(gw, "upload_logs", args={"lines": 2000})
            logs = await _ask(up, payload, cid)
        text = "\n".join(logs.data["lines"])
        assert "oops: key=*** card=000***" in text
        assert any("command" in line for line in logs.data["lines"])
        captured = caplog.text
        for secret in (CARD, CARD2, UNREGISTERED, SITE_KEY):
            assert secret not in text
            assert secret not in captured
