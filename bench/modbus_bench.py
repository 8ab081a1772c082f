"""Modbus driver overhead: the meter poller against a bare pymodbus loop doing the same reads.

32 simulated Chint DDSU666 meters behind one Modbus TCP endpoint (``firmware_sim``'s
simulator, run in a separate process so that its CPU is not counted). Both contenders read every
meter back to back, two requests per meter (0x2000 x 16 and 0x4000 x 2 holding registers), on
one connection, until they have 10,000 meter readings:

- ``bare``: ``AsyncModbusTcpClient.read_holding_registers`` in a loop, nothing else;
- ``driver``: :class:`drivers.modbus_meter.ModbusMeterPoller` (scheduling, quarantine
  bookkeeping, decoding into ``MeterReading`` events, counters) with a 1 ms interval, so it is
  never waiting for a meter to be due.

Reported per contender (median of ``--rounds`` rounds, each running both back to back): Modbus
requests and meter readings per second (wall clock: bounded by the simulator), and this
process's CPU seconds (``time.process_time``: user + system) per 10,000 readings, with the user
part. The headline is the median of the per-round CPU ratios (adjacent runs see the same
machine load). The goal: the driver costs at most 1.2 times the bare loop's CPU. ``--pin``
puts the simulator and this process on two different CPUs.

Run: ``.venv/bin/python bench/modbus_bench.py`` (``--meters``, ``--readings``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from contextlib import aclosing
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient

from contract.events import MeterReading
from drivers.modbus_bus import ModbusLink, TcpEndpoint
from drivers.modbus_meter import MeterSpec, ModbusMeterPoller

_SIM = (
    "import sys; from firmware_sim.modbus_meters import run_modbus_cli; sys.exit(run_modbus_cli())"
)


@dataclass
class Run:
    name: str
    readings: int
    requests: int
    wall_s: float
    cpu_s: float
    user_s: float = 0.0

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu_s / self.readings * 10_000


async def bare(host: str, port: int, meters: int, readings: int) -> Run:
    client = AsyncModbusTcpClient(host, port=port, timeout=2, retries=0)
    await client.connect()
    try:
        done = requests = 0
        wall, cpu, user = time.perf_counter(), time.process_time(), os.times().user
        while done < readings:
            for slave in range(1, meters + 1):
                low = await client.read_holding_registers(0x2000, count=16, device_id=slave)
                energy = await client.read_holding_registers(0x4000, count=2, device_id=slave)
                requests += 2
                if not low.isError() and not energy.isError():
                    done += 1
                if done >= readings:
                    break
        return Run(
            "bare pymodbus",
            done,
            requests,
            time.perf_counter() - wall,
            time.process_time() - cpu,
            os.times().user - user,
        )
    finally:
        client.close()


async def driver(host: str, port: int, meters: int, readings: int) -> Run:
    poller = ModbusMeterPoller(
        link=ModbusLink(TcpEndpoint(host, port)),
        meters=[MeterSpec(f"m-{s}", s) for s in range(1, meters + 1)],
        interval_s=0.001,
        timeout_s=2.0,
    )
    done = 0
    wall, cpu, user = time.perf_counter(), time.process_time(), os.times().user
    async with aclosing(poller.events()) as events:
        async for event in events:
            if isinstance(event, MeterReading):
                done += 1
                if done >= readings:
                    break
    wall, cpu, user = (
        time.perf_counter() - wall,
        time.process_time() - cpu,
        os.times().user - user,
    )
    return Run("driver", done, poller.counters["requests"], wall, cpu, user)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--meters", type=int, default=32)
    p.add_argument("--readings", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pin", action="store_true", help="pin the simulator and this to two CPUs")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    cpus = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cpus) >= 2  # the simulator on one CPU, this process on another
    sim = subprocess.Popen(
        [sys.executable, "-c", _SIM, "--meters", str(args.meters), "--transport", "tcp",
         "--load", "household"],
        stdout=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpus[-1]})) if pin else None,  # noqa: PLW1509
    )  # fmt: skip
    if pin:
        os.sched_setaffinity(0, {cpus[0]})
    try:
        assert sim.stdout is not None
        endpoint = json.loads(sim.stdout.readline())
        host, port = endpoint["host"], endpoint["port"]
        runs: dict[str, list[Run]] = {"bare pymodbus": [], "driver": []}

        async def rounds() -> None:
            await bare(host, port, args.meters, 500)  # warm up both sides
            for _ in range(args.rounds):
                for contender in (bare, driver):
                    run = await contender(host, port, args.meters, args.readings)
                    runs[run.name].append(run)

        asyncio.run(rounds())
    finally:
        sim.terminate()
        sim.wait(timeout=10)

    print(f"{args.meters} DDSU666 meters over Modbus TCP, {args.readings} readings per run, "
          f"median of {args.rounds} runs; simulator in its own process")  # fmt: skip
    print(
        f"{'contender':<15} {'requests/s':>11} {'readings/s':>11} {'CPU s / 10k readings':>21}"
        f" {'of which user':>14}"
    )
    for name, rs in runs.items():
        req_s = statistics.median(r.requests / r.wall_s for r in rs)
        read_s = statistics.median(r.readings / r.wall_s for r in rs)
        cpu = statistics.median(r.cpu_per_10k for r in rs)
        user = statistics.median(r.user_s / r.readings * 10_000 for r in rs)
        print(f"{name:<15} {req_s:>11.0f} {read_s:>11.0f} {cpu:>21.2f} {user:>14.2f}")
    # each round runs the two back to back: the per-round ratio cancels the machine's drift
    ratios = sorted(
        d.cpu_per_10k / b.cpu_per_10k
        for b, d in zip(runs["bare pymodbus"], runs["driver"], strict=True)
    )
    ratio = statistics.median(ratios)
    print(
        f"driver / bare CPU: {ratio:.2f}x median of per-round ratios "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}; goal: at most 1.20x)"
    )
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
