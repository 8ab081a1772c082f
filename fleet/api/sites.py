"""The site register: districts, street offices, compounds, buildings, entrances, flats,
devices and card registrations.

Who may do what (every route checks role first, then scope; see ``docs/fleet.md``):

| resource | read | write |
|---|---|---|
| districts, street offices, compounds | everyone, within scope | admin |
| buildings, entrances, flats | everyone, within scope | admin, installer, property |
| devices | everyone, within scope | admin, installer |
| card registrations | admin, property | admin, property |

Lists are filtered to the caller's compounds; a single item outside them is 403. Every change
is written to the audit log in the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from contract.site import Location
from fleet.api.deps import (
    AdminUser,
    CurrentUser,
    Principal,
    SessionDep,
    ensure_compound,
    require,
    scope_filter,
)
from fleet.api.types import (
    IdPath,
    IdQuery,
    Limit,
    LongText,
    Measure,
    Name,
    Offset,
    Params,
    RefId,
    SmallInt,
    TextQuery,
)
from fleet.audit import Action, changes, record, snapshot
from fleet.db import utcnow
from fleet.models import (
    Base,
    Building,
    CardRegistration,
    Compound,
    Device,
    DeviceKind,
    District,
    Entrance,
    Flat,
    Gateway,
    Role,
    StreetOffice,
)
from fleet.sites import compound_of, compound_of_gateway, in_scope

router = APIRouter(tags=["sites"])

SiteEditor = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER, Role.PROPERTY))]
DeviceEditor = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER))]
CardUser = Annotated[Principal, Depends(require(Role.ADMIN, Role.PROPERTY))]

RowT = TypeVar("RowT", bound=Base)
ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    total: int


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- helpers ---------------------------------------------------------------------------------


def _get(session: Session, model: type[RowT], row_id: int, what: str) -> RowT:
    row = session.get(model, row_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"No such {what}")
    return row


def _get_scoped(
    session: Session, user: Principal, model: type[RowT], row_id: int, what: str
) -> RowT:
    row = _get(session, model, row_id, what)
    ensure_compound(user, compound_of(session, row))
    return row


def _ref(session: Session, model: type[RowT], row_id: int, field: str) -> RowT:
    """A referenced row from a request body: missing is the body's fault (422)."""
    row = session.get(model, row_id)
    if row is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{field}: no such id {row_id}")
    return row


def _commit(session: Session, what: str) -> None:
    try:
        session.commit()
    except sa.exc.IntegrityError as exc:
        session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"The {what} conflicts with an existing one (duplicate name or id) or is still in use",
        ) from exc


def _create(session: Session, user: Principal, row: RowT, entity: str) -> RowT:
    session.add(row)
    try:
        session.flush()
    except sa.exc.IntegrityError as exc:
        session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The {entity} conflicts with an existing one"
        ) from exc
    record(
        session,
        user.actor,
        Action.CREATE,
        entity,
        getattr(row, "id", None),
        compound_id=compound_of(session, row),
        summary={"after": snapshot(row)},
    )
    _commit(session, entity)
    return row


def _update(
    session: Session, user: Principal, row: RowT, entity: str, values: dict[str, Any]
) -> RowT:
    before = snapshot(row)
    for name, value in values.items():
        setattr(row, name, value)
    after = snapshot(row)
    diff = changes(before, after)
    if diff["after"]:
        record(
            session,
            user.actor,
            Action.UPDATE,
            entity,
            getattr(row, "id", None),
            compound_id=compound_of(session, row),
            summary=diff,
        )
    _commit(session, entity)
    return row


