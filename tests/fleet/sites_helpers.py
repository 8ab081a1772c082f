"""A site register with two compounds, users of every role in each, and their tokens.

Compound A and compound B sit in different street offices of one district. Each has a building,
an entrance, a flat, a device, a card registration and a gateway mapped to the entrance (so its
alerts belong to the compound). Users ``<role>_a`` work in A, ``<role>_b`` in B; officers are
scoped through their street office, the others through their compound list.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from fleet.accounts import create_api_key, create_user
from fleet.audit import CLI_ACTOR
from fleet.auth import create_access_token
from fleet.db import make_engine, make_sessionmaker, utcnow
from fleet.models import (
    Building,
    CardRegistration,
    Compound,
    Device,
    District,
    Entrance,
    Flat,
    Gateway,
    Role,
    StreetOffice,
    User,
)
from fleet.settings import Settings
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import alert, birth, eventually, gateway_id, login, publish, wire

ROLES = ("admin", "installer", "property", "officer")
PASSWORD = "role-test-password"


@dataclass
class Place:
    """The ids of one compound's objects."""

    street_office: int
    compound: int
    building: int
    entrance: int
    flat: int
    device: int
    card: int
    gateway: str
    alert: str


@dataclass
class Seed:
    settings: Settings
    sessions: sessionmaker[Session]
    district: int
    a: Place
    b: Place
    headers: dict[str, dict[str, str]] = field(default_factory=dict)  # "installer_a" -> auth

    def auth(self, role: str, place: str = "a") -> dict[str, str]:
        return self.headers["admin" if role == "admin" else f"{role}_{place}"]

    # Fresh objects in compound A, for routes that delete what they are given.

    def _add(self, row: object) -> int:
        with self.sessions() as session:
            session.add(row)
            session.commit()
            return int(row.id)  # type: ignore[attr-defined]

    def new_district(self) -> int:
        return self._add(District(name=f"d-{uuid.uuid4().hex[:8]}"))

    def new_street_office(self) -> int:
        return self._add(StreetOffice(district_id=self.district, name=uuid.uuid4().hex[:8]))

    def new_compound(self) -> int:
        return self._add(Compound(street_office_id=self.a.street_office, name=uuid.uuid4().hex))

    def new_building(self) -> int:
        return self._add(Building(compound_id=self.a.compound, name=uuid.uuid4().hex[:8]))

    def new_entrance(self) -> int:
        return self._add(Entrance(building_id=self.a.building, name=uuid.uuid4().hex[:8]))

    def new_flat(self) -> int:
        return self._add(Flat(building_id=self.a.building, unit_id=uuid.uuid4().hex[:8]))

    def new_device(self) -> int:
        return self._add(
            Device(
                compound_id=self.a.compound,
                kind="meter",
                device_id=uuid.uuid4().hex[:8],
                params={},
            )
        )

    def new_user(self) -> int:
        with self.sessions() as session:
            user = create_user(
                session,
                CLI_ACTOR,
                username=f"u-{uuid.uuid4().hex[:10]}",
                password=PASSWORD,
                role=Role.INSTALLER,
                compounds=[self.a.compound],
            )
            session.commit()
            return user.id

    def new_api_key(self) -> tuple[int, int]:
        """A key of a fresh user: (user id, key id)."""
        user_id = self.new_user()
        with self.sessions() as session:
            owner = session.get(User, user_id)
            assert owner is not None
            key, _ = create_api_key(session, CLI_ACTOR, owner, name="test")
            session.commit()
            return user_id, key.id

    def new_card(self) -> int:
        return self._add(
            CardRegistration(flat_id=self.a.flat, card=uuid.uuid4().hex, created_at=utcnow())
        )


def _place(session: Session, district: int, name: str, gw: str) -> Place:
    office = StreetOffice(district_id=district, name=f"街道{name}")
    session.add(office)
    session.flush()
    compound = Compound(street_office_id=office.id, name=f"小区{name}", code=f"C-{name}")
    session.add(compound)
    session.flush()
    building = Building(compound_id=compound.id, name="1号楼", floors=6)
    session.add(building)
    session.flush()
    entrance = Entrance(building_id=building.id, name="1单元")
    session.add(entrance)
    session.flush()
    flat = Flat(
        building_id=building.id,
        entrance_id=entrance.id,
        unit_id="1-201",
        floor=2,
        area_m2=85.0,
        rooms=3,
        registered_occupants=2,
        rated_current_a=40.0,
    )
    session.add(flat)
    session.flush()
    session.execute(
        sa.update(Gateway).where(Gateway.gateway_id == gw).values(entrance_id=entrance.id)
    )
    device = Device(
        compound_id=compound.id,
        gateway_id=gw,
        kind="meter",
        device_id="m-201",
        flat_id=flat.id,
        params={"address": 1},
    )
    card = CardRegistration(flat_id=flat.id, card="ab" * 16, created_at=utcnow())
    session.add_all([device, card])
    session.flush()
    return Place(
        street_office=office.id,
        compound=compound.id,
        building=building.id,
        entrance=entrance.id,
        flat=flat.id,
        device=device.id,
        card=card.id,
        gateway=gw,
        alert=uuid.uuid4().hex,
    )


@contextlib.contextmanager
def engine_sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def seeded(
    client: httpx.AsyncClient, broker: BrokerEndpoint, settings: Settings
) -> AsyncIterator[Seed]:
    """Seed the register of the running app behind ``client``; see the module docstring."""
    gw_a, gw_b = gateway_id(), gateway_id()
    admin = await login(client)
    await publish(broker, wire(birth(gw_a)), wire(birth(gw_b)))

    async def gateways_known() -> bool:
        r = await client.get("/api/gateways", headers=admin)
        ids = {g["gateway_id"] for g in r.json()["items"]}
        return {gw_a, gw_b} <= ids

    await eventually(gateways_known, "both gateways' births")
    with engine_sessions(settings.database_url) as sessions:
        with sessions() as session:
            district = District(name=f"区-{uuid.uuid4().hex[:6]}")
            session.add(district)
            session.flush()
            a = _place(session, district.id, "A", gw_a)
            b = _place(session, district.id, "B", gw_b)
            for place, letter in ((a, "a"), (b, "b")):
                for role in ("installer", "property"):
                    create_user(
                        session,
                        CLI_ACTOR,
                        username=f"{role}_{letter}",
                        password=PASSWORD,
                        role=Role(role),
                        compounds=[place.compound],
                    )
                create_user(
                    session,
                    CLI_ACTOR,
                    username=f"officer_{letter}",
                    password=PASSWORD,
                    role=Role.OFFICER,
                    street_office_id=place.street_office,
                )
            session.commit()
            district_id = district.id
        seed = Seed(settings=settings, sessions=sessions, district=district_id, a=a, b=b)
        seed.headers["admin"] = admin
        for role in ("installer", "property", "officer"):
            for letter in ("a", "b"):
                token = create_access_token(settings, f"{role}_{letter}").token
                seed.headers[f"{role}_{letter}"] = {"Authorization": f"Bearer {token}"}
        await publish(broker, wire(alert(gw_a, a.alert)), wire(alert(gw_b, b.alert)))

        async def alerts_stored() -> bool:
            r = await client.get("/api/alerts", headers=admin, params={"limit": 500})
            ids = {x["alert_id"] for x in r.json()["items"]}
            return {a.alert, b.alert} <= ids

        await eventually(alerts_stored, "both alerts")
        yield seed
