"""Alert latency: from a charging advert entering the gateway to the webhook receiving the alert.

Everything runs as in production, as separate processes: a broker (the embedded amqtt unless
--mqtt-url), the fleet manager (`python -m fleet serve`, SQLite unless --database-url), a real
edge agent reading BLE adverts from a TCP feed this script serves (the same feed format the
simulated building uses), and `firmware-sim fleet` with --gateways simulated gateways sending
heartbeats and meter telemetry the whole time. This script sends one charging advert per
sensor (one sensor per flat, so each is a new alert), --rate per second, notes the wall-clock
time it wrote the advert to the agent's socket, and a stdlib HTTP server notes when the
forwarded alert arrives. Latency = arrival - advert time (same machine, same clock).

    uv run python bench/alert_latency.py --alerts 1000 --gateways 500

The agent's rule runs with min_duration_s = 0 (raise on the first charging report) so the figure
is the system's latency, not the rule's deliberate wait (120 s in production).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import tomli_w
from _procs import free_port, proc, wait_port

from firmware_sim.ble_feed import BleFeedServer

GATEWAY_ID = "bench-agent"
SECRET = "bench-secret-key-that-is-long-enough-0123456789"
HOOK_SECRET = "bench-webhook-secret-0123456789"


class Receiver:
    """The street office's webhook: notes when each alert arrives."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0
        lock = threading.Lock()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                now = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("event") == "raised" and body.get("sensor_id"):
                    with lock:
                        if body["sensor_id"] in state.arrivals:
                            state.duplicates += 1
                        else:
                            state.arrivals[body["sensor_id"]] = now
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def mac_of(i: int) -> str:
    return f"A4:C1:38:{(i >> 16) & 255:02X}:{(i >> 8) & 255:02X}:{i & 255:02X}"


