"""``POST /api/import``: a CSV of compounds, buildings, flats or card registrations.

All or nothing (see :mod:`fleet.importer`): 200 with the counts when every row is valid, 422 with
every row's errors (line, column, message in Chinese and English) and nothing written when not.
Admins import anything; installers and property companies import buildings, flats and cards of
their own compounds (a row naming another compound is an error); compounds are admin-only.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from fleet.api.deps import Principal, SessionDep, require
from fleet.importer import ImportKind, ImportRejectedError, import_csv
from fleet.models import Role

router = APIRouter(prefix="/import", tags=["import"])

MAX_BYTES = 20 * 1024 * 1024

Importer = Annotated[Principal, Depends(require(Role.ADMIN, Role.INSTALLER, Role.PROPERTY))]


class RowErrorPublic(BaseModel):
    row: int
    column: str | None
    message_zh: str
    message_en: str


class ImportReport(BaseModel):
    kind: ImportKind
    rows: int
    created: dict[str, int]
    updated: dict[str, int]
    dry_run: bool


class ImportErrors(BaseModel):
    message: str
    kind: ImportKind | None
    rows: int
    errors: list[RowErrorPublic]


@router.post(
    "",
    response_model=ImportReport,
    responses={
        status.HTTP_422_UNPROCESSABLE_CONTENT: {
            "model": ImportErrors,
            "description": "Nothing imported: the errors of every row.",
        }
    },
)
async def import_file(
    session: SessionDep,
    user: Importer,
    file: Annotated[UploadFile, File(description="CSV: UTF-8 (BOM or not), GBK or UTF-16")],
    kind: Annotated[ImportKind | None, Query(description="Detected from the headers")] = None,
    dry_run: bool = False,
) -> ImportReport | JSONResponse:
    data = await file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise HTTPException(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"at most {MAX_BYTES} bytes per file"
        )
    try:
        result = await run_in_threadpool(
            import_csv,
            session,
            data,
            actor=user.actor,
            scope=user.compound_ids,
            kind=kind,
            filename=re.sub(r"[\x00-\x1f\x7f]", "", file.filename or "")[:200] or None,
            dry_run=dry_run,
        )
    except PermissionError as exc:
        raise HTTPException(status.HTTP_403_FORBIDDEN, str(exc)) from exc
    except ImportRejectedError as exc:
        body = ImportErrors(
            message=f"nothing imported: {len(exc.result.errors)} error(s)",
            kind=exc.result.kind,
            rows=exc.result.rows,
            errors=[
                RowErrorPublic.model_validate(e, from_attributes=True) for e in exc.result.errors
            ],
        )
        return JSONResponse(body.model_dump(mode="json"), status.HTTP_422_UNPROCESSABLE_CONTENT)
    assert result.kind is not None
    return ImportReport(
        kind=result.kind,
        rows=result.rows,
        created=dict(result.created),
        updated=dict(result.updated),
        dry_run=dry_run,
    )
