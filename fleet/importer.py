"""CSV import of the site register: compounds, buildings, flats and card registrations.

All or nothing: every row is checked (against the database and against the rows above it) in
one transaction; if any row has an error, nothing is written and every error is reported with
its line number, column and a message in Chinese and English. A file that imports cleanly can
be imported again: existing rows are matched by their natural key (compound code or name,
building name, unit id, card) and updated, so re-importing is harmless.

Real-world files are accepted as Excel and WPS write them: UTF-8 with or without a BOM, GBK /
GB18030, UTF-16 ("Unicode text", tab-separated); comma, tab or semicolon separators; Chinese or
English headers (full-width characters, ``*`` required-field marks and units in brackets are
ignored, so ``面积（㎡）*`` is ``面积``); blank lines; surrounding whitespace; numbers with units
(``85.5㎡``, ``40A``). An empty optional cell leaves the stored value as it is.

Card registrations carry the card's pseudonym (HMAC-SHA256 hex, made on the gateway with the
site key), never a card number: a cell that looks like a card number is refused.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fleet.audit import Action, Actor, record
from fleet.db import utcnow
from fleet.models import (
    Building,
    CardRegistration,
    Compound,
    District,
    Entrance,
    Flat,
    StreetOffice,
)
from fleet.sites import Scope

MAX_ROWS = 100_000
MAX_TEXT = 64


class ImportKind(StrEnum):
    COMPOUNDS = "compounds"
    BUILDINGS = "buildings"
    FLATS = "flats"
    CARDS = "cards"


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # line in the file, 1 = the header
    column: str | None  # the header as written in the file
    message_zh: str
    message_en: str


@dataclass(slots=True)
class ImportResult:
    kind: ImportKind | None
    rows: int = 0
    created: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    updated: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: list[RowError] = field(default_factory=list)
    compound_ids: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors


class ImportRejectedError(Exception):
    """The file as a whole cannot be imported; ``result.errors`` says why."""

    def __init__(self, result: ImportResult) -> None:
        super().__init__(f"{len(result.errors)} error(s)")
        self.result = result


# Canonical column -> accepted headers (after normalisation: NFKC, lower case, no spaces).
ALIASES: dict[str, tuple[str, ...]] = {
    "district": ("district", "区", "区县", "所属区", "所属区县", "行政区"),
    "street_office": (
        "street_office", "streetoffice", "street", "街道", "街道办", "街道办事处", "所属街道",
        "镇街",
    ),
    "compound": ("compound", "compound_name", "小区", "小区名称", "小区名", "所属小区"),
    "compound_code": ("compound_code", "code", "小区编码", "小区编号", "小区代码"),
    "address": ("address", "地址", "小区地址"),
    "building": ("building", "楼栋", "楼号", "楼栋号", "楼栋名称", "幢", "栋"),
    "floors": ("floors", "层数", "总层数", "楼层数"),
    "entrance": ("entrance", "单元", "单元号", "门洞"),
    "unit_id": ("unit_id", "unit", "flat", "户号", "房号", "房间号", "门牌号", "室号"),
    "floor": ("floor", "楼层", "所在楼层", "所在层"),
    "area_m2": ("area_m2", "area", "面积", "建筑面积", "使用面积", "房屋面积"),
    "rooms": ("rooms", "房间数", "间数", "居室", "居室数"),
    "registered_occupants": (
        "registered_occupants", "occupants", "登记人数", "户籍人数", "居住人数", "登记人口",
    ),
    "rated_current_a": ("rated_current_a", "rated_current", "额定电流", "电表额定电流"),
    "card": ("card", "card_pseudonym", "卡号伪名", "卡片伪名", "门禁卡伪名", "卡伪名"),
    "holder_label": ("holder_label", "holder", "持卡人", "持卡人标签", "备注"),
}  # fmt: skip
LABELS: dict[str, tuple[str, str]] = {
    "district": ("区", "district"),
    "street_office": ("街道", "street office"),
    "compound": ("小区", "compound"),
    "compound_code": ("小区编码", "compound code"),
    "building": ("楼栋", "building"),
    "unit_id": ("户号", "unit id"),
    "card": ("卡号伪名", "card pseudonym"),
}

REQUIRED: dict[ImportKind, tuple[str, ...]] = {
    ImportKind.COMPOUNDS: ("district", "street_office", "compound"),
    ImportKind.BUILDINGS: ("building",),
    ImportKind.FLATS: ("building", "unit_id"),
    ImportKind.CARDS: ("building", "unit_id", "card"),
}

_CARD_PSEUDONYM = re.compile(r"^[0-9a-f]{16,64}$")
_NUMBER = re.compile(
    r"^([-+]?\d+(?:\.\d+)?)\s*(m2|平方米|平米|米2|a|安|安培|层|楼|f|间|室|人|口)?$", re.IGNORECASE
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def normalise_header(raw: str) -> str:
    text = unicodedata.normalize("NFKC", raw).strip().lower()
    text = re.sub(r"\(.*?\)|\[.*?\]", "", text)  # units or hints in brackets
    return re.sub(r"[\s*_\-.:：]", "", text)


_BY_HEADER = {
    normalise_header(alias): name for name, aliases in ALIASES.items() for alias in aliases
}
# Row numbering that spreadsheets add; anything else unknown is an error, since it is more often
# a misspelt column (whose data would be lost) than one to ignore.
IGNORED_HEADERS = frozenset({"序号", "序列号", "no", "#", "行号"})


def decode(data: bytes) -> str:
    """The file's text. Raises :class:`UnicodeDecodeError` for none of the usual encodings."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")  # a superset of GBK and GB2312, what Excel writes in China


