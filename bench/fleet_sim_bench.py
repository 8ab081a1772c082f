"""A simulated fleet of 2,000 gateways against the fleet manager: offline detection time and
``GET /api/gateways`` latency.

Starts a private Mosquitto (the system one carries other work's traffic), a fresh PostgreSQL
database, the fleet manager (``--layout split``, the systemd layout: ``fleet-manager serve`` for
the API and one ``fleet-manager ingest`` worker with the health monitor; ``single``: one
``serve`` process doing everything), offline after ``2.5 x --interval`` of silence (the fleet
default, 75 s, for 30 s heartbeats), and three
``firmware-sim fleet`` processes: the bulk of the fleet, and two groups of ``--victims``
gateways each that are killed after ``--kill-after`` seconds, one by dropping the TCP
connection (the broker publishes the will) and one by going silent with the socket left open
(half-open: keepalive 120 s, so only the fleet manager's inactivity timeout can tell).
Heartbeats and telemetry every ``--interval`` seconds per gateway, as the agent.

Measured:

- **offline detection**: from the moment a group is killed (the simulator's "killed" line) to
  the first ``GET /api/gateways?online=false`` poll (every second) that lists the gateway;
  p50 / p95 / max per kill mode, and how many within 90 s;
- **API latency**: ``--requests`` sequential ``GET /api/gateways`` (pages of 100 by offset,
  by keyset cursor, and filtered by ``online``) while the whole fleet is connected and
  heartbeating; p50 / p95 / max in milliseconds, measured by this client over HTTP.

Run: ``.venv/bin/python bench/fleet_sim_bench.py --gateways 2000 --interval 30``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from _procs import free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-key-0123456789abcdef0123"
ADMIN_PASSWORD = "bench-admin-password"


@contextlib.contextmanager
def mosquitto() -> Iterator[int]:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(port)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


@contextlib.contextmanager
def database(admin_url: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"bench_fleet_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class SimProcess:
    """A ``firmware-sim fleet`` child; remembers when it printed its lines."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "firmware_sim", "fleet", *args],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
        )  # fmt: skip
        self.connected_at: float | None = None
        self.killed_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "connected" in line:
                self.connected_at = time.monotonic()
            elif "killed" in line:
                self.killed_at = time.monotonic()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def offline_ids(client: httpx.Client, headers: dict[str, str]) -> set[str]:
    out: set[str] = set()
    after = ""
    while True:
        r = client.get(
            "/api/gateways", params={"online": "false", "limit": 1000, "after": after},
            headers=headers,
        )  # fmt: skip
        r.raise_for_status()
        body = r.json()
        out.update(g["gateway_id"] for g in body["items"])
        if body["next_after"] is None:
            return out
        after = body["next_after"]


