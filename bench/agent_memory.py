"""Resident memory of the edge agent with a realistic entrance: 32 meters, 2 card readers and
20 BLE charging sensors, all simulated on real transports, reporting to a real broker.

    python bench/agent_memory.py --url mqtt://127.0.0.1:1883 --seconds 60 --runs 3

To measure a deployment setting, pass it to the agent: ``--agent-env MALLOC_ARENA_MAX=1`` (an
environment variable, repeatable) or ``--python-option=-OO`` (an interpreter option, repeatable).

Starts ``firmware-sim building --flats 32`` (32 Modbus meters, one serial reader, BLE adverts),
a second ``firmware-sim card-reader`` on its own pty, and ``edge-agent run`` configured with
the 32 meters, both readers and 20 of the sensors; samples the agent process's RSS (VmRSS) and
reports the figure after the warm-up and the peak, per run and the median over the runs. For
comparison it prints the RSS of interpreters that only import what such an agent loads, the same
without the BLE driver (what the BLE stack costs), with an encrypted sensor's ``cryptography``
as well, and what an agent with no Modbus, BLE or serial devices loads.

The simulated adverts come over a TCP feed, so the agent never loads bleak's BlueZ backend; on a
Raspberry Pi scanning the radio it does (``bleak.backends.bluezdbus`` with dbus-fast). With
``--radio both`` (the default) each run is made twice: once as is (``feed``) and once with that
backend imported into the agent process before it starts (``bluez``, as on a Pi); the ``bluez``
median is the figure against the goal. ``--radio feed`` or ``--radio bluez`` runs one of them;
``--radio bluez-key`` also imports ``cryptography``'s AES-CCM into the agent, as a gateway with
an encrypted sensor loads it (the simulated building's sensors send in clear).
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
NO_BLE = WITH_DEVICES[:-1]
BLUEZ_BACKEND = "bleak.backends.bluezdbus.scanner"
"""What ``BleakScanner`` imports on Linux when it starts (the manager and dbus-fast with it)."""
WITH_RADIO = (*WITH_DEVICES, BLUEZ_BACKEND)
WITH_RADIO_AND_KEY = (*WITH_RADIO, "cryptography.hazmat.primitives.ciphers.aead")
# `edge-agent run` with bleak's BlueZ backend (and AES-CCM) already imported, as on a gateway
# scanning the radio (with an encrypted sensor).
AGENT_WITH = "import sys, {}; from edge_agent.cli import main; main(sys.argv[1:])"
PRELOAD = {
    "feed": (),
    "bluez": (BLUEZ_BACKEND,),
    "bluez-key": (BLUEZ_BACKEND, WITH_RADIO_AND_KEY[-1]),
}
NO_DEVICES = ("edge_agent.cli", "edge_agent.agent")


def import_baseline(modules: tuple[str, ...], options: tuple[str, ...] = ()) -> float:
    """RSS of an interpreter that only imported ``modules`` (no devices, no data)."""
    code = (
        f"import pathlib, {', '.join(modules)};"
        "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
        " if l.startswith('VmRSS:')][0].split()[1])"
    )
    out = subprocess.run(
        [sys.executable, *options, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return int(out.stdout.strip()) / 1024


MODES = {
    "feed": "feed only",
    "bluez": "BlueZ backend imported, as on a Pi",
    "bluez-key": "BlueZ backend and AES-CCM imported, as on a Pi with an encrypted sensor",
}


@dataclass(frozen=True)
class Run:
    after_warmup: float
    peak: float
    last: float
    uss: float
    work: Path


def run_once(args: argparse.Namespace, *, mode: str) -> Run:
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
            [py, *args.python_option,
             *(("-c", AGENT_WITH.format(", ".join(PRELOAD[mode]))) if PRELOAD[mode]
               else ("-m", "edge_agent")),
             "run", "--config", str(cfg)],
            stdout=logs[2], stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **dict(kv.split("=", 1) for kv in args.agent_env)},
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
        settings = " ".join([*args.python_option, *args.agent_env]) or "defaults"
        settings += f", {MODES[mode]}"
        print(
            f"run: {meters} meters, {len(config['serial_readers'])} readers, "
            f"{len(config['ble']['sensors'])} BLE sensors, broker {args.url}, "
            f"{args.seconds:.0f} s, agent settings: {settings}, logs in {work}"
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
    p.add_argument(
        "--radio",
        choices=("both", *MODES),
        default="both",
        help="run the agent as is (feed), with bleak's BlueZ backend imported (bluez), with "
        "that and cryptography's AES-CCM (bluez-key), or feed and bluez (both)",
    )
    p.add_argument(
        "--agent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the agent (repeatable)",
    )
    p.add_argument(
        "--python-option",
        action="append",
        default=[],
        metavar="OPTION",
        help="an interpreter option for the agent, e.g. --python-option=-OO (repeatable)",
    )
    args = p.parse_args()
    bad = [kv for kv in args.agent_env if "=" not in kv or kv.startswith("=")]
    if bad:
        p.error(f"--agent-env takes KEY=VALUE, got {bad}")
    modes = ("feed", "bluez") if args.radio == "both" else (args.radio,)
    results = {mode: [run_once(args, mode=mode) for _ in range(args.runs)] for mode in modes}
    options = tuple(args.python_option)
    with_devices, no_ble, no_devices, with_radio, with_key = (
        statistics.median(import_baseline(modules, options) for _ in range(3))
        for modules in (WITH_DEVICES, NO_BLE, NO_DEVICES, WITH_RADIO, WITH_RADIO_AND_KEY)
    )
    medians = {}
    for mode, runs in results.items():
        what = MODES[mode]
        print(
            f"\n{mode} ({what})\n{'run':>6} {'RSS after warm-up':>18} {'peak RSS':>9}"
            f" {'last RSS':>9} {'last USS':>9}  (MiB)"
        )
        for i, r in enumerate(runs, 1):
            print(f"{i:>6} {r.after_warmup:>18.1f} {r.peak:>9.1f} {r.last:>9.1f} {r.uss:>9.1f}")
        med = [
            statistics.median(getattr(r, f) for r in runs)
            for f in ("after_warmup", "peak", "last", "uss")
        ]
        medians[mode] = med
        print(f"{'median':>6} {med[0]:>18.1f} {med[1]:>9.1f} {med[2]:>9.1f} {med[3]:>9.1f}")
    print(
        f"imports only (median of 3): {with_devices:.1f} MiB with this config's driver stacks, "
        f"{no_ble:.1f} MiB without the BLE driver (its stack: {with_devices - no_ble:.1f} MiB), "
        f"{with_radio:.1f} MiB with the BlueZ backend as well, {with_key:.1f} MiB with that and "
        f"an encrypted sensor's cryptography, {no_devices:.1f} MiB with no Modbus/BLE/serial "
        "devices"
    )
    mode = "bluez" if "bluez" in medians else modes[-1]
    peak = medians[mode][1]
    goal_mib = 60e6 / 2**20
    print(
        f"figure against the goal ({mode}): peak {peak:.1f} MiB = {peak * 2**20 / 1e6:.1f} MB; "
        f"goal <= 60 MB ({goal_mib:.1f} MiB): {'met' if peak <= goal_mib else 'not met'}"
    )


if __name__ == "__main__":
    main()
