"""The supervisor (named tasks, restart with jittered exponential backoff, isolation, clean
cancellation) and systemd's notify protocol over a real unix datagram socket, in process and
with the real `edge-agent run` under SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import tomli_w

from contract import topics
from edge_agent.supervisor import SdNotify, Supervisor
from tests.conftest import BrokerEndpoint
from tests.edge_agent.control_helpers import (
    base_config,
    gateway_id,
    listening,
    make_agent,
    running,
)


async def test_a_failing_task_restarts_with_growing_backoff_and_never_stops_another() -> None:
    failures: list[tuple[str, str]] = []
    sup = Supervisor(
        backoff_min_s=0.04, backoff_max_s=10.0, on_failure=lambda n, e: failures.append((n, e))
    )
    starts: list[float] = []
    ticks = 0

    async def flaky() -> None:
        starts.append(time.monotonic())
        raise OSError(f"port gone #{len(starts)}")

    async def steady() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    sup.start("driver:flaky", flaky)
    sup.start("driver:steady", steady)
    runner = asyncio.create_task(sup.run())
    async with asyncio.timeout(20):
        while len(starts) < 6:
            await asyncio.sleep(0.01)
    stats = sup.stats()
    assert stats["driver:flaky"].failures >= 5
    assert (
        stats["driver:flaky"].last_error == f"OSError: port gone #{stats['driver:flaky'].failures}"
    )
    assert stats["driver:flaky"].last_failure_at is not None
    assert stats["driver:steady"].failures == 0 and stats["driver:steady"].running
    assert ticks > 0 and failures[0] == ("driver:flaky", "OSError: port gone #1")
    # jittered exponential: each wait is 0.5-1x of a doubling base, so later waits are longer
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[4] > gaps[0] * 2, gaps
    assert all(later > earlier * 0.9 for earlier, later in zip(gaps, gaps[2:], strict=False)), gaps
    # stopping one task leaves the other running; stopping the supervisor cancels everything
    assert await sup.stop("driver:flaky")
    assert "driver:flaky" not in sup.stats()
    before = ticks
    await asyncio.sleep(0.1)
    assert ticks > before
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    after = ticks
    await asyncio.sleep(0.05)
    assert ticks == after


async def test_a_task_that_returns_is_restarted_and_restart_gives_a_fresh_start() -> None:
    sup = Supervisor(backoff_min_s=0.01, backoff_max_s=0.02)
    runs = 0
    stopped = asyncio.Event()

    async def quits() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            stopped.set()

    cleaned: list[str] = []

    async def holds() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("holds")

    sup.start("quits", quits)
    sup.start("holds", holds)
    runner = asyncio.create_task(sup.run())
    await asyncio.wait_for(stopped.wait(), 10)
    assert sup.stats()["quits"].last_error == "stopped by itself"
    assert await sup.restart("holds")
    assert cleaned == ["holds"] and sup.stats()["holds"].restarts == 1
    assert not await sup.restart("nope")
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert cleaned == ["holds", "holds"]


@contextmanager
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    try:
        yield path, sock
    finally:
        sock.close()


def test_sd_notify_sends_datagrams_and_reads_the_watchdog_interval(tmp_path: Path) -> None:
    with notify_socket(tmp_path) as (path, sock):
        sd = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"})
        assert sd.enabled and sd.watchdog_interval_s == 1.5
        assert sd.ready("2 drivers") and sd.watchdog() and sd.stopping()
        assert [sock.recv(100) for _ in range(3)] == [
            b"READY=1\nSTATUS=2 drivers",
            b"WATCHDOG=1",
            b"STOPPING=1",
        ]
    other_pid = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    assert SdNotify(other_pid).watchdog_interval_s is None
    off = SdNotify({})
    assert not off.enabled and not off.ready() and off.watchdog_interval_s is None
    # the socket is gone: a warning, not a crash
    assert not SdNotify({"NOTIFY_SOCKET": path}).ready()


async def test_watchdog_is_pinged_only_while_the_core_loops_run(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    with notify_socket(tmp_path) as (path, sock):
        sock.setblocking(False)
        sd = SdNotify({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # ping every 50 ms
        agent = make_agent(
            base_config(gw, tmp_path / "state", mqtt_broker, tick_interval_s=0.05), sd_notify=sd
        )
        loop = asyncio.get_running_loop()

        async def collect(seconds: float) -> list[bytes]:
            got: list[bytes] = []
            try:
                async with asyncio.timeout(seconds):
                    while True:
                        got.append(await loop.sock_recv(sock, 4096))
            except TimeoutError:
                return got

        async with running(agent):
            healthy = await collect(1.0)
            assert healthy[0].startswith(b"READY=1")
            assert healthy.count(b"WATCHDOG=1") >= 3
            await agent.supervisor.stop("rules")  # the rules loop is dead: no more pings
            await collect(0.5)  # pings already sent before the tick went stale
            stale = await collect(1.0)
            assert b"WATCHDOG=1" not in stale, stale
        assert b"STOPPING=1" in await collect(0.5)


async def test_edge_agent_run_notifies_systemd_and_stops_cleanly_on_sigterm(
    tmp_path: Path, mqtt_broker: BrokerEndpoint
) -> None:
    gw = gateway_id()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(tomli_w.dumps(base_config(gw, tmp_path / "state", mqtt_broker)))
    loop = asyncio.get_running_loop()

    async def until(sock: socket.socket, state: str) -> list[str]:
        got: list[str] = []
        async with asyncio.timeout(60):
            while state not in (got[-1] if got else ""):
                got.append((await loop.sock_recv(sock, 4096)).decode())
        return got

    with notify_socket(tmp_path) as (path, sock), (tmp_path / "agent.log").open("wb") as log:
        sock.setblocking(False)
        async with listening(mqtt_broker, gw) as up:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edge_agent", "run", "--config", str(cfg),
                env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                ready = await until(sock, "READY=1")
                assert ready[-1].startswith("READY=1\nSTATUS=")
                await until(sock, "WATCHDOG=1")
                await up.wait(topics.Up.BIRTH, timeout=60)
                proc.send_signal(signal.SIGTERM)
                death = await up.wait(topics.Up.DEATH, timeout=30)
                assert death.reason == "clean_stop"
                assert await asyncio.wait_for(proc.wait(), 30) == 0
                await until(sock, "STOPPING=1")
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


def test_systemd_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    unit = Path(__file__).parents[2] / "systemd" / "edge-agent.service"
    text = unit.read_text()
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"] and settings["Restart"] == ["always"]
    assert int(settings["WatchdogSec"][0]) > 0 and settings["User"] == ["edge-agent"]
    assert settings["StateDirectory"] == ["edge-agent"]
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "RestrictSUIDSGID"):
        assert settings[key] == ["yes"], key
    assert settings["ProtectSystem"] == ["strict"] and settings["DevicePolicy"] == ["closed"]
    assert {"char-ttyUSB rw", "char-gpiochip rw"} <= set(settings["DeviceAllow"])
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the unit's syntax was not verified")
    exe = Path(sys.executable).with_name("edge-agent")
    local = tmp_path / "edge-agent.service"
    local.write_text(text.replace("/opt/edge-agent/.venv/bin/edge-agent", str(exe)))
    done = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
