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
    "fleet_by_building": {
        "zh": "各楼栋网关（离线多的在前）",
        "en": "Gateways by building (most offline first)",
    },
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
    # web console (fleet/web.py, fleet/templates/)
    "skip_to_content": {"zh": "跳到正文", "en": "Skip to content"},
    "navigation": {"zh": "主导航", "en": "Main navigation"},
    "home": {"zh": "首页", "en": "Home"},
    "inbox": {"zh": "告警处置", "en": "Alert inbox"},
    "fleet_health": {"zh": "设备运行状况", "en": "Fleet health"},
    "forbidden": {"zh": "无权查看此页面", "en": "You may not see this page"},
    "pages": {"zh": "分页", "en": "Pages"},
    "prev_page": {"zh": "上一页", "en": "Previous"},
    "next_page": {"zh": "下一页", "en": "Next"},
    "page_of": {"zh": "第 %d 页，共 %d 页", "en": "Page %d of %d"},
    "all": {"zh": "全部", "en": "All"},
    "case_status": {"zh": "处置状态", "en": "Status"},
    "filter": {"zh": "筛选", "en": "Filter"},
    "live_on": {"zh": "实时接收新告警中", "en": "New alerts appear live"},
    "live_reconnecting": {"zh": "实时连接中断，正在重连", "en": "Live updates reconnecting"},
    "new_alert_arrived": {"zh": "新告警：", "en": "New alert: "},
    "compound": {"zh": "小区", "en": "Compound"},
    "outbox_backlog": {"zh": "待上传积压", "en": "Outbox backlog"},
    "unmapped": {"zh": "未安装到位", "en": "not mapped"},
    "chart_power": {"zh": "用电功率曲线", "en": "Power curve"},
    "chart_power_desc": {
        "zh": "告警前后的房屋用电功率；阴影为恒流充电段和涓流段",
        "en": "The flat's power around the alert; shaded: charging plateau and taper",
    },
    "chart_swipes": {"zh": "每日刷卡次数与不同卡数", "en": "Swipes and distinct cards per day"},
    "distinct_cards": {"zh": "不同卡数", "en": "distinct cards"},
    "swipes": {"zh": "刷卡次数", "en": "swipes"},
    "limit": {"zh": "阈值", "en": "limit"},
    "plateau": {"zh": "恒流", "en": "plateau"},
    "taper": {"zh": "涓流", "en": "taper"},
    "episode": {"zh": "告警时段", "en": "episode"},
    "no_readings": {"zh": "暂无该时段的电表数据", "en": "No meter readings for this period"},
    "timeline": {"zh": "处置记录", "en": "Timeline"},
    "actions": {"zh": "处置", "en": "Actions"},
    "assignee": {"zh": "核查人", "en": "Assignee"},
    "due_at": {"zh": "核查期限", "en": "Due"},
    "deadline_at": {"zh": "整改期限", "en": "Deadline"},
    "comment": {"zh": "说明", "en": "Comment"},
    "comment_optional": {"zh": "说明（可选）", "en": "Comment (optional)"},
    "do_acknowledge": {"zh": "确认收到", "en": "Acknowledge"},
    "do_dispatch": {"zh": "派员线下核查", "en": "Dispatch"},
    "do_confirm": {"zh": "核查属实", "en": "Confirm"},
    "do_false_alarm": {"zh": "核查为误报", "en": "False alarm"},
    "do_rectify": {"zh": "责令限期整改", "en": "Order rectification"},
    "do_recheck": {"zh": "复查未通过", "en": "Re-check failed"},
    "do_close": {"zh": "办结", "en": "Close"},
    "wrong_state": {
        "zh": "该告警状态已变化，请刷新后重试",
        "en": "The alert changed meanwhile; reload and try again",
    },
    "bad_input": {"zh": "填写内容不完整或不正确", "en": "Missing or invalid input"},
    "forbidden_alert": {"zh": "无权查看该告警", "en": "You may not see this alert"},
    "install": {"zh": "安装网关", "en": "Install"},
    "install_new_gateway": {"zh": "为单元新建网关", "en": "New gateway for an entrance"},
    "entrance": {"zh": "安装位置（小区 楼栋 单元）", "en": "Entrance (compound, building)"},
    "create_gateway": {"zh": "新建网关并生成注册码", "en": "Create gateway and code"},
    "install_hint": {
        "zh": "生成后在网关上扫码或输入注册码完成注册，本页会显示网关上线。",
        "en": "Then scan the code or type it on the gateway; this page shows it come online.",
    },
    "no_entrances": {"zh": "您负责的小区还没有登记单元", "en": "No entrances in your compounds"},
    "enrollment_code": {"zh": "网关注册码", "en": "Enrollment code"},
    "qr_alt": {"zh": "注册二维码，注册码", "en": "Enrollment QR code, code"},
    "code_expires": {"zh": "有效期至", "en": "Valid until"},
    "code_once": {"zh": "仅可使用一次", "en": "usable once"},
    "enroll_command": {"zh": "或在网关上执行：", "en": "Or run on the gateway:"},
    "waiting_online": {"zh": "等待网关上线…", "en": "waiting for the gateway…"},
    "install_another": {"zh": "再装一台", "en": "Install another"},
    "buildings": {"zh": "楼栋", "en": "Buildings"},
    "building_view": {"zh": "楼栋房屋分布", "en": "Flats by floor"},
    "floor": {"zh": "楼层", "en": "Floor"},
    "floor_n": {"zh": "{n}层", "en": "Floor {n}"},
    "floor_unknown": {"zh": "楼层未登记", "en": "Floor not recorded"},
    "risk_level": {"zh": "风险等级", "en": "Risk level"},
    "risk_high": {"zh": "高风险", "en": "High risk"},
    "risk_medium": {"zh": "中风险", "en": "Medium risk"},
    "risk_low": {"zh": "低风险", "en": "Low risk"},
    "risk_reasons": {"zh": "判定依据", "en": "Why"},
    "legend": {"zh": "图例", "en": "Legend"},
    "open_alerts": {"zh": "未办结告警", "en": "Open alerts"},
    "no_flats": {"zh": "该楼栋还没有登记房屋", "en": "No flats recorded in this building"},
    "flat_file": {"zh": "一户一档", "en": "Flat file"},
    "area_m2": {"zh": "面积（平方米）", "en": "Area (m²)"},
    "rooms": {"zh": "房间数", "en": "Rooms"},
    "registered_occupants": {"zh": "登记居住人数", "en": "Registered occupants"},
    "rated_current_a": {"zh": "额定电流（安）", "en": "Rated current (A)"},
    "rented": {"zh": "出租房", "en": "Rented"},
    "yes": {"zh": "是", "en": "yes"},
    "no": {"zh": "否", "en": "no"},
    "flat_alerts": {"zh": "告警记录", "en": "Alerts"},
    "page_not_found": {"zh": "未找到该页面", "en": "No such page"},
    # gateway page and installer's device check (fleet/web_fleet.py)
    "devices_trouble": {"zh": "设备故障或无应答", "en": "Devices faulty or silent"},
    "config_version": {"zh": "配置版本（运行/下发）", "en": "Config (applied / desired)"},
    "config_desired": {"zh": "下发配置版本", "en": "Desired config version"},
    "config_applied": {"zh": "运行配置版本", "en": "Applied config version"},
    "config_in_step": {"zh": "已生效", "en": "applied"},
    "config_pending": {"zh": "等待网关应用", "en": "waiting for the gateway"},
    "config_not_published": {"zh": "尚未推送", "en": "not yet sent"},
    "gateway_page": {"zh": "网关详情", "en": "Gateway"},
    "open_gateway": {"zh": "查看网关详情", "en": "Open the gateway"},
    "location": {"zh": "位置", "en": "Location"},
    "last_heartbeat": {"zh": "最近心跳", "en": "Last heartbeat"},
    "session_no": {"zh": "会话 / 丢失消息", "en": "Session / messages missing"},
    "outbox_oldest": {"zh": "最早积压（秒）", "en": "Oldest queued (s)"},
    "load_1m": {"zh": "负载（1分钟）", "en": "Load (1 min)"},
    "mem_available": {"zh": "可用内存（MB）", "en": "Memory available (MB)"},
    "disk_free": {"zh": "剩余存储（MB）", "en": "Disk free (MB)"},
    "cpu_temp": {"zh": "CPU 温度（℃）", "en": "CPU temperature (°C)"},
    "history_24h": {"zh": "最近24小时心跳记录", "en": "Heartbeats, last 24 hours"},
    "chart_outbox": {"zh": "待上传积压（条）", "en": "Outbox backlog (messages)"},
    "chart_outbox_desc": {
        "zh": "每次心跳报告的待上传消息数；断线处为网关无心跳",
        "en": "Messages waiting to be sent, per heartbeat; gaps: no heartbeat",
    },
    "chart_load": {"zh": "系统负载（1分钟平均）", "en": "System load (1-minute average)"},
    "chart_memory": {"zh": "可用内存（MB）", "en": "Memory available (MB)"},
    "no_heartbeats": {
        "zh": "最近24小时没有心跳记录",
        "en": "No heartbeats in the last 24 hours",
    },
    "devices": {"zh": "设备", "en": "Devices"},
    "device_kind": {"zh": "类型", "en": "Kind"},
    "meter_address": {"zh": "表地址", "en": "Address"},
    "device_state": {"zh": "应答", "en": "Answer"},
    "device_last_seen": {"zh": "最近应答", "en": "Last answer"},
    "fault": {"zh": "故障", "en": "Fault"},
    "mapped_flat": {"zh": "对应房屋", "en": "Flat"},
    "change_flat": {"zh": "改为房屋", "en": "Map to flat"},
    "no_flat": {"zh": "（不对应房屋）", "en": "(no flat)"},
    "save_mapping": {"zh": "保存并下发", "en": "Save and push"},
    "not_in_register": {"zh": "未登记", "en": "not in register"},
    "not_yet_mapped": {"zh": "待绑定到本网关", "en": "will be mapped to this gateway"},
    "mapping_saved": {
        "zh": "已保存 {device} 的房屋对应关系，新配置正在下发",
        "en": "Mapping of {device} saved; the new config is being pushed",
    },
    "mapping_forbidden": {"zh": "无权修改设备对应关系", "en": "You may not change mappings"},
    "mapping_invalid": {
        "zh": "该设备或房屋不属于本网关，未保存",
        "en": "That device or flat does not belong here; nothing saved",
    },
    "mapping_conflict": {
        "zh": "与已有记录冲突，未保存",
        "en": "Conflicts with an existing record; nothing saved",
    },
    "check_devices": {"zh": "设备应答检查", "en": "Device check"},
    "check_devices_hint": {
        "zh": "网关上线后，每台设备的应答会自动刷新。",
        "en": "Once the gateway is online, each device's answer updates by itself.",
    },
    "no_devices": {"zh": "该单元还没有登记设备", "en": "No devices registered here"},
    # officer pages (fleet/web_officer.py): inbox filters, comments and photos, reports
    "recurring": {"zh": "回潮", "en": "Recurring"},
    "recurring_only": {"zh": "仅回潮", "en": "Recurring only"},
    "not_recurring": {"zh": "非回潮", "en": "Not recurring"},
    "add_comment": {"zh": "补充说明", "en": "Add a comment"},
    "comment_text": {"zh": "说明内容", "en": "Comment"},
    "submit_comment": {"zh": "提交说明", "en": "Add comment"},
    "add_photos": {"zh": "上传现场照片", "en": "Upload site photos"},
    "photo_files": {
        "zh": "照片（JPEG 或 PNG，每张不超过 {mb} MB）",
        "en": "Photos (JPEG or PNG, up to {mb} MB each)",
    },
    "photo_note": {"zh": "照片说明（可选）", "en": "Note (optional)"},
    "upload_photos": {"zh": "上传照片", "en": "Upload photos"},
    "photo_alt": {"zh": "现场照片", "en": "Site photo"},
    "uploaded_by": {"zh": "上传人", "en": "uploaded by"},
    "photo_type": {
        "zh": "照片只能是 JPEG 或 PNG 格式，请重新选择",
        "en": "Photos must be JPEG or PNG images; choose another file",
    },
    "photo_size": {
        "zh": "照片过大：每张不超过 {mb} MB",
        "en": "Photo too large: at most {mb} MB each",
    },
    "photo_missing": {"zh": "请选择要上传的照片", "en": "Choose a photo to upload"},
    "comment_empty": {"zh": "请填写说明内容", "en": "Write a comment first"},
    "reports": {"zh": "统计报表", "en": "Reports"},
    "report_period": {"zh": "统计期间", "en": "Period"},
    "report_month": {"zh": "按月份", "en": "Month"},
    "custom_dates": {"zh": "按下方起止日期", "en": "Dates below"},
    "from_date": {"zh": "开始日期", "en": "From"},
    "to_date": {"zh": "结束日期（含当天）", "en": "To (inclusive)"},
    "report_area": {"zh": "统计范围", "en": "Area"},
    "area_all": {"zh": "本人负责的全部小区", "en": "All my compounds"},
    "street_office": {"zh": "街道", "en": "Street office"},
    "preview": {"zh": "预览", "en": "Preview"},
    "report_preview": {"zh": "报表预览", "en": "Preview"},
    "download_xlsx": {"zh": "下载 XLSX（附件3-5）", "en": "Download XLSX (tables 3-5)"},
    "download_csv": {"zh": "下载 CSV", "en": "Download CSV"},
    "report_table_n": {"zh": "附件{n}", "en": "Table {n}"},
    "report_blank_note": {
        "zh": "本系统没有数据的栏目（如流动人口、处罚情况）在预览中不显示，"
        "下载的表格中保留为空，由平安办填写。",
        "en": "Columns this system has no data for (floating population, penalties...) are "
        "not shown here; the downloads keep them empty for the office to fill in.",
    },
    "report_week_note": {
        "zh": "“每周数”为统计期间最后 7 天，“累计数”为整个统计期间。",
        "en": "每周数: the last 7 days of the period; 累计数: the whole period.",
    },
    "bad_period": {
        "zh": "日期不正确，请按 年-月-日 填写",
        "en": "Invalid date; use year-month-day",
    },
    "period_order": {
        "zh": "结束日期不能早于开始日期",
        "en": "The end date is before the start date",
    },
    "no_compounds_in_area": {"zh": "所选范围内没有小区", "en": "No compounds in this area"},
}


