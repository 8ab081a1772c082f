"""Web pages at scale: how fast the console's pages answer with 2,000 gateways and 10,000 alerts.

Seeds a fresh database (SQLite in a temporary directory, or a new database on the PostgreSQL
server given with --db, dropped afterwards) with a site register of --gateways entrances (one
gateway each, three entrances a building, fifteen buildings a compound, --floors floors of two
flats per entrance), --alerts alerts spread over those flats with their lifecycle steps in the
audit log, meter readings and card swipes. Then starts the fleet manager as production does
(``python -m fleet serve`` and an embedded broker, separate processes), signs in through the
login form as the admin (who sees every compound) and times --requests sequential GETs of each
page after --warmup untimed ones.

    uv run python bench/web_pages_bench.py
    uv run python bench/web_pages_bench.py --db postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from _procs import free_port, proc, wait_port

from fleet.models import (
    Alert,
    AuditEntry,
    Building,
    CardSwipe,
    Compound,
    District,
    Entrance,
    Flat,
    Gateway,
    MeterReading,
    StreetOffice,
)

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-key-that-is-long-enough-0123456789"
ADMIN_PASSWORD = "bench-pass-123"
ENTRANCES_PER_BUILDING = 3
BUILDINGS_PER_COMPOUND = 15
FLATS_PER_FLOOR = 2  # per entrance
KINDS = ("ebike_charging", "ebike_charging_suspected", "suspected_group_rental", "overload")
CATEGORY = {
    "ebike_charging": "fire",
    "ebike_charging_suspected": "fire",
    "suspected_group_rental": "rental",
    "overload": "fire",
}
# (status, outcome, audit steps): the mix of a street office's case list.
STATUSES = (
    ("new", None, ()),
    ("acknowledged", None, ("acknowledge",)),
    ("dispatched", None, ("acknowledge", "dispatch")),
    ("confirmed", "confirmed", ("acknowledge", "dispatch", "confirm")),
    ("rectifying", "confirmed", ("acknowledge", "dispatch", "confirm", "rectify")),
    ("closed", "confirmed", ("acknowledge", "dispatch", "confirm", "rectify", "close")),
    ("false_alarm", "false_alarm", ("acknowledge", "dispatch", "false_alarm")),
)


@contextlib.contextmanager
def database(db: str | None, work: Path) -> Iterator[str]:
    """SQLite in ``work``, or a new database on the given PostgreSQL server (dropped after)."""
    if db is None:
        yield f"sqlite:///{work / 'fleet.db'}"
        return
    admin = sa.create_engine(db, isolation_level="AUTOCOMMIT")
    name = f"bench_web_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(db).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _chunks(rows: list[dict[str, Any]], size: int = 5000) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def seed(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The register, gateways, alerts (with audit steps), readings and swipes; returns the
    ids of the pages to time (the busiest building and flat, a charging alert with a curve)."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    engine = sa.create_engine(database_url)
    ids: dict[str, Any] = {}
    try:
        with engine.begin() as conn:

            def insert(model: Any, rows: list[dict[str, Any]]) -> None:
                for chunk in _chunks(rows):
                    conn.execute(sa.insert(model), chunk)

            district = conn.execute(
                sa.insert(District).values(name="压测区").returning(District.id)
            ).scalar_one()
            office = conn.execute(
                sa.insert(StreetOffice)
                .values(district_id=district, name="压测街道")
                .returning(StreetOffice.id)
            ).scalar_one()
            n_buildings = -(-args.gateways // ENTRANCES_PER_BUILDING)
            n_compounds = -(-n_buildings // BUILDINGS_PER_COMPOUND)
            insert(
                Compound,
                [
                    {"street_office_id": office, "name": f"压测小区{c:03d}", "code": f"bench-{c}"}
                    for c in range(n_compounds)
                ],
            )
            compounds = list(conn.scalars(sa.select(Compound.id).order_by(Compound.id)))
            insert(
                Building,
                [
                    {
                        "compound_id": compounds[b // BUILDINGS_PER_COMPOUND],
                        "name": f"{b % BUILDINGS_PER_COMPOUND + 1}号楼",
                        "floors": args.floors,
                    }
                    for b in range(n_buildings)
                ],
            )
            buildings = list(conn.scalars(sa.select(Building.id).order_by(Building.id)))
            insert(
                Entrance,
                [
                    {
                        "building_id": buildings[e // ENTRANCES_PER_BUILDING],
                        "name": f"{e % 3 + 1}单元",
                    }
                    for e in range(args.gateways)
                ],
            )
            entrances = conn.execute(
                sa.select(Entrance.id, Entrance.building_id).order_by(Entrance.id)
            ).all()
            flats: list[dict[str, Any]] = []
            for index, (entrance, building) in enumerate(entrances):
                for floor in range(1, args.floors + 1):
                    for k in range(FLATS_PER_FLOOR):
                        room = (index % ENTRANCES_PER_BUILDING) * FLATS_PER_FLOOR + k + 1
                        flats.append(
                            {
                                "building_id": building,
                                "entrance_id": entrance,
                                "unit_id": f"{floor}{room:02d}",
                                "floor": floor,
                                "area_m2": 60.0 + room * 5,
                                "rooms": 2 + room % 2,
                                "registered_occupants": 2,
                                "rated_current_a": 40.0,
                            }
                        )
            insert(Flat, flats)
            gateways = []
            for i, (entrance, _) in enumerate(entrances):
                online = rng.random() > args.offline_share
                gateways.append(
                    {
                        "gateway_id": f"gw-{i:05d}",
                        "entrance_id": entrance,
                        "agent_version": "0.1.0",
                        "session": 1,
                        "last_seq": 100,
                        "online": online,
                        "last_seen": now - timedelta(seconds=5 if online else 3600 * (1 + i % 48)),
                        "last_birth_at": now - timedelta(days=3),
                        "last_death_at": None if online else now - timedelta(hours=1 + i % 48),
                        "death_reason": None if online else "connection_lost",
                        "offline_reason": None if online else "death",
                        "first_seen": now - timedelta(days=30),
                        "seq_gaps": 0,
                    }
                )
            insert(Gateway, gateways)
            gateway_of_entrance = {g["entrance_id"]: g["gateway_id"] for g in gateways}
            compound_of_building = {
                int(b): int(c)
                for b, c in conn.execute(sa.select(Building.id, Building.compound_id))
            }
            flat_rows: list[tuple[int, int, int, str]] = [
                (f, b, e or 0, u)
                for f, b, e, u in conn.execute(
                    sa.select(Flat.id, Flat.building_id, Flat.entrance_id, Flat.unit_id)
                )
            ]
            # A tenth of the alerts in one building: the worst building page to draw.
            hot_building = buildings[len(buildings) // 2]
            hot = [f for f in flat_rows if f[1] == hot_building]
            alerts: list[dict[str, Any]] = []
            audit: list[dict[str, Any]] = []
            for i in range(args.alerts):
                flat_id, building, entrance, unit = rng.choice(hot if i % 10 == 0 else flat_rows)
                kind = KINDS[i % len(KINDS)]
                status, outcome, steps = STATUSES[rng.randrange(len(STATUSES))]
                raised = now - timedelta(minutes=rng.randrange(1, 180 * 24 * 60))
                alert_id = uuid.uuid4().hex
                gateway = gateway_of_entrance[entrance]
                at = {step: raised + timedelta(hours=n + 1) for n, step in enumerate(steps)}
                alerts.append(
                    {
                        "alert_id": alert_id,
                        "kind": kind,
                        "category": CATEGORY[kind],
                        "severity": ("low", "medium", "high")[i % 3],
                        "state": "cleared" if status in ("closed", "false_alarm") else "open",
                        "unit_id": unit,
                        "building": None,
                        "meter_id": f"m-{unit}" if kind != "suspected_group_rental" else None,
                        "reader_id": "r-1" if kind == "suspected_group_rental" else None,
                        "gateway_id": gateway,
                        "raised_at": raised,
                        "cleared_at": raised + timedelta(hours=2) if status == "closed" else None,
                        "evidence": {"peak_power_w": 320.0, "plateau_minutes": 60}
                        if kind.startswith("ebike")
                        else {"swipes_per_day": 40, "swipes_per_day_limit": 12},
                        "first_received_at": raised,
                        "updated_at": raised,
                        "source_ts": raised,
                        "last_message_id": uuid.uuid4().hex,
                        "status": status,
                        "subject_key": f"{gateway}:{unit}:{alert_id}",
                        "flat_id": flat_id,
                        "compound_id": compound_of_building[building],
                        "recurring": i % 50 == 0,
                        "episodes": 1,
                        "outcome": outcome,
                        "acknowledged_at": at.get("acknowledge"),
                        "dispatched_at": at.get("dispatch"),
                        "due_at": at.get("dispatch"),
                        "decided_at": at.get("confirm") or at.get("false_alarm"),
                        "rectifying_at": at.get("rectify"),
                        "deadline_at": (at["rectify"] + timedelta(days=15))
                        if "rectify" in at
                        else None,
                        "closed_at": at.get("close"),
                    }
                )
                for step in ("raised", *steps):
                    audit.append(
                        {
                            "at": at.get(step, raised),
                            "actor": "网格员" if step != "raised" else "edge",
                            "via": "web",
                            "action": step,
                            "entity": "alert",
                            "entity_id": alert_id,
                            "compound_id": compound_of_building[building],
                            "summary": {"comment": "核查"} if step == "confirm" else {},
                        }
                    )
            insert(Alert, alerts)
            insert(AuditEntry, audit)

            # Meter readings: every flat of the hot building a day at 2-minute steps, plus the
            # charted alert's flat around its alert; card swipes at the hot building's doors.
            hot_ids = {h[0] for h in hot}
            charted = next(
                a for a in alerts if a["kind"] == "ebike_charging" and a["flat_id"] in hot_ids
            )
            rental = next(
                a
                for a in alerts
                if a["kind"] == "suspected_group_rental" and a["flat_id"] in hot_ids
            )
            readings: list[dict[str, Any]] = []
            for _, _, entrance, unit in hot[: args.metered_flats]:
                gateway = gateway_of_entrance[entrance]
                start = now - timedelta(days=1)
                for m in range(0, 24 * 60, 2):
                    readings.append(
                        {
                            "gateway_id": gateway,
                            "message_id": uuid.uuid4().hex,
                            "meter_id": f"m-{unit}",
                            "unit_id": unit,
                            "ts": start + timedelta(minutes=m),
                            "power_w": 150.0 + rng.random() * 50,
                        }
                    )
            for m in range(-120, 180, 1):
                readings.append(
                    {
                        "gateway_id": charted["gateway_id"],
                        "message_id": uuid.uuid4().hex,
                        "meter_id": charted["meter_id"],
                        "unit_id": charted["unit_id"],
                        "ts": charted["raised_at"] + timedelta(minutes=m, seconds=30),
                        "power_w": 320.0 if 0 <= m < 60 else 150.0,
                    }
                )
            insert(MeterReading, readings)
            # Card swipes at every door, and the suspected group rental's flat: 40 a day.
            rental_flat = next(f for f in flat_rows if f[0] == rental["flat_id"])
            swipers = [rental_flat] * (14 * 40) + [
                rng.choice(flat_rows) for _ in range(args.swipes - 14 * 40)
            ]
            swipes = [
                {
                    "message_id": uuid.uuid4().hex,
                    "gateway_id": gateway_of_entrance[entrance],
                    "reader_id": "r-1",
                    "card": f"{rng.randrange(4000):04x}" * 8,
                    "unit_id": unit,
                    "event_ts": rental["raised_at"]
                    - timedelta(minutes=rng.randrange(14 * 24 * 60)),
                    "received_at": now,
                }
                for _, _, entrance, unit in swipers
            ]
            insert(CardSwipe, swipes)
            busiest_flat = Counter(a["flat_id"] for a in alerts).most_common(1)[0][0]
            ids = {
                "building": hot_building,
                "flat": busiest_flat,
                "alert": charted["alert_id"],
                "rental": rental["alert_id"],
                "flats": len(flats),
                "buildings": n_buildings,
                "compounds": n_compounds,
                "readings": len(readings),
                "audit": len(audit),
                "swipes": len(swipes),
                "hot_flats": len(hot),
                "hot_alerts": sum(1 for a in alerts if a["flat_id"] in hot_ids),
            }
        if database_url.startswith("postgresql"):
            with engine.connect() as conn:  # statistics, as autovacuum keeps them in production
                conn.execute(sa.text("ANALYZE"))
                conn.commit()
    finally:
        engine.dispose()
    return ids


def time_page(client: httpx.Client, path: str, warmup: int, requests: int) -> dict[str, Any]:
    for _ in range(warmup):
        r = client.get(path)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: HTTP {r.status_code}\n{r.text[:500]}")
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        r = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: HTTP {r.status_code}")
    times.sort()
    return {
        "p50": statistics.median(times),
        "p95": times[max(0, round(0.95 * len(times)) - 1)],
        "bytes": len(r.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="PostgreSQL server URL (default: SQLite)")
    parser.add_argument("--gateways", type=int, default=2000)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--floors", type=int, default=18)
    parser.add_argument("--offline-share", type=float, default=0.05)
    parser.add_argument("--metered-flats", type=int, default=100)
    parser.add_argument("--swipes", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="web-bench-"))
    with database(args.db, work) as database_url:
        mqtt_port, http_port = free_port(), free_port()
        env = {
            "FLEET_DATABASE_URL": database_url,
            "FLEET_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "FLEET_HTTP_PORT": str(http_port),
            "FLEET_SECRET_KEY": SECRET,
            "FLEET_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "FLEET_MQTT_PROTOCOL": "3.1.1",
        }
        with (
            proc(["fleet.broker", "--port", str(mqtt_port)], work / "broker.log", {}),
            proc(["fleet", "serve"], work / "fleet.log", env),
        ):
            wait_port(http_port)  # the schema is migrated before the port opens
            t0 = time.perf_counter()
            ids = seed(database_url, args)
            seeded_s = time.perf_counter() - t0
            print(
                f"seeded in {seeded_s:.1f} s: {args.gateways} gateways, {args.alerts} alerts, "
                f"{ids['compounds']} compounds, {ids['buildings']} buildings, {ids['flats']} "
                f"flats, {ids['audit']} audit entries, {ids['readings']} meter readings, "
                f"{ids['swipes']} swipes; the timed building has {ids['hot_flats']} flats and "
                f"{ids['hot_alerts']} alerts"
            )
            base = f"http://127.0.0.1:{http_port}"
            last_fleet_page = -(-args.gateways // 50)
            today = datetime.now(UTC).date()
            year_start = today.replace(month=1, day=1)
            pages = [
                ("home", "/"),
                ("alerts, first page", "/alerts"),
                ("alerts, filtered", "/alerts?kind=ebike_charging&status=new"),
                ("alerts, page 100", "/alerts?page=100"),
                ("fleet, first page", "/fleet"),
                ("fleet, offline only", "/fleet?online=no"),
                (f"fleet, last page ({last_fleet_page})", f"/fleet?page={last_fleet_page}"),
                (f"building ({ids['hot_flats']} flats)", f"/buildings/{ids['building']}"),
                ("flat (most alerts)", f"/flats/{ids['flat']}"),
                ("alert with power curve", f"/alerts/{ids['alert']}"),
                ("alert with swipes chart", f"/alerts/{ids['rental']}"),
                ("reports, this year", f"/reports?start={year_start}&end={today}"),
                (
                    "reports XLSX, this year",
                    f"/reports/statistics.xlsx?start={year_start}&end={today}",
                ),
            ]
            with httpx.Client(base_url=base, timeout=120) as client:
                r = client.post(
                    "/login",
                    data={"username": "admin", "password": ADMIN_PASSWORD},
                    follow_redirects=False,
                )
                if r.status_code != 303:
                    raise SystemExit(f"login failed: HTTP {r.status_code}")
                db_kind = "PostgreSQL" if database_url.startswith("postgresql") else "SQLite"
                print(f"\n{db_kind}, {args.requests} sequential requests per page, ms")
                print("| page | p50 ms | p95 ms | KiB |\n|---|---:|---:|---:|")
                for label, path in pages:
                    figures = time_page(client, path, args.warmup, args.requests)
                    print(
                        f"| {label}: `{path}` | "
                        f"{figures['p50']:.0f} | {figures['p95']:.0f} | "
                        f"{figures['bytes'] / 1024:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
