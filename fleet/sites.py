"""The site register's queries: which compound a thing belongs to, and scope filters.

Scope is always a set of compound ids (``None`` = every compound, for admins). Everything that
belongs somewhere reaches its compound through the hierarchy:

- building, device: ``compound_id``;
- entrance, flat: through their building;
- card registration: through its flat;
- gateway: through its entrance (``gateways.entrance_id``); an unmapped gateway has no compound,
  so it is visible to admins only;
- alert: the compound recorded when it was raised (``alerts.compound_id``), else its gateway's;
  an alert of an unmapped gateway is visible to admins only.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session

from fleet.models import (
    Alert,
    Building,
    CardRegistration,
    Compound,
    Device,
    Entrance,
    Flat,
    Gateway,
    User,
    user_compounds,
)

Scope = frozenset[int] | None
IntColumn = (
    sa.ColumnElement[int]
    | sa.ColumnElement[int | None]
    | InstrumentedAttribute[int]
    | InstrumentedAttribute[int | None]
)
StrColumn = sa.ColumnElement[str] | InstrumentedAttribute[str] | InstrumentedAttribute[str | None]


def user_scope(session: Session, user: User) -> Scope:
    """The compounds ``user`` works in: their own list plus every compound of their street
    office; ``None`` (all) for an admin."""
    if user.role == "admin":
        return None
    ids = set(
        session.scalars(
            sa.select(user_compounds.c.compound_id).where(user_compounds.c.user_id == user.id)
        )
    )
    if user.street_office_id is not None:
        ids.update(
            session.scalars(
                sa.select(Compound.id).where(Compound.street_office_id == user.street_office_id)
            )
        )
    return frozenset(ids)


def in_scope(column: IntColumn, scope: Scope) -> sa.ColumnElement[bool]:
    """A WHERE clause keeping rows whose compound (``column``) is in ``scope``."""
    if scope is None:
        return sa.true()
    if not scope:
        return sa.false()
    return column.in_(sorted(scope))


def gateway_compound() -> sa.ScalarSelect[int]:
    """A correlated subquery: the compound of ``Gateway`` via its entrance (NULL if unmapped)."""
    return (
        sa.select(Building.compound_id)
        .join(Entrance, Entrance.building_id == Building.id)
        .where(Entrance.id == Gateway.entrance_id)
        .scalar_subquery()
    )


def gateway_ids_in(scope: Collection[int]) -> sa.Select[str]:
    """The ids of gateways mapped (through an entrance) to one of these compounds."""
    return (
        sa.select(Gateway.gateway_id)
        .join(Entrance, Entrance.id == Gateway.entrance_id)
        .join(Building, Building.id == Entrance.building_id)
        .where(Building.compound_id.in_(sorted(scope)))
    )


def gateway_in_scope(gateway_id_column: StrColumn, scope: Scope) -> sa.ColumnElement[bool]:
    """A WHERE clause keeping rows whose gateway (``gateway_id_column``) is in ``scope``.
    Rows of unmapped gateways pass only for admins (``scope is None``)."""
    if scope is None:
        return sa.true()
    if not scope:
        return sa.false()
    return gateway_id_column.in_(gateway_ids_in(scope))


def compound_of_gateway(session: Session, gateway_id: str) -> int | None:
    return session.scalar(
        sa.select(Building.compound_id)
        .join(Entrance, Entrance.building_id == Building.id)
        .join(Gateway, Gateway.entrance_id == Entrance.id)
        .where(Gateway.gateway_id == gateway_id)
    )


def compound_of(session: Session, row: object) -> int | None:
    """The compound a row of the site register belongs to."""
    if isinstance(row, Compound):
        return row.id
    if isinstance(row, (Building, Device)):
        return row.compound_id
    if isinstance(row, (Entrance, Flat)):
        return session.scalar(sa.select(Building.compound_id).where(Building.id == row.building_id))
    if isinstance(row, CardRegistration):
        return session.scalar(
            sa.select(Building.compound_id)
            .join(Flat, Flat.building_id == Building.id)
            .where(Flat.id == row.flat_id)
        )
    if isinstance(row, Gateway):
        return compound_of_gateway(session, row.gateway_id)
    return None


def alert_compound() -> sa.ColumnElement[int]:
    """The compound of ``Alert``: the one recorded when it was raised, else its gateway's now."""
    via_gateway = (
        sa.select(Building.compound_id)
        .join(Entrance, Entrance.building_id == Building.id)
        .join(Gateway, Gateway.entrance_id == Entrance.id)
        .where(Gateway.gateway_id == Alert.gateway_id)
        .scalar_subquery()
    )
    return sa.func.coalesce(Alert.compound_id, via_gateway)


def compound_of_alert(session: Session, alert: Alert) -> int | None:
    if alert.compound_id is not None:
        return alert.compound_id
    return compound_of_gateway(session, alert.gateway_id)
