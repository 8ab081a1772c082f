"""``fleet-manager demo``: the whole system on one machine, in one command.

Starts the embedded MQTT broker and the fleet manager in this process, then one simulated
building (``firmware-sim building``: Modbus TCP meters served by pymodbus, a serial card reader
on a pseudo-terminal, a BLE advert feed) and one edge agent (``edge-agent run``) as child
processes that talk to each other over those real transports. A scripted scenario makes the BLE
sensor in flat 1-201 report charging, and the agent's rule raises an ``ebike_charging`` alert
that the fleet manager stores, shows and forwards.

The demo shortens the rule's sustain time from 120 s to 10 s so the alert appears within a
minute; everything else is the production code path. Ctrl-C stops every process it started.

Some hazards take days to show (a group rental: a week of card swipes; a charger seen only on
the meter: an hour's plateau and its taper), so the demo also gives the building a history: the
labelled scenario generator (``firmware-sim scenario``) simulates ``--history-days`` days of
the building's other entrance, the edge rules run over it (``edge-agent replay``), and the
readings, swipes and the alerts the rules raised are published, as that entrance's gateway
(``gw-demo-02``) would have sent them, to the fleet manager's MQTT ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import socket
import sys
import uuid
from collections import Counter
from collections.abc import Coroutine, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import httpx
import sqlalchemy as sa
import tomli_w

from contract.alerts import AlertKind, Category, Change, Severity
from contract.messages import (
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    Envelope,
    MeterSample,
    MeterTelemetry,
    encode,
    new_message_id,
)
from contract.topics import Up, up
from fleet.accounts import create_user
from fleet.audit import CLI_ACTOR
from fleet.broker import embedded_broker
from fleet.db import make_engine, make_sessionmaker, utcnow
from fleet.models import Building, Compound, District, Entrance, Flat, Gateway, Role, StreetOffice

log = logging.getLogger(__name__)

DEMO_GATEWAY_ID = "gw-demo-01"
DISPLAY_TZ = ZoneInfo("Asia/Shanghai")
DEMO_CHARGING_SUSTAIN_S = 10.0
DEMO_COMPOUND_CODE = "demo"
# Users of the other three roles, so each role's pages can be seen (docs/web.md).
DEMO_USERS = (("officer", Role.OFFICER), ("property", Role.PROPERTY), ("installer", Role.INSTALLER))
DEMO_USER_PASSWORD = "demo-pass"  # noqa: S105 - demo-only, printed at start like admin/admin
HISTORY_GATEWAY_ID = "gw-demo-02"
HISTORY_ENTRANCE = "2单元"
HISTORY_FLATS = 12  # six floors of the building, two flats each
HISTORY_SEED = 3  # a scenario with two group rentals and chargers seen by sensor and meter
TELEMETRY_BATCH = 1000  # readings per telemetry message, as the agent batches them
HISTORY_PACE_S = {"telemetry": 0.1}  # pause after each message (others: 0.01 s)
SUBJECT_FIELDS = ("unit_id", "building", "sensor_id", "meter_id", "reader_id")


def seed_demo_register(database_url: str, site: dict[str, Any], gateway_id: str) -> None:
    """The demo building in the site register (district to flats), its gateway mapped to the
    entrance, and one user per role scoped to the compound. Skipped when already there (a demo
    restarted over the same data directory)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            if (
                session.scalar(sa.select(Compound.id).where(Compound.code == DEMO_COMPOUND_CODE))
                is not None
            ):
                return
            district = District(name="演示区")
            session.add(district)
            session.flush()
            office = StreetOffice(district_id=district.id, name="演示街道平安办")
            session.add(office)
            session.flush()
            compound = Compound(
                street_office_id=office.id, name="演示小区", code=DEMO_COMPOUND_CODE
            )
            session.add(compound)
            session.flush()
            buildings: dict[str, tuple[int, int]] = {}
            for unit in site["units"]:
                name = str(unit.get("building") or unit["unit_id"].split("-")[0])
                if name not in buildings:
                    building = Building(compound_id=compound.id, name=f"{name}号楼")
                    session.add(building)
                    session.flush()
                    entrance = Entrance(building_id=building.id, name="1单元")
                    session.add(entrance)
                    session.flush()
                    buildings[name] = (building.id, entrance.id)
                building_id, entrance_id = buildings[name]
                room = unit["unit_id"].split("-")[-1]
                session.add(
                    Flat(
                        building_id=building_id,
                        entrance_id=entrance_id,
                        unit_id=unit["unit_id"],
                        floor=int(room[:-2]) if room[:-2].isdigit() else None,
                        area_m2=unit.get("floor_area_m2"),
                        rooms=unit.get("rooms"),
                        registered_occupants=unit.get("registered_occupants"),
                        rated_current_a=unit.get("rated_current_a"),
                    )
                )
            first_entrance = next(iter(buildings.values()))[1]
            gateway = session.get(Gateway, gateway_id)
            if gateway is None:
                session.add(
                    Gateway(gateway_id=gateway_id, entrance_id=first_entrance, first_seen=utcnow())
                )
            else:
                gateway.entrance_id = first_entrance
            for username, role in DEMO_USERS:
                create_user(
                    session,
                    CLI_ACTOR,
                    username=username,
                    password=DEMO_USER_PASSWORD,
                    role=role,
                    compounds=[compound.id],
                )
    finally:
        engine.dispose()


