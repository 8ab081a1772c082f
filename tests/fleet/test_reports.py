"""Reminders, escalation and the 14th/29th report, by tick functions with injected times; the
XLSX read back with openpyxl, cell by cell."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from openpyxl import load_workbook

from contract.alerts import Severity
from fleet.db import make_engine, make_sessionmaker, migrate
from fleet.lifecycle import Action, Person, StepInput, load_for_step, transition
from fleet.models import ForwardChannel, ForwardDelivery, Notification
from fleet.reminders import tick
from fleet.reports import HEADER_ROW, compute, to_xlsx
from fleet.store import apply_uplink
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import alert, make_settings
from tests.fleet.test_lifecycle import seed_site

OFFICER = Person(name="officer_a", id=None, role="officer")


def test_escalation_reminders_and_the_scheduled_report(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    migrate(database_url)
    site = seed_site(database_url)
    settings = make_settings(mqtt_broker, database_url, escalate_after_min=30)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    t0 = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)
    try:
        with sessions() as s, s.begin():
            s.add(
                ForwardChannel(
                    street_office_id=site.street_office_id,
                    name="hook",
                    kind="webhook",
                    config={"url": "http://127.0.0.1:9/hook"},
                    send_reports=True,
                    enabled=True,
                    source="api",
                    created_at=t0,
                )
            )
        high, other = uuid.uuid4().hex, uuid.uuid4().hex
        with sessions() as s:
            with s.begin():
                apply_uplink(s, alert(site.gateway, high, severity=Severity.HIGH), received_at=t0)
            with s.begin():
                apply_uplink(s, alert(site.gateway, other, unit_id="6-601"), received_at=t0)
        with sessions() as s, s.begin():
            assert tick(s, t0 + timedelta(minutes=29), settings).escalated == 0
        with sessions() as s, s.begin():
            result = tick(s, t0 + timedelta(minutes=31), settings)
            assert result.escalated == 1  # only the high one
        with sessions() as s, s.begin():
            assert tick(s, t0 + timedelta(minutes=40), settings).escalated == 0  # once

        # The other case: dispatched with a due time, then confirmed and in rectification.
        with sessions() as s, s.begin():
            case = load_for_step(s, other, None)
            transition(s, case, Action.ACKNOWLEDGE, OFFICER, StepInput(), now=t0)
            transition(s, case, Action.DISPATCH, OFFICER, StepInput(assignee="王五"), now=t0)
        due = t0 + timedelta(hours=settings.dispatch_due_hours)
        with sessions() as s, s.begin():
            assert tick(s, due - timedelta(minutes=1), settings).dispatch_reminders == 0
        with sessions() as s, s.begin():
            assert tick(s, due + timedelta(minutes=1), settings).dispatch_reminders == 1
        with sessions() as s, s.begin():
            assert tick(s, due + timedelta(hours=2), settings).dispatch_reminders == 0
        with sessions() as s, s.begin():
            assert tick(s, due + timedelta(hours=25), settings).dispatch_reminders == 1  # repeat
        with sessions() as s, s.begin():
            case = load_for_step(s, other, None)
            transition(
                s,
                case,
                Action.CONFIRM,
                OFFICER,
                StepInput(comment="属实"),
                now=due + timedelta(hours=26),
            )
            transition(s, case, Action.RECTIFY, OFFICER, StepInput(), now=due + timedelta(hours=26))
            deadline = case.deadline_at
        assert deadline is not None
        with sessions() as s, s.begin():
            assert tick(s, deadline + timedelta(minutes=1), settings).deadline_reminders == 1
        with sessions() as s, s.begin():
            case = load_for_step(s, other, None)
            transition(
                s,
                case,
                Action.CLOSE,
                OFFICER,
                StepInput(comment="整改完毕"),
                now=deadline + timedelta(hours=1),
            )

        # The 14th, 09:00 Beijing time: one report per street office with a report channel.
        on_14th = datetime(2026, 11, 14, 1, 30, tzinfo=UTC)  # 09:30 +08:00
        with sessions() as s, s.begin():
            assert tick(s, datetime(2026, 11, 13, 23, 0, tzinfo=UTC), settings).reports == 0
        with sessions() as s, s.begin():
            assert tick(s, on_14th, settings).reports == 1
        with sessions() as s, s.begin():
            assert tick(s, on_14th + timedelta(hours=3), settings).reports == 0  # once a day
        with sessions() as s:
            events = s.scalars(sa.select(Notification.event).order_by(Notification.id)).all()
            assert events.count("escalated") == 1
            assert events.count("remind_dispatch") == 2
            assert events.count("remind_deadline") == 1
            assert events[-1] == "report"
            report_payload = s.scalars(
                sa.select(Notification.payload).where(Notification.event == "report")
            ).one()
            assert report_payload["summary"]["排查安全隐患（周/累计）"] == "1 / 1"
            # Every notification but the routine acknowledge step goes to the channel.
            sent = [e for e in events if e != "acknowledge"]
            assert s.scalar(sa.select(sa.func.count()).select_from(ForwardDelivery)) == len(sent)

        # The XLSX for the period, read back cell by cell.
        with sessions() as s:
            report = compute(
                s,
                start=datetime(2026, 11, 1, tzinfo=UTC),
                end=datetime(2026, 11, 20, tzinfo=UTC),
                street_office_id=site.street_office_id,
            )
        book = load_workbook(io.BytesIO(to_xlsx(report)))
        assert book.sheetnames == ["附件3", "附件4", "附件5"]
        sheet3 = book["附件3"]
        assert sheet3["A1"].value == "附件3 重点地区统计表"
        headers3 = [c.value for c in sheet3[HEADER_ROW]]
        assert headers3[:7] == [
            "重点地区名称",
            "所属街道（镇）",
            "管辖派出所",
            "房屋总数(户)",
            "出租房屋数（户）",
            "群租房数（户）",
            "存在安全隐患群租房数（户）",
        ]
        row3 = [c.value for c in sheet3[HEADER_ROW + 1]]
        assert row3[:7] == ["小区A", "街道A", None, 1, 0, 0, 0]
        sheet4 = book["附件4"]
        headers4 = [c.value for c in sheet4[HEADER_ROW]]
        week = dict(zip(headers4, [c.value for c in sheet4[HEADER_ROW + 1]], strict=True))
        total = dict(zip(headers4, [c.value for c in sheet4[HEADER_ROW + 2]], strict=True))
        assert week["项目"] == "每周数" and total["项目"] == "累计数"
        assert total["排查安全隐患 合计（处）"] == 1
        assert total["排查安全隐患 消防类（处）"] == 1
        assert total["整改安全隐患 合计（处）"] == 1
        assert total["整改安全隐患 消防类（处）"] == 1
        assert total["登记群租房（户）"] == 0
        assert total["签订治安责任书（份）"] is None  # no data: left for the office
    finally:
        engine.dispose()