def _dialect(text: str) -> str:
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {sep: first.count(sep) for sep in (",", "\t", ";")}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ","


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    cells: dict[str, str]  # canonical column -> stripped cell ("" when empty)


class _Errors:
    def __init__(self, result: ImportResult, headers: dict[str, str]) -> None:
        self.result = result
        self.headers = headers

    def add(self, line: int, column: str | None, zh: str, en: str) -> None:
        shown = self.headers.get(column, column) if column else None
        self.result.errors.append(RowError(line, shown, zh, en))


def _rows(text: str, result: ImportResult) -> tuple[dict[str, str], Iterator[_Row]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_dialect(text))
    header: list[str] | None = None
    header_line = 0
    last_line = 0
    for cells in reader:
        start, last_line = last_line + 1, reader.line_num
        if any(c.strip() for c in cells):
            header, header_line = cells, start
            break
    if header is None:
        result.errors.append(
            RowError(1, None, "文件为空或没有表头", "the file is empty or has no header")
        )
        return {}, iter(())
    columns: list[str | None] = []
    shown: dict[str, str] = {}
    for raw in header:
        name = _BY_HEADER.get(normalise_header(raw))
        if name is not None and name in shown:
            result.errors.append(
                RowError(header_line, raw.strip(), "重复的列", "the column appears twice")
            )
            name = None
        elif name is None and raw.strip() and normalise_header(raw) not in IGNORED_HEADERS:
            result.errors.append(
                RowError(
                    header_line,
                    raw.strip(),
                    "无法识别的列名",
                    f"unknown column (known: {', '.join(ALIASES)})",
                )
            )
        columns.append(name)
        if name is not None:
            shown[name] = raw.strip()

    def body() -> Iterator[_Row]:
        nonlocal last_line
        for cells in reader:
            start, last_line = last_line + 1, reader.line_num
            if not any(c.strip() for c in cells):
                continue  # blank line
            values: dict[str, str] = dict.fromkeys(shown, "")
            extra = cells[len(columns) :]
            if any(c.strip() for c in extra):
                result.errors.append(
                    RowError(
                        start, None, "此行的列数多于表头", "this row has more cells than the header"
                    )
                )
            for name, cell in zip(columns, cells, strict=False):
                if name is not None:
                    values[name] = unicodedata.normalize("NFKC", cell).strip()
            yield _Row(start, values)

    return shown, body()


def detect_kind(columns: set[str]) -> ImportKind | None:
    if "card" in columns:
        return ImportKind.CARDS
    if "unit_id" in columns:
        return ImportKind.FLATS
    if "building" in columns:
        return ImportKind.BUILDINGS
    if "street_office" in columns or "district" in columns:
        return ImportKind.COMPOUNDS
    return None


