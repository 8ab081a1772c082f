"""Schemathesis against the OpenAPI schema: no request the schema allows makes a server error.

The fleet manager runs for real (uvicorn on a free port, its lifespan, the broker, the database)
and every operation in its schema gets a few generated requests as an admin (who passes every
role check, so the requests reach the code behind it). Bounded: ``EXAMPLES`` per operation and
no shrinking, so the run stays well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase

from fleet.app import serve
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet.helpers import ADMIN_PASSWORD, make_settings

EXAMPLES = 6


def _fuzz(schema_dict: dict[str, Any], base_url: str, headers: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_dict(schema_dict)
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call(base_url=base_url, headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{case.as_curl_command()}"
                )

        check()
    assert operations > 40
    return failures


async def test_no_server_errors_anywhere_in_the_schema(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    port = free_port()
    settings = make_settings(mqtt_broker, database_url, http_port=port)
    started = asyncio.Event()
    server = asyncio.create_task(serve(settings, started=started))
    try:
        await asyncio.wait_for(started.wait(), 60)
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            r = await client.post(
                "/api/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
            )
            headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
            schema = (await client.get("/openapi.json")).json()
        failures = await asyncio.to_thread(_fuzz, schema, base_url, headers)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
    assert failures == [], "\n".join(failures)