def _delete(session: Session, user: Principal, row: Base, entity: str) -> Response:
    compound_id = compound_of(session, row)
    before = snapshot(row)
    row_id = getattr(row, "id", None)
    session.delete(row)
    try:
        session.flush()
    except sa.exc.IntegrityError as exc:
        session.rollback()
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"The {entity} is still in use; remove what refers to it"
        ) from exc
    record(
        session,
        user.actor,
        Action.DELETE,
        entity,
        row_id,
        compound_id=compound_id,
        summary={"before": before},
    )
    _commit(session, entity)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _page(
    session: Session, stmt: sa.Select[Any], order: Any, limit: int, offset: int
) -> tuple[Sequence[Any], int]:
    total = session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(stmt.order_by(order).limit(limit).offset(offset)).all()
    return rows, total


# --- districts and street offices --------------------------------------------------------------


class DistrictCreate(_Body):
    name: Name


class DistrictPublic(_Public):
    id: int
    name: str


def _visible_street_offices(user: Principal) -> sa.Select[Any]:
    return scope_filter(sa.select(Compound.street_office_id).distinct(), user, Compound.id)


@router.get("/districts")
def read_districts(
    session: SessionDep, user: CurrentUser, limit: Limit = 100, offset: Offset = 0
) -> Page[DistrictPublic]:
    stmt = sa.select(District)
    if not user.is_admin:
        stmt = stmt.where(
            District.id.in_(
                sa.select(StreetOffice.district_id).where(
                    StreetOffice.id.in_(_visible_street_offices(user))
                )
            )
        )
    rows, total = _page(session, stmt, District.name, limit, offset)
    return Page(items=[DistrictPublic.model_validate(r) for r in rows], total=total)


@router.post("/districts", status_code=status.HTTP_201_CREATED)
def create_district(session: SessionDep, user: AdminUser, body: DistrictCreate) -> DistrictPublic:
    row = _create(session, user, District(name=body.name), "district")
    return DistrictPublic.model_validate(row)


@router.patch("/districts/{district_id}")
def update_district(
    session: SessionDep, user: AdminUser, district_id: IdPath, body: DistrictCreate
) -> DistrictPublic:
    row = _get(session, District, district_id, "district")
    return DistrictPublic.model_validate(
        _update(session, user, row, "district", body.model_dump(exclude_unset=True))
    )