def seed_history_register(database_url: str, site: dict[str, Any], gateway_id: str) -> bool:
    """The demo building's other entrance (``2单元``) with the history's gateway mapped to it,
    and the history's flats the building does not have yet. False when the gateway is already
    there (a demo restarted over the same data: its history is in the database already)."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            existing = session.get(Gateway, gateway_id)
            if existing is not None and existing.entrance_id is not None:
                return False
            building = session.scalars(
                sa.select(Building)
                .join(Compound, Compound.id == Building.compound_id)
                .where(Compound.code == DEMO_COMPOUND_CODE)
                .order_by(Building.id)
            ).first()
            if building is None:
                raise RuntimeError("the demo register is not seeded")
            entrance = Entrance(building_id=building.id, name=HISTORY_ENTRANCE)
            session.add(entrance)
            session.flush()
            known = set(
                session.scalars(sa.select(Flat.unit_id).where(Flat.building_id == building.id))
            )
            for unit in site["units"]:
                if unit["unit_id"] in known:
                    continue
                room = unit["unit_id"].split("-")[-1]
                session.add(
                    Flat(
                        building_id=building.id,
                        entrance_id=entrance.id,
                        unit_id=unit["unit_id"],
                        floor=int(room[:-2]) if room[:-2].isdigit() else None,
                        area_m2=unit.get("floor_area_m2"),
                        rooms=unit.get("rooms"),
                        registered_occupants=unit.get("registered_occupants"),
                        rated_current_a=unit.get("rated_current_a"),
                    )
                )
            if existing is None:
                session.add(
                    Gateway(gateway_id=gateway_id, entrance_id=entrance.id, first_seen=utcnow())
                )
            else:
                existing.entrance_id = entrance.id
        return True
    finally:
        engine.dispose()


async def _check_call(*args: str, log_path: Path) -> None:
    with log_path.open("ab") as out:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *args, stdout=out, stderr=out
        )
        if await child.wait() != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed; see {log_path}")


async def make_history(out_dir: Path, days: int, today: date, flats: int = HISTORY_FLATS) -> None:
    """``days`` of the building up to yesterday (``firmware-sim scenario``), and the alerts the
    edge rules raise over them (``edge-agent replay``): site.json, events.jsonl, alerts.jsonl."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "history.log"
    await _check_call(
        "firmware_sim", "scenario",
        "--seed", str(HISTORY_SEED), "--out", str(out_dir), "--flats", str(flats),
        "--days", str(days), "--buildings", "1",
        "--start", (today - timedelta(days=days)).isoformat(),
        log_path=log_path,
    )  # fmt: skip
    await _check_call(
        "edge_agent", "replay",
        "--site", str(out_dir / "site.json"), "--input", str(out_dir / "events.jsonl"),
        "--output", str(out_dir / "alerts.jsonl"),
        log_path=log_path,
    )  # fmt: skip