def kind_title(kind: AlertKind, lang: Lang) -> str:
    return KIND_TITLES[kind][lang]


def pick_lang(value: str | None) -> Lang:
    """``?lang=en`` selects English; anything else (or nothing) is Chinese."""
    return "en" if value is not None and value.lower().startswith("en") else "zh"


# -- alert lifecycle and forwarding (fleet/lifecycle.py, fleet/channels/) --------------------

STATUS_LABELS: dict[str, dict[Lang, str]] = {
    "new": {"zh": "新告警", "en": "new"},
    "acknowledged": {"zh": "已确认收到", "en": "acknowledged"},
    "dispatched": {"zh": "线下核查中", "en": "dispatched"},
    "confirmed": {"zh": "核查属实", "en": "confirmed"},
    "false_alarm": {"zh": "误报", "en": "false alarm"},
    "rectifying": {"zh": "限期整改中", "en": "rectifying"},
    "closed": {"zh": "已办结", "en": "closed"},
}

EVENT_LABELS: dict[str, dict[Lang, str]] = {
    "raised": {"zh": "新告警", "en": "New alert"},
    "reraised": {"zh": "隐患再次出现", "en": "Hazard again"},
    "severity": {"zh": "告警等级升高", "en": "Severity raised"},
    "cleared": {"zh": "设备侧已恢复", "en": "Cleared at the device"},
    "escalated": {"zh": "高等级告警超时未处理，已升级", "en": "Escalated: not acknowledged"},
    "remind_dispatch": {"zh": "线下核查已逾期", "en": "Verification overdue"},
    "remind_deadline": {"zh": "整改期限已到，请复查", "en": "Rectification deadline passed"},
    "acknowledge": {"zh": "已确认收到", "en": "Acknowledged"},
    "dispatch": {"zh": "已派员线下核查", "en": "Dispatched for verification"},
    "confirm": {"zh": "核查属实", "en": "Confirmed"},
    "false_alarm": {"zh": "核查为误报", "en": "False alarm"},
    "rectify": {"zh": "已责令限期整改", "en": "Rectification ordered"},
    "recheck": {"zh": "复查未通过，延长整改", "en": "Re-check failed, deadline extended"},
    "close": {"zh": "已办结", "en": "Closed"},
    "comment": {"zh": "补充说明", "en": "Comment"},
    "report": {"zh": "群租房安全隐患统计报表", "en": "Hazard statistics report"},
}

