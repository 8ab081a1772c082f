"""Bounded field types for request bodies and parameters.

Every value a client sends is bounded to what both databases store: no NUL or other control
characters in text (PostgreSQL refuses NUL), integers that fit the columns, finite floats. A
value outside them is a 422, never a database error.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import Field, StringConstraints

MAX_ID = 2**53  # fits BIGINT on both databases (and a JavaScript number)
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"


def _text(max_length: int) -> Any:
    return StringConstraints(
        strip_whitespace=True, min_length=1, max_length=max_length, pattern=_PRINTABLE
    )


Name = Annotated[str, _text(64)]
LongText = Annotated[str, _text(200)]
SmallInt = Annotated[int, Field(ge=0, le=100_000)]
Measure = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
RefId = Annotated[int, Field(ge=1, le=MAX_ID)]
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
IdQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
TextPath = Annotated[str, Path(min_length=1, max_length=64, pattern=_PRINTABLE)]
TextQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=_PRINTABLE)]


ParamKey = Annotated[
    str, StringConstraints(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_]+$")
]
ParamValue = (
    Annotated[str, StringConstraints(max_length=200, pattern=_PRINTABLE)]
    | Annotated[int, Field(ge=-(2**53), le=2**53)]
    | Annotated[float, Field(allow_inf_nan=False)]
    | bool
    | None
)
Params = Annotated[dict[ParamKey, ParamValue], Field(max_length=32)]
