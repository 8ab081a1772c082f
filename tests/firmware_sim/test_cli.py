"""``firmware-sim building`` as a process: endpoints file, readiness line, clean SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from contract.site import Site


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the simulator exited early"
        assert time.monotonic() < deadline, f"no endpoints file after {timeout}s"
        time.sleep(0.05)


def test_cli_writes_endpoints_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "building.json"
    path.write_text("stale")  # a previous run's file must never be read as this run's
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "firmware_sim", "building", "--flats", "2", "--seed", "3",
            "--charging-after", "1", "--endpoints-file", str(path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        time.sleep(0.2)
        _wait_for(path, proc)
        endpoints = json.loads(path.read_text())
        site = Site.model_validate(endpoints["site"])
        assert [u.unit_id for u in site.units] == ["1-101", "1-102"]
        assert endpoints["scenario"]["charging_unit"] == "1-102"
        assert not list(tmp_path.glob(".*.tmp"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines == [f"firmware-sim: building ready, endpoints in {path}"]
    assert b"Traceback" not in err
    assert not path.exists()


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "firmware_sim", "building", "--flats", "0"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert b"flats" in result.stderr
