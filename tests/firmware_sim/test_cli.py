"""``firmware-sim building`` as a process: endpoints file, readiness line, clean SIGTERM."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path

from contract.site import Site


def _ready_line(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> str:
    """The simulator's readiness line (printed after the endpoints file is in place)."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    assert readable, f"no readiness line after {timeout}s"
    return proc.stdout.readline().decode().rstrip("\n")


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
        ready = _ready_line(proc)
        assert ready == f"firmware-sim: building ready, endpoints in {path}"
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
    assert out == b""  # one readiness line, nothing else
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
