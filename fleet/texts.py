"""User-facing wording: alert titles and page labels, Chinese (zh-CN) first, English second.

Street-office staff read Chinese; English exists for developers and visitors. Kept as plain
tables so a missing translation is a KeyError in the tests, not a blank on a page.
"""

from __future__ import annotations

from typing import Literal

from contract.alerts import AlertKind

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")

KIND_TITLES: dict[AlertKind, dict[Lang, str]] = {
    AlertKind.SUSPECTED_GROUP_RENTAL: {"zh": "疑似群租", "en": "Suspected group rental"},
    AlertKind.EBIKE_CHARGING: {"zh": "电动自行车违规充电", "en": "E-bike charging indoors"},
    AlertKind.EBIKE_CHARGING_SUSPECTED: {
        "zh": "疑似电动自行车违规充电",
        "en": "Suspected e-bike charging indoors",
    },
    AlertKind.OVERLOAD: {"zh": "用电过载", "en": "Electrical overload"},
    AlertKind.DATA_SILENCE: {"zh": "设备数据中断", "en": "No data from device"},
}

SEVERITY_LABELS: dict[str, dict[Lang, str]] = {
    "low": {"zh": "低", "en": "low"},
    "medium": {"zh": "中", "en": "medium"},
    "high": {"zh": "高", "en": "high"},
}

STATE_LABELS: dict[str, dict[Lang, str]] = {
    "open": {"zh": "未解除", "en": "open"},
    "cleared": {"zh": "已解除", "en": "cleared"},
}

LABELS: dict[str, dict[Lang, str]] = {
    "app_title": {"zh": "群租与电动车充电隐患监测", "en": "Group rental and e-bike fire hazards"},
    "gateways": {"zh": "网关", "en": "Gateways"},
    "gateway": {"zh": "网关", "en": "Gateway"},
    "online": {"zh": "在线", "en": "online"},
    "offline": {"zh": "离线", "en": "offline"},
    "status": {"zh": "状态", "en": "Status"},
    "last_seen": {"zh": "最近通信", "en": "Last seen"},
    "agent_version": {"zh": "版本", "en": "Version"},
    "death_reason": {"zh": "离线原因", "en": "Offline reason"},
    "recent_alerts": {"zh": "最新告警", "en": "Recent alerts"},
    "alert": {"zh": "告警", "en": "Alert"},
    "kind": {"zh": "类型", "en": "Kind"},
    "category": {"zh": "隐患类别", "en": "Category"},
    "severity": {"zh": "等级", "en": "Severity"},
    "flat": {"zh": "房屋", "en": "Flat"},
    "building": {"zh": "楼栋", "en": "Building"},
    "device": {"zh": "设备", "en": "Device"},
    "raised_at": {"zh": "发生时间", "en": "Raised"},
    "cleared_at": {"zh": "解除时间", "en": "Cleared"},
    "state": {"zh": "状态", "en": "State"},
    "evidence": {"zh": "证据", "en": "Evidence"},
    "forwarding": {"zh": "推送", "en": "Forwarding"},
    "none": {"zh": "暂无", "en": "None"},
    "login": {"zh": "登录", "en": "Log in"},
    "logout": {"zh": "退出", "en": "Log out"},
    "username": {"zh": "用户名", "en": "Username"},
    "password": {"zh": "密码", "en": "Password"},
    "login_failed": {"zh": "用户名或密码错误", "en": "Wrong username or password"},
    "back": {"zh": "返回", "en": "Back"},
    "not_found": {"zh": "未找到该告警", "en": "No such alert"},
    "other_lang": {"zh": "English", "en": "中文"},
    "connection_lost": {"zh": "连接中断", "en": "connection lost"},
    "clean_stop": {"zh": "正常停止", "en": "stopped"},
    "silent": {"zh": "超时无消息", "en": "no messages"},
}


def kind_title(kind: AlertKind, lang: Lang) -> str:
    return KIND_TITLES[kind][lang]


def pick_lang(value: str | None) -> Lang:
    """``?lang=en`` selects English; anything else (or nothing) is Chinese."""
    return "en" if value is not None and value.lower().startswith("en") else "zh"