class _Importer:
    def __init__(
        self, session: Session, result: ImportResult, errors: _Errors, scope: Scope
    ) -> None:
        self.session = session
        self.result = result
        self.errors = errors
        self.scope = scope
        self.seen: dict[tuple[Any, ...], int] = {}
        # Lookups repeat on every row of a file; each is asked of the database once.
        self._compounds: dict[tuple[str, str], list[Compound]] = {}
        self._buildings: dict[tuple[int, str], Building | None] = {}
        self._entrances: dict[tuple[int, str], Entrance] = {}
        self._flats: dict[int, dict[str, Flat]] = {}
        self._cards: dict[int, dict[str, CardRegistration]] = {}

    # -- cells ---------------------------------------------------------------------------------

    def text(self, row: _Row, column: str, *, required: bool = False) -> str | None:
        value = row.cells.get(column, "")
        if not value:
            if required:
                zh, en = LABELS.get(column, (column, column))
                self.errors.add(row.line, column, f"{zh}不能为空", f"{en} is required")
            return None
        if _CONTROL.search(value) or len(value) > MAX_TEXT:
            self.errors.add(
                row.line,
                column,
                f"内容过长（最多 {MAX_TEXT} 个字符）或含控制字符",
                f"too long (at most {MAX_TEXT} characters) or contains control characters",
            )
            return None
        return value

    def number(
        self, row: _Row, column: str, *, integer: bool, low: float, high: float
    ) -> float | int | None:
        value = row.cells.get(column, "")
        if not value:
            return None
        match = _NUMBER.match(value.replace(",", ""))
        if match is None or (integer and "." in match.group(1)):
            kind_zh, kind_en = ("整数", "a whole number") if integer else ("数字", "a number")
            self.errors.add(
                row.line, column, f"应为{kind_zh}，而不是“{value}”", f"{value!r} is not {kind_en}"
            )
            return None
        number = int(match.group(1)) if integer else float(match.group(1))
        if not low <= number <= high:
            self.errors.add(
                row.line,
                column,
                f"数值 {number} 超出范围 {low:g}–{high:g}",
                f"{number} is outside {low:g}-{high:g}",
            )
            return None
        return number

    def once(self, row: _Row, key: tuple[Any, ...], column: str) -> bool:
        """False (and an error) when an earlier row of the file has the same key."""
        first = self.seen.setdefault(key, row.line)
        if first != row.line:
            self.errors.add(row.line, column, f"与第 {first} 行重复", f"duplicates line {first}")
            return False
        return True

    # -- references ----------------------------------------------------------------------------

    def compound(self, row: _Row) -> Compound | None:
        code = self.text(row, "compound_code")
        name = self.text(row, "compound")
        if code:
            column, shown, where = "compound_code", code, Compound.code == code
        elif name:
            column, shown, where = "compound", name, Compound.name == name
        else:
            self.errors.add(
                row.line,
                "compound",
                "小区或小区编码不能为空",
                "compound or compound code is required",
            )
            return None
        key = (column, shown)
        if key not in self._compounds:
            self._compounds[key] = list(self.session.scalars(sa.select(Compound).where(where)))
        found = self._compounds[key]
        if self.scope is not None:
            found = [c for c in found if c.id in self.scope]
        if not found:
            self.errors.add(
                row.line,
                column,
                f"找不到小区“{shown}”（或不在您的管辖范围内）",
                f"no compound {shown!r} (or it is outside your compounds)",
            )
            return None
        if len(found) > 1:
            self.errors.add(
                row.line,
                column,
                f"小区名称“{shown}”不唯一，请填写小区编码",
                f"compound name {shown!r} is ambiguous: give the compound code",
            )
            return None
        self.result.compound_ids.add(found[0].id)
        return found[0]

    def building(self, row: _Row, compound: Compound, *, create: bool) -> Building | None:
        name = self.text(row, "building", required=True)
        if name is None:
            return None
        key = (compound.id, name)
        if key not in self._buildings:
            self._buildings[key] = self.session.scalar(
                sa.select(Building).where(
                    Building.compound_id == compound.id, Building.name == name
                )
            )
        building = self._buildings[key]
        if building is None and create:
            building = Building(compound_id=compound.id, name=name)
            self.session.add(building)
            self.session.flush()
            self._buildings[key] = building
            self.result.created["building"] += 1
        elif building is None:
            self.errors.add(
                row.line,
                "building",
                f"小区“{compound.name}”中没有楼栋“{name}”",
                f"compound {compound.name!r} has no building {name!r}",
            )
        return building

    def entrance(self, building: Building, name: str) -> Entrance:
        key = (building.id, name)
        entrance = self._entrances.get(key)
        if entrance is None:
            entrance = self.session.scalar(
                sa.select(Entrance).where(
                    Entrance.building_id == building.id, Entrance.name == name
                )
            )
            if entrance is None:
                entrance = Entrance(building_id=building.id, name=name)
                self.session.add(entrance)
                self.session.flush()
                self.result.created["entrance"] += 1
            self._entrances[key] = entrance
        return entrance

    def flats_of(self, building: Building) -> dict[str, Flat]:
        """The building's flats by unit id, read once, then kept up to date by this import."""
        flats = self._flats.get(building.id)
        if flats is None:
            flats = self._flats[building.id] = {
                f.unit_id: f
                for f in self.session.scalars(
                    sa.select(Flat).where(Flat.building_id == building.id)
                )
            }
        return flats

    # -- kinds ---------------------------------------------------------------------------------

    def compounds(self, row: _Row) -> None:
        district_name = self.text(row, "district", required=True)
        office_name = self.text(row, "street_office", required=True)
        name = self.text(row, "compound", required=True)
        code = self.text(row, "compound_code")
        address = self.text(row, "address")
        if address is None and row.cells.get("address"):
            return
        if not (district_name and office_name and name):
            return
        if not self.once(row, ("compound", office_name, name), "compound"):
            return
        if code and not self.once(row, ("code", code), "compound_code"):
            return
        district = self.session.scalar(sa.select(District).where(District.name == district_name))
        if district is None:
            district = District(name=district_name)
            self.session.add(district)
            self.session.flush()
            self.result.created["district"] += 1
        office = self.session.scalar(
            sa.select(StreetOffice).where(
                StreetOffice.district_id == district.id, StreetOffice.name == office_name
            )
        )
        if office is None:
            office = StreetOffice(district_id=district.id, name=office_name)
            self.session.add(office)
            self.session.flush()
            self.result.created["street_office"] += 1
        compound = self.session.scalar(
            sa.select(Compound).where(Compound.street_office_id == office.id, Compound.name == name)
        )
        if code:
            holder = self.session.scalar(sa.select(Compound).where(Compound.code == code))
            if holder is not None and holder is not compound:
                self.errors.add(
                    row.line,
                    "compound_code",
                    f"小区编码“{code}”已被小区“{holder.name}”使用",
                    f"compound code {code!r} belongs to compound {holder.name!r}",
                )
                return
        if compound is None:
            compound = Compound(street_office_id=office.id, name=name, code=code, address=address)
            self.session.add(compound)
            self.session.flush()
            self.result.created["compound"] += 1
        else:
            changed = False
            for attr, value in (("code", code), ("address", address)):
                if value is not None and getattr(compound, attr) != value:
                    setattr(compound, attr, value)
                    changed = True
            if changed:
                self.result.updated["compound"] += 1
        self.result.compound_ids.add(compound.id)

    def buildings(self, row: _Row) -> None:
        compound = self.compound(row)
        name = self.text(row, "building", required=True)
        floors = self.number(row, "floors", integer=True, low=1, high=300)
        if compound is None or name is None:
            return
        if not self.once(row, ("building", compound.id, name), "building"):
            return
        building = self.session.scalar(
            sa.select(Building).where(Building.compound_id == compound.id, Building.name == name)
        )
        if building is None:
            self.session.add(Building(compound_id=compound.id, name=name, floors=floors))
            self.result.created["building"] += 1
        elif floors is not None and building.floors != floors:
            building.floors = int(floors)
            self.result.updated["building"] += 1

    def flats(self, row: _Row) -> None:
        compound = self.compound(row)
        unit_id = self.text(row, "unit_id", required=True)
        entrance_name = self.text(row, "entrance")
        values = {
            "floor": self.number(row, "floor", integer=True, low=-10, high=300),
            "area_m2": self.number(row, "area_m2", integer=False, low=1, high=100_000),
            "rooms": self.number(row, "rooms", integer=True, low=1, high=1000),
            "registered_occupants": self.number(
                row, "registered_occupants", integer=True, low=0, high=100_000
            ),
            "rated_current_a": self.number(row, "rated_current_a", integer=False, low=1, high=1000),
        }
        if compound is None:
            self.text(row, "building", required=True)
            return
        building_name = row.cells.get("building", "")
        if unit_id is None or not building_name:
            self.text(row, "building", required=True)
            return
        if not self.once(row, ("flat", compound.id, building_name, unit_id), "unit_id"):
            return
        building = self.building(row, compound, create=True)
        if building is None:
            return
        given = {k: v for k, v in values.items() if v is not None}
        if entrance_name:
            given["entrance_id"] = self.entrance(building, entrance_name).id
        flats = self.flats_of(building)
        flat = flats.get(unit_id)
        if flat is None:
            flats[unit_id] = Flat(building_id=building.id, unit_id=unit_id, **given)
            self.session.add(flats[unit_id])
            self.result.created["flat"] += 1
            return
        changed = [k for k, v in given.items() if getattr(flat, k) != v]
        for name in changed:
            setattr(flat, name, given[name])
        if changed:
            self.result.updated["flat"] += 1

    def cards(self, row: _Row) -> None:
        compound = self.compound(row)
        unit_id = self.text(row, "unit_id", required=True)
        raw_card = row.cells.get("card", "")
        card = raw_card.lower()
        holder = self.text(row, "holder_label")
        if not card:
            self.text(row, "card", required=True)
            return
        if not _CARD_PSEUDONYM.match(card):
            self.errors.add(
                row.line,
                "card",
                "应为网关生成的卡号伪名（16–64 位十六进制），不能填写卡号",
                "must be the card's pseudonym made by the gateway (16-64 hex digits), "
                "never the card number",
            )
            return
        if compound is None or unit_id is None:
            return
        building = self.building(row, compound, create=False)
        if building is None:
            return
        flat = self.flats_of(building).get(unit_id)
        if flat is None:
            self.errors.add(
                row.line,
                "unit_id",
                f"楼栋“{building.name}”中没有户号“{unit_id}”",
                f"building {building.name!r} has no unit {unit_id!r}",
            )
            return
        if not self.once(row, ("card", flat.id, card), "card"):
            return
        cards = self._cards.get(flat.id)
        if cards is None:
            cards = self._cards[flat.id] = {
                c.card: c
                for c in self.session.scalars(
                    sa.select(CardRegistration).where(CardRegistration.flat_id == flat.id)
                )
            }
        existing = cards.get(card)
        if existing is None:
            cards[card] = CardRegistration(
                flat_id=flat.id, card=card, holder_label=holder, created_at=utcnow()
            )
            self.session.add(cards[card])
            self.result.created["card_registration"] += 1
        elif holder is not None and existing.holder_label != holder:
            existing.holder_label = holder
            self.result.updated["card_registration"] += 1


