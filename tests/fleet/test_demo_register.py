"""The demo's site register: its building, flats and gateway mapping, and one user per role
scoped to the demo compound, so every role's pages show the demo building's data."""

from __future__ import annotations

import sqlalchemy as sa

from fleet.db import make_engine, migrate
from fleet.demo import DEMO_COMPOUND_CODE, seed_demo_register
from fleet.models import Compound, Flat, Gateway, User

SITE = {
    "units": [
        {"unit_id": u, "building": "1", "floor_area_m2": 60.0, "rooms": 2,
         "registered_occupants": 2, "rated_current_a": 40.0}
        for u in ("1-101", "1-102", "1-201", "1-202")
    ]
}  # fmt: skip


def test_the_demo_register_is_seeded_once_with_a_user_per_role(database_url: str) -> None:
    migrate(database_url)
    seed_demo_register(database_url, SITE, "gw-demo-01")
    seed_demo_register(database_url, SITE, "gw-demo-01")  # a restarted demo adds nothing
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            compounds = conn.execute(sa.select(Compound.id, Compound.code)).all()
            assert [c.code for c in compounds] == [DEMO_COMPOUND_CODE]
            flats = conn.execute(sa.select(Flat.unit_id, Flat.floor)).all()
            assert sorted(flats) == [("1-101", 1), ("1-102", 1), ("1-201", 2), ("1-202", 2)]
            gateway = conn.execute(sa.select(Gateway.entrance_id)).scalar_one()
            assert gateway is not None
            roles = dict(conn.execute(sa.select(User.username, User.role)).all())
            assert {roles["officer"], roles["property"], roles["installer"]} == {
                "officer", "property", "installer",
            }  # fmt: skip
    finally:
        engine.dispose()
