"""Deploy windows: when an environment's deploys may migrate it, written the way people
say it (`Sat 02:00-04:00 Europe/Berlin`, `Mon-Fri 22:00-02:00 UTC`, `daily 03:00-03:30
UTC`). A window that ends at or before its start closes the next day."""

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_WINDOW = re.compile(rf"^\s*(\S+)\s+{_TIME}\s*-\s*{_TIME}\s+(\S+)\s*$")
_AT = re.compile(rf"^\s*(\S+)\s+{_TIME}\s+(\S+)\s*$")


class InvalidWindow(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 is Monday
    start: time
    end: time
    timezone: str

    @property
    def spec(self) -> str:
        """The canonical text: what is stored and shown."""
        return f"{_days_text(self.days)} {_clock(self.start)}-{_clock(self.end)} {self.timezone}"

    def openings(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """Its openings (start, end; aware) from the day before `around` to a week after."""
        zone = ZoneInfo(self.timezone)
        today = around.astimezone(zone).date()
        found = []
        for offset in range(-1, 8):
            day = today + timedelta(days=offset)
            if day.weekday() not in self.days:
                continue
            opens = datetime.combine(day, self.start, zone)
            closes_on = day if self.end > self.start else day + timedelta(days=1)
            found.append((opens, datetime.combine(closes_on, self.end, zone)))
        return found


def _clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


def _days_text(days: frozenset[int]) -> str:
    if len(days) == 7:
        return "daily"
    return ",".join(DAYS[d].capitalize() for d in sorted(days))


def _day(name: str, spec: str) -> int:
    try:
        return DAYS.index(name[:3].lower())
    except ValueError:
        raise InvalidWindow(f"{spec!r}: {name!r} is not a day (Mon, Tue, ... Sun)") from None


def _days(text: str, spec: str) -> frozenset[int]:
    if text.lower() in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        a = _day(first, spec)
        b = _day(last, spec) if last else a
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _time(hours: str, minutes: str, seconds: str | None, spec: str) -> time:
    h, m, s = int(hours), int(minutes), int(seconds or 0)
    if (h, m, s) == (24, 0, 0):
        return time(0)
    if h > 23 or m > 59 or s > 59:
        raise InvalidWindow(f"{spec!r}: {hours}:{minutes} is not a time of day")
    return time(h, m, s)


def parse(spec: str) -> Window:
    """`<days> <HH:MM[:SS]>-<HH:MM[:SS]> <IANA time zone>`; days are `daily`, a day
    (`Sat`), a range (`Mon-Fri`) or a list (`Sat,Sun`)."""
    found = _WINDOW.match(spec)
    if found is None:
        raise InvalidWindow(f"{spec!r} is not `<days> HH:MM-HH:MM <time zone>`")
    days, h1, m1, s1, h2, m2, s2, zone = found.groups()
    _zone(zone, spec)
    start, end = _time(h1, m1, s1, spec), _time(h2, m2, s2, spec)
    if start == end:
        raise InvalidWindow(f"{spec!r}: the window is empty")
    return Window(_days(days, spec), start, end, zone)


def _zone(zone: str, spec: str) -> None:
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidWindow(f"{spec!r}: {zone!r} is not an IANA time zone") from None


def parse_at(spec: str) -> Window:
    """A time that recurs (`daily 03:00 Europe/Berlin`, `Mon-Fri 22:30 UTC`): a window of
    one second, for its openings."""
    found = _AT.match(spec)
    if found is None:
        raise InvalidWindow(f"{spec!r} is not `<days> HH:MM <time zone>`")
    days, hours, minutes, seconds, zone = found.groups()
    _zone(zone, spec)
    start = _time(hours, minutes, seconds, spec)
    end = (datetime.combine(datetime.min, start) + timedelta(seconds=1)).time()
    return Window(_days(days, spec), start, end, zone)


def next_at(spec: str, after: datetime) -> datetime:
    """The first time `spec` (see parse_at) comes after `after`."""
    return min(opens for opens, _ in parse_at(spec).openings(after) if opens > after)


def opening(windows: list[Window], at: datetime) -> tuple[datetime, datetime] | None:
    """The opening that `at` falls in, or else the next one (start, end), or None when
    there are no windows. `at` is aware."""
    candidates = [
        (opens, closes)
        for window in windows
        for opens, closes in window.openings(at)
        if closes > at
    ]
    return min(candidates, default=None)


def not_before(specs: list[str] | None, at: datetime) -> datetime | None:
    """When a deploy asked for at `at` may start: None when now (no windows, or one is
    open), else when the next window opens."""
    found = opening([parse(s) for s in specs or []], at)
    if found is None or found[0] <= at:
        return None
    return found[0]
