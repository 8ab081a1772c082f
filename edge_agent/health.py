"""The gateway's health: system readings, per-device status and the heartbeat message.

Everything here reads files the kernel provides (``/sys/class/thermal``, ``/proc``); a reading
that is not available on this machine is ``None`` in the heartbeat, never an error.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from contract.messages import DeviceStatus, TaskHealth
from drivers.base import Driver
from edge_agent.supervisor import TaskStats

log = logging.getLogger(__name__)

# Zone types that are the SoC/CPU on common boards (Raspberry Pi: "cpu-thermal").
_CPU_ZONE_HINTS = ("cpu", "soc", "x86_pkg_temp", "core")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no dynamic loader (never on a gateway)
        return None
    trim = getattr(libc, "malloc_trim", None)  # glibc only (not musl)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_free_heap() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's ``malloc_trim(0)``).

    glibc returns freed memory to the kernel only from the top of its heap; what the imports and
    pydantic's schema building free in the middle (about 5 MiB at startup) stays resident
    otherwise. The agent calls this once its drivers have started and after every heartbeat; it
    takes well under a millisecond. Returns False where the C library has no such call.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@runtime_checkable
class HasDeviceCounters(Protocol):
    """A driver that keeps counters per device (a Modbus bus: per meter)."""

    def device_counters(self) -> dict[str, dict[str, int]]: ...


@dataclass(frozen=True, slots=True)
class SystemProbe:
    """Reads the machine's health; the roots are injectable so tests can point at a tmp dir."""

    thermal_root: Path = Path("/sys/class/thermal")
    proc_root: Path = Path("/proc")

    def cpu_temp_c(self) -> float | None:
        """The CPU zone's temperature in °C (the first readable zone if none is named CPU)."""
        readings: list[tuple[bool, float]] = []
        try:
            zones = sorted(self.thermal_root.glob("thermal_zone*"))
        except OSError:
            return None
        for zone in zones:
            try:
                milli = int((zone / "temp").read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                kind = (zone / "type").read_text().strip().lower()
            except OSError:
                kind = ""
            readings.append((any(h in kind for h in _CPU_ZONE_HINTS), milli / 1000.0))
        if not readings:
            return None
        named = [t for is_cpu, t in readings if is_cpu]
        return round((named or [readings[0][1]])[0], 1)

    def load_avg(self) -> tuple[float, float, float] | None:
        try:
            fields = (self.proc_root / "loadavg").read_text().split()
            return float(fields[0]), float(fields[1]), float(fields[2])
        except (OSError, ValueError, IndexError):
            return None

    def mem_available_bytes(self) -> int | None:
        try:
            text = (self.proc_root / "meminfo").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("MemAvailable:"):
                parts = line.split()
                try:
                    return int(parts[1]) * 1024
                except (ValueError, IndexError):
                    return None
        return None

    def rss_bytes(self) -> int | None:
        """This process's resident memory now (not the peak)."""
        try:
            fields = (self.proc_root / "self" / "statm").read_text().split()
            return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def disk_free_bytes(path: Path) -> int | None:
        try:
            return shutil.disk_usage(path).free
        except OSError:
            return None


def device_statuses(drivers: Iterable[Driver]) -> dict[str, DeviceStatus]:
    """Every device's status with its own counters.

    A driver that keeps counters per device (:class:`HasDeviceCounters`) reports those; a driver
    of one device reports its own counters; a driver of several devices without per-device
    counters (BLE) gives each device the driver's counters prefixed ``driver.`` so they are not
    mistaken for the device's own.
    """
    out: dict[str, DeviceStatus] = {}
    for d in drivers:
        status = d.device_status()
        per_device = d.device_counters() if isinstance(d, HasDeviceCounters) else None
        shared = d.counters.snapshot()
        for device_id, st in status.items():
            if per_device is not None:
                counters = per_device.get(device_id, {})
            elif len(status) == 1:
                counters = shared
            else:
                counters = {f"driver.{k}": v for k, v in shared.items()}
            out[device_id] = DeviceStatus(
                online=st.online, last_seen=st.last_seen, fault=st.fault, counters=counters
            )
    return out


def fit_devices(
    devices: Mapping[str, DeviceStatus], budget: int, cursor: int
) -> tuple[dict[str, DeviceStatus], int]:
    """The devices a heartbeat can carry in ``budget`` bytes of JSON, and the next ``cursor``.

    Every offline or faulty device comes first (what a property company must act on); the
    healthy ones follow in turn from ``cursor`` (a position in their sorted ids), so a gateway
    with more devices than one message holds still reports each of them every few heartbeats.
    Sizes are those of the devices' own JSON (``"id": {...},``), so the result fits when
    ``budget`` is the message's limit less the size of the heartbeat without devices."""
    out: dict[str, DeviceStatus] = {}
    used = 0

    def add(device_id: str, status: DeviceStatus) -> bool:
        nonlocal used
        size = len(device_id.encode()) + len(status.model_dump_json()) + 6  # quotes, colon, comma
        if used + size > budget:
            return False
        out[device_id] = status
        used += size
        return True

    healthy: list[str] = []
    for device_id in sorted(devices):
        status = devices[device_id]
        if status.online and status.fault is None:
            healthy.append(device_id)
        elif not add(device_id, status):
            return out, cursor  # problems alone fill the message: the healthy wait
    n = len(healthy)
    if not n:
        return out, 0
    start = cursor % n
    taken = 0
    for k in range(n):
        device_id = healthy[(start + k) % n]
        if not add(device_id, devices[device_id]):
            break
        taken += 1
    return out, (start + taken) % n


def task_health(stats: Mapping[str, TaskStats]) -> dict[str, TaskHealth]:
    return {
        name: TaskHealth(
            running=st.running,
            failures=st.failures,
            restarts=st.restarts,
            last_error=st.last_error,
            last_failure_at=st.last_failure_at,
        )
        for name, st in stats.items()
    }