@router.delete("/districts/{district_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_district(session: SessionDep, user: AdminUser, district_id: IdPath) -> Response:
    return _delete(session, user, _get(session, District, district_id, "district"), "district")


class StreetOfficeCreate(_Body):
    district_id: RefId
    name: Name


class StreetOfficeUpdate(_Body):
    name: Name


class StreetOfficePublic(_Public):
    id: int
    district_id: int
    name: str


@router.get("/street-offices")
def read_street_offices(
    session: SessionDep,
    user: CurrentUser,
    district_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[StreetOfficePublic]:
    stmt = sa.select(StreetOffice)
    if district_id is not None:
        stmt = stmt.where(StreetOffice.district_id == district_id)
    if not user.is_admin:
        stmt = stmt.where(StreetOffice.id.in_(_visible_street_offices(user)))
    rows, total = _page(session, stmt, StreetOffice.name, limit, offset)
    return Page(items=[StreetOfficePublic.model_validate(r) for r in rows], total=total)


@router.post("/street-offices", status_code=status.HTTP_201_CREATED)
def create_street_office(
    session: SessionDep, user: AdminUser, body: StreetOfficeCreate
) -> StreetOfficePublic:
    _ref(session, District, body.district_id, "district_id")
    row = _create(session, user, StreetOffice(**body.model_dump()), "street_office")
    return StreetOfficePublic.model_validate(row)


@router.patch("/street-offices/{street_office_id}")
def update_street_office(
    session: SessionDep, user: AdminUser, street_office_id: IdPath, body: StreetOfficeUpdate
) -> StreetOfficePublic:
    row = _get(session, StreetOffice, street_office_id, "street office")
    return StreetOfficePublic.model_validate(
        _update(session, user, row, "street_office", body.model_dump(exclude_unset=True))
    )


@router.delete("/street-offices/{street_office_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_street_office(
    session: SessionDep, user: AdminUser, street_office_id: IdPath
) -> Response:
    row = _get(session, StreetOffice, street_office_id, "street office")
    return _delete(session, user, row, "street_office")


# --- compounds -----------------------------------------------------------------------------------


class CompoundCreate(_Body):
    street_office_id: RefId
    name: Name
    code: Name | None = None
    address: LongText | None = None


class CompoundUpdate(_Body):
    name: Name | None = None
    code: Name | None = None
    address: LongText | None = None


class CompoundPublic(_Public):
    id: int
    street_office_id: int
    name: str
    code: str | None
    address: str | None


@router.get("/compounds")
def read_compounds(
    session: SessionDep,
    user: CurrentUser,
    street_office_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[CompoundPublic]:
    stmt = scope_filter(sa.select(Compound), user, Compound.id)
    if street_office_id is not None:
        stmt = stmt.where(Compound.street_office_id == street_office_id)
    rows, total = _page(session, stmt, Compound.name, limit, offset)
    return Page(items=[CompoundPublic.model_validate(r) for r in rows], total=total)


@router.get("/compounds/{compound_id}")
def read_compound(session: SessionDep, user: CurrentUser, compound_id: IdPath) -> CompoundPublic:
    return CompoundPublic.model_validate(
        _get_scoped(session, user, Compound, compound_id, "compound")
    )


@router.post("/compounds", status_code=status.HTTP_201_CREATED)
def create_compound(session: SessionDep, user: AdminUser, body: CompoundCreate) -> CompoundPublic:
    _ref(session, StreetOffice, body.street_office_id, "street_office_id")
    return CompoundPublic.model_validate(
        _create(session, user, Compound(**body.model_dump()), "compound")
    )


@router.patch("/compounds/{compound_id}")
def update_compound(
    session: SessionDep, user: AdminUser, compound_id: IdPath, body: CompoundUpdate
) -> CompoundPublic:
    row = _get(session, Compound, compound_id, "compound")
    values = body.model_dump(exclude_unset=True)
    if values.get("name", "") is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "name: may not be null")
    return CompoundPublic.model_validate(_update(session, user, row, "compound", values))


@router.delete("/compounds/{compound_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_compound(session: SessionDep, user: AdminUser, compound_id: IdPath) -> Response:
    return _delete(session, user, _get(session, Compound, compound_id, "compound"), "compound")


# --- buildings and entrances ---------------------------------------------------------------------


class BuildingCreate(_Body):
    compound_id: RefId
    name: Name
    floors: SmallInt | None = None


class BuildingUpdate(_Body):
    name: Name | None = None
    floors: SmallInt | None = None


class BuildingPublic(_Public):
    id: int
    compound_id: int
    name: str
    floors: int | None


@router.get("/buildings")
def read_buildings(
    session: SessionDep,
    user: CurrentUser,
    compound_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[BuildingPublic]:
    stmt = scope_filter(sa.select(Building), user, Building.compound_id)
    if compound_id is not None:
        stmt = stmt.where(Building.compound_id == compound_id)
    rows, total = _page(session, stmt, Building.id, limit, offset)
    return Page(items=[BuildingPublic.model_validate(r) for r in rows], total=total)


@router.get("/buildings/{building_id}")
def read_building(session: SessionDep, user: CurrentUser, building_id: IdPath) -> BuildingPublic:
    return BuildingPublic.model_validate(
        _get_scoped(session, user, Building, building_id, "building")
    )


@router.post("/buildings", status_code=status.HTTP_201_CREATED)
def create_building(session: SessionDep, user: SiteEditor, body: BuildingCreate) -> BuildingPublic:
    ensure_compound(user, body.compound_id)
    _ref(session, Compound, body.compound_id, "compound_id")
    return BuildingPublic.model_validate(
        _create(session, user, Building(**body.model_dump()), "building")
    )


@router.patch("/buildings/{building_id}")
def update_building(
    session: SessionDep, user: SiteEditor, building_id: IdPath, body: BuildingUpdate
) -> BuildingPublic:
    row = _get_scoped(session, user, Building, building_id, "building")
    values = body.model_dump(exclude_unset=True)
    if values.get("name", "") is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "name: may not be null")
    return BuildingPublic.model_validate(_update(session, user, row, "building", values))


@router.delete("/buildings/{building_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_building(session: SessionDep, user: SiteEditor, building_id: IdPath) -> Response:
    row = _get_scoped(session, user, Building, building_id, "building")
    return _delete(session, user, row, "building")


class EntranceCreate(_Body):
    building_id: RefId
    name: Name


class EntranceUpdate(_Body):
    name: Name


class EntrancePublic(_Public):
    id: int
    building_id: int
    name: str


@router.get("/entrances")
def read_entrances(
    session: SessionDep,
    user: CurrentUser,
    building_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[EntrancePublic]:
    stmt = scope_filter(
        sa.select(Entrance).join(Building, Building.id == Entrance.building_id),
        user,
        Building.compound_id,
    )
    if building_id is not None:
        stmt = stmt.where(Entrance.building_id == building_id)
    rows, total = _page(session, stmt, Entrance.id, limit, offset)
    return Page(items=[EntrancePublic.model_validate(r) for r in rows], total=total)


@router.get("/entrances/{entrance_id}")
def read_entrance(session: SessionDep, user: CurrentUser, entrance_id: IdPath) -> EntrancePublic:
    return EntrancePublic.model_validate(
        _get_scoped(session, user, Entrance, entrance_id, "entrance")
    )


@router.post("/entrances", status_code=status.HTTP_201_CREATED)
def create_entrance(session: SessionDep, user: SiteEditor, body: EntranceCreate) -> EntrancePublic:
    building = _ref(session, Building, body.building_id, "building_id")
    ensure_compound(user, building.compound_id)
    return EntrancePublic.model_validate(
        _create(session, user, Entrance(**body.model_dump()), "entrance")
    )


@router.patch("/entrances/{entrance_id}")
def update_entrance(
    session: SessionDep, user: SiteEditor, entrance_id: IdPath, body: EntranceUpdate
) -> EntrancePublic:
    row = _get_scoped(session, user, Entrance, entrance_id, "entrance")
    return EntrancePublic.model_validate(
        _update(session, user, row, "entrance", body.model_dump(exclude_unset=True))
    )


@router.delete("/entrances/{entrance_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_entrance(session: SessionDep, user: SiteEditor, entrance_id: IdPath) -> Response:
    row = _get_scoped(session, user, Entrance, entrance_id, "entrance")
    return _delete(session, user, row, "entrance")


# --- flats ---------------------------------------------------------------------------------------


class FlatFields(_Body):
    entrance_id: RefId | None = None
    floor: Annotated[int, Field(ge=-10, le=300)] | None = None
    area_m2: Measure | None = None
    rooms: Annotated[int, Field(ge=1, le=1000)] | None = None
    registered_occupants: SmallInt | None = None
    rated_current_a: Measure | None = None


class FlatCreate(FlatFields):
    building_id: RefId
    unit_id: Name


class FlatUpdate(FlatFields):
    unit_id: Name | None = None


class FlatPublic(_Public):
    id: int
    building_id: int
    entrance_id: int | None
    unit_id: str
    floor: int | None
    area_m2: float | None
    rooms: int | None
    registered_occupants: int | None
    rated_current_a: float | None


def _check_entrance(session: Session, entrance_id: int | None, building_id: int) -> None:
    if entrance_id is None:
        return
    entrance = _ref(session, Entrance, entrance_id, "entrance_id")
    if entrance.building_id != building_id:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "entrance_id: the entrance is in another building",
        )


@router.get("/flats")
def read_flats(
    session: SessionDep,
    user: CurrentUser,
    *,
    compound_id: IdQuery = None,
    building_id: IdQuery = None,
    unit_id: TextQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[FlatPublic]:
    stmt = scope_filter(
        sa.select(Flat).join(Building, Building.id == Flat.building_id),
        user,
        Building.compound_id,
    )
    if compound_id is not None:
        stmt = stmt.where(Building.compound_id == compound_id)
    if building_id is not None:
        stmt = stmt.where(Flat.building_id == building_id)
    if unit_id is not None:
        stmt = stmt.where(Flat.unit_id == unit_id)
    rows, total = _page(session, stmt, Flat.id, limit, offset)
    return Page(items=[FlatPublic.model_validate(r) for r in rows], total=total)


@router.get("/flats/{flat_id}")
def read_flat(session: SessionDep, user: CurrentUser, flat_id: IdPath) -> FlatPublic:
    return FlatPublic.model_validate(_get_scoped(session, user, Flat, flat_id, "flat"))


@router.post("/flats", status_code=status.HTTP_201_CREATED)
def create_flat(session: SessionDep, user: SiteEditor, body: FlatCreate) -> FlatPublic:
    building = _ref(session, Building, body.building_id, "building_id")
    ensure_compound(user, building.compound_id)
    _check_entrance(session, body.entrance_id, building.id)
    return FlatPublic.model_validate(_create(session, user, Flat(**body.model_dump()), "flat"))


@router.patch("/flats/{flat_id}")
def update_flat(
    session: SessionDep, user: SiteEditor, flat_id: IdPath, body: FlatUpdate
) -> FlatPublic:
    row = _get_scoped(session, user, Flat, flat_id, "flat")
    values = body.model_dump(exclude_unset=True)
    if values.get("unit_id", "") is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "unit_id: may not be null")
    if "entrance_id" in values:
        _check_entrance(session, values["entrance_id"], row.building_id)
    return FlatPublic.model_validate(_update(session, user, row, "flat", values))


@router.delete("/flats/{flat_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_flat(session: SessionDep, user: SiteEditor, flat_id: IdPath) -> Response:
    return _delete(session, user, _get_scoped(session, user, Flat, flat_id, "flat"), "flat")


# --- devices -------------------------------------------------------------------------------------

GatewayRef = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class DeviceFields(_Body):
    gateway_id: GatewayRef | None = None
    flat_id: RefId | None = None
    location: Location | None = Field(
        default=None, description="For a device serving a shared place rather than one flat."
    )
    params: Params = Field(
        default_factory=dict,
        description="Transport details as in the agent config: Modbus address/slave, BLE MAC...",
    )


class DeviceCreate(DeviceFields):
    compound_id: RefId
    kind: DeviceKind
    device_id: Name


class DeviceUpdate(DeviceFields):
    kind: DeviceKind | None = None
    device_id: Name | None = None


class DevicePublic(_Public):
    id: int
    compound_id: int
    gateway_id: str | None
    kind: DeviceKind
    device_id: str
    flat_id: int | None
    location: str | None
    params: dict[str, Any]


def _check_device_refs(
    session: Session,
    user: Principal,
    compound_id: int,
    values: dict[str, Any],
) -> None:
    flat_id = values.get("flat_id")
    if flat_id is not None:
        flat = _ref(session, Flat, flat_id, "flat_id")
        if compound_of(session, flat) != compound_id:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "flat_id: the flat is in another compound"
            )
    gateway_id = values.get("gateway_id")
    if gateway_id is not None:
        if session.get(Gateway, gateway_id) is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"gateway_id: no such gateway {gateway_id!r}"
            )
        mapped_to = compound_of_gateway(session, gateway_id)
        if mapped_to != compound_id and not (mapped_to is None and user.is_admin):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "gateway_id: the gateway is not mapped to an entrance of this compound",
            )


@router.get("/devices")
def read_devices(
    session: SessionDep,
    user: CurrentUser,
    *,
    compound_id: IdQuery = None,
    flat_id: IdQuery = None,
    gateway_id: TextQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[DevicePublic]:
    stmt = scope_filter(sa.select(Device), user, Device.compound_id)
    if compound_id is not None:
        stmt = stmt.where(Device.compound_id == compound_id)
    if flat_id is not None:
        stmt = stmt.where(Device.flat_id == flat_id)
    if gateway_id is not None:
        stmt = stmt.where(Device.gateway_id == gateway_id)
    rows, total = _page(session, stmt, Device.id, limit, offset)
    return Page(items=[DevicePublic.model_validate(r) for r in rows], total=total)


@router.get("/devices/{device_pk}")
def read_device(session: SessionDep, user: CurrentUser, device_pk: IdPath) -> DevicePublic:
    return DevicePublic.model_validate(_get_scoped(session, user, Device, device_pk, "device"))


@router.post("/devices", status_code=status.HTTP_201_CREATED)
def create_device(session: SessionDep, user: DeviceEditor, body: DeviceCreate) -> DevicePublic:
    ensure_compound(user, body.compound_id)
    _ref(session, Compound, body.compound_id, "compound_id")
    values = body.model_dump()
    _check_device_refs(session, user, body.compound_id, values)
    return DevicePublic.model_validate(_create(session, user, Device(**values), "device"))


@router.patch("/devices/{device_pk}")
def update_device(
    session: SessionDep, user: DeviceEditor, device_pk: IdPath, body: DeviceUpdate
) -> DevicePublic:
    row = _get_scoped(session, user, Device, device_pk, "device")
    values = body.model_dump(exclude_unset=True)
    for required in ("kind", "device_id", "params"):
        if required in values and values[required] is None:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"{required}: may not be null"
            )
    _check_device_refs(session, user, row.compound_id, values)
    return DevicePublic.model_validate(_update(session, user, row, "device", values))


@router.delete("/devices/{device_pk}", status_code=status.HTTP_204_NO_CONTENT)
def delete_device(session: SessionDep, user: DeviceEditor, device_pk: IdPath) -> Response:
    return _delete(session, user, _get_scoped(session, user, Device, device_pk, "device"), "device")


# --- card registrations --------------------------------------------------------------------------

CardPseudonym = Annotated[
    str,
    Field(
        pattern=r"^[0-9a-f]{16,64}$",
        description="The card's pseudonym as the gateway makes it (HMAC-SHA256, hex), never the "
        "card number.",
    ),
]


class CardCreate(_Body):
    flat_id: RefId
    card: CardPseudonym
    holder_label: Name | None = None


class CardPublic(_Public):
    id: int
    flat_id: int
    card: str
    holder_label: str | None


@router.get("/cards")
def read_cards(
    session: SessionDep,
    user: CardUser,
    flat_id: IdQuery = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[CardPublic]:
    stmt = (
        sa.select(CardRegistration)
        .join(Flat, Flat.id == CardRegistration.flat_id)
        .join(Building, Building.id == Flat.building_id)
    )
    if user.compound_ids is not None:
        stmt = stmt.where(in_scope(Building.compound_id, user.compound_ids))
    if flat_id is not None:
        stmt = stmt.where(CardRegistration.flat_id == flat_id)
    rows, total = _page(session, stmt, CardRegistration.id, limit, offset)
    return Page(items=[CardPublic.model_validate(r) for r in rows], total=total)


@router.post("/cards", status_code=status.HTTP_201_CREATED)
def create_card(session: SessionDep, user: CardUser, body: CardCreate) -> CardPublic:
    flat = _ref(session, Flat, body.flat_id, "flat_id")
    ensure_compound(user, compound_of(session, flat))
    row = CardRegistration(**body.model_dump(), created_at=utcnow())
    return CardPublic.model_validate(_create(session, user, row, "card_registration"))


@router.delete("/cards/{card_pk}", status_code=status.HTTP_204_NO_CONTENT)
def delete_card(session: SessionDep, user: CardUser, card_pk: IdPath) -> Response:
    row = _get_scoped(session, user, CardRegistration, card_pk, "card registration")
    return _delete(session, user, row, "card_registration")
