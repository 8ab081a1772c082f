"""The JSON API under ``/api``: one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from fleet.api import (
    alerts,
    audit,
    auth,
    cases,
    gateways,
    health,
    imports,
    ingest,
    sites,
    users,
)


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")
    for module in (auth, alerts, cases, gateways, health, ingest, sites, imports, users, audit):
        router.include_router(module.router)
    return router
