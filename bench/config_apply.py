"""How fast a pushed desired config takes effect, and how much of the agent it disturbs.

    python bench/config_apply.py --url mqtt://127.0.0.1:1883 --rounds 5

One agent in this process with 4 simulated Modbus TCP buses of 8 meters each (32 meters, real
pymodbus servers), a real broker (``--url``; default: an embedded amqtt broker in a child
process). Per round it publishes, retained, (1) a config with all 4 buses, (2) the same with
one bus's poll interval changed, (3) a config whose every device is unreachable. It reports:
the time from publish to the agent's ``config_state`` at the listener, the time until every
meter of the new config has been read, how many driver tasks were restarted by the change (the
untouched buses must keep running) and how long after the grace period the rollback came.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from contract import topics  # noqa: E402
from firmware_sim.modbus_meters import ModbusMeterSim, constant_load  # noqa: E402
from tests.conftest import BrokerEndpoint, free_port, wait_for_port  # noqa: E402
from tests.edge_agent.control_helpers import (  # noqa: E402
    base_config,
    desired_payload,
    listening,
    make_agent,
    running,
)

GRACE_S = 2.0


def buses(ports: list[int], interval_s: float, first_interval_s: float | None = None) -> list[Any]:
    out = []
    for b, port in enumerate(ports):
        out.append(
            {
                "host": "127.0.0.1",
                "port": port,
                "interval_s": first_interval_s if (b == 0 and first_interval_s) else interval_s,
                "timeout_s": 0.3,
                "meters": [{"meter_id": f"m-{b}-{i}", "slave": i} for i in range(1, 9)],
            }
        )
    return out


async def bench(broker: BrokerEndpoint, rounds: int) -> list[dict[str, float]]:
    results = []
    async with contextlib.AsyncExitStack() as stack:
        sims = [
            await stack.enter_async_context(
                ModbusMeterSim({i: constant_load(100.0 * i) for i in range(1, 9)})
            )
            for _ in range(4)
        ]
        ports = [s.port for s in sims]
        for r in range(rounds):
            results.append(await one_round(broker, ports, r))
    return results


async def one_round(broker: BrokerEndpoint, ports: list[int], r: int) -> dict[str, float]:
    gw = f"gw-bench-{r}-{free_port()}"
    state = Path(tempfile.mkdtemp(prefix="config-apply-"))
    base = base_config(gw, state, broker, config_rollback_grace_s=GRACE_S)
    base.update(heartbeat_interval_s=5.0, telemetry_batch_s=0.1)
    async with listening(broker, gw) as up, running(make_agent(base)) as agent:
        await up.wait(topics.Up.BIRTH)
        version = 0

        async def push(config: dict[str, Any], status: str) -> tuple[float, Any]:
            nonlocal version
            version += 1
            t0 = time.perf_counter()
            payload = desired_payload(gw, version, config)
            await up.publish(topics.Down.CONFIG, payload, retain=True)
            v = version
            state_msg = await up.wait(
                topics.Up.CONFIG_STATE,
                lambda m: m.version == v and m.status == status,
                timeout=60,
            )
            return t0, state_msg

        full = {"modbus_tcp": buses(ports, 0.5)}
        seen_before = len(up.of(topics.Up.TELEMETRY))
        t0, _ = await push(full, "applied")
        applied_ms = (time.perf_counter() - t0) * 1000

        def meters(after: int) -> set[str]:
            return {s.meter_id for m in up.of(topics.Up.TELEMETRY)[after:] for s in m.readings}

        await up.wait(topics.Up.TELEMETRY, lambda m: len(meters(seen_before)) == 32, timeout=60)
        all_read_ms = (time.perf_counter() - t0) * 1000

        starts = {n: s.started_mono for n, s in agent.supervisor.stats().items()}
        t0, _ = await push({"modbus_tcp": buses(ports, 0.5, 0.7)}, "applied")
        change_ms = (time.perf_counter() - t0) * 1000
        after = agent.supervisor.stats()
        restarted = sum(
            1
            for n, s in after.items()
            if n.startswith("driver:") and starts.get(n) != s.started_mono
        )

        dead = {"modbus_tcp": buses([free_port() for _ in range(4)], 0.5)}
        t0, _ = await push(dead, "applied")
        await up.wait(topics.Up.CONFIG_STATE, lambda m: m.status == "rolled_back")
        rollback_late_ms = (time.perf_counter() - t0 - GRACE_S) * 1000
    return {
        "applied_ms": applied_ms,
        "all_32_read_ms": all_read_ms,
        "change_one_bus_ms": change_ms,
        "drivers_restarted": restarted,
        "rollback_after_grace_ms": rollback_late_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="mqtt://host:port (default: embedded amqtt)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    proc = None
    if args.url:
        host, _, port = args.url.removeprefix("mqtt://").partition(":")
        broker = BrokerEndpoint(host, int(port or 1883), "external")
    else:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.broker", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not wait_for_port("127.0.0.1", port):
            raise SystemExit("embedded broker did not start")
        broker = BrokerEndpoint("127.0.0.1", port, "embedded")
    try:
        results = asyncio.run(bench(broker, args.rounds))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(f"broker: {broker.url} ({broker.kind}), {args.rounds} rounds, 4 buses x 8 meters")
    print(f"{'figure':<26}{'median':>10}{'min':>10}{'max':>10}")
    for key in results[0]:
        values = [r[key] for r in results]
        print(
            f"{key:<26}{statistics.median(values):>10.0f}{min(values):>10.0f}{max(values):>10.0f}"
        )


if __name__ == "__main__":
    main()
