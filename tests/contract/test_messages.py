"""The wire contract: topics, envelope, and every way a payload is rejected."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from contract import topics
from contract.alerts import AlertKind, Category, Change, Severity
from contract.messages import (
    AlertMessage,
    AlertSubject,
    Birth,
    CardSwipeEvent,
    ContractError,
    Death,
    MeterSample,
    MeterTelemetry,
    decode_uplink,
    encode,
)

T = datetime(2026, 3, 1, 13, 5, 5, tzinfo=UTC)
ENV = {"gw": "gw-1", "session": 3, "ts": T}


def _alert() -> AlertMessage:
    return AlertMessage(
        id="a" * 32,
        seq=7,
        alert_id="2f1d8c1e-6a0b-5c3d-9e8f-7a6b5c4d3e2f",
        change=Change.RAISED,
        kind=AlertKind.EBIKE_CHARGING,
        category=Category.FIRE,
        severity=Severity.HIGH,
        subject=AlertSubject(unit_id="3-301", sensor_id="ble-1"),
        raised_at=T,
        evidence={"peak_power_w": 191.0, "location": "unit"},
        **ENV,
    )


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param(topics.Up.ALERT, _alert(), id="alert"),
        pytest.param(
            topics.Up.BIRTH,
            Birth(id="b" * 32, seq=1, agent_version="0.1", started_at=T, site_id="s", **ENV),
            id="birth",
        ),
        pytest.param(
            topics.Up.DEATH, Death(id="c" * 32, seq=0, reason="connection_lost", **ENV), id="death"
        ),
        pytest.param(
            topics.Up.TELEMETRY,
            MeterTelemetry(
                id="d" * 32,
                seq=2,
                readings=[MeterSample(meter_id="m-1", ts=T, power_w=12.5, voltage_v=230.1)],
                **ENV,
            ),
            id="telemetry",
        ),
        pytest.param(
            topics.Up.CARD,
            CardSwipeEvent(id="e" * 32, seq=3, reader_id="r1", card="0f" * 16, event_ts=T, **ENV),
            id="card",
        ),
    ],
)
def test_round_trip(kind: topics.Up, message: object) -> None:
    assert decode_uplink(topics.up("gw-1", kind), encode(message)) == message  # type: ignore[arg-type]


def _payload(**changes: object) -> bytes:
    raw = json.loads(encode(_alert()))
    raw.update(changes)
    return json.dumps(raw).encode()


def _without(field: str) -> bytes:
    raw = json.loads(encode(_alert()))
    del raw[field]
    return json.dumps(raw).encode()


ALERT_TOPIC = topics.up("gw-1", topics.Up.ALERT)


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        pytest.param(ALERT_TOPIC, b"not json at all", "not_json", id="not-json"),
        pytest.param(ALERT_TOPIC, b"\xff\xfe\x00garbage", "not_json", id="not-utf8"),
        pytest.param(ALERT_TOPIC, b"[1, 2, 3]", "invalid", id="not-an-object"),
        pytest.param(ALERT_TOPIC, _payload(v=99), "unknown_version", id="version-99"),
        pytest.param(ALERT_TOPIC, _without("v"), "unknown_version", id="no-version"),
        pytest.param(ALERT_TOPIC, _without("kind"), "invalid", id="missing-kind"),
        pytest.param(ALERT_TOPIC, _payload(kind="fire!"), "invalid", id="unknown-kind"),
        pytest.param(
            ALERT_TOPIC, _payload(raised_at="2026-03-01T12:00:00"), "invalid", id="naive-time"
        ),
        pytest.param(ALERT_TOPIC, _payload(extra_field=1), "invalid", id="unknown-field"),
        pytest.param(ALERT_TOPIC, _payload(gw="gw-2"), "topic_mismatch", id="other-gateway"),
        pytest.param(ALERT_TOPIC, b"x" * (1024 * 1024), "too_large", id="1MB-garbage"),
        pytest.param(
            ALERT_TOPIC,
            _payload().replace(b'"peak_power_w": 191.0', b'"peak_power_w": NaN'),
            "invalid",
            id="nan-evidence",
        ),
        pytest.param("edge/v1/gw-1/up/nonsense", _payload(), "bad_topic", id="unknown-topic-kind"),
        pytest.param("edge/v2/gw-1/up/alert", _payload(), "bad_topic", id="other-version-topic"),
        pytest.param(
            topics.up("gw-1", topics.Up.CARD),
            json.dumps(
                {
                    **json.loads(encode(_alert())),
                    "type": "card",
                    "reader_id": "r",
                    "card": "3104992211",
                }
            ).encode(),
            "invalid",
            id="raw-card-number-rejected",
        ),
    ],
)
def test_rejections_name_their_reason(topic: str, payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_uplink(topic, payload)
    assert info.value.reason == reason
    if reason != "bad_topic":
        assert info.value.gateway_id == "gw-1"


def test_topics() -> None:
    assert topics.up("gw-1", topics.Up.ALERT) == "edge/v1/gw-1/up/alert"
    assert topics.down("gw-1", topics.Down.CONFIG) == "edge/v1/gw-1/down/config"
    assert topics.parse_up("edge/v1/gw-1/up/heartbeat") == ("gw-1", topics.Up.HEARTBEAT)
    assert topics.parse_up("edge/v1/gw-1/down/config") is None
    assert topics.parse_up("edge/v1/+/up/alert") is None
    assert topics.up_filter() == "edge/v1/+/up/#"
    assert topics.up_filter("fleet") == "$share/fleet/edge/v1/+/up/#"
