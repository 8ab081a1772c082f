"""Site and users for the health tests: two compounds, one entrance each, users by role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from fleet.accounts import create_user
from fleet.audit import CLI_ACTOR
from fleet.db import make_engine, make_sessionmaker, migrate
from fleet.models import Building, Compound, District, Entrance, Gateway, Role, StreetOffice

PASSWORD = "health-test-pass-1"


@dataclass(frozen=True)
class Site:
    compound_a: int
    compound_b: int
    entrance_a: int
    entrance_b: int


def seed_site(database_url: str) -> Site:
    """Compounds A and B, and users property_a, installer_a, officer_a, property_b."""
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            district = District(name="示范区")
            session.add(district)
            session.flush()
            office = StreetOffice(district_id=district.id, name="示范街道")
            session.add(office)
            session.flush()
            ids = []
            for name in ("A", "B"):
                compound = Compound(street_office_id=office.id, name=f"小区{name}")
                session.add(compound)
                session.flush()
                building = Building(compound_id=compound.id, name="1", floors=6)
                session.add(building)
                session.flush()
                entrance = Entrance(building_id=building.id, name="1")
                session.add(entrance)
                session.flush()
                ids.append((compound.id, entrance.id))
            for username, role, compound_id in (
                ("property_a", Role.PROPERTY, ids[0][0]),
                ("installer_a", Role.INSTALLER, ids[0][0]),
                ("officer_a", Role.OFFICER, ids[0][0]),
                ("property_b", Role.PROPERTY, ids[1][0]),
            ):
                create_user(
                    session, CLI_ACTOR, username=username, password=PASSWORD, role=role,
                    compounds=[compound_id],
                )  # fmt: skip
    finally:
        engine.dispose()
    return Site(ids[0][0], ids[1][0], ids[0][1], ids[1][1])


def place_gateway(database_url: str, gateway_id: str, entrance_id: int) -> None:
    """What an installer does when mounting a gateway: map it to its entrance."""
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            if session.get(Gateway, gateway_id) is None:
                session.add(
                    Gateway(gateway_id=gateway_id, online=False, first_seen=_now(), seq_gaps=0)
                )
                session.flush()
            session.execute(
                sa.update(Gateway)
                .where(Gateway.gateway_id == gateway_id)
                .values(entrance_id=entrance_id)
            )
    finally:
        engine.dispose()


def _now() -> Any:
    from fleet.db import utcnow  # noqa: PLC0415

    return utcnow()


async def login_as(client: httpx.AsyncClient, username: str) -> dict[str, str]:
    r = await client.post("/api/auth/token", data={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}
