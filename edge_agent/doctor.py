"""``edge-agent doctor``: is this gateway ready? One line per check, with what to do.

Checks: the config (TOML plus the stored desired config), the state directory (writable, free
space), the clock (NTP synchronised, where ``timedatectl`` exists), the broker (reachable, the
credentials accepted) and every configured device (answers once within ``--device-timeout``).
Run it with the agent stopped: a serial port or RS-485 bus is used by one program at a time.

The table is Chinese by default (``--lang en`` for English); the exit code is 1 when a check
failed, 0 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiomqtt

from contract.events import ChargingSensorReading, DeviceFault, MeterReading
from drivers.base import Driver, stop_tasks
from edge_agent.config import AgentConfig, ConfigError, MqttConfig
from edge_agent.desired import load_effective_config
from edge_agent.drivers import driver_specs

Lang = Literal["zh", "en"]
Result = Literal["ok", "fail", "skip"]
MIN_FREE_BYTES = 64 * 1024 * 1024

_RESULT_TEXT: dict[Lang, dict[Result, str]] = {
    "zh": {"ok": "通过", "fail": "失败", "skip": "跳过"},
    "en": {"ok": "ok", "fail": "FAIL", "skip": "skip"},
}

# What to do, by problem: (zh, en).
_TODO: dict[str, tuple[str, str]] = {
    "config": (
        "修改配置文件(edge-agent check-config 查看详情)或重新注册(edge-agent enroll --force)",
        "fix the file (edge-agent check-config shows details) or re-enroll (enroll --force)",
    ),
    "state_dir": (
        "确认状态目录存在且属于 edge-agent 用户(systemd 的 StateDirectory 会创建它)",
        "make sure the state dir exists and belongs to the edge-agent user (StateDirectory=)",
    ),
    "disk": (
        "清理磁盘空间或换更大的存储卡;断网时缓存需要空间",
        "free disk space or use a larger card: the outbox needs room during outages",
    ),
    "clock": (
        "开启时间同步:timedatectl set-ntp true,并确认能访问 NTP 服务器",
        "enable time sync: timedatectl set-ntp true, and check the NTP server is reachable",
    ),
    "broker_auth": (
        "账号或密码被拒绝:重新注册网关(edge-agent enroll --force)",
        "credentials refused: re-enroll the gateway (edge-agent enroll --force)",
    ),
    "broker_net": (
        "连不上服务器:检查 mqtt.url、网络、防火墙和端口",
        "broker unreachable: check mqtt.url, the network, firewall and port",
    ),
    "broker_tls": (
        "TLS 握手失败:检查 CA 证书(mqtt.ca_file)和系统时间",
        "TLS failed: check the CA certificate (mqtt.ca_file) and the clock",
    ),
    "modbus": (
        "检查 RS-485 接线(A/B 是否接反)、从站地址和波特率;可用 edge-agent scan modbus 扫描",
        "check the RS-485 wiring (A/B swapped?), slave address and baud rate; "
        "edge-agent scan modbus",
    ),
    "modbus_tcp": (
        "检查 Modbus TCP 网关的地址、端口和网线,以及从站地址;可用 edge-agent scan modbus 扫描",
        "check the Modbus TCP gateway's host, port and cable, and the slave address; "
        "edge-agent scan modbus",
    ),
    "dlt645": (
        "检查接线、表地址(铭牌上的 12 位数字)和波特率;可用 edge-agent scan dlt645",
        "check wiring, the meter address (12 digits on the nameplate) and baud rate; "
        "edge-agent scan dlt645",
    ),
    "serial": (
        "检查串口路径和权限(edge-agent 用户需在 dialout 组)",
        "check the serial port path and permissions (the edge-agent user needs dialout)",
    ),
    "wiegand": (
        "检查 GPIO 芯片路径、线号和权限(gpio 组)",
        "check the GPIO chip path, line offsets and permissions (gpio group)",
    ),
    "ble": (
        "没有收到广播:检查传感器电池和距离,以及蓝牙适配器(bluetoothctl show)",
        "no advert heard: check the sensor's battery and distance, and the adapter "
        "(bluetoothctl show)",
    ),
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    result: Result
    detail: str
    todo: str = ""  # a key of _TODO


def _todo(key: str, lang: Lang) -> str:
    if not key:
        return ""
    zh, en = _TODO[key]
    return zh if lang == "zh" else en


def check_state_dir(state_dir: Path) -> list[Check]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".doctor-"):
            pass
    except OSError as exc:
        return [Check("state_dir", "fail", f"{state_dir}: {exc.strerror or exc}", "state_dir")]
    checks = [Check("state_dir", "ok", f"{state_dir} writable")]
    free = shutil.disk_usage(state_dir).free
    mb = free // (1024 * 1024)
    if free < MIN_FREE_BYTES:
        checks.append(Check("disk", "fail", f"{mb} MB free", "disk"))
    else:
        checks.append(Check("disk", "ok", f"{mb} MB free"))
    return checks


def check_clock() -> Check:
    exe = shutil.which("timedatectl")
    if exe is None:
        return Check("clock", "skip", "timedatectl not found")
    try:
        out = subprocess.run(  # noqa: S603 - fixed arguments
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("clock", "skip", f"timedatectl: {exc}")
    if out == "yes":
        return Check("clock", "ok", "NTP synchronised")
    if out == "no":
        return Check("clock", "fail", "not synchronised", "clock")
    return Check("clock", "skip", "unknown (no systemd-timedated?)")


async def check_broker(mqtt: MqttConfig, gateway_id: str, timeout_s: float = 10.0) -> Check:
    tls: ssl.SSLContext | None = None
    if mqtt.tls or mqtt.url.startswith("mqtts://"):
        tls = ssl.create_default_context(cafile=str(mqtt.ca_file) if mqtt.ca_file else None)
    client = aiomqtt.Client(
        mqtt.host,
        mqtt.port,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else None,
        identifier=f"edge-{gateway_id}-doctor-{uuid.uuid4().hex[:6]}",
        tls_context=tls,
        timeout=timeout_s,
    )
    where = f"{mqtt.host}:{mqtt.port}"
    try:
        async with asyncio.timeout(timeout_s + 1):
            async with client:
                pass
    except aiomqtt.MqttCodeError as exc:
        rc = exc.rc if isinstance(exc.rc, int) or exc.rc is None else exc.rc.value
        if rc in (4, 5, 134, 135):
            return Check("broker", "fail", f"{where}: refused ({exc})", "broker_auth")
        return Check("broker", "fail", f"{where}: {exc}", "broker_net")
    except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
        text = str(exc) or type(exc).__name__
        key = "broker_tls" if "SSL" in text or "certificate" in text else "broker_net"
        if "not authori" in text.lower() or "bad user" in text.lower():
            key = "broker_auth"
        return Check("broker", "fail", f"{where}: {text}", key)
    user = f" as {mqtt.username}" if mqtt.username else ""
    return Check("broker", "ok", f"{where} accepted{user}")


def _kind(name: str) -> str:
    head = name.split(":", 1)[0]
    if head == "modbus-tcp":
        return "modbus_tcp"
    if head.startswith("modbus"):
        return "modbus"
    if head == "ble-charging":
        return "ble"
    return head if head in _TODO else "serial"


async def _probe_driver(driver: Driver, timeout_s: float) -> tuple[set[str], dict[str, str]]:
    """Run a driver until every device delivered data once or the time is up."""
    devices = set(driver.device_status())
    answered: set[str] = set()
    errors: dict[str, str] = {}
    events = driver.events()

    async def consume() -> None:
        async for event in events:
            if isinstance(event, DeviceFault):
                if event.active:
                    errors[event.device_id] = f"{event.fault} {event.detail or ''}".strip()
                continue
            if isinstance(event, MeterReading):
                answered.add(event.meter_id)
            elif isinstance(event, ChargingSensorReading):
                answered.add(event.sensor_id)
            else:
                answered.add(event.reader_id)
            if answered >= devices:
                return

    task = asyncio.create_task(consume())
    try:
        await asyncio.wait({task}, timeout=timeout_s)
    finally:
        await stop_tasks(task)
    if task.done() and not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        for d in devices - answered:
            errors.setdefault(d, f"{type(exc).__name__}: {exc}")
    for device_id, st in driver.device_status().items():
        if st.online and device_id not in answered and _kind_of(driver) in ("serial", "wiegand"):
            answered.add(device_id)  # a reader answers when its port is open; swipes are rare
        if st.fault and device_id not in answered:
            errors.setdefault(device_id, st.fault)
    return answered, errors


def _kind_of(driver: Driver) -> str:
    return _kind(driver.name)


async def check_devices(config: AgentConfig, timeout_s: float) -> list[Check]:
    specs = list(driver_specs(config).values())
    drivers = [spec.build() for spec in specs]
    results = await asyncio.gather(*(_probe_driver(d, timeout_s) for d in drivers))
    checks: list[Check] = []
    for driver, (answered, errors) in zip(drivers, results, strict=True):
        kind = _kind_of(driver)
        for device_id in driver.device_status():
            if device_id in answered:
                checks.append(Check(f"device {device_id}", "ok", f"{driver.name} answers"))
            else:
                why = errors.get(device_id, f"no answer in {timeout_s:g} s")
                checks.append(Check(f"device {device_id}", "fail", f"{driver.name}: {why}", kind))
    return checks


async def run_checks(config_path: Path, *, device_timeout_s: float = 10.0) -> list[Check]:
    try:
        effective = load_effective_config(config_path)
    except ConfigError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        return [Check("config", "fail", detail[:300], "config")]
    config = effective.config
    desired = effective.desired
    version = f", desired config version {desired.version}" if desired else ""
    checks = [Check("config", "ok", f"gateway {config.gateway_id}{version}")]
    checks += check_state_dir(config.state_dir)
    checks.append(check_clock())
    broker, devices = await asyncio.gather(
        check_broker(config.mqtt, config.gateway_id), check_devices(config, device_timeout_s)
    )
    checks.append(broker)
    if not devices:
        checks.append(Check("devices", "skip", "no devices configured yet"))
    checks += devices
    return checks


def render(checks: Sequence[Check], lang: Lang = "zh") -> str:
    header = ("检查项", "结果", "详情", "怎么办") if lang == "zh" else (
        "check", "result", "detail", "what to do")  # fmt: skip
    rows = [header] + [
        (c.name, _RESULT_TEXT[lang][c.result], c.detail, _todo(c.todo, lang)) for c in checks
    ]
    widths = [max(_width(r[i]) for r in rows) for i in range(3)]
    lines = []
    for r in rows:
        cells = [r[i] + " " * (widths[i] - _width(r[i])) for i in range(3)]
        lines.append("  ".join([*cells, r[3]]).rstrip())
    failed = sum(c.result == "fail" for c in checks)
    if lang == "zh":
        lines.append(f"\n{failed} 项失败" if failed else "\n全部通过")
    else:
        lines.append(f"\n{failed} check(s) failed" if failed else "\nall checks passed")
    return "\n".join(lines)


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


def doctor(config_path: Path, *, lang: Lang = "zh", device_timeout_s: float = 10.0) -> int:
    checks = asyncio.run(run_checks(config_path, device_timeout_s=device_timeout_s))
    print(render(checks, lang))
    return 1 if any(c.result == "fail" for c in checks) else 0


def default_lang() -> Lang:
    lang = os.environ.get("LANG", "")
    return "en" if lang.startswith("en") else "zh"
