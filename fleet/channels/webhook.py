"""The generic webhook: the notification as JSON, signed, with an idempotency key.

``X-Signature: sha256=<hex>`` is the HMAC-SHA256 of the exact body bytes under the channel's own
``secret`` (or ``FLEET_WEBHOOK_SECRET`` when the channel has none); ``Idempotency-Key`` is the
notification key, the same on every retry, so a receiver can drop repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

from fleet.channels import DeliveryError, Message


def signature(key: bytes, body: bytes) -> str:
    """The ``X-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def encode_body(payload: dict[str, Any]) -> bytes:
    # Chinese stays readable (ensure_ascii off); compact and key-sorted so equal payloads give
    # equal bytes and equal signatures.
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def webhook_document(message: Message) -> dict[str, Any]:
    document = dict(message.payload)
    document.pop("link_path", None)
    if message.link is not None:
        document["link"] = message.link
    return document


class WebhookSender:
    def __init__(
        self, http: httpx.AsyncClient, config: dict[str, Any], *, key: bytes, timeout: float
    ) -> None:
        self._http = http
        self._url = str(config.get("url", ""))
        secret = config.get("secret")
        self._key = str(secret).encode() if secret else key
        self._timeout = timeout

    async def send(self, message: Message) -> None:
        if not self._url:
            raise DeliveryError("channel has no url", retryable=False)
        body = encode_body(webhook_document(message))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Idempotency-Key": message.key,
            "X-Signature": signature(self._key, body),
        }
        try:
            response = await self._http.post(
                self._url, content=body, headers=headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from exc
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}")
