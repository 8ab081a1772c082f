"""Email over SMTP (aiosmtplib: asyncio-native, so a slow mail server holds no thread and a
shutdown cancels a send cleanly; STARTTLS and implicit TLS are supported).

Channel config: ``to`` (list of addresses). Server, sender and credentials come from the
``FLEET_SMTP_*`` settings, shared by every email channel. ``Message-ID`` is derived from the
idempotency key, so a mail client can spot a repeat.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib

from fleet.channels import DeliveryError, Message
from fleet.channels.render import plain_text, title


class EmailSender:
    def __init__(
        self,
        config: dict[str, Any],
        *,
        host: str | None,
        port: int,
        sender: str,
        username: str | None,
        password: str | None,
        starttls: bool,
        use_tls: bool,
        tz: str,
        timeout: float,
    ) -> None:
        recipients = config.get("to", [])
        self._to = [str(r) for r in recipients] if isinstance(recipients, list) else []
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._use_tls = use_tls
        self._tz = tz
        self._timeout = timeout

    def build(self, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["Subject"] = title(message)
        mail["From"] = self._sender
        mail["To"] = ", ".join(self._to)
        mail["Date"] = formatdate(localtime=False)
        digest = hashlib.sha256(message.key.encode()).hexdigest()[:32]
        domain = self._sender.rsplit("@", 1)[-1] if "@" in self._sender else "fleet.local"
        mail["Message-ID"] = f"<{digest}@{domain}>"
        mail["X-Idempotency-Key"] = message.key
        mail.set_content(plain_text(message, tz=self._tz))
        if message.attachment is not None:
            filename, data = message.attachment
            mail.add_attachment(
                data,
                maintype="application",
                subtype="vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                filename=filename,
            )
        return mail

    async def send(self, message: Message) -> None:
        if not self._host:
            raise DeliveryError("FLEET_SMTP_HOST is not set", retryable=False)
        if not self._to:
            raise DeliveryError("channel has no recipients", retryable=False)
        try:
            await aiosmtplib.send(
                self.build(message),
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                start_tls=self._starttls,
                use_tls=self._use_tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPException as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from exc
        except OSError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from exc
