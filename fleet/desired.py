"""Desired gateway config: assembled from the site model, versioned, published retained.

:func:`assemble` builds the ``config`` of a :class:`contract.control.DesiredConfig` for one
gateway from the site register: the flats of its entrance, the meters, readers and charging
sensors behind it (``devices.gateway_id``), the card registrations of those flats and the rule
thresholds of its compound (``compound_rules`` over the defaults of ``contract.site``). The
shapes are those of ``edge_agent/config.py``; ``tests/fleet/test_desired.py`` validates the
result with the agent's own ``AgentConfig``. What cannot be placed (a meter without a slave
address, a sensor without a MAC) is left out and listed in ``problems``, so an installer sees
why a device is not polled instead of a gateway that silently reads nothing.

Device ``params`` understood here (docs/provisioning.md has the table):

- meter, Modbus (``protocol`` "modbus", the default): ``slave`` (required), ``profile``,
  ``function_code``, ``interval_s``, ``timeout_s``, ``registers``; its bus: ``transport``
  ("rtu" default, "tcp", "rtu-over-tcp"), ``url``, ``host``, ``port``, ``baudrate``,
  ``parity``, ``stopbits``. Meters with the same bus keys share one bus.
- meter, DL/T 645 (``protocol`` "dlt645"): ``address`` (12 digits, required); bus ``url``
  (required), ``baudrate``, ``parity``.
- card reader: ``interface`` "serial" (default: ``url`` required, ``baudrate``,
  ``frame_format``, ``w34_uid``) or "wiegand" (``d0``, ``d1`` required, ``chip``, ``idle_ms``,
  ``formats``, ``w34_uid``).
- charging sensor: ``mac`` (required), ``bindkey``; the BLE ``source`` of the first sensor
  that names one.

A device section (meters: ``modbus``/``modbus_tcp``/``dlt645``; readers:
``serial_readers``/``wiegand_readers``; sensors: ``ble``) is part of the config only when the
gateway has at least one device of that kind in the register, so a gateway configured by hand
keeps its local sections until the register describes them; ``site`` and ``rules`` are always
there.

:func:`refresh` stores the result in ``desired_configs``: the version grows only when the hash
changes, and a changed row is marked unpublished. The :class:`ConfigPublisher` worker publishes
unpublished rows retained (QoS 1) on ``edge/v1/{gw}/down/config`` and re-assembles every
enrolled gateway's config when the register changes (an ORM hook on commits that touch
devices, flats, cards, gateways' entrances or compound rules) and every
``FLEET_CONFIG_PUBLISH_RETRY_S`` as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiomqtt
import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from contract.control import DESIRED_CONFIG_KEYS, DesiredConfig, config_hash
from contract.messages import ConfigState
from contract.site import Location, RulesConfig, Site
from contract.topics import Down, down
from fleet.backoff import Backoff
from fleet.db import utcnow
from fleet.dbthreads import DbThreads
from fleet.models import (
    Base,
    BrokerAccount,
    Building,
    CardRegistration,
    Compound,
    CompoundRules,
    DesiredConfigRow,
    Device,
    DeviceKind,
    Entrance,
    Flat,
    Gateway,
    GatewayConfigState,
)
from fleet.settings import Settings

log = logging.getLogger(__name__)

SOURCE_SITE = "site"
SOURCE_OVERRIDE = "override"

_MODBUS_BUS_KEYS = ("transport", "url", "host", "port", "baudrate", "parity", "stopbits")
_MODBUS_METER_KEYS = ("profile", "function_code", "interval_s", "timeout_s", "registers")
_DLT645_BUS_KEYS = ("url", "baudrate", "parity")
_SERIAL_READER_KEYS = ("baudrate", "frame_format", "w34_uid")
_WIEGAND_READER_KEYS = ("chip", "idle_ms", "formats", "w34_uid")


class ConfigInputError(ValueError):
    """A rules or override document that cannot be used; the message says why."""


@dataclass
class Assembled:
    config: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    compound_id: int | None = None


def _pick(params: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    return {k: params[k] for k in keys if params.get(k) is not None}


def _site_id(compound: Compound | None) -> str:
    if compound is None:
        return "unassigned"
    return compound.code or f"compound-{compound.id}"


def effective_rules(session: Session, compound_id: int | None) -> RulesConfig:
    """The compound's thresholds over the documented defaults (``contract.site``)."""
    if compound_id is None:
        return RulesConfig()
    row = session.get(CompoundRules, compound_id)
    return RulesConfig.model_validate(row.rules if row else {})


