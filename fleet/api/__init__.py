"""The JSON API under ``/api``: one module per resource."""

from __future__ import annotations

from fastapi import APIRouter

from fleet.api import alerts, auth, gateways, health, ingest


def api_router() -> APIRouter:
    router = APIRouter(prefix="/api")
    for module in (auth, alerts, gateways, health, ingest):
        router.include_router(module.router)
    return router