def history_messages(out_dir: Path, gateway_id: str, site_key: bytes) -> Iterator[Envelope]:
    """What the entrance's gateway would have sent over those days: its meter readings in
    batches, each card swipe (the card as the agent's HMAC pseudonym, with the flat the card is
    registered to), and each alert the rules raised, raised and then cleared, in that order."""
    site = json.loads((out_dir / "site.json").read_text())
    meter_unit = {m["meter_id"]: m.get("unit_id") for m in site.get("meters", [])}
    seq = 0

    def envelope(ts: datetime) -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"id": new_message_id(), "gw": gateway_id, "session": 1, "seq": seq, "ts": ts}

    def card(number: str) -> str:
        normalised = number.strip().lstrip("0") or "0"  # as edge_agent.privacy does
        return hmac.new(site_key, normalised.encode(), hashlib.sha256).hexdigest()[:32]

    card_unit = {card(c["card"]): c.get("unit_id") for c in site.get("cards", [])}
    yield Birth(
        **envelope(utcnow()),
        agent_version="demo-history",
        started_at=utcnow(),
        site_id=str(site.get("site_id", "demo")),
    )
    batch: list[MeterSample] = []
    with (out_dir / "events.jsonl").open() as events:
        for line in events:
            event = json.loads(line)
            ts = datetime.fromisoformat(event["ts"])
            if event["type"] == "meter_reading":
                batch.append(
                    MeterSample(
                        meter_id=event["meter_id"],
                        unit_id=meter_unit.get(event["meter_id"]),
                        ts=ts,
                        power_w=event["power_w"],
                        voltage_v=event.get("voltage_v"),
                        current_a=event.get("current_a"),
                        energy_kwh=event.get("energy_kwh"),
                    )
                )
                if len(batch) == TELEMETRY_BATCH:
                    yield MeterTelemetry(**envelope(ts), historical=True, readings=batch)
                    batch = []
            elif event["type"] == "card_swipe":
                pseudonym = card(event["card"])
                yield CardSwipeEvent(
                    **envelope(ts),
                    historical=True,
                    reader_id=event["reader_id"],
                    card=pseudonym,
                    unit_id=card_unit.get(pseudonym),
                    event_ts=ts,
                )
    if batch:
        yield MeterTelemetry(**envelope(batch[-1].ts), historical=True, readings=batch)
    with (out_dir / "alerts.jsonl").open() as alerts:
        for line in alerts:
            found = json.loads(line)
            subject = AlertSubject(
                **{
                    k: found.get(k)
                    for k in ("unit_id", "building", "sensor_id", "meter_id", "reader_id")
                }
            )
            raised = datetime.fromisoformat(found["raised_at"])
            cleared = datetime.fromisoformat(found["cleared_at"]) if found["cleared_at"] else None
            alert_id = str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"{gateway_id}|{found['kind']}|{subject}|{raised}")
            )
            common = {
                "alert_id": alert_id,
                "kind": AlertKind(found["kind"]),
                "category": Category(found["category"]),
                "severity": Severity(found["severity"]),
                "subject": subject,
                "raised_at": raised,
                "evidence": found["evidence"],
            }
            yield AlertMessage(**envelope(raised), historical=True, change=Change.RAISED, **common)
            if cleared is not None:
                yield AlertMessage(
                    **envelope(cleared),
                    historical=True,
                    change=Change.CLEARED,
                    cleared_at=cleared,
                    **common,
                )


