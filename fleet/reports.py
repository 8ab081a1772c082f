"""The statistics tables of seed 002 (附件3-5), filled from the fleet's data.

One :func:`compute` per area (the compounds of a street office, one compound, or everything in
a user's scope) and period gives rows per compound (重点地区) with a week column set (the 7 days
ending at the period end, 每周数) and a cumulative one (the whole period, 累计数):

- 附件3 重点地区统计表: flats (房屋总数), rented flats (出租房屋数: marked rented, or linked to a
  sublandlord), group-rental flats (群租房数: a confirmed group-rental case not closed at the
  period end), of which with another confirmed open hazard (存在安全隐患群租房数), residents
  (实有人口: registered cards).
- 附件4 重点地区整治情况统计表 and 附件5 全区…统计表: group rentals registered (登记群租房: a
  group-rental case confirmed in the window) and deregistered (注销群租房: such a case closed
  in the window), their residents (estimated occupants from the evidence), sublandlords
  recorded (采集群租房二房东信息), hazards found (排查安全隐患: cases confirmed in the window,
  by category 治安/消防/住房/其他) and rectified (整改安全隐患: confirmed cases closed in the
  window).

Columns this system has no data for (流动人口, 精神病人, 关注对象, 治安责任书, 处罚, 刑事案件 ...)
are left empty for the office to fill in by hand: a zero would claim a count nobody made.
"""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from openpyxl import Workbook
from openpyxl.styles import Alignment, Font
from sqlalchemy.orm import Session

from contract.alerts import AlertKind, Category
from fleet.channels.outbox import enqueue
from fleet.models import (
    Alert,
    Building,
    CardRegistration,
    Compound,
    Flat,
    FlatMark,
    ForwardChannel,
    StreetOffice,
    Sublandlord,
    SublandlordFlat,
)
from fleet.settings import Settings

WEEK = timedelta(days=7)
CATEGORIES = (Category.PUBLIC_ORDER, Category.FIRE, Category.HOUSING, Category.OTHER)
REPORT_DAYS = (14, 29)
GROUP_RENTAL = AlertKind.SUSPECTED_GROUP_RENTAL.value

TABLE3_COLUMNS: list[tuple[str, str]] = [
    ("area", "重点地区名称"),
    ("street_office", "所属街道（镇）"),
    ("police_station", "管辖派出所"),
    ("flats", "房屋总数(户)"),
    ("rented_flats", "出租房屋数（户）"),
    ("group_rental_flats", "群租房数（户）"),
    ("hazard_group_rental_flats", "存在安全隐患群租房数（户）"),
    ("residents", "实有人口（人）"),
    ("floating_population", "流动人口数（人）"),
    ("mental_patients", "可能肇事肇祸精神病人（人）"),
    ("persons_of_concern", "关注对象（人）"),
]

