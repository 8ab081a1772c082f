"""Resident memory of the edge agent with a realistic entrance: 32 meters, 2 card readers and
20 BLE charging sensors, all simulated on real transports, reporting to a real broker.

    python bench/agent_memory.py --url mqtt://127.0.0.1:1883 --seconds 60 --runs 3

Starts ``firmware-sim building --flats 32`` (32 Modbus meters, one serial reader, BLE adverts),
a second ``firmware-sim card-reader`` on its own pty, and ``edge-agent run`` configured with
the 32 meters, both readers and 20 of the sensors; samples the agent process's RSS (VmRSS) and
reports the figure after the warm-up and the peak, per run and the median over the runs. For
comparison it prints the RSS of interpreters that only import what such an agent loads, and
what an agent with no Modbus, BLE or serial devices loads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fleet.demo import agent_config_from_endpoints  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def private_mib(pid: int) -> float:
    """Memory only this process uses (USS: private clean + dirty), from smaps_rollup."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total / 1024


# What `edge-agent run` imports with this config: the driver stacks load only when configured.
WITH_DEVICES = (
    "edge_agent.cli",
    "edge_agent.agent",
    "drivers.modbus_meter",
    "drivers.serial_card",
    "drivers.ble_charging",
)
NO_DEVICES = ("edge_agent.cli", "edge_agent.agent")


def import_baseline(modules: tuple[str, ...]) -> float:
    """RSS of an interpreter that only imported ``modules`` (no devices, no data)."""
    code = (
        f"import pathlib, {', '.join(modules)};"
        "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmRSS:')][0].split()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    return int(out.stdout.strip()) / 1024


@dataclass(frozen=True)
class Run:
    after_warmup: float
    peak: float
    last: float
    uss: float
    work: Path


def run_once(args: argparse.Namespace) -> Run:
    work = Path(tempfile.mkdtemp(prefix="agent-memory-"))
    endpoints_file = work / "building.json"
    py = sys.executable
    logs = [(work / n).open("wb") for n in ("sim.log", "reader2.log", "agent.log")]
    sim = subprocess.Popen(
        [py, "-m", "firmware_sim", "building", "--flats", "32", "--seed", "1",
         "--charging-after", "20", "--endpoints-file", str(endpoints_file)],
        stdout=logs[0], stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    reader2 = subprocess.Popen(
        [py, "-m", "firmware_sim", "card-reader", "--every", "3", "--cards", "40", "--seed", "2"],
        stdout=subprocess.PIPE, stderr=logs[1], cwd=ROOT,
    )  # fmt: skip
    procs = [sim, reader2]
    try:
        assert reader2.stdout is not None
        pty2 = reader2.stdout.readline().decode().strip()
        deadline = time.monotonic() + 60
        while not endpoints_file.exists():
            if time.monotonic() > deadline:
                raise SystemExit("the simulator did not start; see " + str(work / "sim.log"))
            time.sleep(0.2)
        endpoints = json.loads(endpoints_file.read_text())
        config = agent_config_from_endpoints(
            endpoints,
            gateway_id=f"gw-mem-{os.getpid()}",
            mqtt_url=args.url,
            state_dir=work / "state",
            poll_interval_s=10.0,  # the production default
        )
        config["heartbeat_interval_s"] = 30.0
        config["telemetry_batch_s"] = 10.0
        config["serial_readers"].append({"reader_id": "b1-garage", "url": pty2})
        config["ble"]["sensors"] = config["ble"]["sensors"][:20]
        meters = sum(len(b["meters"]) for b in config["modbus_tcp"])
        cfg = work / "agent.toml"
        cfg.write_text(tomli_w.dumps(config))
        agent = subprocess.Popen(
            [py, "-m", "edge_agent", "run", "--config", str(cfg)],
            stdout=logs[2], stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        procs.append(agent)
        samples: list[tuple[float, float]] = []
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < args.seconds:
            if agent.poll() is not None:
                raise SystemExit("the agent exited; see " + str(work / "agent.log"))
            samples.append((elapsed, rss_mib(agent.pid)))
            time.sleep(1.0)
        after = [r for t, r in samples if t >= args.warmup]
        print(
            f"run: {meters} meters, {len(config['serial_readers'])} readers, "
            f"{len(config['ble']['sensors'])} BLE sensors, broker {args.url}, "
            f"{args.seconds:.0f} s, logs in {work}"
        )
        return Run(
            after[0], max(r for _, r in samples), samples[-1][1], private_mib(agent.pid), work
        )
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for f in logs:
            f.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--seconds", type=float, default=60.0, help="how long to run the agent")
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--runs", type=int, default=3, help="the median of the runs is reported")
    args = p.parse_args()
    runs = [run_once(args) for _ in range(args.runs)]
    with_devices = statistics.median(import_baseline(WITH_DEVICES) for _ in range(3))
    no_devices = statistics.median(import_baseline(NO_DEVICES) for _ in range(3))
    print(
        f"\n{'run':>6} {'RSS after warm-up':>18} {'peak RSS':>9} {'last RSS':>9}"
        f" {'last USS':>9}  (MiB)"
    )
    for i, r in enumerate(runs, 1):
        print(f"{i:>6} {r.after_warmup:>18.1f} {r.peak:>9.1f} {r.last:>9.1f} {r.uss:>9.1f}")
    med = [
        statistics.median(getattr(r, f) for r in runs)
        for f in ("after_warmup", "peak", "last", "uss")
    ]
    print(f"{'median':>6} {med[0]:>18.1f} {med[1]:>9.1f} {med[2]:>9.1f} {med[3]:>9.1f}")
    print(
        f"imports only (median of 3): {with_devices:.1f} MiB with this config's driver stacks, "
        f"{no_devices:.1f} MiB with no Modbus/BLE/serial devices"
    )


if __name__ == "__main__":
    main()
