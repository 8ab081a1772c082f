from contract.events import MeterReading
from drivers.modbus_meter import MeterSpec, ModbusTcpMeterPoller
from drivers.serial_card import SerialCardReader
from drivers.ble_charging import BleChargingSensors, FeedAdvertSource
from firmware_sim.building import SimulatedBuilding
from tests.drivers.helpers import consuming, wait_for

import asyncio, sys, time
async def _watchdog():
    await asyncio.sleep(5)
    for t in asyncio.all_tasks():
        print("TASK", t.get_name(), file=sys.stderr)
        obj = t.get_coro()
        depth = 0
        while obj is not None and depth < 30:
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None) or getattr(obj, "gi_frame", None)
            if frame is not None:
                print("   ", type(obj).__name__, frame.f_code.co_filename, frame.f_lineno, file=sys.stderr)
            else:
                print("   ", repr(obj)[:200], file=sys.stderr)
            obj = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None) or getattr(obj, "gi_yieldfrom", None)
            depth += 1

async def test_x() -> None:
    wd = asyncio.create_task(_watchdog())
    t0 = time.monotonic()
    def mark(x): print("MARK", x, round(time.monotonic()-t0, 2), file=sys.stderr)
    async with SimulatedBuilding(flats=4, seed=7, charging_after_s=1.0, advert_interval_s=0.2, swipe_every_s=(0.05, 0.15)) as b:
        ep = b.endpoints()
        meters = ModbusTcpMeterPoller(host=ep["modbus"]["host"], port=ep["modbus"]["port"], meters=[MeterSpec(m, s) for m, s in ep["modbus"]["meters"].items()], interval_s=0.1)
        reader = SerialCardReader(url=ep["card_reader"]["url"], reader_id="b1-entrance")
        sensors = BleChargingSensors(sensors=ep["ble_feed"]["sensors"], source=FeedAdvertSource(ep["ble_feed"]["host"], ep["ble_feed"]["port"]))
        async with consuming(meters.events()) as m, consuming(reader.events()) as r, consuming(sensors.events()) as s:
            mark(0)
            await wait_for(lambda: reader.device_status()["b1-entrance"].online)
            mark(1)
            await r.until(lambda seen: len(seen) >= 3)
            mark(2)
            await m.until(lambda seen: len(seen) >= 4)
            mark(3)
            await s.until(lambda seen: any(e.charging for e in seen))
            mark(4)
            await m.until(lambda seen: len(seen) >= 12)
            mark(5)
        mark(6)
    mark(7)
    wd.cancel()
    assert False, "boom"