def validate_rules(rules: dict[str, Any]) -> RulesConfig:
    try:
        return RulesConfig.model_validate(rules)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigInputError(f"rules.{where}: {first['msg']}") from exc


def assemble(session: Session, gateway: Gateway, *, timezone: str) -> Assembled:
    """The desired ``config`` of ``gateway`` from the site register (see the module doc)."""
    problems: list[str] = []
    entrance = session.get(Entrance, gateway.entrance_id) if gateway.entrance_id else None
    building = session.get(Building, entrance.building_id) if entrance else None
    compound = session.get(Compound, building.compound_id) if building else None
    if entrance is None:
        problems.append("gateway is not assigned to an entrance: no flats, no thresholds")
    devices = list(
        session.scalars(
            sa.select(Device).where(Device.gateway_id == gateway.gateway_id).order_by(Device.id)
        )
    )
    flats: dict[int, Flat] = {}
    if entrance is not None and building is not None:
        for flat in session.scalars(
            sa.select(Flat)
            .where(
                Flat.building_id == building.id,
                sa.or_(Flat.entrance_id == entrance.id, Flat.entrance_id.is_(None)),
            )
            .order_by(Flat.id)
        ):
            flats[flat.id] = flat
    wanted = {d.flat_id for d in devices if d.flat_id is not None} - flats.keys()
    if wanted:
        for flat in session.scalars(sa.select(Flat).where(Flat.id.in_(sorted(wanted)))):
            flats[flat.id] = flat
    buildings = {
        b.id: b.name
        for b in session.scalars(
            sa.select(Building).where(
                Building.id.in_(sorted({f.building_id for f in flats.values()}))
            )
        )
    }
    units: list[dict[str, Any]] = []
    unit_of: dict[int, str] = {}
    for flat in flats.values():
        if flat.unit_id in unit_of.values():
            problems.append(f"flat {flat.unit_id!r} exists in two buildings of this gateway")
            continue
        unit_of[flat.id] = flat.unit_id
        unit: dict[str, Any] = {"unit_id": flat.unit_id, "building": buildings[flat.building_id]}
        for key, value in (
            ("floor_area_m2", flat.area_m2),
            ("rooms", flat.rooms),
            ("registered_occupants", flat.registered_occupants),
            ("rated_current_a", flat.rated_current_a),
        ):
            if value is not None:
                unit[key] = value
        units.append(unit)
    cards = [
        {"card": c.card, "unit_id": unit_of[c.flat_id]}
        for c in session.scalars(
            sa.select(CardRegistration)
            .where(CardRegistration.flat_id.in_(sorted(unit_of)))
            .order_by(CardRegistration.id)
        )
    ]
    building_name = building.name if building else None
    sections = _device_sections(devices, unit_of, building_name, problems)
    site: dict[str, Any] = {
        "site_id": _site_id(compound),
        "timezone": timezone,
        "units": units,
        "cards": cards,
        "meters": sections.pop("_meters"),
        "sensors": sections.pop("_sensors"),
        "readers": sections.pop("_readers"),
    }
    try:
        Site.model_validate(site)
    except ValidationError as exc:  # a register inconsistency: report it, ship no bad config
        problems.append(f"site: {exc.errors()[0]['msg']}")
        site = {**site, "cards": [], "meters": [], "sensors": [], "readers": []}
    rules = effective_rules(session, compound.id if compound else None)
    config = {**sections, "site": site, "rules": rules.model_dump(mode="json")}
    return Assembled(config, problems, compound.id if compound else None)


