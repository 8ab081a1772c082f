"""The demo's history: days of the building simulated by the scenario generator, the edge rules
run over them by ``edge-agent replay``, and the result published over MQTT to the fleet
manager's ingest, so the demo shows hazards that take days to appear (group rental, a charger
seen only on the meter) with their charts."""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path

from fleet.demo import demo_history, seed_demo_register
from tests.conftest import BrokerEndpoint
from tests.fleet.helpers import ADMIN_PASSWORD, eventually, fleet_client, login, make_settings
from tests.fleet.test_demo_register import SITE


async def test_the_history_brings_group_rentals_and_meter_charging_with_charts(
    mqtt_broker: BrokerEndpoint, database_url: str, tmp_path: Path
) -> None:
    # Its own gateway id: the broker may be shared with other runs.
    history_gw = f"gw-history-{uuid.uuid4().hex[:8]}"
    settings = make_settings(mqtt_broker, database_url, public_url="http://fleet.test")
    async with fleet_client(settings) as client:
        seed_demo_register(database_url, SITE, "gw-demo-01")
        report = await demo_history(
            database_url,
            mqtt_broker.url,
            tmp_path,
            7,
            date(2026, 3, 8),
            flats=6,
            gateway_id=history_gw,
        )
        assert "published" in report
        admin = await login(client)

        async def alerts() -> list[dict[str, object]]:
            r = await client.get("/api/alerts", headers=admin, params={"limit": 500})
            return [a for a in r.json()["items"] if a["gateway_id"] == history_gw]

        async def both_kinds() -> bool:
            kinds = {a["kind"] for a in await alerts()}
            return {"suspected_group_rental", "ebike_charging_suspected"} <= kinds

        await eventually(both_kinds, "the history's alerts", timeout=120)
        found = await alerts()
        rental = next(a for a in found if a["kind"] == "suspected_group_rental")
        metered = next(a for a in found if a["kind"] == "ebike_charging_suspected")

        r = await client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 303

        async def charted(alert_id: object, chart: str) -> bool:
            page = await client.get(f"/alerts/{alert_id}")
            return page.status_code == 200 and f'id="{chart}"' in page.text

        await eventually(lambda: charted(metered["alert_id"], "power-chart"), "power curve", 120)
        await eventually(lambda: charted(rental["alert_id"], "swipe-chart"), "swipes chart", 120)
        # The flats are the demo building's, so the building view colours them.
        page = await client.get(f"/alerts/{rental['alert_id']}")
        assert "/flats/" in page.text

        # A demo restarted over the same data does not publish the history again.
        again = await demo_history(
            database_url,
            mqtt_broker.url,
            tmp_path,
            7,
            date(2026, 3, 8),
            flats=6,
            gateway_id=history_gw,
        )
        assert "already" in again
