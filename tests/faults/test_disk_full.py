"""A full disk under the agent's state directory: a clear error, a reported fault, telemetry
dropped and counted, alerts still stored and delivered, and recovery when space is back.

The state directory is a real size-limited file system: an 8 MB tmpfs mounted in a private
mount namespace (``unshare --user --map-root-user --mount``, so no privileges are needed and
nothing outlives the agent). The test fills it through ``/proc/<pid>/root``, the agent's view of
the mounts. Where unprivileged user namespaces are disabled the test is skipped with that
reason (SQLite's ``PRAGMA max_page_count`` could fake SQLITE_FULL, but not ENOSPC on the WAL
and the reserve file, which is what a real card fills up with).
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.helpers import fleet_and_building, observing, wait_for
from tests.support.mosquitto import PrivateMosquitto

pytestmark = pytest.mark.e2e

CHARGING_AFTER_S = 14.0
TMPFS_SIZE = "8m"


def _can_mount_tmpfs(tmp: Path) -> str | None:
    """None when a private tmpfs can be mounted here, else why not."""
    if shutil.which("unshare") is None:
        return "util-linux unshare is not installed"
    probe = tmp / "probe"
    probe.mkdir()
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=1m tmpfs {probe}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if r.returncode != 0:
        return f"cannot mount a private tmpfs (unprivileged user namespaces?): {r.stderr.strip()}"
    return None


@contextlib.contextmanager
def agent_on_small_disk(state: Path, cfg: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    state.mkdir(parents=True, exist_ok=True)
    script = (
        f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {state} && "
        f"exec {sys.executable} -m edge_agent run --config {cfg}"
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fill(directory: Path) -> int:
    """Write a file until the file system is full; its size."""
    written = 0
    chunk = b"\0" * 65536
    with (directory / "filler").open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
                written += len(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return written


async def test_full_disk_keeps_alerts_flowing(tmp_path: Path, database_url: str) -> None:
    reason = _can_mount_tmpfs(tmp_path)
    if reason:
        pytest.skip(reason)
    with (
        PrivateMosquitto(tmp_path / "broker") as broker,
        fleet_and_building(
            tmp_path,
            broker,
            database_url,
            sim_args=["--flats", "8", "--seed", "11", "--charging-after", str(CHARGING_AFTER_S)],
        ) as rig,
    ):
        cfg = rig.agent_config(
            poll_interval_s=0.2,
            telemetry_batch_s=0.2,
            outbox={"audit": False, "reserve_mb": 1.0},
        )
        log = tmp_path / "agent.log"
        async with observing(broker, rig.gateway_id) as obs:
            with agent_on_small_disk(rig.state_dir, cfg, log) as agent:
                await wait_for(
                    lambda: any(a.kind == "birth" for a in obs.arrivals), 30, "the birth"
                )
                assert time.time() - rig.sim_started < CHARGING_AFTER_S, "machine too slow"
                # The agent's view of its state directory (the tmpfs in its namespace).
                view = Path(f"/proc/{agent.pid}/root") / rig.state_dir.relative_to("/")
                filled_at = time.time()
                filled = fill(view)
                assert filled < 8 * 1024 * 1024

                def faulted() -> dict[str, object] | None:
                    for hb in obs.heartbeats():
                        if hb.get("outbox_fault") == "disk_full":
                            return hb
                    return None

                hb = await wait_for(faulted, 20, "a heartbeat reporting disk_full")
                # The alert raised on the full disk still reaches the fleet manager.
                alert = await wait_for(
                    lambda: next(
                        (a for a in obs.arrivals if a.kind == "alert" and a.at > filled_at), None
                    ),
                    40,
                    "an alert raised after the disk filled",
                )
                await wait_for(
                    lambda: alert.body["id"] in rig.fleet_ids(), 20, "the alert at the fleet"
                )
                # Telemetry is dropped and counted while the disk is full.
                await wait_for(
                    lambda: any(
                        h.get("outbox_counters", {}).get("telemetry_dropped_disk_full", 0) > 0
                        for h in obs.heartbeats()
                    ),
                    20,
                    "dropped telemetry counted in the heartbeat",
                )
                assert agent.poll() is None, "the agent must keep running"

                # Space is back: the fault clears and telemetry flows again.
                (view / "filler").unlink()
                cleared = time.time()
                await wait_for(
                    lambda: any(
                        a.kind == "heartbeat" and a.at > cleared and a.body["outbox_fault"] is None
                        for a in obs.arrivals
                    ),
                    20,
                    "the fault to clear",
                )
                await wait_for(
                    lambda: any(a.kind == "telemetry" and a.at > cleared + 1 for a in obs.arrivals),
                    20,
                    "telemetry after recovery",
                )
        text = log.read_text()

    # A clear error in the log, naming the cause and what the agent does about it.
    assert "is full" in text and "dropping telemetry" in text, text[-3000:]
    assert hb["outbox_counters"]["disk_full_faults"] == 1  # type: ignore[index]
    # The alert was stored on disk (in the reserve), not only held in memory.
    last = obs.heartbeats()[-1]
    assert last["outbox_counters"]["held_in_memory"] == 0
    assert "space is back" in text


RESTART_SCRIPT = """
import asyncio, json, os, sys
from pathlib import Path
from edge_agent.outbox import PRIORITY_ALERT, PRIORITY_TELEMETRY, Outbox
state = Path(sys.argv[1])

async def main():
    ob = Outbox(state / "outbox.db", reserve_bytes=1024 * 1024)
    for _ in range(50):
        await ob.put("t", b"x" * 1000, PRIORITY_TELEMETRY)
    ob.close()  # the agent stops ...
    fd = os.open(state / "filler", os.O_WRONLY | os.O_CREAT)  # ... the disk fills up ...
    try:
        while True:
            os.write(fd, bytes(65536))
    except OSError:
        os.close(fd)
    ob = Outbox(state / "outbox.db", reserve_bytes=1024 * 1024)  # ... and it starts again
    alerts = [(await ob.put("t", b"a" * 500, PRIORITY_ALERT)).value for _ in range(20)]
    telemetry = [(await ob.put("t", b"t" * 500, PRIORITY_TELEMETRY)).value for _ in range(5)]
    print(json.dumps({"alerts": alerts, "telemetry": telemetry, "fault": ob.fault,
                      "depth": ob.depth()}))
    ob.close()

asyncio.run(main())
"""


def test_restart_on_a_full_disk_still_stores_alerts(tmp_path: Path) -> None:
    """An agent restarted on a full disk opens its outbox in the reserve's space."""
    reason = _can_mount_tmpfs(tmp_path)
    if reason:
        pytest.skip(reason)
    state = tmp_path / "state"
    state.mkdir()
    script = tmp_path / "restart.py"
    script.write_text(RESTART_SCRIPT)
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size={TMPFS_SIZE} tmpfs {state} && "
         f"cd {root} && exec {sys.executable} {script} {state}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["alerts"] == ["committed"] * 20
    assert result["telemetry"] == ["dropped"] * 5
    assert result["fault"] == "disk_full"
    assert result["depth"] == 50 + 20  # nothing already stored was lost
    assert "opened" in r.stderr and "on a full disk" in r.stderr