def latency(
    client: httpx.Client, headers: dict[str, str], requests: int, total: int
) -> dict[str, list[float]]:
    rnd = random.Random(7)
    kinds: dict[str, list[float]] = {"offset": [], "cursor": [], "online=true": []}
    cursor = ""
    for i in range(requests):
        kind = list(kinds)[i % 3]
        if kind == "offset":
            params: dict[str, Any] = {"limit": 100, "offset": rnd.randrange(0, max(1, total - 100))}
        elif kind == "cursor":
            params = {"limit": 100, "after": cursor}
        else:
            params = {
                "limit": 100,
                "online": "true",
                "offset": rnd.randrange(0, max(1, total // 2)),
            }
        t = time.perf_counter()
        r = client.get("/api/gateways", params=params, headers=headers)
        kinds[kind].append((time.perf_counter() - t) * 1000)
        r.raise_for_status()
        if kind == "cursor":
            cursor = r.json()["next_after"] or ""
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=2000)
    parser.add_argument("--victims", type=int, default=100, help="per kill mode")
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--kill-after", type=float, default=60.0, help="after the fleet is up")
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--wait", type=float, default=200.0, help="max seconds for detection")
    parser.add_argument(
        "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--log-dir", default="/tmp/fleet-sim-bench")
    parser.add_argument(
        "--layout",
        choices=("split", "single"),
        default="split",
        help="split: `serve` for the API and one `fleet-manager ingest` worker (the systemd "
        "layout); single: one `serve` process doing everything",
    )
    args = parser.parse_args()
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    bulk = args.gateways - 2 * args.victims
    http_port = free_port()
    with mosquitto() as mqtt_port, database(args.database_url) as db_url:
        env = {
            **os.environ,
            "FLEET_DATABASE_URL": db_url,
            "FLEET_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
            "FLEET_SECRET_KEY": SECRET,
            "FLEET_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "FLEET_HTTP_PORT": str(http_port),
            # The fleet default (75 s) is sized for the agent's 30 s heartbeat: 2.5 intervals.
            "FLEET_GATEWAY_OFFLINE_AFTER_S": str(2.5 * args.interval),
            "FLEET_LOG_LEVEL": "WARNING",
        }
        workers: list[subprocess.Popen[bytes]] = []
        if args.layout == "split":
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "fleet", "ingest", "--client-id", "bench-ingest-1"],
                    cwd=REPO, env=env, stdout=(logs / "ingest.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
            env = {**env, "FLEET_INGEST_ENABLED": "false"}
        server = subprocess.Popen(
            [sys.executable, "-m", "fleet", "serve"], cwd=REPO, env=env,
            stdout=(logs / "fleet.log").open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        sims: list[SimProcess] = []
        try:
            wait_port(http_port, 60)
            base = ["--broker", f"mqtt://127.0.0.1:{mqtt_port}", "--interval", str(args.interval)]
            sims.append(
                SimProcess([*base, "--gateways", str(bulk), "--prefix", "bulk"], logs / "bulk.log")
            )
            for mode in ("drop", "silent"):
                sims.append(
                    SimProcess(
                        [*base, "--gateways", str(args.victims), "--prefix", f"v{mode}",
                         "--keepalive", "120", "--kill-after", str(args.kill_after),
                         "--kill-count", str(args.victims), "--kill-mode", mode],
                        logs / f"{mode}.log",
                    )
                )  # fmt: skip
            with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
                r = client.post(
                    "/api/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD}
                )
                r.raise_for_status()
                headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
                started = time.monotonic()
                while True:
                    r = client.get(
                        "/api/gateways", params={"online": "true", "limit": 1}, headers=headers
                    )
                    online = r.json()["total"]
                    if online >= args.gateways:
                        break
                    if time.monotonic() - started > 300:
                        raise SystemExit(f"only {online} gateways online after 300 s")
                    time.sleep(1)
                up_s = time.monotonic() - started
                print(f"{args.gateways} gateways online after {up_s:.1f} s", flush=True)

                # Offline polling runs from now on, beside the latency measurement.
                detected: dict[str, float] = {}
                victims = {
                    "drop": {f"vdrop-{i:05d}" for i in range(args.victims)},
                    "silent": {f"vsilent-{i:05d}" for i in range(args.victims)},
                }
                bulk_ids_down: set[str] = set()
                done = threading.Event()

                def poll() -> None:
                    with httpx.Client(
                        base_url=f"http://127.0.0.1:{http_port}", timeout=30
                    ) as poller:
                        while not done.is_set():
                            down = offline_ids(poller, headers)
                            now = time.monotonic()
                            for gw in down:
                                detected.setdefault(gw, now)
                            bulk_ids_down.update(g for g in down if g.startswith("bulk-"))
                            if all(v <= detected.keys() for v in victims.values()):
                                return
                            done.wait(1.0)

                poller = threading.Thread(target=poll, daemon=True)
                poller.start()
                lat = latency(client, headers, args.requests, args.gateways)
                print("latency measured", flush=True)
                poller.join(args.kill_after + args.wait + 60)
                done.set()
        finally:
            for sim in sims:
                sim.stop()
            for proc in (server, *workers):
                proc.send_signal(signal.SIGTERM)
            for proc in (server, *workers):
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print(f"\nlayout: {args.layout}")
    print(
        f"fleet: {args.gateways} gateways, heartbeat + telemetry every {args.interval:.0f} s, "
        f"offline after {2.5 * args.interval:.0f} s of silence; {args.victims} killed per mode"
    )
    print(
        f"\n{'kill mode':<22} {'detected':>8} {'<=90 s':>6} {'p50 s':>6} {'p95 s':>6} {'max s':>6}"
    )
    for mode, sim in (("drop (last will)", sims[1]), ("silent (half-open)", sims[2])):
        key = "drop" if mode.startswith("drop") else "silent"
        killed_at = sim.killed_at
        if killed_at is None:
            print(f"{mode:<22} never killed (see {logs})")
            continue
        times = [detected[g] - killed_at for g in victims[key] if g in detected]
        within = sum(1 for t in times if t <= 90)
        if times:
            print(
                f"{mode:<22} {len(times):>8} {within:>6} {statistics.median(times):>6.1f} "
                f"{percentile(times, 0.95):>6.1f} {max(times):>6.1f}"
            )
        else:
            print(f"{mode:<22} {0:>8}")
    print(f"healthy gateways ever shown offline: {len(bulk_ids_down)}")
    print(f"\n{'GET /api/gateways':<22} {'n':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")
    for kind, values in lat.items():
        print(
            f"{kind:<22} {len(values):>5} {statistics.median(values):>7.1f} "
            f"{percentile(values, 0.95):>7.1f} {max(values):>7.1f}"
        )


if __name__ == "__main__":
    main()
