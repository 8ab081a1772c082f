"""How long re-assembling every gateway's desired config takes (what a register change costs).

    python bench/desired_sweep.py --gateways 2000 --flats 24 --devices 30
    python bench/desired_sweep.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench

Builds a register of N enrolled gateways (one entrance each, F flats, D devices: meters,
readers and charging sensors with complete params), then times the first sweep (every config
new, version 1), an unchanged sweep (same hashes: nothing written but the read), and a sweep
after one compound's thresholds changed. Prints a table. A fresh SQLite file is used unless
--database-url names an empty database.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from fleet.db import make_engine, make_sessionmaker, migrate, utcnow  # noqa: E402
from fleet.desired import enrolled_gateways, refresh  # noqa: E402
from fleet.models import (  # noqa: E402
    BrokerAccount,
    Building,
    Compound,
    CompoundRules,
    DesiredConfigRow,
    Device,
    District,
    Entrance,
    Flat,
    Gateway,
    StreetOffice,
)

TZ = "Asia/Shanghai"
GATEWAYS_PER_COMPOUND = 20


def build(url: str, gateways: int, flats: int, devices: int) -> None:
    migrate(url)
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    with sessions() as session, session.begin():
        district = District(name="bench")
        session.add(district)
        session.flush()
        office = StreetOffice(district_id=district.id, name="bench")
        session.add(office)
        session.flush()
        compound: Compound | None = None
        for g in range(gateways):
            if g % GATEWAYS_PER_COMPOUND == 0:
                compound = Compound(street_office_id=office.id, name=f"c{g}", code=f"c{g}")
                session.add(compound)
                session.flush()
            assert compound is not None
            building = Building(compound_id=compound.id, name=f"b{g}")
            session.add(building)
            session.flush()
            entrance = Entrance(building_id=building.id, name="1")
            session.add(entrance)
            session.flush()
            gw = f"gw-{g:05d}"
            session.add(Gateway(gateway_id=gw, entrance_id=entrance.id, first_seen=now))
            session.flush()
            session.add(BrokerAccount(gateway_id=gw, username=gw, mode="none", created_at=now))
            flat_rows = [
                Flat(building_id=building.id, entrance_id=entrance.id, unit_id=f"{g}-{f}", rooms=2)
                for f in range(flats)
            ]
            session.add_all(flat_rows)
            session.flush()
            for d in range(devices):
                kind = ("meter", "card_reader", "charging_sensor")[d % 3]
                params: dict[str, object] = {
                    "meter": {"slave": d + 1, "url": "/dev/ttyUSB0"},
                    "card_reader": {"url": f"/dev/ttyS{d}"},
                    "charging_sensor": {"mac": f"AA:BB:CC:00:{g % 256:02X}:{d:02X}"},
                }[kind]
                session.add(
                    Device(
                        compound_id=compound.id,
                        gateway_id=gw,
                        kind=kind,
                        device_id=f"{gw}-d{d}",
                        flat_id=flat_rows[d % flats].id if kind != "charging_sensor" else None,
                        location="stairwell" if kind == "charging_sensor" else None,
                        params=params,
                    )
                )
    engine.dispose()


def sweep(url: str) -> tuple[float, int]:
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    started = time.perf_counter()
    with sessions() as session:
        ids = enrolled_gateways(session)
    for gateway_id in ids:
        with sessions() as session, session.begin():
            refresh(session, gateway_id, timezone=TZ)
    elapsed = time.perf_counter() - started
    with sessions() as session:
        versions = session.scalar(sa.select(sa.func.sum(DesiredConfigRow.version))) or 0
    engine.dispose()
    return elapsed, int(versions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=2000)
    parser.add_argument("--flats", type=int, default=24)
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        t0 = time.perf_counter()
        build(url, args.gateways, args.flats, args.devices)
        print(
            f"register built in {time.perf_counter() - t0:.1f} s: {args.gateways} gateways, "
            f"{args.flats} flats and {args.devices} devices each"
        )
        rows = []
        first, v1 = sweep(url)
        rows.append(("first sweep (all new)", first, v1))
        same, v2 = sweep(url)
        rows.append(("unchanged sweep", same, v2))
        engine = make_engine(url)
        with make_sessionmaker(engine)() as session, session.begin():
            compound_id = session.scalar(sa.select(Compound.id).order_by(Compound.id).limit(1))
            session.add(
                CompoundRules(
                    compound_id=compound_id,
                    rules={"overload": {"sustain_s": 600}},
                    updated_at=utcnow(),
                    updated_by="bench",
                )
            )
        engine.dispose()
        changed, v3 = sweep(url)
        rows.append(("one compound's rules changed", changed, v3))
        print(f"{'sweep':<32}{'seconds':>10}{'ms/gateway':>12}{'sum(version)':>14}")
        for name, seconds, versions in rows:
            per = 1000 * seconds / args.gateways
            print(f"{name:<32}{seconds:>10.2f}{per:>12.2f}{versions:>14}")


if __name__ == "__main__":
    main()