def _device_sections(
    devices: Sequence[Device],
    unit_of: dict[int, str],
    building: str | None,
    problems: list[str],
) -> dict[str, Any]:
    modbus_buses: dict[str, dict[str, Any]] = {}
    modbus_tcp: list[dict[str, Any]] = []
    dlt_buses: dict[str, dict[str, Any]] = {}
    serial_readers: list[dict[str, Any]] = []
    wiegand_readers: list[dict[str, Any]] = []
    sensors: list[dict[str, Any]] = []
    ble_source: str | None = None
    meters_placed: list[dict[str, Any]] = []
    sensors_placed: list[dict[str, Any]] = []
    readers_placed: list[dict[str, Any]] = []
    kinds: set[str] = set()
    for d in devices:
        params = dict(d.params or {})
        unit_id = unit_of.get(d.flat_id) if d.flat_id is not None else None
        what = f"{d.kind} {d.device_id!r}"
        kinds.add(d.kind)
        if d.kind == DeviceKind.METER:
            if params.get("protocol", "modbus") == "dlt645":
                address, url = params.get("address"), params.get("url")
                if not address or not url:
                    problems.append(f"{what}: a DL/T 645 meter needs address and url")
                    continue
                bus = _pick(params, _DLT645_BUS_KEYS)
                key = json.dumps(bus, sort_keys=True)
                dlt_buses.setdefault(key, {**bus, "meters": []})["meters"].append(
                    {"meter_id": d.device_id, "address": str(address)}
                )
            else:
                if params.get("slave") is None:
                    problems.append(f"{what}: a Modbus meter needs slave (its bus address)")
                    continue
                bus = {"transport": "rtu", **_pick(params, _MODBUS_BUS_KEYS)}
                if bus["transport"] == "rtu" and not bus.get("url"):
                    problems.append(f"{what}: an RTU meter needs url (the serial device)")
                    continue
                if bus["transport"] != "rtu" and not bus.get("host"):
                    problems.append(f"{what}: a {bus['transport']} meter needs host")
                    continue
                key = json.dumps(bus, sort_keys=True)
                meter = {
                    "meter_id": d.device_id,
                    "slave": params["slave"],
                    **_pick(params, _MODBUS_METER_KEYS),
                }
                modbus_buses.setdefault(key, {**bus, "meters": []})["meters"].append(meter)
            if unit_id is None:
                problems.append(f"{what} is not mapped to a flat: readings carry no unit")
            else:
                meters_placed.append({"meter_id": d.device_id, "unit_id": unit_id})
        elif d.kind == DeviceKind.CARD_READER:
            if params.get("interface", "serial") == "wiegand":
                if params.get("d0") is None or params.get("d1") is None:
                    problems.append(f"{what}: a Wiegand reader needs d0 and d1 (GPIO lines)")
                    continue
                wiegand_readers.append(
                    {
                        "reader_id": d.device_id,
                        "d0": params["d0"],
                        "d1": params["d1"],
                        **_pick(params, _WIEGAND_READER_KEYS),
                    }
                )
            else:
                if not params.get("url"):
                    problems.append(f"{what}: a serial reader needs url (device or socket://)")
                    continue
                serial_readers.append(
                    {
                        "reader_id": d.device_id,
                        "url": params["url"],
                        **_pick(params, _SERIAL_READER_KEYS),
                    }
                )
            if building is not None:
                readers_placed.append({"reader_id": d.device_id, "building": building})
        elif d.kind == DeviceKind.CHARGING_SENSOR:
            if not params.get("mac"):
                problems.append(f"{what}: a charging sensor needs mac")
                continue
            sensors.append(
                {"sensor_id": d.device_id, "mac": params["mac"], **_pick(params, ("bindkey",))}
            )
            ble_source = ble_source or params.get("source")
            location = d.location or ("unit" if unit_id else None)
            if location is None or location not in {loc.value for loc in Location}:
                problems.append(
                    f"{what}: location {d.location!r} unknown (unit, stairwell, corridor, "
                    "lobby, bike_shed): not placed"
                )
                continue
            if location == Location.UNIT and unit_id is None:
                problems.append(f"{what}: at location 'unit' but not mapped to a flat")
                continue
            placed: dict[str, Any] = {"sensor_id": d.device_id, "location": location}
            if unit_id is not None:
                placed["unit_id"] = unit_id
            if building is not None:
                placed["building"] = building
            sensors_placed.append(placed)
        else:
            problems.append(f"{what}: unknown device kind")
    sections: dict[str, Any] = {
        "_meters": meters_placed,
        "_sensors": sensors_placed,
        "_readers": readers_placed,
    }
    if DeviceKind.METER in kinds:
        # Every Modbus bus goes to "modbus" (its transport says tcp/rtu); "modbus_tcp" is the
        # older spelling of a TCP bus and is sent empty so that a stale local one goes away.
        sections["modbus"] = list(modbus_buses.values())
        sections["modbus_tcp"] = modbus_tcp
        sections["dlt645"] = list(dlt_buses.values())
    if DeviceKind.CARD_READER in kinds:
        sections["serial_readers"] = serial_readers
        sections["wiegand_readers"] = wiegand_readers
    if DeviceKind.CHARGING_SENSOR in kinds:
        sections["ble"] = {"source": ble_source or "bleak", "sensors": sensors}
    return sections


