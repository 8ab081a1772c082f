"""The gateway process: drivers -> pseudonymisation -> rules -> outbox -> uplink.

Every long-lived loop (each driver, the rules ticker, telemetry batching, the uplink, the health
reporter, the downlink controller, the systemd watchdog) is a named task under one
:class:`~edge_agent.supervisor.Supervisor`: a task that fails is restarted with jittered
exponential backoff, counted and reported in the heartbeat; one driver's failure never stops
another. The desired config the fleet manager pushes is applied without a restart
(:mod:`edge_agent.desired`); commands are answered on ``up/cmd_result``
(:mod:`edge_agent.commands`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from contract import topics
from contract.alerts import AlertChange
from contract.events import (
    CardSwipe,
    ChargingSensorReading,
    DeviceFault,
    MeterReading,
    RuleInput,
    Tick,
)
from contract.messages import (
    MAX_PAYLOAD_BYTES,
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    ChargingEvent,
    CommandResult,
    ConfigState,
    Envelope,
    Heartbeat,
    MeterSample,
    MeterTelemetry,
    encode,
)
from contract.site import Site
from drivers.base import Driver, DriverError
from drivers.events import CardRead, DriverEvent
from edge_agent.commands import Answer, CommandError, CommandHandler, LogSetup, install_log_ring
from edge_agent.config import AgentConfig
from edge_agent.desired import (
    ConfigController,
    DesiredConfigError,
    DesiredStore,
    overlay,
    read_toml,
)
from edge_agent.drivers import DriverSpec, describe_devices, driver_specs
from edge_agent.health import (
    SystemProbe,
    device_statuses,
    fit_devices,
    release_free_heap,
    task_health,
)
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_EVENT, PRIORITY_TELEMETRY, Outbox
from edge_agent.privacy import Pseudonymiser
from edge_agent.session import MessageFactory, next_session, utc_now
from edge_agent.supervisor import SdNotify, Supervisor
from edge_agent.uplink import Uplink
from rules.engine import RuleEngine

log = logging.getLogger(__name__)

# Tasks whose failure makes the agent unhealthy for the systemd watchdog (drivers are not:
# a dead meter is not fixed by restarting the agent).
CORE_TASKS = ("uplink", "rules", "telemetry", "health", "control")


def _try_build(spec: DriverSpec) -> Driver | None:
    try:
        return spec.build()
    except (DriverError, ValueError) as exc:
        log.error("driver %s cannot be built: %s", spec.name, exc)  # noqa: TRY400 - expected
        return None


def is_pseudonym(card: str) -> bool:
    """A registration given as the pseudonym the agent itself sends (32 hex digits; no card
    number is that long)."""
    return len(card) == 32 and all(c in "0123456789abcdefABCDEF" for c in card)


def pseudonymised_site(site: Site, pseudonymiser: Pseudonymiser) -> Site:
    """``site`` with every registered card number replaced by its pseudonym.

    The rules see pseudonyms only (the swipes they get carry pseudonyms), so registered cards
    match; a registration that already is a pseudonym (a fleet manager that never holds raw
    numbers) is kept as it is.
    """
    cards = [
        c.model_copy(
            update={"card": c.card.lower() if is_pseudonym(c.card) else pseudonymiser.card(c.card)}
        )
        for c in site.cards
    ]
    return site.model_copy(update={"cards": cards})


def agent_version() -> str:
    try:
        return version("qunzu-guard")
    except PackageNotFoundError:
        return "0+unknown"


class Agent:
    """One gateway. ``config`` is the effective config; ``base`` the TOML it came from (as
    parsed; default: ``config`` itself) and ``config_path`` where to re-read it
    (``reload_config``). A desired config persisted in the state directory is laid over
    ``base`` at start, so the agent restarts offline with what the fleet manager pushed."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        base: dict[str, Any] | None = None,
        config_path: Path | None = None,
        clock: Callable[[], datetime] = utc_now,
        sd_notify: SdNotify | None = None,
        probe: SystemProbe | None = None,
    ) -> None:
        self._base = base if base is not None else config.model_dump(mode="python")
        self._config_path = config_path
        self._clock = clock
        self._started = clock()
        self._started_mono = time.monotonic()
        self.sd = sd_notify if sd_notify is not None else SdNotify()
        self._probe = probe or SystemProbe()
        self._hb_cursor = 0  # the next healthy device of a partial heartbeat (see heartbeat)
        self._hb_partial = False
        state_dir = config.state_dir
        self.store = DesiredStore(state_dir)
        stored = self.store.load()
        applied = None
        if stored.desired is not None:
            try:
                config = overlay(self._base, stored.desired.config)
                applied = stored.desired
                log.info("running the stored desired config version %d", applied.version)
            except DesiredConfigError as exc:
                log.warning(
                    "the stored desired config version %d does not fit the TOML (%s); "
                    "running on the TOML alone",
                    stored.desired.version,
                    exc.reason,
                )
        self.config = config
        self.session = next_session(state_dir)
        self.factory = MessageFactory(config.gateway_id, self.session, clock)
        ob = config.outbox
        self.outbox = Outbox(
            Path(state_dir) / "outbox.db",
            budget_bytes=int(ob.disk_budget_mb * 1024 * 1024),
            reserve_bytes=int(ob.reserve_mb * 1024 * 1024),
            audit=ob.audit,
        )
        self.pseudonymiser = Pseudonymiser(config.site_key.get_secret_value().encode())
        self.engine = self._rule_engine(config)
        self._card_unit: dict[str, str] = {}
        self._meter_unit: dict[str, str] = {}
        self._sensor_place: dict[str, Any] = {}
        self._set_site(config)
        self._charging_state: dict[str, bool] = {}
        self._telemetry: list[MeterSample] = []
        self._last_tick_mono = time.monotonic()
        gw = config.gateway_id
        self._config_topic = topics.down(gw, topics.Down.CONFIG)
        self._cmd_topic = topics.down(gw, topics.Down.COMMAND)
        self.uplink = Uplink(
            config=config.mqtt,
            outbox=self.outbox,
            factory=self.factory,
            birth=self._birth,
            subscriptions=(self._config_topic, self._cmd_topic),
            historical_after_s=config.outbox.historical_after_s,
        )
        self.supervisor = Supervisor()
        # None: the driver could not be built (e.g. libgpiod missing); its task retries and
        # reports the error, the other drivers run.
        self._drivers: dict[str, tuple[DriverSpec, Driver | None]] = {}
        self._driver_data: dict[str, float] = {}  # driver name -> last data (monotonic)
        for spec in driver_specs(config).values():
            self._drivers[spec.name] = (spec, _try_build(spec))
        self.controller = ConfigController(
            self,
            self.store,
            stored,
            gateway_id=gw,
            grace_s=config.config_rollback_grace_s,
            applied=applied,
        )
        self.commands = CommandHandler(gw, self, clock)
        self._logs: LogSetup | None = None

    # -- configuration -------------------------------------------------------------------------

    @property
    def base(self) -> dict[str, Any]:
        return self._base

    @property
    def drivers(self) -> list[Driver]:
        return [d for _, d in self._drivers.values() if d is not None]

    def _rule_engine(self, config: AgentConfig) -> RuleEngine:
        site = pseudonymised_site(config.site, self.pseudonymiser)
        return RuleEngine(site, config.rules, scope=config.gateway_id)

    def _set_site(self, config: AgentConfig) -> None:
        site = pseudonymised_site(config.site, self.pseudonymiser)
        self._card_unit = {c.card: c.unit_id for c in site.cards}
        self._meter_unit = {m.meter_id: m.unit_id for m in site.meters}
        self._sensor_place = {s.sensor_id: s for s in site.sensors}

    def _secrets(self) -> list[str]:
        """What the log redactor masks: keys, passwords and the registered raw card numbers."""
        c = self.config
        out = [c.site_key.get_secret_value()]
        if c.mqtt.password is not None:
            out.append(c.mqtt.password.get_secret_value())
        if c.ble is not None:
            out.extend(s.bindkey.get_secret_value() for s in c.ble.sensors if s.bindkey)
        for card in c.site.cards:
            if is_pseudonym(card.card):
                continue
            out.append(card.card.strip())
            out.append(card.card.strip().lstrip("0"))
        return out

    def check_config(self, config: AgentConfig) -> None:
        """Build the drivers and rules ``config`` needs (not started); DesiredConfigError if
        one of them refuses it."""
        if config.gateway_id != self.config.gateway_id:
            raise DesiredConfigError("gateway_id cannot change at run time")
        try:
            for spec in driver_specs(config).values():
                spec.build()
            self._rule_engine(config)
        except (DriverError, ValueError) as exc:
            raise DesiredConfigError(f"{type(exc).__name__}: {exc}") from None

    async def apply_config(self, config: AgentConfig) -> None:
        """Stop removed drivers, restart changed ones, start new ones; swap site and rules."""
        specs = driver_specs(config)
        for name in list(self._drivers):
            spec, _ = self._drivers[name]
            if name not in specs or specs[name].key != spec.key:
                await self.supervisor.stop(f"driver:{name}")
                del self._drivers[name]
                self._driver_data.pop(name, None)
                log.info("driver %s stopped (%s)", name, "changed" if name in specs else "removed")
        for name, spec in specs.items():
            if name not in self._drivers:
                self._drivers[name] = (spec, _try_build(spec))
                self._start_driver(name)
                log.info("driver %s started", name)
        old = self.config
        self.config = config
        if config.site != old.site or config.rules != old.rules:
            self.flush_telemetry()
            self.engine = self._rule_engine(config)
            self._set_site(config)
            self._charging_state.clear()
            log.info("site and rules replaced")
        if self._logs is not None:
            self._logs.redactor.set_secrets(self._secrets())

    async def announce(self) -> bool:
        """Publish the birth again (devices or config version changed). False if offline."""
        return await self.uplink.publish_live(
            topics.up(self.config.gateway_id, topics.Up.BIRTH), encode(self._birth())
        )

    def failing_drivers_since(self, since: float) -> list[str] | None:
        if not self._drivers:
            return None
        failing = []
        stats = self.supervisor.stats()
        for name, (_, driver) in self._drivers.items():
            if self._driver_data.get(name, float("-inf")) >= since:
                return None
            status = driver.device_status() if driver is not None else {}
            if any(st.online for st in status.values()):
                return None
            task = stats.get(f"driver:{name}")
            faults = sorted({st.fault for st in status.values() if st.fault})
            if task is not None and task.last_error and task.started_mono >= since:
                why = task.last_error
            else:
                why = ", ".join(faults) or "no data"
            failing.append(f"{name}: {why}")
        return failing

    def report_config_state(self, **fields: Any) -> None:
        self._enqueue(
            topics.Up.CONFIG_STATE, self.factory.make(ConfigState, **fields), PRIORITY_EVENT
        )

    # -- commands ------------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        applied = self.controller.applied
        return {
            "agent_version": agent_version(),
            "session": self.session,
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "config_version": applied.version if applied else None,
            "outbox_depth": self.outbox.depth(),
        }

    async def restart_driver(self, name: str) -> str:
        """Restart a driver by its name or by the id of one of its devices."""
        target = name if name in self._drivers else None
        if target is None:
            for driver_name, (_, driver) in self._drivers.items():
                if driver is not None and name in driver.device_status():
                    target = driver_name
                    break
        if target is None:
            known = ", ".join(sorted(self._drivers)) or "none"
            raise CommandError(f"no driver or device {name!r} (drivers: {known})")
        await self.supervisor.restart(f"driver:{target}")
        return f"driver {target} restarted"

    async def rescan(self) -> dict[str, Any]:
        """Look for the devices again and republish the birth message.

        A driver none of whose devices is online is restarted (a fresh connect, a new scan,
        no quarantine left); drivers with a working device are left alone.
        """
        restarted = []
        for name, (_, driver) in self._drivers.items():
            if driver is None or not any(st.online for st in driver.device_status().values()):
                await self.supervisor.restart(f"driver:{name}")
                restarted.append(name)
        sent = await self.announce()
        devices = device_statuses(self.drivers)
        return {
            "birth_sent": sent,
            "restarted": restarted,
            "devices": {device_id: st.online for device_id, st in devices.items()},
        }

    async def reload_config(self) -> str:
        """Re-read the TOML (when run from a file) and the stored desired config; apply."""
        if self._config_path is not None:
            try:
                base = read_toml(self._config_path)
            except Exception as exc:
                raise CommandError(str(exc)) from None
        else:
            base = self._base
        stored = self.store.load()
        desired = stored.desired
        try:
            config = overlay(base, desired.config if desired else None)
            self.check_config(config)
        except DesiredConfigError as exc:
            raise CommandError(f"config not reloaded: {exc.reason}") from None
        self._base = base
        await self.apply_config(config)
        self.controller.applied = desired
        self.controller.reloaded()
        await self.announce()
        version_text = f"desired version {desired.version}" if desired else "no desired config"
        return f"reloaded ({version_text}, {len(self._drivers)} drivers)"

    def log_tail(self, n: int) -> list[str]:
        return self._logs.ring.tail(n) if self._logs is not None else []

    def _answer(self, answer: Answer) -> None:
        msg = self.factory.make(
            CommandResult,
            correlation_id=answer.correlation_id,
            command=answer.command,
            ok=answer.ok,
            detail=answer.detail[:2000] if answer.detail else None,
            data=answer.data,
        )
        self._enqueue(topics.Up.CMD_RESULT, msg, PRIORITY_EVENT)

    # -- messages -----------------------------------------------------------------------------

    def _birth(self) -> Birth:
        applied = self.controller.applied
        return self.factory.make(
            Birth,
            agent_version=agent_version(),
            started_at=self._started,
            site_id=self.config.site.site_id,
            config_version=applied.version if applied else None,
            devices=describe_devices(self.config),
        )

    def _enqueue(self, kind: topics.Up, message: Envelope, priority: int) -> None:
        self.outbox.put(
            topics.up(self.config.gateway_id, kind), encode(message), priority, msg_id=message.id
        )

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
        """The gateway's health. A gateway with more devices than one message can carry
        (``MAX_PAYLOAD_BYTES``: about 900 BLE sensors with their counters) sends every offline
        or faulty device and the healthy ones in turn (``devices_partial``; see
        :func:`fit_devices`), with the counts of all of them: a heartbeat the fleet would
        refuse would lose them all."""
        probe = self._probe
        applied = self.controller.applied
        devices = device_statuses(self.drivers)
        hb = self.factory.make(
            Heartbeat,
            uptime_s=time.monotonic() - self._started_mono,
            agent_version=agent_version(),
            outbox_depth=self.outbox.depth(),
            outbox_oldest_age_s=self.outbox.oldest_age_s(),
            devices=devices,
            cpu_temp_c=probe.cpu_temp_c(),
            load_avg=probe.load_avg(),
            mem_rss_bytes=probe.rss_bytes(),
            mem_available_bytes=probe.mem_available_bytes(),
            disk_free_bytes=probe.disk_free_bytes(self.config.state_dir),
            tasks=task_health(self.supervisor.stats()),
            config_version=applied.version if applied else None,
            config_hash=applied.hash if applied else None,
            outbox_fault=self.outbox.fault,
            outbox_counters=dict(self.outbox.counters),
            devices_total=len(devices),
            devices_online=sum(1 for d in devices.values() if d.online),
            devices_faulty=sum(1 for d in devices.values() if d.fault),
        )
        if len(encode(hb)) <= MAX_PAYLOAD_BYTES:
            if self._hb_partial:
                log.info("heartbeat: all %d devices fit in one message again", len(devices))
                self._hb_partial = False
            return hb
        bare = len(encode(hb.model_copy(update={"devices": {}, "devices_partial": True})))
        part, self._hb_cursor = fit_devices(devices, MAX_PAYLOAD_BYTES - bare, self._hb_cursor)
        if not self._hb_partial:
            log.warning(
                "heartbeat: %d devices do not fit in one message (%d bytes at most): each "
                "heartbeat carries every offline or faulty device and the others in turn "
                "(%d this time)",
                len(devices),
                MAX_PAYLOAD_BYTES,
                len(part),
            )
            self._hb_partial = True
        return hb.model_copy(update={"devices": part, "devices_partial": True})

    # -- loops ---------------------------------------------------------------------------------

    def _start_driver(self, name: str) -> None:
        async def loop() -> None:
            spec, driver = self._drivers[name]
            if driver is None:
                driver = spec.build()  # raises again while the cause is there: counted
                self._drivers[name] = (spec, driver)
            async for event in driver.events():
                if not isinstance(event, DeviceFault):
                    self._driver_data[name] = time.monotonic()
                self.handle(event)

        self.supervisor.start(f"driver:{name}", loop)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_interval_s)
            self._last_tick_mono = time.monotonic()
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
            release_free_heap()  # what the last interval freed (see health.release_free_heap)

    async def _control_loop(self) -> None:
        """Desired configs and commands from the downlink, and the rollback deadline."""
        incoming = self.uplink.incoming
        while True:
            deadline = self.controller.deadline
            delay = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(delay):
                    topic, payload = await incoming.get()
            except TimeoutError:
                await self.controller.check_rollback()
                continue
            if topic == self._config_topic:
                await self.controller.handle(payload)
            elif topic == self._cmd_topic:
                answer = await self.commands.handle(payload)
                if answer is not None:
                    self._answer(answer)

    def loops_healthy(self) -> bool:
        """The core loops run and the rules ticker advanced recently."""
        stats = self.supervisor.stats()
        if not all(name in stats and stats[name].running for name in CORE_TASKS):
            return False
        stale_after = max(3 * self.config.tick_interval_s, 2 * (self.sd.watchdog_interval_s or 5))
        return time.monotonic() - self._last_tick_mono < stale_after

    async def _watchdog_loop(self) -> None:
        interval = self.sd.watchdog_interval_s or 10.0
        while True:
            await asyncio.sleep(interval)  # READY=1 goes first
            if self.loops_healthy():
                self.sd.watchdog()
            else:
                log.warning("a core loop is not healthy; not pinging the systemd watchdog")

    async def run(self) -> None:
        log.info(
            "agent %s session %d starting with %d drivers",
            self.config.gateway_id,
            self.session,
            len(self._drivers),
        )
        self._logs = install_log_ring(self._secrets())
        sup = self.supervisor
        sup.start("uplink", self.uplink.run)
        sup.start("outbox", self.outbox.run)
        sup.start("rules", self._ticker)
        sup.start("telemetry", self._telemetry_loop)
        sup.start("health", self._heartbeat_loop)
        sup.start("control", self._control_loop)
        if self.sd.watchdog_interval_s is not None:
            sup.start("watchdog", self._watchdog_loop)
        for name in self._drivers:
            self._start_driver(name)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sup.run(), name="supervisor")
                await sup.ready.wait()
                self.sd.ready(f"{len(self._drivers)} drivers")
                release_free_heap()  # the imports' and config validation's garbage
        finally:
            self.sd.stopping()
            self.flush_telemetry()
            self.outbox.close()
            self._logs.close()
            self._logs = None