_ACTIVITY: list[tuple[str, str]] = [
    ("registered_group_rentals", "登记群租房（户）"),
    ("registered_group_rental_residents", "登记群租房租住人员（人）"),
    ("deregistered_group_rentals", "注销群租房（户）"),
    ("deregistered_group_rental_residents", "注销群租房租住人员（人）"),
    ("security_pledges", "签订治安责任书（份）"),
    ("sublandlords_recorded", "采集群租房二房东信息（人）"),
    ("hazards_found", "排查安全隐患 合计（处）"),
    ("hazards_found_public_order", "排查安全隐患 治安类（处）"),
    ("hazards_found_fire", "排查安全隐患 消防类（处）"),
    ("hazards_found_housing", "排查安全隐患 住房类（处）"),
    ("hazards_found_other", "排查安全隐患 其他（处）"),
    ("hazards_rectified", "整改安全隐患 合计（处）"),
    ("hazards_rectified_public_order", "整改安全隐患 治安类（处）"),
    ("hazards_rectified_fire", "整改安全隐患 消防类（处）"),
    ("hazards_rectified_housing", "整改安全隐患 住房类（处）"),
    ("hazards_rectified_other", "整改安全隐患 其他（处）"),
    ("floating_registered", "登记流动人口（人）"),
    ("floating_deregistered", "注销流动人口（人）"),
    ("landlords_penalised", "处罚违规出租户主（人）"),
    ("tenants_penalised", "处罚违规流动人口（人）"),
    ("criminal_cases", "破获刑事案件（起）"),
    ("public_order_cases", "破获治安案件（起）"),
    ("fugitives", "比对抓获在逃人员（人）"),
]
TABLE4_COLUMNS: list[tuple[str, str]] = [("area", "重点地区"), ("row", "项目"), *_ACTIVITY]
TABLE5_COLUMNS: list[tuple[str, str]] = [
    ("area", "重点地区"),
    ("row", "项目"),
    *_ACTIVITY,
    ("arrests", "打处情况 逮捕（人）"),
    ("other_coercive", "打处情况 其他刑事强制措施（人）"),
    ("administrative_penalties", "打处情况 治安处罚（人）"),
]
TABLES = {
    "3": ("附件3 重点地区统计表", TABLE3_COLUMNS),
    "4": ("附件4 重点地区整治情况统计表", TABLE4_COLUMNS),
    "5": ("附件5 全区群租房安全隐患集中整治情况统计表", TABLE5_COLUMNS),
}
CATEGORY_KEYS = {
    Category.PUBLIC_ORDER: "public_order",
    Category.FIRE: "fire",
    Category.HOUSING: "housing",
    Category.OTHER: "other",
}
ROW_WEEK = "每周数"
ROW_TOTAL = "累计数"


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    area: str
    tables: dict[str, list[dict[str, Any]]]

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "week_start": max(self.start, self.end - WEEK).isoformat(),
            "area": self.area,
            "tables": {
                number: {
                    "title": TABLES[number][0],
                    "columns": [{"key": k, "title": t} for k, t in TABLES[number][1]],
                    "rows": rows,
                }
                for number, rows in self.tables.items()
            },
        }


def _compounds(
    session: Session,
    *,
    scope: frozenset[int] | None,
    street_office_id: int | None,
    compound_id: int | None,
) -> list[tuple[Compound, StreetOffice]]:
    stmt = (
        sa.select(Compound, StreetOffice)
        .join(StreetOffice, StreetOffice.id == Compound.street_office_id)
        .order_by(Compound.id)
    )
    if scope is not None:
        stmt = stmt.where(Compound.id.in_(sorted(scope)))
    if street_office_id is not None:
        stmt = stmt.where(Compound.street_office_id == street_office_id)
    if compound_id is not None:
        stmt = stmt.where(Compound.id == compound_id)
    return [(c, s) for c, s in session.execute(stmt)]


def _occupants(alert: Alert) -> int:
    value = alert.evidence.get("estimated_occupants") if alert.evidence else None
    return int(value) if isinstance(value, int | float) else 0


def _activity(
    alerts: Sequence[Alert], sublandlords: int, start: datetime, end: datetime
) -> dict[str, Any]:
    row: dict[str, Any] = {key: None for key, _ in _ACTIVITY}

    def within(moment: datetime | None) -> bool:
        return moment is not None and start <= moment < end

    confirmed = [a for a in alerts if a.outcome == "confirmed" and within(a.decided_at)]
    rectified = [a for a in alerts if a.outcome == "confirmed" and within(a.closed_at)]
    registered = [a for a in confirmed if a.kind == GROUP_RENTAL]
    deregistered = [a for a in rectified if a.kind == GROUP_RENTAL]
    row["registered_group_rentals"] = len({a.flat_id or a.subject_key for a in registered})
    row["registered_group_rental_residents"] = sum(_occupants(a) for a in registered)
    row["deregistered_group_rentals"] = len({a.flat_id or a.subject_key for a in deregistered})
    row["deregistered_group_rental_residents"] = sum(_occupants(a) for a in deregistered)
    row["sublandlords_recorded"] = sublandlords
    row["hazards_found"] = len(confirmed)
    row["hazards_rectified"] = len(rectified)
    for category, key in CATEGORY_KEYS.items():
        row[f"hazards_found_{key}"] = sum(1 for a in confirmed if a.category == category.value)
        row[f"hazards_rectified_{key}"] = sum(1 for a in rectified if a.category == category.value)
    return row


