"""Human-readable text of a notification (Chinese), shared by the robots and email."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from fleet.channels import Message
from fleet.texts import (
    CASE_LABELS,
    EVENT_LABELS,
    EVIDENCE_LABELS,
    SEVERITY_LABELS,
    STATUS_LABELS,
    Lang,
)

EVIDENCE_ITEMS = 5


def _label(table: Mapping[str, Mapping[Lang, str]], key: str | None) -> str:
    if key is None:
        return ""
    return table.get(key, {}).get("zh", key)


def local_time(value: Any, tz: str) -> str:
    """An ISO timestamp from a payload as local wall time, ``2026-03-01 20:00``."""
    if not isinstance(value, str):
        return ""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")


def evidence_summary(evidence: Any) -> str:
    """The few figures an officer reads first, labelled in Chinese."""
    if not isinstance(evidence, dict):
        return ""
    parts = []
    for key, labels in EVIDENCE_LABELS.items():
        value = evidence.get(key)
        if value is None or value == "":
            continue
        if key == "duration_s" and isinstance(value, int | float):
            value = round(value / 60)
        parts.append(f"{labels['zh']} {value}")
        if len(parts) == EVIDENCE_ITEMS:
            break
    return "，".join(parts)


def title(message: Message) -> str:
    p = message.payload
    event = _label(EVENT_LABELS, message.event)
    if message.event == "report":
        return f"【{event}】{p.get('area', '')}"
    return f"【{event}】{p.get('title_zh', '')} {p.get('flat_label') or ''}".strip()


def lines(message: Message, *, tz: str) -> list[tuple[str, str]]:
    """(label, value) pairs of the message body, in reading order."""
    p = message.payload
    if message.event == "report":
        return [(str(k), str(v)) for k, v in p.get("summary", {}).items()]
    out = [
        (CASE_LABELS["flat"]["zh"], str(p.get("flat_label") or CASE_LABELS["unknown_flat"]["zh"])),
        (CASE_LABELS["kind"]["zh"], str(p.get("title_zh", ""))),
        (CASE_LABELS["category"]["zh"], str(p.get("category", ""))),
        (CASE_LABELS["severity"]["zh"], _label(SEVERITY_LABELS, p.get("severity"))),
        (CASE_LABELS["time"]["zh"], local_time(p.get("raised_at"), tz)),
    ]
    summary = evidence_summary(p.get("evidence"))
    if summary:
        out.append((CASE_LABELS["evidence"]["zh"], summary))
    out.append((CASE_LABELS["status"]["zh"], _label(STATUS_LABELS, p.get("status"))))
    if p.get("assignee"):
        out.append((CASE_LABELS["assignee"]["zh"], str(p["assignee"])))
    due = p.get("deadline_at") or p.get("due_at")
    if due and p.get("status") in ("dispatched", "rectifying"):
        out.append((CASE_LABELS["due"]["zh"], local_time(due, tz)))
    if p.get("recurring"):
        out.append((CASE_LABELS["recurring"]["zh"], "是"))
    if p.get("comment"):
        out.append((CASE_LABELS["comment"]["zh"], str(p["comment"])[:200]))
    return out


def _md_escape(text: str) -> str:
    return text.replace("\n", " ").replace("[", "［").replace("]", "］")


def markdown_text(message: Message, *, tz: str) -> str:
    heading = title(message)
    body = [f"### {_md_escape(heading)}"]
    body += [f"> **{k}**：{_md_escape(v)}" for k, v in lines(message, tz=tz)]
    if message.link:
        body.append(f"\n[{CASE_LABELS['link']['zh']}]({message.link})")
    return "\n".join(body)


def plain_text(message: Message, *, tz: str) -> str:
    body = [title(message), ""]
    body += [f"{k}：{v}" for k, v in lines(message, tz=tz)]
    if message.link:
        body += ["", f"{CASE_LABELS['link']['zh']}：{message.link}"]
    return "\n".join(body) + "\n"
