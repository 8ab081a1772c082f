"""Forwarding to a street office's channels over real HTTP and SMTP servers.

A webhook that fails for a while, WeCom and DingTalk robot endpoints (real HTTP servers that
check the body and answer with the robots' errcode JSON, refusing the first message as "too
fast"), and an aiosmtpd SMTP server. The forwarder is the production worker over the real
database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from aiosmtpd.controller import Controller

from contract.alerts import Change, Severity
from fleet.db import make_engine, make_sessionmaker, migrate, utcnow
from fleet.dbthreads import DbThreads
from fleet.forwarder import Forwarder
from fleet.models import ForwardChannel, ForwardDelivery
from fleet.store import apply_uplink
from tests.conftest import BrokerEndpoint, free_port
from tests.fleet.helpers import T0, alert, eventually, make_settings
from tests.fleet.test_lifecycle import seed_site
from tests.support.webhook import post_server, webhook_receiver

DING_SECRET = "SECtest0123456789abcdef"
HOOK_SECRET = "channel-hook-secret-0123"


@dataclass
class Robot:
    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    errcodes: list[int] = field(default_factory=list)  # answered in order, then 0


@contextmanager
def robot_endpoint(path: str) -> Iterator[Robot]:
    """A WeCom / DingTalk robot: HTTP 200 with ``errcode`` in the JSON (non-zero: refused)."""
    state = Robot(url="")

    def answer(request_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes]:
        code = state.errcodes.pop(0) if state.errcodes else 0
        if code == 0:
            state.bodies.append(json.loads(raw))
            state.queries.append(parse_qs(urlsplit(request_path).query))
        reply = {"errcode": code, "errmsg": "ok" if code == 0 else "too fast"}
        return 200, json.dumps(reply).encode()

    with post_server(answer) as base:
        state.url = f"{base}{path}"
        yield state


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.messages.append(envelope.content)
        return "250 OK"


async def test_alerts_reach_webhook_wecom_dingtalk_and_email_in_order_once_per_key(
    mqtt_broker: BrokerEndpoint, database_url: str
) -> None:
    migrate(database_url)
    site = seed_site(database_url)
    mailbox = Mailbox()
    smtp_port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        with (
            webhook_receiver() as hook,
            robot_endpoint("/cgi-bin/webhook/send?key=wecom-key") as wecom,
            robot_endpoint("/robot/send?access_token=ding-token") as ding,
        ):
            hook.script = [500] * 6  # the receiver fails for a while
            wecom.errcodes = [45009]  # WeCom: sending too fast
            ding.errcodes = [130101]  # DingTalk: sending too fast
            settings = make_settings(
                mqtt_broker,
                database_url,
                smtp_host="127.0.0.1",
                smtp_port=smtp_port,
                smtp_from="fleet@example.test",
            )
            engine = make_engine(database_url)
            sessions = make_sessionmaker(engine)
            with sessions() as s, s.begin():
                for name, kind, config in (
                    ("hook", "webhook", {"url": hook.url, "secret": HOOK_SECRET}),
                    ("wecom", "wecom", {"url": wecom.url}),
                    ("ding", "dingtalk", {"url": ding.url, "secret": DING_SECRET}),
                    ("mail", "email", {"to": ["pingan@example.test"]}),
                ):
                    s.add(
                        ForwardChannel(
                            street_office_id=site.street_office_id,
                            name=name,
                            kind=kind,
                            config=config,
                            send_reports=False,
                            enabled=True,
                            source="api",
                            created_at=utcnow(),
                        )
                    )
                # Another street office's channel never sees these alerts.
                s.add(
                    ForwardChannel(
                        street_office_id=site.other_street_office_id,
                        name="other",
                        kind="webhook",
                        config={"url": hook.url + "/other"},
                        send_reports=False,
                        enabled=True,
                        source="api",
                        created_at=utcnow(),
                    )
                )
            first, second = uuid.uuid4().hex, uuid.uuid4().hex
            messages = [
                alert(site.gateway, first, ts=T0),
                alert(
                    site.gateway,
                    first,
                    change=Change.UPDATED,
                    severity=Severity.HIGH,
                    ts=T0 + timedelta(minutes=5),
                ),
                alert(
                    site.gateway,
                    first,
                    change=Change.CLEARED,
                    severity=Severity.HIGH,
                    ts=T0 + timedelta(hours=2),
                    cleared_at=T0 + timedelta(hours=2),
                ),
                alert(site.gateway, second, unit_id="5-502", ts=T0),
            ]
            with sessions() as s:
                for m in messages:
                    with s.begin():
                        apply_uplink(s, m, received_at=utcnow())
            db = DbThreads()
            async with httpx.AsyncClient() as http:
                forwarder = Forwarder(settings, sessions, http, asyncio.Event(), db=db)
                task = asyncio.create_task(forwarder.run())
                try:

                    async def all_delivered() -> bool:
                        def probe() -> bool:
                            with sessions() as s:
                                rows = s.query(ForwardDelivery).all()
                                return len(rows) == 16 and all(
                                    r.status == "delivered" for r in rows
                                )

                        return await asyncio.to_thread(probe)

                    await eventually(all_delivered, "every delivery", timeout=60)
                finally:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await db.close()
            engine.dispose()

            # Webhook: each key exactly once, signed, and per flat in order.
            keys = [r.headers["idempotency-key"] for r in hook.received]
            assert sorted(keys) == sorted([first, f"{first}.2", f"{first}.3", second])
            assert all(r.path == "/hook" for r in hook.received)
            for r in hook.received:
                expected = hmac.new(HOOK_SECRET.encode(), r.body, hashlib.sha256).hexdigest()
                assert r.headers["x-signature"] == f"sha256={expected}"
            flat_events = [
                r.json()["event"] for r in hook.received if r.json()["alert_id"] == first
            ]
            assert flat_events == ["raised", "severity", "cleared"]
            body = hook.received[0].json()
            assert body["flat_label"] in ("小区A 3号楼 1-201", None) or body["alert_id"] == second

            # WeCom: markdown with the flat, kind, severity, time, evidence and link.
            assert len(wecom.bodies) == 4
            for b in wecom.bodies:
                assert set(b) == {"msgtype", "markdown"} and b["msgtype"] == "markdown"
                assert set(b["markdown"]) == {"content"}
                assert len(b["markdown"]["content"].encode()) <= 4096
            raised = next(
                b["markdown"]["content"]
                for b in wecom.bodies
                if "新告警" in b["markdown"]["content"] and "1-201" in b["markdown"]["content"]
            )
            for text in (
                "小区A 3号楼 1-201",
                "电动自行车违规充电",
                "消防",
                "等级**：中",
                "2026-03-02 04:00",
                "峰值功率(W) 182.5",
                f"https://fleet.example.test/alerts/{first}",
            ):
                assert text in raised, (text, raised)

            # DingTalk: markdown with title and text, and a valid signature on the URL.
            assert len(ding.bodies) == 4
            for b, q in zip(ding.bodies, ding.queries, strict=True):
                assert b["msgtype"] == "markdown" and set(b["markdown"]) == {"title", "text"}
                timestamp = q["timestamp"][0]
                digest = hmac.new(
                    DING_SECRET.encode(), f"{timestamp}\n{DING_SECRET}".encode(), hashlib.sha256
                ).digest()
                assert q["sign"][0] == base64.b64encode(digest).decode()
                assert q["access_token"] == ["ding-token"]
            assert any(
                "隐患再次出现" in b["markdown"]["title"] or "告警等级升高" in b["markdown"]["title"]
                for b in ding.bodies
            )

            # Email: one per notification, Chinese subject and body, the key in a header.
            assert len(mailbox.messages) == 4
            mails = [message_from_bytes(m) for m in mailbox.messages]
            assert sorted(m["X-Idempotency-Key"] for m in mails) == sorted(keys)
            text = mails[0].get_payload(decode=True).decode()
            assert "房屋" in text and "查看详情" in text
    finally:
        smtp.stop()
