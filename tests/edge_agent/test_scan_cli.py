"""``edge-agent scan``: what an installer types, against simulators on real transports.

The snippet each scan writes must be accepted by the agent's own config loader once the
installer adds the gateway's identity.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from edge_agent.config import load_config
from firmware_sim.card_reader import CardReaderSim
from firmware_sim.dlt645_meter import Dlt645BusSim, SimMeter, default_load

BASE = """
gateway_id = "gw-scan"
state_dir = "{state}"
site_key = "0123456789abcdef0123"

[site]
site_id = "s1"
units = [{{unit_id = "1-101", building = "1"}}]
"""


async def _edge_agent(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge_agent", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scan_dlt645_finds_the_meter_and_writes_usable_config(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.toml"
    async with Dlt645BusSim([SimMeter("000000123456", default_load(0))], tcp=True) as bus:
        code, out, err = await _edge_agent(
            "scan", "dlt645", "--port", bus.url, "--snippet", str(snippet)
        )
    assert code == 0, err
    assert "meter address 000000123456" in out
    config = tmp_path / "agent.toml"
    config.write_text(BASE.format(state=tmp_path) + "\n" + snippet.read_text())
    cfg = load_config(config)
    assert [m.address for m in cfg.dlt645[0].meters] == ["000000123456"]


async def test_scan_serial_shows_masked_cards_live(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.toml"
    async with CardReaderSim() as reader:
        scan = asyncio.create_task(
            _edge_agent(
                "scan",
                "serial",
                "--port",
                reader.path,
                "--seconds",
                "2",
                "--snippet",
                str(snippet),
            )
        )
        # Keep swiping until the scan ends: its window starts whenever its process is up.
        while not scan.done():
            for card in ("3104992211", "3104992212"):
                await reader.swipe(card)
                await asyncio.sleep(0.2)
        code, out, err = await scan
    assert code == 0, err
    assert "card ******2211" in out and "card ******2212" in out
    assert "3104992211" not in out + err
    config = tmp_path / "agent.toml"
    config.write_text(BASE.format(state=tmp_path) + "\n" + snippet.read_text())
    assert load_config(config).serial_readers[0].url == reader.path


async def test_scan_of_a_missing_port_says_what_to_do() -> None:
    code, _out, err = await _edge_agent("scan", "serial", "--port", "/dev/does-not-exist")
    assert code == 2
    assert "edge-agent scan:" in err and "Traceback" not in err
