"""Score rule alerts (``alerts.jsonl`` of ``edge-agent replay``) against a scenario's truth.

The rules (``docs/scenarios.md``):

* ``suspected_group_rental`` is scored per flat: a flat is predicted when it has any such alert;
  precision = predicted group-rental flats / predicted flats, recall = predicted group-rental
  flats / group-rental flats.
* every other kind is scored per episode: an alert matches a truth episode of the same kind when
  the subject matches (``sensor_id`` for ``ebike_charging``, ``unit_id`` for
  ``ebike_charging_suspected`` and ``overload``, the device id for ``data_silence``) and the
  intervals ``[raised_at, cleared_at or scenario end]`` and ``[start, end or scenario end]``
  overlap. Each alert and each truth episode is matched at most once, greedily by time: alerts in
  order of ``raised_at``, each taking the earliest-starting unmatched overlapping episode.
  precision = matched / alerts, recall = matched / truth episodes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

GROUP_RENTAL = "suspected_group_rental"
KINDS = (GROUP_RENTAL, "ebike_charging", "ebike_charging_suspected", "overload", "data_silence")
SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "ebike_charging": ("sensor_id",),
    "ebike_charging_suspected": ("unit_id",),
    "overload": ("unit_id",),
    "data_silence": ("meter_id", "reader_id", "sensor_id"),
}


@dataclass(frozen=True, slots=True)
class KindScore:
    kind: str
    alerts: int
    """Alerts (for group rental: distinct predicted flats)."""
    truth: int
    matched: int

    @property
    def precision(self) -> float | None:
        return self.matched / self.alerts if self.alerts else None

    @property
    def recall(self) -> float | None:
        return self.matched / self.truth if self.truth else None

    def __add__(self, other: KindScore) -> KindScore:
        return KindScore(
            self.kind,
            self.alerts + other.alerts,
            self.truth + other.truth,
            self.matched + other.matched,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "alerts": self.alerts,
            "truth": self.truth,
            "matched": self.matched,
            "precision": self.precision,
            "recall": self.recall,
        }


def subject_of(kind: str, record: Mapping[str, Any]) -> str | None:
    """The id an alert or truth episode of ``kind`` is matched on (None if it has none)."""
    for name in SUBJECT_FIELDS.get(kind, ("unit_id",)):
        value = record.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _t(text: str | None, default: datetime) -> datetime:
    return default if text is None else datetime.fromisoformat(text)


def match_episodes(
    alerts: Sequence[tuple[datetime, datetime]], truth: Sequence[tuple[datetime, datetime]]
) -> list[tuple[int, int]]:
    """Greedy matching of one subject's alerts to its truth episodes; returns index pairs."""
    order_a = sorted(range(len(alerts)), key=lambda i: (alerts[i][0], alerts[i][1], i))
    order_t = sorted(range(len(truth)), key=lambda j: (truth[j][0], truth[j][1], j))
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for i in order_a:
        a0, a1 = alerts[i]
        for j in order_t:
            if j in used:
                continue
            t0, t1 = truth[j]
            if a0 <= t1 and t0 <= a1:
                used.add(j)
                pairs.append((i, j))
                break
    return pairs