TOPIC_OF: dict[str, Up] = {
    "birth": Up.BIRTH,
    "telemetry": Up.TELEMETRY,
    "card": Up.CARD,
    "alert": Up.ALERT,
}


async def publish_history(mqtt_url: str, messages: Iterator[Envelope]) -> Counter[str]:
    """Publish each message at QoS 1 on its gateway's uplink topic, as the agent's outbox does
    (about 20 s for ten days of twelve flats)."""
    parsed = httpx.URL(mqtt_url)
    sent: Counter[str] = Counter()
    async with aiomqtt.Client(
        parsed.host, parsed.port or 1883, protocol=aiomqtt.ProtocolVersion.V311
    ) as client:
        for message in messages:
            kind = str(message.model_dump()["type"])
            await client.publish(up(message.gw, TOPIC_OF[kind]), encode(message), qos=1)
            sent[kind] += 1
            # Paced like a gateway draining its outbox after an outage, so that the live
            # building's messages are not queued behind a flood (and the embedded broker's
            # deliveries to ingest are acknowledged in time).
            await asyncio.sleep(HISTORY_PACE_S.get(kind, 0.01))
    return sent


async def demo_history(
    database_url: str,
    mqtt_url: str,
    data_dir: Path,
    days: int,
    today: date,
    *,
    flats: int = HISTORY_FLATS,
    gateway_id: str = HISTORY_GATEWAY_ID,
) -> str:
    """Make the history, map its gateway, publish it; what happened, for the console."""
    out_dir = data_dir / "history"
    site_ready = (out_dir / "alerts.jsonl").exists()
    if not site_ready:
        await make_history(out_dir, days, today, flats)
    site = json.loads((out_dir / "site.json").read_text())
    if not await asyncio.to_thread(seed_history_register, database_url, site, gateway_id):
        return f"history: already in the database ({gateway_id})"
    sent = await publish_history(
        mqtt_url, history_messages(out_dir, gateway_id, secrets.token_bytes(16))
    )
    kinds = Counter(
        json.loads(line)["kind"] for line in (out_dir / "alerts.jsonl").read_text().splitlines()
    )
    return (
        f"history: {days} days of {gateway_id} ({HISTORY_ENTRANCE}) published: "
        f"{sent['telemetry']} telemetry batches, {sent['card']} card swipes, alerts "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    )


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def agent_config_from_endpoints(
    endpoints: dict[str, Any],
    *,
    gateway_id: str,
    mqtt_url: str,
    state_dir: Path,
    charging_sustain_s: float = DEMO_CHARGING_SUSTAIN_S,
    poll_interval_s: float = 2.0,
    mqtt5: bool = True,
) -> dict[str, Any]:
    """An edge agent TOML config (as a dict) that reads the simulated building's devices.

    ``mqtt5=False`` connects with MQTT 3.1.1 straight away (no will delay), for the embedded
    broker, which does not speak MQTT 5 and would log the agent's probe as an invalid connect.
    """
    modbus = endpoints["modbus"]
    reader = endpoints["card_reader"]
    ble = endpoints["ble_feed"]
    return {
        "version": 1,
        "gateway_id": gateway_id,
        "state_dir": str(state_dir),
        "site_key": secrets.token_hex(16),
        "heartbeat_interval_s": 5.0,
        "telemetry_batch_s": 5.0,
        "mqtt": {"url": mqtt_url, "keepalive_s": 10, **({} if mqtt5 else {"will_delay_s": 0})},
        "modbus_tcp": [
            {
                "host": modbus["host"],
                "port": modbus["port"],
                "interval_s": poll_interval_s,
                "timeout_s": 0.5,
                "meters": [
                    {"meter_id": meter_id, "slave": slave}
                    for meter_id, slave in sorted(modbus["meters"].items())
                ],
            }
        ],
        "serial_readers": [{"reader_id": reader["reader_id"], "url": reader["path"]}],
        "ble": {
            "source": f"feed://{ble['host']}:{ble['port']}",
            "sensors": [
                {"sensor_id": sensor_id, "mac": mac}
                for mac, sensor_id in sorted(ble["sensors"].items())
            ],
        },
        "site": endpoints["site"],
        "rules": {"ebike_charging": {"min_duration_s": charging_sustain_s}},
    }