def agent_config(n: int, feed_port: int, mqtt_url: str, state_dir: Path) -> dict[str, Any]:
    units = [
        {"unit_id": f"{i // 100 + 1}-{i % 100 + 101}", "building": f"B{i // 100 + 1}"}
        for i in range(n)
    ]
    return {
        "version": 1,
        "gateway_id": GATEWAY_ID,
        "state_dir": str(state_dir),
        "site_key": "00" * 16,
        "heartbeat_interval_s": 5.0,
        "telemetry_batch_s": 5.0,
        "mqtt": {"url": mqtt_url, "keepalive_s": 30},
        "ble": {
            "source": f"feed://127.0.0.1:{feed_port}",
            "sensors": [{"sensor_id": f"ble-{i:05d}", "mac": mac_of(i)} for i in range(n)],
        },
        "site": {
            "site_id": "bench",
            "timezone": "Asia/Shanghai",
            "units": units,
            "sensors": [
                {"sensor_id": f"ble-{i:05d}", "location": "unit", "unit_id": units[i]["unit_id"]}
                for i in range(n)
            ],
        },
        "rules": {"ebike_charging": {"min_duration_s": 0.0}},
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="alert-latency-"))
    mqtt_url = args.mqtt_url
    http_port = free_port()
    base = f"http://127.0.0.1:{http_port}"
    database_url = args.database_url or f"sqlite:///{work / 'fleet.db'}"
    broker_ctx: Any = None
    mosquitto: subprocess.Popen[bytes] | None = None
    if mqtt_url is None and args.mosquitto:
        # A private Mosquitto: a shared one carries other traffic the fleet would ingest too.
        port = free_port()
        conf = work / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        with (work / "mosquitto.log").open("ab") as out:
            mosquitto = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
                ["mosquitto", "-c", str(conf)], stdout=out, stderr=out
            )
        wait_port(port)
        mqtt_url = f"mqtt://127.0.0.1:{port}"
    elif mqtt_url is None:
        port = free_port()
        broker_ctx = proc(["fleet.broker", "--port", str(port)], work / "broker.log")
        broker_ctx.__enter__()
        wait_port(port)
        mqtt_url = f"mqtt://127.0.0.1:{port}"
    try:
        with Receiver() as hook:
            env = {
                "FLEET_DATABASE_URL": database_url,
                "FLEET_MQTT_URL": mqtt_url,
                "FLEET_HTTP_PORT": str(http_port),
                "FLEET_SECRET_KEY": SECRET,
                "FLEET_ADMIN_PASSWORD": "bench-pass-123",
                "FLEET_WEBHOOK_URLS": hook.url,
                "FLEET_WEBHOOK_SECRET": HOOK_SECRET,
                "FLEET_FORWARD_TIMEOUT_S": "5",
            }
            with proc(["fleet", "serve"], work / "fleet.log", env):
                wait_port(http_port, 120)
                async with BleFeedServer(interval_s=3600.0) as feed:
                    sensors = [feed.add_sensor(mac_of(i)) for i in range(args.alerts)]
                    cfg = work / "agent.toml"
                    cfg.write_text(
                        tomli_w.dumps(
                            agent_config(args.alerts, feed.port, mqtt_url, work / "agent")
                        )
                    )
                    fleet_args = [
                        "firmware_sim", "fleet", "--gateways", str(args.gateways),
                        "--broker", mqtt_url, "--interval", "30",
                        "--telemetry-every", str(args.telemetry_every), "--prefix", "bench-sim",
                    ]  # fmt: skip
                    with (
                        proc(fleet_args, work / "sim-fleet.log"),
                        proc(["edge_agent", "run", "--config", str(cfg)], work / "agent.log"),
                    ):
                        async with httpx.AsyncClient(base_url=base, timeout=10) as api:
                            token = (
                                await api.post(
                                    "/api/auth/token",
                                    data={"username": "admin", "password": "bench-pass-123"},
                                )
                            ).json()["access_token"]
                            headers = {"Authorization": f"Bearer {token}"}
                            deadline = time.monotonic() + 120
                            online = 0
                            while time.monotonic() < deadline:
                                gws = (
                                    await api.get(
                                        "/api/gateways", headers=headers, params={"limit": 1000}
                                    )
                                ).json()
                                items = gws["items"] if isinstance(gws, dict) else gws
                                online = sum(1 for g in items if g.get("online"))
                                agent_up = any(g["gateway_id"] == GATEWAY_ID for g in items)
                                if agent_up and online >= args.gateways and feed.connections:
                                    break
                                await asyncio.sleep(1)
                            connected = feed.connections > 0
                            print(f"gateways online: {online}; agent on the feed: {connected}")
                            await asyncio.sleep(args.warmup)
                            sent: dict[str, float] = {}
                            interval = 1.0 / args.rate
                            t0 = time.monotonic()
                            for i, sensor in enumerate(sensors):
                                target = t0 + i * interval
                                delay = target - time.monotonic()
                                if delay > 0:
                                    await asyncio.sleep(delay)
                                sent[f"ble-{i:05d}"] = time.time()
                                sensor.set(True, 150.0)
                            wait_until = time.monotonic() + args.drain
                            # The receiver's thread fills arrivals; poll it.
                            while len(hook.arrivals) < len(sent) and time.monotonic() < wait_until:  # noqa: ASYNC110
                                await asyncio.sleep(0.5)
                            health = (await api.get("/api/health")).json()
    finally:
        if broker_ctx is not None:
            broker_ctx.__exit__(None, None, None)
        if mosquitto is not None:
            mosquitto.terminate()
            mosquitto.wait(10)
    latencies = [(hook.arrivals[s] - t) * 1000 for s, t in sent.items() if s in hook.arrivals]
    lost = len(sent) - len(latencies)
    print()
    print(
        "| alerts | received | lost | duplicates | gateways | p50 ms | p90 ms | p99 ms | max ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    if latencies:
        print(
            f"| {len(sent)} | {len(latencies)} | {lost} | {hook.duplicates} | {args.gateways} "
            f"| {statistics.median(latencies):.0f} | {percentile(latencies, 90):.0f} "
            f"| {percentile(latencies, 99):.0f} | {max(latencies):.0f} |"
        )
    ingest = health.get("ingest", health) if isinstance(health, dict) else {}
    print(f"\nfleet ingest at the end: {json.dumps(ingest, ensure_ascii=False)[:600]}")
    print(f"database: {database_url.split('://')[0]}, broker: {mqtt_url}, logs: {work}")
    return 0 if lost == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--gateways", type=int, default=500)
    parser.add_argument("--rate", type=float, default=20.0, help="adverts (alerts) per second")
    parser.add_argument("--telemetry-every", type=float, default=10.0, metavar="S")
    parser.add_argument("--warmup", type=float, default=5.0, metavar="S")
    parser.add_argument("--drain", type=float, default=60.0, metavar="S")
    parser.add_argument("--mqtt-url", default=None, help="an external broker (default: private)")
    parser.add_argument(
        "--mosquitto", action="store_true", help="start a private Mosquitto (default: amqtt)"
    )
    parser.add_argument("--database-url", default=None)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