EVIDENCE_LABELS: dict[str, dict[Lang, str]] = {
    "peak_power_w": {"zh": "峰值功率(W)", "en": "peak power (W)"},
    "duration_s": {"zh": "持续(分钟)", "en": "duration (min)"},
    "location": {"zh": "位置", "en": "location"},
    "estimated_occupants": {"zh": "估计居住人数", "en": "estimated occupants"},
    "registered_occupants": {"zh": "登记人数", "en": "registered occupants"},
    "rooms": {"zh": "房间数", "en": "rooms"},
    "persons_per_room": {"zh": "每间人数", "en": "persons per room"},
    "swipes_per_day": {"zh": "日均刷卡", "en": "swipes per day"},
    "signals": {"zh": "依据", "en": "signals"},
    "peak_current_a": {"zh": "峰值电流(A)", "en": "peak current (A)"},
    "rated_current_a": {"zh": "额定电流(A)", "en": "rated current (A)"},
    "minutes_over": {"zh": "超限(分钟)", "en": "minutes over"},
    "step_w": {"zh": "功率跃升(W)", "en": "power step (W)"},
    "plateau_minutes": {"zh": "恒流(分钟)", "en": "plateau (min)"},
    "taper_minutes": {"zh": "涓流(分钟)", "en": "taper (min)"},
    "device": {"zh": "设备", "en": "device"},
    "silent_hours": {"zh": "无数据(小时)", "en": "silent (h)"},
}

