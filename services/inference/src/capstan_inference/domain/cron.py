"""Exception dates of time-based autoscaling rules (SPEC §6.4): 6-field cron, day granularity. Pure.

``sec min hour day month weekday``; the first three are accepted and ignored. Day 1-31, month 1-12 or
JAN-DEC, weekday 0-6 or SUN-SAT (7 is Sunday too). Each field: ``*``, a value, a range ``a-b``, a step
``*/n`` or ``a-b/n``, or a comma list of those. As in cron, when both day and weekday are restricted
a date matches either; otherwise both must match. Oct 1-7 = ``* * * 1-7 10 *``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from capstan_core.errors import InvalidArgument

MONTHS = {m: i + 1 for i, m in enumerate(("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                          "NOV", "DEC"))}
WEEKDAYS = {d: i for i, d in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
EXPR_MAX = 200


@dataclass(frozen=True)
class DateSpec:
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    day_star: bool
    weekday_star: bool

    def matches(self, date: dt.date) -> bool:
        if date.month not in self.months:
            return False
        weekday = (date.weekday() + 1) % 7
        day_ok, weekday_ok = date.day in self.days, weekday in self.weekdays
        if self.day_star or self.weekday_star:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def _value(text: str, lo: int, hi: int, names: dict[str, int], field: str, expr: str) -> int:
    t = text.upper()
    if t in names:
        return names[t]
    if not t.isdigit():
        raise InvalidArgument(f"cron {expr!r}: {field} {text!r} is not a number {lo}-{hi}"
                              + (f" or a name ({', '.join(names)})" if names else ""), field="except")
    v = int(t)
    if field == "weekday" and v == 7:
        return 0
    if not lo <= v <= hi:
        raise InvalidArgument(f"cron {expr!r}: {field} {v} is outside {lo}-{hi}", field="except")
    return v


def _field(text: str, lo: int, hi: int, names: dict[str, int], field: str, expr: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise InvalidArgument(f"cron {expr!r}: step {step_text!r} of {field} must be a positive number",
                                      field="except")
            step = int(step_text)
        if base in ("*", "?"):
            a, b = lo, hi
        elif "-" in base:
            x, _, y = base.partition("-")
            a, b = _value(x, lo, hi, names, field, expr), _value(y, lo, hi, names, field, expr)
            if field == "weekday" and y == "7":
                b = 6  # 1-7: Monday..Sunday
                out.add(0)
            if a > b:
                raise InvalidArgument(f"cron {expr!r}: range {base!r} of {field} runs backwards", field="except")
        else:
            a = b = _value(base, lo, hi, names, field, expr)
        out.update(range(a, b + 1, step))
    return frozenset(out)


def parse(expr: str) -> DateSpec:
    if not isinstance(expr, str) or len(expr) > EXPR_MAX:
        raise InvalidArgument(f"an exception date is a cron expression of at most {EXPR_MAX} characters",
                              field="except")
    parts = expr.split()
    if len(parts) != 6:
        raise InvalidArgument(f"cron {expr!r} must have 6 fields: sec min hour day month weekday "
                              "(e.g. '* * * 1-7 10 *' for October 1-7)", field="except")
    for i, name in enumerate(("second", "minute", "hour")):
        _field(parts[i], 0, (59, 59, 23)[i], {}, name, expr)  # checked, then ignored (day granularity)
    return DateSpec(
        days=_field(parts[3], 1, 31, {}, "day", expr),
        months=_field(parts[4], 1, 12, MONTHS, "month", expr),
        weekdays=_field(parts[5], 0, 6, WEEKDAYS, "weekday", expr),
        day_star=parts[3] in ("*", "?"),
        weekday_star=parts[5] in ("*", "?"),
    )


def matches(expr: str, date: dt.date) -> bool:
    return parse(expr).matches(date)
