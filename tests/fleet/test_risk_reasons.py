"""Risk reasons are codes with values, worded in the page's language (fleet.texts.RISK_REASONS);
the English wording is the text the API has always returned."""

from __future__ import annotations

from datetime import timedelta

import pytest

from fleet.db import make_engine, make_sessionmaker, migrate, utcnow
from fleet.models import (
    Alert,
    Building,
    Compound,
    District,
    Flat,
    Gateway,
    StreetOffice,
    Sublandlord,
    SublandlordFlat,
)
from fleet.risk import Reason, assess, flat_risk, flat_risks
from fleet.texts import LANGS, RISK_REASONS

PARAMS: dict[str, str | int] = {"kind": "ebike_charging", "alert_id": "a1", "count": 2, "flat": 7}


@pytest.mark.parametrize("code", sorted(RISK_REASONS))
def test_every_reason_has_both_languages(code: str) -> None:
    zh, en = (Reason(code, PARAMS).render(lang) for lang in LANGS)
    assert zh and en and zh != en
    assert "{" not in zh + en  # every placeholder filled
    assert "电动自行车" in zh or "ebike" not in en  # the kind's Chinese title, not its code


def _alert(alert_id: str, **columns: object) -> Alert:
    now = utcnow()
    values: dict[str, object] = {
        "kind": "suspected_group_rental",
        "status": "new",
        "raised_at": now,
        "first_received_at": now,
        "recurring": False,
    }
    values.update(columns)
    return Alert(alert_id=alert_id, **values)


def test_levels_come_with_their_reasons() -> None:
    now = utcnow()
    risk = assess([_alert("x1")], now)
    assert risk.level == "medium"
    assert [(r.code, r.params) for r in risk.reasons] == [
        ("unverified", {"kind": "suspected_group_rental", "alert_id": "x1"})
    ]
    assert risk.texts == ["unverified: suspected_group_rental (x1)"]
    assert risk.reasons[0].render("zh") == "告警尚未核查：疑似群租（x1）"

    overdue = _alert(
        "x2",
        status="rectifying",
        outcome="confirmed",
        decided_at=now - timedelta(days=20),
        deadline_at=now - timedelta(days=1),
    )
    risk = assess([overdue], now)
    assert risk.level == "high"
    assert [r.code for r in risk.reasons] == ["confirmed_open", "rectification_overdue"]
    assert risk.reasons[1].render("zh") == "整改已逾期：疑似群租（x2）"

    twice = [
        _alert(f"c{i}", status="closed", outcome="confirmed", decided_at=now, closed_at=now)
        for i in range(2)
    ]
    risk = assess(twice, now)
    assert risk.level == "high"
    assert risk.texts == ["2 confirmed hazards in 180 days"]
    assert risk.reasons[0].render("zh") == "180天内核查属实 2 次"


def test_a_buildings_flats_in_one_pass_with_the_sublandlord_rule(database_url: str) -> None:
    """flat_risks (the building view, GET /api/risk/flats) gives each flat its level in one
    pass, including "same sublandlord as a high-risk flat" (the one query for all low flats)."""
    migrate(database_url)
    engine = make_engine(database_url)
    now = utcnow()
    try:
        with make_sessionmaker(engine)() as session:
            district = District(name="区")
            session.add(district)
            session.flush()
            office = StreetOffice(district_id=district.id, name="街道")
            session.add(office)
            session.flush()
            compound = Compound(street_office_id=office.id, name="小区", code="c")
            session.add(compound)
            session.flush()
            building = Building(compound_id=compound.id, name="1号楼")
            session.add(building)
            session.flush()
            flats = {u: Flat(building_id=building.id, unit_id=u) for u in ("101", "102", "103")}
            other = Flat(building_id=building.id, unit_id="201")
            session.add_all([*flats.values(), other])
            session.add(Gateway(gateway_id="gw-r", first_seen=now))
            session.flush()
            # 201 has a confirmed hazard not yet rectified: high. Its sublandlord also lets
            # 101 (no case of its own): medium. 102 has an unverified case: medium. 103: low.
            for alert_id, flat, columns in (
                ("h1", other, {"status": "rectifying", "outcome": "confirmed", "decided_at": now}),
                ("u1", flats["102"], {}),
            ):
                session.add(
                    _alert(
                        alert_id,
                        flat_id=flat.id,
                        category="rental",
                        severity="medium",
                        state="open",
                        gateway_id="gw-r",
                        evidence={},
                        updated_at=now,
                        source_ts=now,
                        last_message_id=alert_id,
                        subject_key=alert_id,
                        **columns,
                    )
                )
            landlord = Sublandlord(name="二房东", created_at=now, created_by="t")
            session.add(landlord)
            session.flush()
            for flat in (other, flats["101"]):
                session.add(
                    SublandlordFlat(sublandlord_id=landlord.id, flat_id=flat.id, linked_at=now)
                )
            session.commit()

            ids = [f.id for f in (*flats.values(), other)]
            together = flat_risks(session, ids, now)
            assert flat_risk(session, flats["101"].id, now) == together[flats["101"].id]
            assert {u: together[f.id].level for u, f in flats.items()} == {
                "101": "medium",
                "102": "medium",
                "103": "low",
            }
            assert together[other.id].level == "high"
            assert together[flats["101"].id].reasons == [
                Reason("sublandlord_high", {"flat": other.id})
            ]
            assert together[flats["101"].id].reasons[0].render("zh") == (
                f"同一二房东出租的房屋（编号 {other.id}）为高风险"
            )
    finally:
        engine.dispose()
