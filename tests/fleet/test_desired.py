"""Desired config from the register, on the real database: versions move only with the hash,
an override wins over re-assembly, older reports never override newer ones."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from contract.control import config_hash
from contract.messages import ConfigState
from edge_agent.config import AgentConfig
from fleet.db import make_engine, make_sessionmaker, utcnow
from fleet.desired import (
    affected_gateways,
    assemble,
    clear_override,
    record_config_state,
    refresh,
    set_override,
    touched_by,
)
from fleet.models import (
    BrokerAccount,
    DesiredConfigRow,
    Device,
    Flat,
    Gateway,
    GatewayConfigState,
)
from tests.fleet.helpers import T0, envelope
from tests.fleet.test_provisioning import make_site

TZ = "Asia/Shanghai"


def test_versions_follow_the_hash_and_overrides_win(database_url: str) -> None:
    site = make_site(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    try:
        with sessions() as session, session.begin():
            session.add(
                Gateway(gateway_id="gw-d1", entrance_id=site.entrance_id, first_seen=utcnow())
            )
            session.flush()
            session.add(
                Device(
                    compound_id=site.compound_id,
                    gateway_id="gw-d1",
                    kind="meter",
                    device_id="m-1",
                    flat_id=site.flat_ids["3-101"],
                    params={"slave": 1, "transport": "tcp", "host": "10.0.0.5", "port": 502},
                )
            )
        with sessions() as session, session.begin():
            first = refresh(session, "gw-d1", timezone=TZ)
            assert first is not None and first.version == 1
            assert first.hash == config_hash(first.config)
            assert first.config["modbus"][0]["transport"] == "tcp"
            assert first.problems == {"items": []}
        with sessions() as session, session.begin():
            again = refresh(session, "gw-d1", timezone=TZ)
            assert again is not None and again.version == 1  # same register, same version
        with sessions() as session, session.begin():
            session.execute(
                sa.update(Device)
                .where(Device.device_id == "m-1")
                .values(params={"slave": 2, "url": "/dev/ttyUSB0"})
            )
        with sessions() as session, session.begin():
            changed = refresh(session, "gw-d1", timezone=TZ)
            assert changed is not None and changed.version == 2
            assert changed.config["modbus"][0]["meters"][0]["slave"] == 2
        with sessions() as session, session.begin():
            pushed = set_override(session, "gw-d1", {"rules": {"overload": {"sustain_s": "x"}}})
            assert (pushed.version, pushed.source) == (3, "override")
        with sessions() as session, session.begin():
            kept = refresh(session, "gw-d1", timezone=TZ)  # the register does not undo it
            assert kept is not None and (kept.version, kept.source) == (3, "override")
        with sessions() as session, session.begin():
            back = clear_override(session, "gw-d1", timezone=TZ)
            assert back is not None and (back.version, back.source) == (4, "site")
            assert back.hash == changed.hash
    finally:
        engine.dispose()


def test_an_unmapped_gateway_gets_a_valid_config_and_says_why_it_is_empty(
    database_url: str,
) -> None:
    make_site(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session, session.begin():
            gateway = Gateway(gateway_id="gw-lost", first_seen=utcnow())
            session.add(gateway)
            session.flush()
            assembled = assemble(session, gateway, timezone=TZ)
        assert assembled.config["site"]["site_id"] == "unassigned"
        assert any("entrance" in p for p in assembled.problems)
        AgentConfig.model_validate(
            {"gateway_id": "gw-lost", "site_key": "k" * 32, **assembled.config}
        )
    finally:
        engine.dispose()


def test_an_older_config_report_never_overrides_a_newer_one(database_url: str) -> None:
    make_site(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)

    def report(minutes: int, status: str, reason: str | None = None) -> ConfigState:
        return ConfigState(
            **envelope("gw-r", ts=T0 + timedelta(minutes=minutes)),
            status=status,  # type: ignore[arg-type]
            version=minutes,
            hash="h" * 64,
            applied_version=1,
            applied_hash="a" * 64,
            reason=reason,
        )

    try:
        with sessions() as session, session.begin():
            session.add(Gateway(gateway_id="gw-r", first_seen=utcnow()))
        for message in (report(5, "rejected", "bad slave"), report(2, "applied")):
            with sessions() as session, session.begin():
                record_config_state(session, message, utcnow())
        with sessions() as session:
            row = session.get(GatewayConfigState, "gw-r")
            assert row is not None
            assert (row.status, row.version, row.last_rejection_reason) == (
                "rejected",
                5,
                "bad slave",
            )
    finally:
        engine.dispose()


def test_a_register_change_reassembles_only_the_gateways_it_concerns(database_url: str) -> None:
    site = make_site(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    try:
        with sessions() as session, session.begin():
            for gw, entrance in (("gw-a", site.entrance_id), ("gw-b", site.other_entrance_id)):
                session.add(Gateway(gateway_id=gw, entrance_id=entrance, first_seen=now))
                session.flush()
                session.add(BrokerAccount(gateway_id=gw, username=gw, mode="none", created_at=now))
            session.add(
                Gateway(gateway_id="gw-unenrolled", entrance_id=site.entrance_id, first_seen=now)
            )
            session.flush()
            session.add(
                Device(
                    compound_id=site.compound_id,
                    gateway_id="gw-a",
                    kind="meter",
                    device_id="m-a",
                    params={},
                )
            )
        with sessions() as session, session.begin():
            device = session.scalars(sa.select(Device).where(Device.device_id == "m-a")).one()
            device.params = {"slave": 7, "url": "/dev/ttyUSB0"}
            touched = touched_by(session)
            assert touched.compounds == {site.compound_id} and not touched.everything
            assert affected_gateways(session, touched) == [
                "gw-a"
            ]  # not B's compound, not unenrolled
        with sessions() as session, session.begin():
            flat = session.get(Flat, site.flat_ids["3-101"])
            assert flat is not None
            flat.rooms = 3
            assert affected_gateways(session, touched_by(session)) == ["gw-a"]
        with sessions() as session, session.begin():
            gateway = session.get(Gateway, "gw-b")
            assert gateway is not None
            gateway.entrance_id = site.entrance_id  # moved: its own config changes
            assert affected_gateways(session, touched_by(session)) == ["gw-b"]
    finally:
        engine.dispose()


def test_a_report_of_an_older_version_marks_the_newest_for_publishing_again(
    database_url: str,
) -> None:
    """Only a report older than the version recorded as published clears the record; a report
    of that version, or one while the newest is not published yet, leaves it alone."""
    site = make_site(database_url)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)

    def report(minutes: int, version: int) -> ConfigState:
        return ConfigState(
            **envelope("gw-p", ts=T0 + timedelta(minutes=minutes)),
            status="applied",
            version=version,
            hash="h" * 64,
            applied_version=version,
            applied_hash="h" * 64,
        )

    def published() -> tuple[int, int | None]:
        with sessions() as session:
            row = session.get(DesiredConfigRow, "gw-p")
            assert row is not None
            return row.version, row.published_version

    def mark(version: int) -> None:
        with sessions() as session, session.begin():
            session.execute(
                sa.update(DesiredConfigRow)
                .where(DesiredConfigRow.gateway_id == "gw-p")
                .values(version=version, published_version=version)
            )

    try:
        with sessions() as session, session.begin():
            session.add(
                Gateway(gateway_id="gw-p", entrance_id=site.entrance_id, first_seen=utcnow())
            )
        with sessions() as session, session.begin():
            assert refresh(session, "gw-p", timezone=TZ) is not None
        mark(2)
        with sessions() as session, session.begin():
            record_config_state(session, report(1, 2), utcnow())
        assert published() == (2, 2)  # the gateway has the newest
        with sessions() as session, session.begin():
            record_config_state(session, report(2, 1), utcnow())
        assert published() == (2, None)  # behind: published again on the next round
        with sessions() as session, session.begin():
            record_config_state(session, report(3, 1), utcnow())
        assert published() == (2, None)  # not yet published: nothing to undo
        mark(2)
        with sessions() as session, session.begin():
            record_config_state(session, report(0, 1), utcnow())  # late: an older report
        assert published() == (2, 2)
    finally:
        engine.dispose()