async def _wait_for_file(path: Path, proc: asyncio.subprocess.Process, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not path.exists():
        if proc.returncode is not None:
            raise RuntimeError(f"simulator exited with code {proc.returncode}")
        if loop.time() > deadline:
            raise RuntimeError(f"simulator did not write {path} within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def _stop(proc: asyncio.subprocess.Process, name: str) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        log.warning("%s did not stop on SIGTERM; killing it", name)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _watch_alerts(base_url: str, username: str, password: str) -> None:
    """Print every new alert as it reaches the fleet manager (through its public API)."""
    seen: set[str] = set()
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        token = None
        while True:
            await asyncio.sleep(1)
            try:
                if token is None:
                    r = await http.post(
                        "/api/auth/token", data={"username": username, "password": password}
                    )
                    r.raise_for_status()
                    token = r.json()["access_token"]
                r = await http.get("/api/alerts", headers={"Authorization": f"Bearer {token}"})
                if r.status_code == 401:
                    token = None
                    continue
                r.raise_for_status()
            except httpx.HTTPError:
                continue
            body = r.json()
            items = body["items"] if isinstance(body, dict) else body
            for alert in reversed(items):
                if alert["alert_id"] in seen:
                    continue
                seen.add(alert["alert_id"])
                where = alert.get("unit_id") or alert.get("building") or "-"
                raised = datetime.fromisoformat(alert["raised_at"]).astimezone(DISPLAY_TZ)
                print(
                    f"[告警 alert] {alert.get('title_zh', alert['kind'])} | {where} | "
                    f"{alert['severity']} | {raised:%Y-%m-%d %H:%M:%S} | {alert['alert_id']}",
                    flush=True,
                )


async def _report_history(making: Coroutine[Any, Any, str]) -> None:
    """Print what the history brought, or why it failed (the live demo goes on either way)."""
    try:
        print(await making, flush=True)
    except (OSError, RuntimeError, ValueError, aiomqtt.MqttError) as exc:
        print(f"history: not published ({exc})", file=sys.stderr, flush=True)


async def run_demo(args: argparse.Namespace) -> int:
    from fleet.app import serve  # noqa: PLC0415 - heavy imports after argument parsing
    from fleet.settings import Settings  # noqa: PLC0415

    data_dir: Path = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    mqtt_port = args.mqtt_port
    if not port_is_free("127.0.0.1", mqtt_port):
        mqtt_port = free_port()
        print(f"port {args.mqtt_port} is taken; embedded broker uses {mqtt_port}")
    if not port_is_free(args.host, args.port):
        print(
            f"fleet-manager demo: port {args.port} on {args.host} is taken; "
            "stop what uses it or pass --port",
            file=sys.stderr,
        )
        return 2
    mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
    base_url = f"http://{args.host}:{args.port}"
    settings = Settings(
        demo=True,
        database_url=f"sqlite:///{data_dir / 'fleet.db'}",
        mqtt_url=mqtt_url,
        http_host=args.host,
        http_port=args.port,
        secret_key=secrets.token_urlsafe(32),
        admin_password=args.admin_password,
        webhook_urls=args.webhook_url,
        public_url=base_url,
        mqtt_protocol="3.1.1",  # the embedded broker speaks MQTT 3.1.1 only
    )
    children: list[tuple[str, asyncio.subprocess.Process]] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async with embedded_broker("127.0.0.1", mqtt_port), asyncio.TaskGroup() as tg:
        started = asyncio.Event()
        fleet_task = tg.create_task(serve(settings, started=started), name="fleet")
        await started.wait()
        try:
            endpoints_file = data_dir / "building.json"
            endpoints_file.unlink(missing_ok=True)
            sim_log = (data_dir / "firmware-sim.log").open("ab")
            sim = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "firmware_sim", "building",
                "--flats", str(args.flats),
                "--charging-after", str(args.charging_after),
                "--endpoints-file", str(endpoints_file),
                stdout=sim_log, stderr=sim_log,
            )  # fmt: skip
            children.append(("firmware-sim", sim))
            await _wait_for_file(endpoints_file, sim, timeout=30)
            endpoints = json.loads(endpoints_file.read_text())
            await asyncio.to_thread(
                seed_demo_register, settings.database_url, endpoints["site"], DEMO_GATEWAY_ID
            )
            agent_cfg = agent_config_from_endpoints(
                endpoints,
                gateway_id=DEMO_GATEWAY_ID,
                mqtt_url=mqtt_url,
                state_dir=data_dir / "agent-state",
                mqtt5=False,
            )
            cfg_path = data_dir / "edge-agent.toml"
            cfg_path.write_text(tomli_w.dumps(agent_cfg))
            cfg_path.chmod(0o600)
            agent_log = (data_dir / "edge-agent.log").open("ab")
            agent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent", "run", "--config", str(cfg_path),
                stdout=agent_log, stderr=agent_log,
            )  # fmt: skip
            children.append(("edge-agent", agent))
            password = args.admin_password or "admin"
            print(
                "\n".join(
                    [
                        "",
                        "群租与电动车充电隐患监测 — demo is running",
                        f"  Dashboard:  {base_url}/",
                        f"  Login:      {settings.admin_username} / {password}; "
                        + ", ".join(f"{u}" for u, _ in DEMO_USERS)
                        + f" / {DEMO_USER_PASSWORD}",
                        f"  API:        {base_url}/docs",
                        f"  Data/logs:  {data_dir}",
                        f"  Scenario:   flat 1-201 starts charging an e-bike after "
                        f"{args.charging_after:.0f}s; alert after {DEMO_CHARGING_SUSTAIN_S:.0f}s "
                        "more",
                        f"  History:    {args.history_days} days of entrance {HISTORY_ENTRANCE} "
                        f"({HISTORY_GATEWAY_ID}): group rentals, chargers seen on the meter"
                        if args.history_days > 0
                        else "  History:    none (--history-days 0)",
                        "  Press Ctrl-C to stop everything.",
                        "",
                    ]
                ),
                flush=True,
            )
            watcher = tg.create_task(
                _watch_alerts(base_url, settings.admin_username, password), name="alert-watch"
            )
            history = (
                tg.create_task(
                    _report_history(
                        demo_history(
                            settings.database_url,
                            mqtt_url,
                            data_dir,
                            args.history_days,
                            datetime.now(DISPLAY_TZ).date(),
                        )
                    ),
                    name="history",
                )
                if args.history_days > 0
                else None
            )
            waits = [asyncio.create_task(stop.wait())] + [
                asyncio.create_task(p.wait()) for _, p in children
            ]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            for name, p in children:
                if p.returncode is not None and not stop.is_set():
                    print(
                        f"{name} exited with code {p.returncode}; see its log in {data_dir}",
                        file=sys.stderr,
                    )
            watcher.cancel()
            if history is not None:
                history.cancel()
        finally:
            for name, p in reversed(children):
                await _stop(p, name)
            fleet_task.cancel()
    print("demo stopped")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fleet-manager demo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument(
        "--admin-password", default=None, help="password of user admin (default: admin)"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("demo-data"))
    parser.add_argument("--flats", type=int, default=4)
    parser.add_argument("--charging-after", type=float, default=5.0)
    parser.add_argument("--webhook-url", action="append", default=[])
    parser.add_argument(
        "--history-days",
        type=int,
        default=10,
        help="days of simulated history of the building's other entrance, replayed through the "
        "edge rules and published to the fleet manager (0: none; group rentals need 7)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("FLEET_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(run_demo(args)))
