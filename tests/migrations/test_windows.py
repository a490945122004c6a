"""Deploy windows: parsed the way people write them, opened and closed in their time zone."""

from datetime import UTC, datetime

import pytest

from hatchery.migrations import service, windows
from hatchery.projects.models import Environment

WEDNESDAY_NOON = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_a_weekly_window_opens_on_its_day_in_its_time_zone() -> None:
    opens = windows.not_before(["Sat 02:00-04:00 Europe/Berlin"], WEDNESDAY_NOON)
    assert opens == datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # CET is UTC+1 in November


def test_inside_a_window_a_deploy_starts_at_once() -> None:
    assert windows.not_before(["daily 11:00-13:00 UTC"], WEDNESDAY_NOON) is None
    assert windows.not_before(None, WEDNESDAY_NOON) is None


def test_a_window_that_ends_before_it_starts_closes_the_next_day() -> None:
    assert windows.not_before(["Tue 22:00-13:30 UTC"], WEDNESDAY_NOON) is None
    later = windows.not_before(["Tue 22:00-11:30 UTC"], WEDNESDAY_NOON)
    assert later == datetime(2026, 12, 1, 22, 0, tzinfo=UTC)


def test_after_a_window_closes_the_next_one_is_waited_for() -> None:
    at = datetime(2026, 11, 25, 13, 0, 1, tzinfo=UTC)
    assert windows.not_before(["daily 11:00-13:00 UTC"], at) == datetime(
        2026, 11, 26, 11, 0, tzinfo=UTC
    )


def test_the_earliest_of_several_windows_is_next() -> None:
    specs = ["Sat 02:00-04:00 UTC", "Thu 01:00-02:00 UTC", "Mon-Fri 20:00:30-21:00 UTC"]
    assert windows.not_before(specs, WEDNESDAY_NOON) == datetime(
        2026, 11, 25, 20, 0, 30, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("sat 2:00-4:00 Europe/Berlin", "Sat 02:00-04:00 Europe/Berlin"),
        ("Fri-Mon 01:00-02:00:30 UTC", "Mon,Fri,Sat,Sun 01:00-02:00:30 UTC"),
        ("daily 23:00-24:00 UTC", "daily 23:00-00:00 UTC"),
    ],
)
def test_specs_are_stored_in_one_spelling(spec: str, canonical: str) -> None:
    assert windows.parse(spec).spec == canonical


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("Sat 2-4 UTC", "is not `<days>"),
        ("Someday 02:00-04:00 UTC", "is not a day"),
        ("Sat 02:00-04:00 Mars/Olympus", "is not an IANA time zone"),
        ("Sat 02:00-04:00 ../../etc/passwd", "is not an IANA time zone"),
        ("Sat 25:00-04:00 UTC", "is not a time of day"),
        ("Sat 02:00-02:00 UTC", "empty"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(spec: str, says: str) -> None:
    with pytest.raises(windows.InvalidWindow, match=says):
        windows.parse(spec)


def test_a_deploy_starts_at_its_not_before_in_the_first_window_after_it_unless_forced() -> None:
    asked = datetime(2030, 1, 1, 5, 0, tzinfo=UTC)
    nightly = Environment(name="staging", deploy_windows=["daily 02:00-03:00 UTC"])
    assert service.start_at(nightly, asked, force=False) == datetime(2030, 1, 2, 2, 0, tzinfo=UTC)
    assert service.start_at(nightly, asked, force=True) == asked  # an admin's force: no window
    morning = Environment(name="staging", deploy_windows=["daily 04:00-06:00 UTC"])
    assert service.start_at(morning, asked, force=False) == asked  # inside one
    assert service.start_at(Environment(name="x"), asked, force=False) == asked
    assert service.start_at(Environment(name="x"), None, force=False) is None  # at once
