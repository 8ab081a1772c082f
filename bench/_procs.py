"""Child processes and ports for the benchmarks that start servers (one copy for all of them).

``free_port`` asks the kernel for a free TCP port on 127.0.0.1, ``wait_port`` waits until
something listens there, ``proc`` runs ``python -m ...`` with its output in a log file and
stops it (SIGTERM, then SIGKILL after 15 s) when the block ends. The tests have their own
(``tests/support/procs.py``), which also checks that the child is still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f} s")


@contextlib.contextmanager
def proc(
    args: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m *args`` from the repository's root, its output appended to ``log``."""
    with log.open("ab") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
