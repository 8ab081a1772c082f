"""Session numbers and message envelopes.

Every agent start is a new session (a number persisted in the state directory), and every
message of a session gets the next sequence number, so the fleet manager can tell a restart from
a reconnect and see gaps.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from contract.messages import Envelope, new_message_id

M = TypeVar("M", bound=Envelope)
log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def next_session(state_dir: Path) -> int:
    """Increment and persist the session counter (atomic replace, fsynced with its directory).

    A full disk must not keep the agent from starting (alerts still go out, see outbox.py):
    the number is then written over the old one in place, in the block the file already has;
    failing that it is used unpersisted, and the error is logged.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "session"
    try:
        current = int(path.read_text().strip() or "0")
    except (FileNotFoundError, ValueError):
        current = 0
    session = current + 1
    tmp = path.with_suffix(".tmp")
    try:
        with tmp.open("w") as f:
            f.write(f"{session}\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(state_dir)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        tmp.unlink(missing_ok=True)
        try:
            with path.open("r+") as f:
                f.write(f"{session}\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as again:
            log.error(  # noqa: TRY400 - the cause is in the message
                "cannot persist session number %d in %s (%s): the disk is full",
                session,
                path,
                again,
            )
    return session


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MessageFactory:
    """Builds envelopes: fresh id, this gateway, this session, the next sequence number."""

    def __init__(
        self, gateway_id: str, session: int, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self.gateway_id = gateway_id
        self.session = session
        self._clock = clock
        self._seq = 0

    def make(self, model: type[M], **fields: Any) -> M:
        self._seq += 1
        return model(
            id=new_message_id(),
            gw=self.gateway_id,
            session=self.session,
            seq=self._seq,
            ts=self._clock(),
            **fields,
        )
