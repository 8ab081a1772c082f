"""Scenario time: integer seconds since local midnight of the start day (UTC+08:00).

Every timestamp the generator writes is a whole second, formatted from two cached tables (the
date of each day, the time of each second of a day), which is much faster than
``datetime.isoformat`` for two million lines.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

MINUTE = 60
HOUR = 3_600
DAY = 86_400

CST = timezone(timedelta(hours=8))
"""China Standard Time; Asia/Shanghai has had no daylight saving since 1991."""


class Clock:
    """Converts scenario seconds to ISO 8601 text with a ``+08:00`` offset."""

    def __init__(self, start: date, days: int) -> None:
        self.start = datetime.combine(start, time(0), CST)
        self.days = days
        self.end_s = days * DAY
        self._prefix = [
            (self.start + timedelta(days=d)).strftime("%Y-%m-%dT") for d in range(days + 3)
        ]
        self.tod = [
            f"{h:02d}:{m:02d}:{s:02d}+08:00"
            for h in range(24)
            for m in range(60)
            for s in range(60)
        ]

    def iso(self, t: int) -> str:
        d, s = divmod(t, DAY)
        return self._prefix[d] + self.tod[s]

    def date_prefix(self, day: int) -> str:
        """``YYYY-MM-DDT`` of a day (prepend to ``tod[second of day]``)."""
        return self._prefix[day]

    def iso_or_none(self, t: int | None) -> str | None:
        return None if t is None else self.iso(t)

    def weekday(self, day: int) -> int:
        """0 = Monday ... 6 = Sunday."""
        return (self.start.weekday() + day) % 7

    def is_weekend(self, day: int) -> bool:
        return self.weekday(day) >= 5