def _insert_ignoring_duplicates(session: Session, model: type[Base]) -> sa.Insert:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(model).on_conflict_do_nothing()
    raise NotImplementedError(f"unsupported database dialect {dialect!r}")


def _store(
    session: Session,
    gateway_id: str,
    config: dict[str, Any],
    problems: list[str],
    *,
    source: str,
    now: datetime,
) -> DesiredConfigRow:
    """Write ``config`` as the gateway's desired config; the version grows only when the hash
    changes (a new row starts at 1)."""
    digest = config_hash(config)
    session.execute(
        _insert_ignoring_duplicates(session, DesiredConfigRow).values(
            gateway_id=gateway_id,
            version=1,
            hash=digest,
            config=config,
            source=source,
            problems={"items": problems},
            issued_at=now,
        )
    )
    row = session.scalars(
        sa.select(DesiredConfigRow)
        .where(DesiredConfigRow.gateway_id == gateway_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if source == SOURCE_SITE and row.source == SOURCE_OVERRIDE:
        return row  # an override committed while this assembly ran: it wins
    if row.hash != digest:
        row.version += 1
        row.hash = digest
        row.config = config
        row.issued_at = now
    row.source = source
    row.problems = {"items": problems}
    return row


def refresh(
    session: Session, gateway_id: str, *, timezone: str, now: datetime | None = None
) -> DesiredConfigRow | None:
    """Re-assemble one gateway's config (not while an override is in place)."""
    gateway = session.get(Gateway, gateway_id)
    if gateway is None:
        return None
    existing = session.get(DesiredConfigRow, gateway_id)
    if existing is not None and existing.source == SOURCE_OVERRIDE:
        return existing
    assembled = assemble(session, gateway, timezone=timezone)
    return _store(
        session,
        gateway_id,
        assembled.config,
        assembled.problems,
        source=SOURCE_SITE,
        now=now or utcnow(),
    )


def set_override(
    session: Session, gateway_id: str, config: dict[str, Any], *, now: datetime | None = None
) -> DesiredConfigRow:
    """Push ``config`` as it is (an admin's escape hatch, and how tests push a bad config).
    Only the keys of the contract are accepted; their contents are the gateway's to judge."""
    unknown = set(config) - DESIRED_CONFIG_KEYS
    if unknown:
        raise ConfigInputError(
            f"unknown config keys {sorted(unknown)}; allowed: {sorted(DESIRED_CONFIG_KEYS)}"
        )
    try:
        text = json.dumps(config, allow_nan=False)
    except ValueError as exc:
        raise ConfigInputError(f"config is not plain JSON: {exc}") from exc
    if "\\u0000" in text:
        raise ConfigInputError("config contains a NUL character")
    return _store(session, gateway_id, config, [], source=SOURCE_OVERRIDE, now=now or utcnow())


def clear_override(session: Session, gateway_id: str, *, timezone: str) -> DesiredConfigRow | None:
    row = session.get(DesiredConfigRow, gateway_id)
    if row is not None and row.source == SOURCE_OVERRIDE:
        row.source = SOURCE_SITE
    return refresh(session, gateway_id, timezone=timezone)


def enrolled_gateways(session: Session) -> list[str]:
    return list(
        session.scalars(
            sa.select(BrokerAccount.gateway_id)
            .where(BrokerAccount.revoked_at.is_(None))
            .order_by(BrokerAccount.gateway_id)
        )
    )


def as_message(row: DesiredConfigRow) -> DesiredConfig:
    return DesiredConfig(
        gw=row.gateway_id,
        version=row.version,
        hash=row.hash,
        issued_at=row.issued_at,
        config=row.config,
    )


def record_config_state(session: Session, message: ConfigState, received_at: datetime) -> None:
    """Store what a gateway reported about its config; an older report never overrides a
    newer one (reports are ordered by their envelope ``ts``)."""
    values: dict[str, Any] = {
        "status": message.status,
        "version": message.version,
        "hash": message.hash,
        "applied_version": message.applied_version,
        "applied_hash": message.applied_hash,
        "reason": message.reason,
        "reported_at": received_at,
        "source_ts": message.ts,
        "message_id": message.id,
    }
    if message.status in ("rejected", "rolled_back"):
        values |= {
            "last_rejected_version": message.version,
            "last_rejection_reason": message.reason,
            "last_rejected_at": message.ts,
        }
    session.execute(
        _insert_ignoring_duplicates(session, GatewayConfigState).values(
            gateway_id=message.gw, **values
        )
    )
    row = session.scalars(
        sa.select(GatewayConfigState)
        .where(GatewayConfigState.gateway_id == message.gw)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if message.ts < row.source_ts:
        return
    if row.message_id != message.id:  # (the same id: the row was inserted from this message)
        for key, value in values.items():
            setattr(row, key, value)
    _republish_if_behind(session, message)


def _republish_if_behind(session: Session, message: ConfigState) -> None:
    """A gateway's latest report concerns an older desired config than the one recorded as
    published: either the newer one is still on its way, or the broker's retained copy is the
    older one (with ``serve --workers N`` two publishers can race, and the one that read the
    older version may send it last). Either way the newest is marked unpublished, so the
    publisher sends it again on its next round: a duplicate costs one message, a stale retained
    config would keep a gateway (or its replacement) on the old one until the next change."""
    desired = DesiredConfigRow
    done = session.execute(
        sa.update(desired)
        .where(
            desired.gateway_id == message.gw,
            desired.published_version == desired.version,
            desired.version > message.version,
        )
        .values(published_version=None)
    )
    if getattr(done, "rowcount", 0):
        log.info(
            "gateway %s reports desired config v%d, older than the one published: "
            "publishing the newest again",
            message.gw,
            message.version,
        )


# --- The publisher ---------------------------------------------------------------------------


@dataclass
class Touched:
    """What a transaction changed in the register, as far as configs are concerned."""

    compounds: set[int] = field(default_factory=set)
    buildings: set[int] = field(default_factory=set)
    flats: set[int] = field(default_factory=set)
    gateways: set[str] = field(default_factory=set)
    everything: bool = False  # could not tell what: re-assemble all

    def __bool__(self) -> bool:
        return bool(
            self.everything or self.compounds or self.buildings or self.flats or self.gateways
        )

    def update(self, other: Touched) -> None:
        self.everything |= other.everything
        self.compounds |= other.compounds
        self.buildings |= other.buildings
        self.flats |= other.flats
        self.gateways |= other.gateways


_KEYS: dict[type[Base], tuple[str, ...]] = {
    Device: ("compound_id",),
    CompoundRules: ("compound_id",),
    Building: ("compound_id",),
    Entrance: ("building_id",),
    Flat: ("building_id",),
    CardRegistration: ("flat_id",),
}
_WATCHED = tuple(_KEYS)


def _old_and_new(obj: Base, attr: str) -> list[Any]:
    """The attribute's value and, when it changed in this flush, its previous value."""
    history = sa.inspect(obj).attrs[attr].history
    return [v for v in (*history.added, *history.unchanged, *history.deleted) if v is not None]


def touched_by(session: Session) -> Touched:
    """The parts of the register the session's pending flush changes."""
    touched = Touched()
    for obj in (*session.new, *session.dirty, *session.deleted):
        # An attribute that is not loaded has no history (and is not loaded here): then we
        # cannot tell which compound changed.
        if isinstance(obj, _WATCHED) and not any(
            _old_and_new(obj, key) for key in _KEYS[type(obj)]
        ):
            touched.everything = True
        if isinstance(obj, Device):
            touched.compounds.update(_old_and_new(obj, "compound_id"))
            touched.gateways.update(_old_and_new(obj, "gateway_id"))
        elif isinstance(obj, CompoundRules | Building):
            touched.compounds.update(_old_and_new(obj, "compound_id"))
        elif isinstance(obj, Entrance | Flat):
            touched.buildings.update(_old_and_new(obj, "building_id"))
        elif isinstance(obj, CardRegistration):
            touched.flats.update(_old_and_new(obj, "flat_id"))
        elif isinstance(obj, Gateway) and sa.inspect(obj).attrs.entrance_id.history.has_changes():
            touched.gateways.add(obj.gateway_id)
    return touched


def affected_gateways(session: Session, touched: Touched) -> list[str]:
    """The enrolled gateways whose config may depend on what was touched."""
    compounds = set(touched.compounds)
    if touched.flats:
        touched.buildings |= set(
            session.scalars(sa.select(Flat.building_id).where(Flat.id.in_(sorted(touched.flats))))
        )
    if touched.buildings:
        compounds |= set(
            session.scalars(
                sa.select(Building.compound_id).where(Building.id.in_(sorted(touched.buildings)))
            )
        )
    ids = set(touched.gateways)
    if compounds:
        ids |= set(
            session.scalars(
                sa.select(Gateway.gateway_id)
                .join(Entrance, Entrance.id == Gateway.entrance_id)
                .join(Building, Building.id == Entrance.building_id)
                .where(Building.compound_id.in_(sorted(compounds)))
            )
        )
    enrolled = set(enrolled_gateways(session))
    return sorted(ids & enrolled)


@contextlib.contextmanager
def collect_touched(session: Session) -> Iterator[Touched]:
    """What the commits of ``session`` change in the register, while the block runs (for a
    writer without a running :class:`ConfigPublisher`, such as ``fleet-manager import``)."""
    touched = Touched()

    def after_flush(flushed: Session, _ctx: Any) -> None:
        touched.update(touched_by(flushed))

    sa.event.listen(session, "after_flush", after_flush)
    try:
        yield touched
    finally:
        sa.event.remove(session, "after_flush", after_flush)


def refresh_touched(session: Session, touched: Touched, *, timezone: str) -> list[str]:
    """Re-assemble the configs ``touched`` may change (every enrolled gateway's when it cannot
    tell); the gateways whose desired version changed. The rows are stored unpublished: a
    running fleet manager's publisher sends them on its next round."""
    ids = enrolled_gateways(session) if touched.everything else affected_gateways(session, touched)
    changed = []
    for gateway_id in ids:
        before = session.get(DesiredConfigRow, gateway_id)
        version = before.version if before is not None else None
        row = refresh(session, gateway_id, timezone=timezone)
        if row is not None and row.version != version:
            changed.append(gateway_id)
    return changed


class ConfigPublisher:
    """Keeps the broker's retained ``down/config`` of every enrolled gateway current.

    Register changes committed through this app's sessions re-assemble the configs of the
    compounds they touch (an ORM hook); a full sweep runs at start and every
    ``FLEET_CONFIG_SWEEP_S`` for changes made elsewhere (another process, bulk SQL).
    """

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], *, db: DbThreads
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._db = db
        self._wake = asyncio.Event()
        self._sweep = True  # assemble everything once at start
        self._touched = Touched()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0
        self.refreshed = 0
        self._listeners: list[tuple[str, Callable[..., None]]] = []

    def watch(self) -> None:
        """Re-assemble after any commit that changes the register (in any thread)."""

        def after_flush(session: Session, _ctx: Any) -> None:
            touched = touched_by(session)
            if touched:
                session.info.setdefault("fleet_register_touched", Touched()).update(touched)

        def after_commit(session: Session) -> None:
            touched = session.info.pop("fleet_register_touched", None)
            if touched:
                self.request(touched=touched)

        def after_rollback(session: Session) -> None:
            session.info.pop("fleet_register_touched", None)

        self._listeners = [
            ("after_flush", after_flush),
            ("after_commit", after_commit),
            ("after_soft_rollback", lambda session, _tx: after_rollback(session)),
        ]
        for name, fn in self._listeners:
            sa.event.listen(self._sessions, name, fn)

    def unwatch(self) -> None:
        for name, fn in self._listeners:
            sa.event.remove(self._sessions, name, fn)
        self._listeners = []

    def request(self, *, sweep: bool = False, touched: Touched | None = None) -> None:
        """Ask for a publish round (thread-safe): ``touched`` parts of the register are
        re-assembled first, or everything with ``sweep``."""
        with self._lock:
            if sweep:
                self._sweep = True
            if touched:
                self._touched.update(touched)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        return aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            username=s.mqtt_username,
            password=s.mqtt_password,
            keepalive=30,
            tls_context=ssl.create_default_context() if s.mqtt_tls else None,
        )

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = Backoff(1.0, self._settings.config_publish_retry_s)
        next_sweep = time.monotonic() + self._settings.config_sweep_s
        while True:
            if time.monotonic() >= next_sweep:
                self.request(sweep=True)
                next_sweep = time.monotonic() + self._settings.config_sweep_s
            # Cleared before the round: a commit that lands while the round runs sets it again
            # and is published at once, not after the retry delay.
            self._wake.clear()
            try:
                await self._round()
                backoff.reset()
                delay = self._settings.config_publish_retry_s
            except (aiomqtt.MqttError, sa.exc.SQLAlchemyError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning("desired config publishing failed (%s); retrying in %.1f s", exc, delay)
                self._wake.clear()  # the failed work is queued again; wait out the backoff
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(delay, max(0.0, next_sweep - time.monotonic()))):
                    await self._wake.wait()

    async def _round(self) -> None:
        with self._lock:
            sweep, self._sweep = self._sweep, False
            touched, self._touched = self._touched, Touched()
        if sweep or touched:
            try:
                await self._db.run(self._refresh, None if sweep else touched)
            except BaseException:
                self.request(sweep=sweep, touched=touched)  # not lost: retried next round
                raise
        pending = await self._db.run(self._unpublished)
        if not pending:
            return
        async with self._client() as client:
            for message in pending:
                await client.publish(
                    down(message.gw, Down.CONFIG), message.model_dump_json(), qos=1, retain=True
                )
                await self._db.run(self._mark_published, message.gw, message.version)
                self.published += 1
                log.info("published desired config v%d of %s", message.version, message.gw)

    def _refresh(self, touched: Touched | None) -> None:
        """Re-assemble the configs of ``touched`` (every enrolled gateway's when None)."""
        tz = self._settings.display_timezone
        with self._sessions() as session:
            ids = (
                enrolled_gateways(session)
                if touched is None or touched.everything
                else affected_gateways(session, touched)
            )
        for gateway_id in ids:
            with self._sessions() as session, session.begin():
                refresh(session, gateway_id, timezone=tz)
            self.refreshed += 1

    def _unpublished(self) -> list[DesiredConfig]:
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(DesiredConfigRow)
                .join(BrokerAccount, BrokerAccount.gateway_id == DesiredConfigRow.gateway_id)
                .where(
                    BrokerAccount.revoked_at.is_(None),
                    sa.or_(
                        DesiredConfigRow.published_version.is_(None),
                        DesiredConfigRow.published_version != DesiredConfigRow.version,
                    ),
                )
                .order_by(DesiredConfigRow.gateway_id)
            )
            return [as_message(r) for r in rows]

    def _mark_published(self, gateway_id: str, version: int) -> None:
        with self._sessions() as session, session.begin():
            session.execute(
                sa.update(DesiredConfigRow)
                .where(
                    DesiredConfigRow.gateway_id == gateway_id,
                    DesiredConfigRow.version == version,
                )
                .values(published_version=version, published_at=utcnow())
            )
