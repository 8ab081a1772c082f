"""The gateway process: drivers -> pseudonymisation -> rules -> outbox -> uplink.

Every long-lived loop is a named task in one :class:`asyncio.TaskGroup`. A driver whose loop
fails is restarted with jittered exponential backoff; one driver's failure never stops another.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from contract import topics
from contract.alerts import AlertChange
from contract.events import (
    CardSwipe,
    ChargingSensorReading,
    MeterReading,
    RuleInput,
    Tick,
)
from contract.messages import (
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    ChargingEvent,
    DeviceStatus,
    Envelope,
    Heartbeat,
    MeterSample,
    MeterTelemetry,
    encode,
)
from drivers.base import Driver
from drivers.events import CardRead, DriverEvent
from edge_agent.config import AgentConfig
from edge_agent.drivers import build_drivers, describe_devices
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_EVENT, PRIORITY_TELEMETRY, Outbox
from edge_agent.privacy import Pseudonymiser
from edge_agent.session import MessageFactory, next_session, utc_now
from edge_agent.uplink import Uplink
from rules.engine import RuleEngine

log = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 300.0


def agent_version() -> str:
    try:
        return version("qunzu-guard")
    except PackageNotFoundError:
        return "0+unknown"


class Agent:
    def __init__(self, config: AgentConfig, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.config = config
        self._clock = clock
        self._started = clock()
        self._started_mono = time.monotonic()
        state_dir = config.state_dir
        self.session = next_session(state_dir)
        self.factory = MessageFactory(config.gateway_id, self.session, clock)
        self.outbox = Outbox(Path(state_dir) / "outbox.db")
        self.engine = RuleEngine(config.site, config.rules, scope=config.gateway_id)
        self.pseudonymiser = Pseudonymiser(config.site_key.get_secret_value().encode())
        self.drivers: list[Driver] = list(build_drivers(config))
        self.uplink = Uplink(
            config=config.mqtt, outbox=self.outbox, factory=self.factory, birth=self._birth
        )
        site = config.site
        self._card_unit = {self.pseudonymiser.card(c.card): c.unit_id for c in site.cards}
        self._meter_unit = {m.meter_id: m.unit_id for m in site.meters}
        self._sensor_place = {s.sensor_id: s for s in site.sensors}
        self._charging_state: dict[str, bool] = {}
        self._telemetry: list[MeterSample] = []
        self.driver_restarts: dict[str, int] = {}

    # -- messages -----------------------------------------------------------------------------

    def _birth(self) -> Birth:
        return self.factory.make(
            Birth,
            agent_version=agent_version(),
            started_at=self._started,
            site_id=self.config.site.site_id,
            devices=describe_devices(self.config),
        )

    def _enqueue(self, kind: topics.Up, message: Envelope, priority: int) -> None:
        self.outbox.put(topics.up(self.config.gateway_id, kind), encode(message), priority)

    def _publish_alerts(self, changes: list[AlertChange]) -> None:
        for ch in changes:
            ep = ch.episode
            s = ep.subject
            msg = self.factory.make(
                AlertMessage,
                alert_id=ep.id,
                change=ch.change,
                kind=ep.kind,
                category=ep.category,
                severity=ep.severity,
                subject=AlertSubject(
                    unit_id=s.unit_id,
                    building=s.building,
                    sensor_id=s.sensor_id,
                    meter_id=s.meter_id,
                    reader_id=s.reader_id,
                ),
                raised_at=ep.raised_at,
                cleared_at=ep.cleared_at,
                evidence=dict(ep.evidence),
            )
            log.warning(
                "alert %s %s subject=%s severity=%s", ch.change, ep.kind, s.key(), ep.severity
            )
            self._enqueue(topics.Up.ALERT, msg, PRIORITY_ALERT)

    def _rules(self, event: RuleInput) -> None:
        changes = self.engine.process(event)
        if changes:
            self._publish_alerts(changes)

    # -- event handling ------------------------------------------------------------------------

    def handle(self, event: DriverEvent) -> None:
        """Take one driver event through privacy, rules and the outbox (synchronous: no await
        between accepting an event and committing what it produced)."""
        if isinstance(event, CardRead):
            pseudonym = self.pseudonymiser.card(event.number)
            swipe = CardSwipe(ts=event.ts, reader_id=event.reader_id, card=pseudonym)
            self._rules(swipe)
            msg = self.factory.make(
                CardSwipeEvent,
                reader_id=event.reader_id,
                card=pseudonym,
                unit_id=self._card_unit.get(pseudonym),
                event_ts=event.ts,
            )
            self._enqueue(topics.Up.CARD, msg, PRIORITY_EVENT)
        elif isinstance(event, MeterReading):
            self._rules(event)
            self._telemetry.append(
                MeterSample(
                    meter_id=event.meter_id,
                    unit_id=self._meter_unit.get(event.meter_id),
                    ts=event.ts,
                    power_w=event.power_w,
                    voltage_v=event.voltage_v,
                    current_a=event.current_a,
                    energy_kwh=event.energy_kwh,
                    power_factor=event.power_factor,
                )
            )
        elif isinstance(event, ChargingSensorReading):
            self._rules(event)
            if self._charging_state.get(event.sensor_id) != event.charging:
                self._charging_state[event.sensor_id] = event.charging
                place = self._sensor_place.get(event.sensor_id)
                change = self.factory.make(
                    ChargingEvent,
                    sensor_id=event.sensor_id,
                    unit_id=place.unit_id if place else None,
                    location=place.location.value if place else None,
                    charging=event.charging,
                    power_w=event.power_w,
                    event_ts=event.ts,
                )
                self._enqueue(topics.Up.CHARGING, change, PRIORITY_EVENT)
        elif event.active:
            log.warning("device %s fault: %s %s", event.device_id, event.fault, event.detail)
        else:
            log.info("device %s recovered from %s", event.device_id, event.fault)

    def flush_telemetry(self) -> None:
        if not self._telemetry:
            return
        batch, self._telemetry = self._telemetry, []
        for start in range(0, len(batch), 1000):
            msg = self.factory.make(MeterTelemetry, readings=batch[start : start + 1000])
            self._enqueue(topics.Up.TELEMETRY, msg, PRIORITY_TELEMETRY)

    def heartbeat(self) -> Heartbeat:
        devices: dict[str, DeviceStatus] = {}
        for d in self.drivers:
            counters = d.counters.snapshot()
            for device_id, st in d.device_status().items():
                devices[device_id] = DeviceStatus(
                    online=st.online, last_seen=st.last_seen, fault=st.fault, counters=counters
                )
        return self.factory.make(
            Heartbeat,
            uptime_s=time.monotonic() - self._started_mono,
            agent_version=agent_version(),
            outbox_depth=self.outbox.depth(),
            outbox_oldest_age_s=self.outbox.oldest_age_s(),
            devices=devices,
        )

    # -- loops ---------------------------------------------------------------------------------

    async def _supervise(self, driver: Driver) -> None:
        backoff = RESTART_MIN_S
        while True:
            started = time.monotonic()
            try:
                async for event in driver.events():
                    self.handle(event)
                log.warning("driver %s stopped by itself; restarting", driver.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("driver %s failed; restarting in %.1fs", driver.name, backoff)
            self.driver_restarts[driver.name] = self.driver_restarts.get(driver.name, 0) + 1
            if time.monotonic() - started > 60:
                backoff = RESTART_MIN_S
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(RESTART_MAX_S, backoff * 2)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            self._rules(Tick(self._clock()))

    async def _telemetry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.telemetry_batch_s)
            self.flush_telemetry()

    async def _heartbeat_loop(self) -> None:
        topic = topics.up(self.config.gateway_id, topics.Up.HEARTBEAT)
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            await self.uplink.publish_live(topic, encode(self.heartbeat()))

    async def run(self) -> None:
        log.info(
            "agent %s session %d starting with %d drivers",
            self.config.gateway_id,
            self.session,
            len(self.drivers),
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self._ticker(), name="rules-tick")
                tg.create_task(self._telemetry_loop(), name="telemetry")
                tg.create_task(self._heartbeat_loop(), name="heartbeat")
                for d in self.drivers:
                    tg.create_task(self._supervise(d), name=f"driver:{d.name}")
        finally:
            self.flush_telemetry()
            self.outbox.close()