def import_csv(
    session: Session,
    data: bytes,
    *,
    actor: Actor,
    scope: Scope,
    kind: ImportKind | None = None,
    filename: str | None = None,
    dry_run: bool = False,
) -> ImportResult:
    """Check and import one CSV file in the session's transaction, committing on success.

    Raises :class:`ImportRejectedError` (after rolling back) when any row has an error; with
    ``dry_run`` everything is checked and then rolled back. ``scope`` limits the compounds the
    rows may name (``None``: any, and new compounds may be created).
    """
    result = ImportResult(kind=kind)
    try:
        text = decode(data)
    except UnicodeDecodeError:
        result.errors.append(
            RowError(
                1,
                None,
                "无法识别文件编码，请另存为 UTF-8 或 GBK 编码的 CSV",
                "unknown text encoding: save the file as CSV in UTF-8 or GBK",
            )
        )
        raise ImportRejectedError(result) from None
    headers, rows = _rows(text, result)
    columns = set(headers)
    if kind is None:
        kind = detect_kind(columns)
        result.kind = kind
    if kind is None:
        result.errors.append(
            RowError(
                1,
                None,
                "无法判断导入类型：缺少“小区/楼栋/户号/卡号伪名”等列",
                "cannot tell what the file holds: no compound, building, unit or card column",
            )
        )
        raise ImportRejectedError(result)
    if kind is ImportKind.COMPOUNDS and scope is not None:
        raise PermissionError("only admins may import compounds")
    needed = list(REQUIRED[kind])
    if kind is not ImportKind.COMPOUNDS and not columns & {"compound", "compound_code"}:
        needed.append("compound")
    for column in needed:
        if column not in columns:
            zh, en = LABELS.get(column, (column, column))
            result.errors.append(
                RowError(1, None, f"缺少必填列“{zh}”", f"required column {en!r} is missing")
            )
    if result.errors:
        raise ImportRejectedError(result)
    errors = _Errors(result, headers)
    importer = _Importer(session, result, errors, scope)
    handle = getattr(importer, kind.value)
    try:
        for row in rows:
            result.rows += 1
            if result.rows > MAX_ROWS:
                errors.add(row.line, None, f"超过 {MAX_ROWS} 行", f"more than {MAX_ROWS} rows")
                break
            handle(row)
        if not result.errors and not dry_run:
            for compound_id in sorted(result.compound_ids):
                record(
                    session,
                    actor,
                    Action.IMPORT,
                    kind.value,
                    None,
                    compound_id=compound_id,
                    summary={
                        "file": filename,
                        "rows": result.rows,
                        "created": dict(result.created),
                        "updated": dict(result.updated),
                    },
                )
            session.commit()
            return result
    except sa.exc.IntegrityError:
        # Another writer created the same compound, building or flat meanwhile.
        session.rollback()
        result.errors.append(
            RowError(
                1,
                None,
                "导入期间数据被他人修改，未导入任何数据，请重试",
                "the register changed while importing; nothing was imported, try again",
            )
        )
    finally:
        if session.in_transaction():
            session.rollback()
    if result.errors:
        raise ImportRejectedError(result)
    return result