def compute(
    session: Session,
    *,
    start: datetime,
    end: datetime,
    scope: frozenset[int] | None = None,
    street_office_id: int | None = None,
    compound_id: int | None = None,
    area_name: str | None = None,
) -> Report:
    """The three tables for the compounds in the area, over [start, end)."""
    week_start = max(start, end - WEEK)
    table3: list[dict[str, Any]] = []
    table4: list[dict[str, Any]] = []
    table5: list[dict[str, Any]] = []
    totals: dict[str, dict[str, Any]] = {ROW_WEEK: {}, ROW_TOTAL: {}}
    compounds = _compounds(
        session, scope=scope, street_office_id=street_office_id, compound_id=compound_id
    )
    for compound, office in compounds:
        flat_ids = list(
            session.scalars(
                sa.select(Flat.id)
                .join(Building, Building.id == Flat.building_id)
                .where(Building.compound_id == compound.id)
            )
        )
        rented = set(
            session.scalars(
                sa.select(FlatMark.flat_id).where(
                    FlatMark.flat_id.in_(flat_ids), FlatMark.rented.is_(True)
                )
            )
        ) | set(
            session.scalars(
                sa.select(SublandlordFlat.flat_id).where(SublandlordFlat.flat_id.in_(flat_ids))
            )
        )
        residents = (
            session.scalar(
                sa.select(sa.func.count())
                .select_from(CardRegistration)
                .where(CardRegistration.flat_id.in_(flat_ids))
            )
            or 0
        )
        # Every figure below counts confirmed cases decided before the period's end (open at
        # the end, confirmed or rectified within it): the rest of the history is not loaded.
        alerts = list(
            session.scalars(
                sa.select(Alert).where(
                    Alert.compound_id == compound.id,
                    Alert.outcome == "confirmed",
                    Alert.decided_at < end,
                )
            )
        )

        def open_at(a: Alert) -> bool:
            return (
                a.outcome == "confirmed"
                and a.decided_at is not None
                and a.decided_at < end
                and (a.closed_at is None or a.closed_at >= end)
            )

        group_flats = {a.flat_id for a in alerts if a.kind == GROUP_RENTAL and open_at(a)}
        hazard_flats = {
            a.flat_id for a in alerts if a.kind != GROUP_RENTAL and open_at(a)
        } & group_flats
        table3.append(
            {
                **{key: None for key, _ in TABLE3_COLUMNS},
                "area": compound.name,
                "street_office": office.name,
                "flats": len(flat_ids),
                "rented_flats": len(rented),
                "group_rental_flats": len(group_flats),
                "hazard_group_rental_flats": len(hazard_flats),
                "residents": residents,
            }
        )

        def sublandlords_in(a: datetime, b: datetime, ids: list[int] = flat_ids) -> int:
            return (
                session.scalar(
                    sa.select(sa.func.count(sa.distinct(Sublandlord.id)))
                    .join(SublandlordFlat, SublandlordFlat.sublandlord_id == Sublandlord.id)
                    .where(
                        SublandlordFlat.flat_id.in_(ids),
                        Sublandlord.created_at >= a,
                        Sublandlord.created_at < b,
                    )
                )
                or 0
            )

        for label, a, b in ((ROW_WEEK, week_start, end), (ROW_TOTAL, start, end)):
            row = {
                "area": compound.name,
                "row": label,
                **_activity(alerts, sublandlords_in(a, b), a, b),
            }
            table4.append(row)
            table5.append({**{k: None for k, _ in TABLE5_COLUMNS}, **row})
            total = totals[label]
            for key, value in row.items():
                if isinstance(value, int):
                    total[key] = total.get(key, 0) + value
    if len(compounds) > 1:
        for label in (ROW_WEEK, ROW_TOTAL):
            row = {k: totals[label].get(k) for k, _ in _ACTIVITY}
            table5.append(
                {**{k: None for k, _ in TABLE5_COLUMNS}, **row, "area": "合计", "row": label}
            )
    name = area_name or "、".join(c.name for c, _ in compounds) or "—"
    return Report(start, end, name, {"3": table3, "4": table4, "5": table5})


def to_csv(report: Report, table: str) -> bytes:
    """One table as CSV with the seed's Chinese headers (UTF-8 with BOM, so Excel reads it)."""
    columns = TABLES[table][1]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([t for _, t in columns])
    for row in report.tables[table]:
        writer.writerow(["" if row.get(k) is None else row[k] for k, _ in columns])
    return ("\ufeff" + out.getvalue()).encode()