def score(alerts: Iterable[Mapping[str, Any]], truth: Mapping[str, Any]) -> dict[str, KindScore]:
    """Per-kind scores of ``alerts`` (alerts.jsonl records) against ``truth`` (truth.json)."""
    end = datetime.fromisoformat(truth["end"])
    alert_list = list(alerts)
    out: dict[str, KindScore] = {}

    predicted = {a.get("unit_id") for a in alert_list if a.get("kind") == GROUP_RENTAL}
    predicted.discard(None)
    actual = set(truth.get("group_rental_units", []))
    out[GROUP_RENTAL] = KindScore(
        GROUP_RENTAL, len(predicted), len(actual), len(predicted & actual)
    )

    by_alert: dict[str, dict[str | None, list[tuple[datetime, datetime]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    by_truth: dict[str, dict[str | None, list[tuple[datetime, datetime]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for a in alert_list:
        kind = str(a.get("kind"))
        if kind == GROUP_RENTAL:
            continue
        raised = datetime.fromisoformat(a["raised_at"])
        by_alert[kind][subject_of(kind, a)].append((raised, _t(a.get("cleared_at"), end)))
    for e in truth.get("episodes", []):
        kind = str(e["kind"])
        start = datetime.fromisoformat(e["start"])
        by_truth[kind][subject_of(kind, e)].append((start, _t(e.get("end"), end)))
    kinds = [k for k in KINDS if k != GROUP_RENTAL]
    kinds += sorted((set(by_alert) | set(by_truth)) - set(kinds))
    for kind in kinds:
        subjects_a = by_alert.get(kind, {})
        subjects_t = by_truth.get(kind, {})
        n_alerts = sum(len(v) for v in subjects_a.values())
        n_truth = sum(len(v) for v in subjects_t.values())
        matched = 0
        for subject, items in subjects_a.items():
            if subject is not None and subject in subjects_t:
                matched += len(match_episodes(items, subjects_t[subject]))
        out[kind] = KindScore(kind, n_alerts, n_truth, matched)
    return out


def pooled(per_seed: Sequence[Mapping[str, KindScore]]) -> dict[str, KindScore]:
    """Sums of counts over seeds (precision and recall recomputed from the sums)."""
    out: dict[str, KindScore] = {}
    for scores in per_seed:
        for kind, s in scores.items():
            out[kind] = out[kind] + s if kind in out else s
    return out


SUSPECTED = "ebike_charging_suspected"
PFC_MIN = 0.9
"""A charger whose power factor is at least this has power-factor correction."""
BREAKDOWN_GROUPS = (
    "all",
    "charger with PFC",
    "charger without PFC",
    "power factor not labelled",
    "unplugged early",
    "overlaps another session of the flat",
    "alone in the flat",
    "under an alert of the flat",
    "no alert of the flat over it",
)


def suspected_breakdown(
    alerts: Iterable[Mapping[str, Any]], truth: Mapping[str, Any]
) -> dict[str, tuple[int, int]]:
    """``ebike_charging_suspected`` recall by kind of session: group -> (found, labelled).

    A session is found when the episode matching (:func:`match_episodes`, as :func:`score`)
    pairs it with an alert. The groups overlap (a session is in one power-factor group, in
    one of "overlaps another session" and "alone", and in one of "under an alert of the flat"
    (an alert of its flat overlaps it, matched to it or to another of its sessions) and "no
    alert of the flat over it"), so they are a map of where the misses are, not a partition."""
    end = datetime.fromisoformat(truth["end"])
    sessions: dict[str | None, list[Mapping[str, Any]]] = defaultdict(list)
    for e in truth.get("episodes", []):
        if e.get("kind") == SUSPECTED:
            sessions[subject_of(SUSPECTED, e)].append(e)
    raised: dict[str | None, list[tuple[datetime, datetime]]] = defaultdict(list)
    for a in alerts:
        if a.get("kind") == SUSPECTED:
            raised[subject_of(SUSPECTED, a)].append(
                (datetime.fromisoformat(a["raised_at"]), _t(a.get("cleared_at"), end))
            )
    counts = {group: [0, 0] for group in BREAKDOWN_GROUPS}
    for subject, episodes in sessions.items():
        spans = [(datetime.fromisoformat(e["start"]), _t(e.get("end"), end)) for e in episodes]
        found = {j for _, j in match_episodes(raised.get(subject, []), spans)}
        for j, e in enumerate(episodes):
            a0, a1 = spans[j]
            pf = e.get("power_factor")
            groups = ["all"]
            if pf is None:
                groups.append("power factor not labelled")
            else:
                groups.append("charger with PFC" if pf >= PFC_MIN else "charger without PFC")
            if e.get("unplugged_early"):
                groups.append("unplugged early")
            alone = not any(k != j and b0 < a1 and a0 < b1 for k, (b0, b1) in enumerate(spans))
            groups.append("alone in the flat" if alone else "overlaps another session of the flat")
            # A session missed under an alert of its flat lost it to another of its sessions:
            # one alert where there were several batteries.
            under = any(r0 < a1 and a0 < r1 for r0, r1 in raised.get(subject, []))
            groups.append("under an alert of the flat" if under else "no alert of the flat over it")
            for group in groups:
                counts[group][1] += 1
                counts[group][0] += j in found
    return {group: (n[0], n[1]) for group, n in counts.items() if n[1]}


def breakdown_table(rows: Mapping[str, tuple[int, int]]) -> str:
    lines = ["| sessions | found | labelled | recall |", "|---|---:|---:|---:|"]
    for group, (found, total) in rows.items():
        lines.append(f"| {group} | {found} | {total} | {_fmt(found / total if total else None)} |")
    return "\n".join(lines)


def load_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown_table(scores: Mapping[str, KindScore]) -> str:
    lines = [
        "| kind | alerts | truth | matched | precision | recall |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, s in scores.items():
        lines.append(
            f"| {kind} | {s.alerts} | {s.truth} | {s.matched} | "
            f"{_fmt(s.precision)} | {_fmt(s.recall)} |"
        )
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    """``"101-105"``, ``"1,3,7-9"`` -> the seeds, in order, without repeats."""
    seeds: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep and lo:
            a, b = int(lo), int(hi)
            if b < a:
                raise ValueError(f"empty seed range {part!r}")
            rng: Iterable[int] = range(a, b + 1)
        else:
            rng = [int(part)]
        for s in rng:
            if s not in seeds:
                seeds.append(s)
    if not seeds:
        raise ValueError("no seeds given")
    return seeds
