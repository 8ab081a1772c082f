"""The embedded MQTT broker (amqtt, MQTT 3.1.1) for the demo and machines without Mosquitto.

Production uses Mosquitto 2 with dynamic security; this broker exists so that the demo and a
developer's test run need nothing installed by hand. It runs in its own process
(``fleet-manager broker``) or inside the demo's event loop.

Without ``auth_file`` it admits anyone (demo, tests). With ``auth_file`` (``fleet-manager broker
--auth-file PATH``, and ``FLEET_BROKER_AUTH=embedded`` + ``FLEET_BROKER_AUTH_FILE=PATH`` on the
fleet manager) it enforces the same rule as Mosquitto's dynamic security does in production:
a gateway logs in with the credentials it got at enrollment, publishes only under
``edge/v1/{its id}/up/`` and subscribes and receives only under ``edge/v1/{its id}/down/``; the
fleet manager's own user may do everything. The file is written by the fleet manager
(:func:`write_credentials`) and re-read here whenever it changes, so a new gateway can log in
at once and a revoked one is refused on its next login and on its next publish.

File format (JSON, version 1)::

    {"version": 1,
     "service": {"username": "fleet", "hash": "sha256$<salt>$<digest>"} | null,
     "gateways": {"<username>": {"gateway_id": "<id>", "hash": "sha256$<salt>$<digest>"}}}

Gateway passwords are 256 random bits, so a salted SHA-256 is as strong as any slow hash
would be and costs nothing when 2,000 gateways reconnect at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from contract.topics import PREFIX

log = logging.getLogger(__name__)

CREDENTIALS_VERSION = 1
_HASH_SCHEME = "sha256"


def hash_password(password: str, *, salt: str | None = None) -> str:
    salt = salt if salt is not None else secrets.token_hex(16)
    digest = hashlib.sha256(f"{salt}:{password}".encode()).hexdigest()
    return f"{_HASH_SCHEME}${salt}${digest}"


def verify_password(stored: str, password: str) -> bool:
    scheme, _, rest = stored.partition("$")
    salt, _, _digest = rest.partition("$")
    if scheme != _HASH_SCHEME or not salt:
        return False
    return hmac.compare_digest(hash_password(password, salt=salt), stored)


@dataclass(frozen=True, slots=True)
class Account:
    password_hash: str
    gateway_id: str | None  # None: the fleet manager's service user


@dataclass(frozen=True, slots=True)
class Credentials:
    accounts: Mapping[str, Account] = field(default_factory=dict)


def write_credentials(
    path: Path,
    *,
    service: tuple[str, str] | None,
    gateways: Mapping[str, tuple[str, str]],
) -> None:
    """Atomically replace ``path``. ``service`` is (username, password hash); ``gateways`` maps
    username to (gateway id, password hash)."""
    body = {
        "version": CREDENTIALS_VERSION,
        "service": {"username": service[0], "hash": service[1]} if service else None,
        "gateways": {
            username: {"gateway_id": gw, "hash": h} for username, (gw, h) in gateways.items()
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(raw: Any) -> Credentials:
    if not isinstance(raw, dict) or raw.get("version") != CREDENTIALS_VERSION:
        raise ValueError("not a version 1 credentials file")
    accounts: dict[str, Account] = {}
    service = raw.get("service")
    if service is not None:
        accounts[str(service["username"])] = Account(str(service["hash"]), None)
    for username, entry in dict(raw.get("gateways") or {}).items():
        accounts[str(username)] = Account(str(entry["hash"]), str(entry["gateway_id"]))
    return Credentials(accounts)


class CredentialsFile:
    """The file, re-read when its modification time or size changes. A missing or broken
    file admits nobody (and says so in the log once per change)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._credentials = Credentials()

    def current(self) -> Credentials:
        try:
            st = self._path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return self._credentials
        self._stamp = stamp
        if stamp is None:
            log.warning("broker credentials file %s does not exist: nobody may log in", self._path)
            self._credentials = Credentials()
            return self._credentials
        try:
            self._credentials = _parse(json.loads(self._path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(  # noqa: TRY400 - the cause fits in one line; no traceback wanted
                "broker credentials file %s unusable (%s): nobody may log in", self._path, exc
            )
            self._credentials = Credentials()
        return self._credentials

    def account(self, username: str | None) -> Account | None:
        if username is None:
            return None
        return self.current().accounts.get(username)


def _own(topic: str, gateway_id: str, direction: str) -> bool:
    """Whether ``topic`` (a topic or a filter) lies under ``edge/v1/{gateway_id}/{direction}/``.
    Wildcards are allowed only after that prefix, so ``edge/v1/+/down/#`` is refused."""
    return topic.startswith(f"{PREFIX}/{gateway_id}/{direction}/")


def allowed(account: Account, topic: str, action: Action) -> bool:
    if account.gateway_id is None:
        return True
    match action:
        case Action.PUBLISH:
            return _own(topic, account.gateway_id, "up")
        case Action.SUBSCRIBE | Action.RECEIVE:
            return _own(topic, account.gateway_id, "down")
    return False


class GatewayAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication against the credentials file."""

    @dataclass
    class Config:
        auth_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._file = CredentialsFile(Path(self.config.auth_file))

    async def authenticate(self, *, session: Session) -> bool | None:
        account = self._file.account(session.username)
        if account is None or session.password is None:
            log.info("refused MQTT login of %r: unknown user or no password", session.username)
            return False
        if not verify_password(account.password_hash, session.password):
            log.info("refused MQTT login of %r: wrong password", session.username)
            return False
        return True


class GatewayTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic checks: a gateway's own prefix only; looked up per call, so a revoked
    gateway loses its rights on the connection it already has."""

    @dataclass
    class Config:
        auth_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._file = CredentialsFile(Path(self.config.auth_file))

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool | None:
        if session is None or topic is None or action is None:
            return False
        account = self._file.account(session.username)
        if account is None:
            return False
        ok = allowed(account, topic, action)
        if not ok and action is not Action.RECEIVE:
            log.info("refused %s of %r on %s", action.value, session.username, topic[:200])
        return ok


def broker_config(host: str, port: int, auth_file: Path | None = None) -> dict[str, Any]:
    plugins: dict[str, Any]
    if auth_file is None:
        plugins = {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
    else:
        options = {"auth_file": str(auth_file)}
        plugins = {
            f"{__name__}.GatewayAuthPlugin": options,
            f"{__name__}.GatewayTopicPlugin": options,
        }
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": plugins,
    }


@contextlib.asynccontextmanager
async def embedded_broker(
    host: str = "127.0.0.1", port: int = 1883, *, auth_file: Path | None = None
) -> AsyncIterator[Broker]:
    """Run an amqtt broker for the duration of the ``async with`` block."""
    broker = Broker(broker_config(host, port, auth_file))
    await broker.start()
    log.info(
        "embedded MQTT broker listening on %s:%d (%s)",
        host,
        port,
        f"credentials from {auth_file}" if auth_file else "anonymous",
    )
    try:
        yield broker
    finally:
        await broker.shutdown()


async def _serve(host: str, port: int, auth_file: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_broker(host, port, auth_file=auth_file):
        print(f"broker ready on {host}:{port}", flush=True)  # readiness line for parents
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fleet-manager broker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument(
        "--auth-file",
        type=Path,
        default=None,
        help="gateway credentials written by the fleet manager (FLEET_BROKER_AUTH_FILE); "
        "without it the broker admits anyone",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(args.host, args.port, args.auth_file))


if __name__ == "__main__":
    main()