def to_xlsx(report: Report, *, tz: str = "Asia/Shanghai") -> bytes:
    """The three tables as sheets: title, filing unit and period lines, then the table."""
    book = Workbook()
    first = True
    zone = ZoneInfo(tz)
    period = (
        f"统计期间：{report.start.astimezone(zone):%Y-%m-%d} 至 "
        f"{(report.end - timedelta(seconds=1)).astimezone(zone):%Y-%m-%d}"
    )
    for number, (title, columns) in TABLES.items():
        sheet = book.active if first else book.create_sheet()
        assert sheet is not None
        first = False
        sheet.title = f"附件{number}"
        sheet.append([title])
        sheet["A1"].font = Font(bold=True, size=14)
        sheet.append([f"填报单位：{report.area}", None, None, period])
        sheet.append([t for _, t in columns])
        for cell in sheet[3]:
            cell.font = Font(bold=True)
            cell.alignment = Alignment(wrap_text=True, vertical="center")
        for row in report.tables[number]:
            sheet.append([row.get(k) for k, _ in columns])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


HEADER_ROW = 3  # in each sheet: title, filing line, then the headers


# -- the 14th / 29th run --------------------------------------------------------------------


def due_report_date(now: datetime, settings: Settings) -> date | None:
    """Today's local date when it is a filing day at or after the report hour."""
    local = now.astimezone(ZoneInfo(settings.display_timezone))
    if local.day in REPORT_DAYS and local.hour >= settings.report_hour:
        return local.date()
    return None


def report_period(day: date, tz: str) -> tuple[datetime, datetime]:
    """Cumulative from 1 January of the filing year to the filing day's local midnight."""
    zone = ZoneInfo(tz)
    end = datetime.combine(day, time(0), tzinfo=zone)
    start = datetime.combine(date(day.year, 1, 1), time(0), tzinfo=zone)
    return start, end


def _offices_with_report_channels(session: Session) -> Iterable[int | None]:
    rows = session.scalars(
        sa.select(ForwardChannel.street_office_id)
        .where(ForwardChannel.enabled.is_(True), ForwardChannel.send_reports.is_(True))
        .distinct()
    )
    return list(rows)


def report_tick(session: Session, now: datetime, settings: Settings) -> tuple[int, int]:
    """On the 14th and 29th (local time, from ``FLEET_REPORT_HOUR``) enqueue each street
    office's report for its report channels, once (the notification key holds the date).
    Returns (reports enqueued, deliveries added)."""
    day = due_report_date(now, settings)
    if day is None:
        return 0, 0
    start, end = report_period(day, settings.display_timezone)
    reports = deliveries = 0
    for office_id in _offices_with_report_channels(session):
        key = f"report:{office_id if office_id is not None else 'all'}:{day.isoformat()}"
        office = session.get(StreetOffice, office_id) if office_id is not None else None
        report = compute(
            session,
            start=start,
            end=end,
            street_office_id=office_id,
            area_name=office.name if office else "全部",
        )
        summary = _summary(report)
        query = f"start={start.isoformat()}&end={end.isoformat()}"
        if office_id is not None:
            query += f"&street_office_id={office_id}"
        added = enqueue(
            session,
            key=key,
            event="report",
            severity="low",
            payload={
                "v": 1,
                "event": "report",
                "area": report.area,
                "report_date": day.isoformat(),
                "summary": summary,
                "statistics": report.as_json(),
                "filename": f"群租房隐患统计_{day.isoformat()}.xlsx",
                "xlsx_b64": base64.b64encode(
                    to_xlsx(report, tz=settings.display_timezone)
                ).decode(),
                "link_path": f"/api/reports/statistics.xlsx?{query.replace('+', '%2B')}",
            },
            alert_id=None,
            street_office_id=office_id,
            order_key=f"report:{office_id}",
            now=now,
            tz=settings.display_timezone,
            report=True,
        )
        if added:
            reports += 1
            deliveries += added
    return reports, deliveries


def _summary(report: Report) -> dict[str, str]:
    week = [r for r in report.tables["4"] if r["row"] == ROW_WEEK]
    total = [r for r in report.tables["4"] if r["row"] == ROW_TOTAL]

    def both(key: str) -> str:
        return f"{sum(r[key] or 0 for r in week)} / {sum(r[key] or 0 for r in total)}"

    return {
        "统计期间": f"{report.start.date()} 至 {report.end.date()}",
        "登记群租房（周/累计）": both("registered_group_rentals"),
        "注销群租房（周/累计）": both("deregistered_group_rentals"),
        "排查安全隐患（周/累计）": both("hazards_found"),
        "整改安全隐患（周/累计）": both("hazards_rectified"),
    }
