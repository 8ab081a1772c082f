"""End to end: a simulated building's e-bike starts charging in flat 1-201; the edge agent raises
the alert, the broker carries it, the fleet manager (its own process) makes it a case on the
registered flat and forwards it; the street office's officer acknowledges, dispatches, confirms,
orders rectification and closes it through the API; the XLSX statistics for the period show the
hazard found and rectified, read back with openpyxl cell by cell.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w
from openpyxl import load_workbook

from fleet.demo import agent_config_from_endpoints
from fleet.reports import HEADER_ROW
from tests.conftest import BrokerEndpoint, free_port, wait_for_port
from tests.fleet.test_lifecycle import PASSWORD, PNG, seed_site
from tests.support.procs import child, fleet_serve_env, wait_until
from tests.support.webhook import Received, webhook_receiver

pytestmark = pytest.mark.e2e

WEBHOOK_SECRET = "e2e-lifecycle-webhook-secret-01"


def test_scenario_alert_worked_by_officer_and_counted_in_the_xlsx(
    tmp_path: Path, mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    gateway_id = f"gw-e2e7-{os.getpid()}-{free_port()}"
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    with webhook_receiver() as hook:
        fleet_env = fleet_serve_env(
            database_url=database_url,
            mqtt_url=mqtt_broker.url,
            http_port=http_port,
            webhook_url=hook.url,
            webhook_secret=WEBHOOK_SECRET,
        )
        endpoints_file = tmp_path / "building.json"
        with child(["fleet", "serve"], tmp_path / "fleet.log", fleet_env):
            assert wait_for_port("127.0.0.1", http_port, timeout=60), (
                tmp_path / "fleet.log"
            ).read_text()
            # The register: the gateway at the entrance of the building with flat 1-201.
            site = seed_site(database_url, gateway=gateway_id)
            with child(
                [
                    "firmware_sim", "building", "--flats", "4", "--seed", "7",
                    "--charging-after", "3", "--endpoints-file", str(endpoints_file),
                ],
                tmp_path / "sim.log",
            ):  # fmt: skip
                wait_until(endpoints_file.exists, 30, "the simulator's endpoints file")
                endpoints = json.loads(endpoints_file.read_text())
                config = agent_config_from_endpoints(
                    endpoints,
                    gateway_id=gateway_id,
                    mqtt_url=mqtt_broker.url,
                    state_dir=tmp_path / "agent-state",
                    charging_sustain_s=5.0,
                    poll_interval_s=1.0,
                )
                cfg_path = tmp_path / "agent.toml"
                cfg_path.write_text(tomli_w.dumps(config))
                with child(
                    ["edge_agent", "run", "--config", str(cfg_path)], tmp_path / "agent.log"
                ):

                    def delivered() -> Received | None:
                        for r in hook.received:
                            body = r.json()
                            if (
                                body["kind"] == "ebike_charging"
                                and body["gateway_id"] == gateway_id
                            ):
                                return r
                        return None

                    request = wait_until(delivered, 90, "the ebike_charging alert at the webhook")
            body = request.json()
            mac = hmac.new(WEBHOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
            assert request.headers["x-signature"] == f"sha256={mac}"
            assert body["event"] == "raised"
            assert body["flat_id"] == site.flat_id
            assert body["flat_label"] == "小区A 3号楼 1-201"
            alert_id = body["alert_id"]

            with httpx.Client(base_url=base, timeout=30) as api:
                r = api.post(
                    "/api/auth/token", data={"username": "officer_a", "password": PASSWORD}
                )
                r.raise_for_status()
                officer = {"Authorization": f"Bearer {r.json()['access_token']}"}
                steps: list[tuple[str, dict[str, str], Any]] = [
                    ("acknowledge", {}, None),
                    ("dispatch", {"assignee": "网格员王五"}, None),
                    (
                        "confirm",
                        {"comment": "入户核查：电动车电瓶在室内充电"},
                        [("photos", ("site.png", PNG, "image/png"))],
                    ),
                    ("rectify", {"comment": "已张贴限期整改告知书"}, None),
                    ("close", {"comment": "复查：已整改"}, None),
                ]
                for action, form, files in steps:
                    r = api.post(
                        f"/api/alerts/{alert_id}/actions/{action}",
                        headers=officer,
                        data=form,
                        files=files,
                    )
                    assert r.status_code == 200, (action, r.text)
                case = r.json()
                assert case["status"] == "closed"
                assert [e["action"] for e in case["timeline"]][-5:] == [s[0] for s in steps]

                # The close is forwarded too, under its own key.
                def closed_forwarded() -> Received | None:
                    for rec in hook.received:
                        b = rec.json()
                        if b.get("alert_id") == alert_id and b.get("event") == "close":
                            return rec
                    return None

                closing = wait_until(closed_forwarded, 30, "the close at the webhook")
                assert closing.headers["idempotency-key"].startswith(f"{alert_id}.")

                now = datetime.now(UTC)
                r = api.get(
                    "/api/reports/statistics.xlsx",
                    headers=officer,
                    params={
                        "start": (now - timedelta(days=1)).isoformat(),
                        "end": (now + timedelta(days=1)).isoformat(),
                        "street_office_id": site.street_office_id,
                    },
                )
                assert r.status_code == 200, r.text
    book = load_workbook(io.BytesIO(r.content))
    sheet3 = book["附件3"]
    assert [c.value for c in sheet3[HEADER_ROW + 1]][:8] == ["小区A", "街道A", None, 1, 0, 0, 0, 0]
    assert sheet3.max_row == HEADER_ROW + 1  # one compound: the other office's is not in scope
    sheet4 = book["附件4"]
    headers = [c.value for c in sheet4[HEADER_ROW]]
    for row_number, label in ((HEADER_ROW + 1, "每周数"), (HEADER_ROW + 2, "累计数")):
        row = dict(zip(headers, [c.value for c in sheet4[row_number]], strict=True))
        assert row["重点地区"] == "小区A" and row["项目"] == label
        assert row["排查安全隐患 合计（处）"] == 1
        assert row["排查安全隐患 消防类（处）"] == 1
        assert row["排查安全隐患 治安类（处）"] == 0
        assert row["排查安全隐患 住房类（处）"] == 0
        assert row["排查安全隐患 其他（处）"] == 0
        assert row["整改安全隐患 合计（处）"] == 1
        assert row["整改安全隐患 消防类（处）"] == 1
        assert row["登记群租房（户）"] == 0
        assert row["注销群租房（户）"] == 0
        assert row["采集群租房二房东信息（人）"] == 0
        assert row["登记流动人口（人）"] is None
    sheet5 = book["附件5"]
    assert [c.value for c in sheet5[HEADER_ROW]][-3:] == [
        "打处情况 逮捕（人）",
        "打处情况 其他刑事强制措施（人）",
        "打处情况 治安处罚（人）",
    ]
