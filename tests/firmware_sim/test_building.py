"""The simulated building: a valid site description, and devices that the drivers can read."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from contract.events import ChargingSensorReading, MeterReading
from contract.site import Location, Site
from drivers.ble_charging import BleChargingSensors, FeedAdvertSource
from drivers.modbus_meter import MeterSpec, ModbusTcpMeterPoller
from drivers.serial_card import CardRead, SerialCardReader
from firmware_sim.building import SimulatedBuilding, plan_flats
from tests.drivers.helpers import consuming, wait_for


async def test_endpoints_are_complete_and_the_site_validates() -> None:
    async with SimulatedBuilding(flats=4, seed=7, swipe_every_s=None) as building:
        endpoints = building.endpoints()
        json.dumps(endpoints)  # JSON-serialisable
        site = Site.model_validate(endpoints["site"])
        assert os.path.exists(endpoints["card_reader"]["path"])
    assert [u.unit_id for u in site.units] == ["1-101", "1-102", "1-201", "1-202"]
    assert endpoints["modbus"]["meters"] == {"m-1-101": 1, "m-1-102": 2, "m-1-201": 3, "m-1-202": 4}
    assert {m.meter_id: m.unit_id for m in site.meters} == {
        f"m-{u}": u for u in ("1-101", "1-102", "1-201", "1-202")
    }
    assert endpoints["card_reader"]["reader_id"] == "b1-entrance"
    assert endpoints["card_reader"]["url"] == endpoints["card_reader"]["path"]
    assert [r.reader_id for r in site.readers] == ["b1-entrance"]
    sensors = endpoints["ble_feed"]["sensors"]
    assert set(sensors.values()) == {s.sensor_id for s in site.sensors}
    assert all(mac == mac.upper() for mac in sensors)
    places = {s.sensor_id: s for s in site.sensors}
    assert sum(1 for s in site.sensors if s.location is Location.STAIRWELL) == 1
    charging = endpoints["scenario"]["charging_sensor_id"]
    assert places[charging].unit_id == "1-201" and places[charging].location is Location.UNIT
    assert {c.unit_id for c in site.cards} == {u.unit_id for u in site.units}
    for port in (endpoints["modbus"]["port"], endpoints["ble_feed"]["port"]):
        assert isinstance(port, int) and port > 0


def test_the_building_is_a_function_of_the_seed() -> None:
    assert plan_flats(6, 7) == plan_flats(6, 7)
    assert plan_flats(6, 7) != plan_flats(6, 8)
    cards = [c for f in plan_flats(20, 1) for c in f.cards]
    assert len(cards) == len(set(cards))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="flats"):
        SimulatedBuilding(flats=0)
    with pytest.raises(ValueError, match="charging_unit"):
        SimulatedBuilding(flats=2, charging_unit="1-201")


def _power(events: list[Any], meter_id: str) -> float | None:
    for e in reversed(events):
        if isinstance(e, MeterReading) and e.meter_id == meter_id:
            return e.power_w
    return None


async def test_drivers_read_the_scenario() -> None:
    """Meters, the entrance reader and the charging sensors, read by the real drivers."""
    async with SimulatedBuilding(
        flats=4, seed=7, charging_after_s=1.0, advert_interval_s=0.2, swipe_every_s=(0.05, 0.15)
    ) as building:
        ep = building.endpoints()
        cards = {c["card"] for c in ep["site"]["cards"]}
        meters = ModbusTcpMeterPoller(
            host=ep["modbus"]["host"],
            port=ep["modbus"]["port"],
            meters=[MeterSpec(m, s) for m, s in ep["modbus"]["meters"].items()],
            interval_s=0.1,
        )
        reader = SerialCardReader(
            url=ep["card_reader"]["url"], reader_id=ep["card_reader"]["reader_id"]
        )
        sensors = BleChargingSensors(
            sensors=ep["ble_feed"]["sensors"],
            source=FeedAdvertSource(ep["ble_feed"]["host"], ep["ble_feed"]["port"]),
        )
        charging_sensor = ep["scenario"]["charging_sensor_id"]
        async with (
            consuming(meters.events()) as m,
            consuming(reader.events()) as r,
            consuming(sensors.events()) as s,
        ):
            await wait_for(lambda: reader.device_status()["b1-entrance"].online)
            swipes = await r.until(lambda seen: len(seen) >= 3)
            before = await m.until(lambda seen: _power(seen, "m-1-201") is not None)
            base = _power(before, "m-1-201")
            assert base is not None
            await s.until(
                lambda seen: any(
                    isinstance(e, ChargingSensorReading)
                    and e.sensor_id == charging_sensor
                    and e.charging
                    for e in seen
                )
            )
            # the charging flat's meter shows the charger on top of its base load
            await m.until(lambda seen: (_power(seen, "m-1-201") or 0.0) - base > 120)
    assert all(isinstance(e, CardRead) for e in swipes)
    assert any(e.number in cards for e in swipes if isinstance(e, CardRead))
    on = [
        e
        for e in s.seen
        if isinstance(e, ChargingSensorReading) and e.sensor_id == charging_sensor and e.charging
    ]
    assert on[0].power_w is not None and 170 <= on[0].power_w <= 190
    others = [e for e in s.seen if e.sensor_id != charging_sensor]
    assert others and not any(e.charging for e in others)
