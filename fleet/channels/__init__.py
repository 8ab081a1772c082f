"""Forwarding channels: how one notification reaches one kind of receiver.

A channel turns a :class:`Message` (a notification frozen when it happened, plus its
idempotency key and the absolute link to the alert page) into a request: a signed JSON webhook,
a WeCom or DingTalk group-robot markdown message, or an email. Each sender raises
:class:`DeliveryError` when the receiver did not accept the message; the forwarder retries those
with backoff (a rejected configuration, ``retryable=False``, is marked failed at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit


class ChannelKind(StrEnum):
    WEBHOOK = "webhook"
    WECOM = "wecom"
    DINGTALK = "dingtalk"
    EMAIL = "email"


class DeliveryError(Exception):
    """The receiver did not take the message. ``retryable`` False: retrying cannot help."""

    def __init__(self, detail: str, *, retryable: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class Message:
    key: str  # the idempotency key receivers see
    event: str
    severity: str
    payload: dict[str, Any]
    link: str | None  # absolute URL of the alert page (None for reports)
    attachment: tuple[str, bytes] | None = None  # (filename, bytes), email only


class Sender(Protocol):
    async def send(self, message: Message) -> None: ...


def redact_url(url: str) -> str:
    """A URL fit for display: no query string, no credentials (robot URLs carry keys there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
