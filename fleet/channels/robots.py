"""WeCom (企业微信) and DingTalk (钉钉) group robots.

Both take ``{"msgtype": "markdown", ...}`` JSON at the robot's webhook URL and answer HTTP 200
with ``{"errcode": 0, "errmsg": "ok"}``; any other ``errcode`` (for example WeCom 45009 or
DingTalk 130101, "sending too fast": both robots accept about 20 messages a minute) means the
message was not posted, so it is retried like an HTTP failure.

- WeCom: ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=...`` with
  ``{"msgtype": "markdown", "markdown": {"content": ...}}``; content at most 4096 bytes.
- DingTalk: ``POST https://oapi.dingtalk.com/robot/send?access_token=...`` with
  ``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}}``. With the "加签"
  security setting the URL also carries ``timestamp`` (ms) and ``sign`` =
  urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))); DingTalk refuses
  a timestamp more than an hour off, so the signature is computed per attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote_plus

import httpx

from fleet.channels import DeliveryError, Message
from fleet.channels.render import markdown_text, title

WECOM_MAX_BYTES = 4096
DINGTALK_MAX_BYTES = 20000


def _truncate(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode(errors="ignore") + "…"


def wecom_body(message: Message, *, tz: str) -> dict[str, Any]:
    return {
        "msgtype": "markdown",
        "markdown": {"content": _truncate(markdown_text(message, tz=tz), WECOM_MAX_BYTES)},
    }


def dingtalk_body(message: Message, *, tz: str) -> dict[str, Any]:
    return {
        "msgtype": "markdown",
        "markdown": {
            "title": title(message),
            "text": _truncate(markdown_text(message, tz=tz), DINGTALK_MAX_BYTES),
        },
    }


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """The ``sign`` query value for ``timestamp_ms`` (already URL-encoded)."""
    digest = hmac.new(
        secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256
    ).digest()
    return quote_plus(base64.b64encode(digest))


def dingtalk_url(url: str, secret: str | None, timestamp_ms: int) -> str:
    if not secret:
        return url
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


async def _post_robot(
    http: httpx.AsyncClient, url: str, body: dict[str, Any], timeout: float
) -> None:
    try:
        response = await http.post(
            url,
            content=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}"[:500]) from exc
    if not response.is_success:
        raise DeliveryError(f"HTTP {response.status_code}")
    try:
        answer = response.json()
        code = int(answer.get("errcode", -1))
    except (ValueError, AttributeError, TypeError) as exc:
        raise DeliveryError("robot answered without an errcode") from exc
    if code != 0:
        raise DeliveryError(f"errcode {code}: {str(answer.get('errmsg', ''))[:200]}")


class WeComSender:
    def __init__(
        self, http: httpx.AsyncClient, config: dict[str, Any], *, tz: str, timeout: float
    ) -> None:
        self._http = http
        self._url = str(config.get("url", ""))
        self._tz = tz
        self._timeout = timeout

    async def send(self, message: Message) -> None:
        if not self._url:
            raise DeliveryError("channel has no url", retryable=False)
        await _post_robot(self._http, self._url, wecom_body(message, tz=self._tz), self._timeout)


class DingTalkSender:
    def __init__(
        self,
        http: httpx.AsyncClient,
        config: dict[str, Any],
        *,
        tz: str,
        timeout: float,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._http = http
        self._url = str(config.get("url", ""))
        secret = config.get("secret")
        self._secret = str(secret) if secret else None
        self._tz = tz
        self._timeout = timeout
        self._clock_ms = clock_ms

    async def send(self, message: Message) -> None:
        if not self._url:
            raise DeliveryError("channel has no url", retryable=False)
        url = dingtalk_url(self._url, self._secret, self._clock_ms())
        await _post_robot(self._http, url, dingtalk_body(message, tz=self._tz), self._timeout)