CASE_LABELS: dict[str, dict[Lang, str]] = {
    "flat": {"zh": "房屋", "en": "Flat"},
    "kind": {"zh": "类型", "en": "Kind"},
    "category": {"zh": "隐患类别", "en": "Category"},
    "severity": {"zh": "等级", "en": "Severity"},
    "time": {"zh": "时间", "en": "Time"},
    "evidence": {"zh": "证据", "en": "Evidence"},
    "status": {"zh": "处置状态", "en": "Status"},
    "assignee": {"zh": "核查人", "en": "Assignee"},
    "due": {"zh": "期限", "en": "Due"},
    "recurring": {"zh": "回潮(90天内曾办结)", "en": "Recurring (closed within 90 days)"},
    "comment": {"zh": "说明", "en": "Comment"},
    "link": {"zh": "查看详情", "en": "Open the alert"},
    "unknown_flat": {"zh": "未登记房屋", "en": "unregistered flat"},
}

# -- why a flat has its risk level (fleet/risk.py Reason codes); {kind} is the alert kind's
# title in Chinese and its code in English (the API's English text has always used the code).
RISK_REASONS: dict[str, dict[Lang, str]] = {
    "confirmed_open": {
        "zh": "隐患核查属实，尚未整改完毕：{kind}（{alert_id}）",
        "en": "confirmed hazard open: {kind} ({alert_id})",
    },
    "rectification_overdue": {
        "zh": "整改已逾期：{kind}（{alert_id}）",
        "en": "rectification overdue: {kind} ({alert_id})",
    },
    "recurring": {
        "zh": "隐患回潮（90天内办结后再次出现）：{kind}（{alert_id}）",
        "en": "recurring: {kind} ({alert_id})",
    },
    "confirmed_repeatedly": {
        "zh": "180天内核查属实 {count} 次",
        "en": "{count} confirmed hazards in 180 days",
    },
    "unverified": {
        "zh": "告警尚未核查：{kind}（{alert_id}）",
        "en": "unverified: {kind} ({alert_id})",
    },
    "closed_recently": {
        "zh": "180天内办结的属实隐患，观察期内：{kind}（{alert_id}）",
        "en": "closed in the last 180 days: {kind} ({alert_id})",
    },
    "sublandlord_high": {
        "zh": "同一二房东出租的房屋（编号 {flat}）为高风险",
        "en": "same sublandlord as high-risk flat {flat}",
    },
}

# -- devices behind a gateway (fleet/web_fleet.py; states as fleet.health.device_state) -------
DEVICE_STATE_LABELS: dict[str, dict[Lang, str]] = {
    "ok": {"zh": "正常", "en": "ok"},
    "fault": {"zh": "故障", "en": "fault"},
    "offline": {"zh": "无应答", "en": "silent"},
    "unknown": {"zh": "未知", "en": "unknown"},
}

DEVICE_KIND_LABELS: dict[str, dict[Lang, str]] = {
    "meter": {"zh": "电表", "en": "meter"},
    "card_reader": {"zh": "门禁读卡器", "en": "card reader"},
    "charging_sensor": {"zh": "充电传感器", "en": "charging sensor"},
}
