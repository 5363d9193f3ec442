"""The console's charts as data: x values and named series, which static/console.js draws with
uPlot. Loss curves come from a model's training_results.csv (or, while the job runs, from its
progress events); usage charts from control's usage rows, one point per day."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

RESULTS_COLUMNS = ("step", "training_loss")   # required; epoch and validation_loss optional
MIN_DAYS = 7   # a daily chart spans a week at least: one day alone is a dot with no axis


class ChartError(ValueError):
    """The data cannot be drawn (a malformed file); the message says why."""


@dataclass(frozen=True)
class Series:
    label: str
    values: list[float | None]
    points_only: bool = False   # sparse values (validation loss once per epoch): dots, no gaps


@dataclass(frozen=True)
class Chart:
    x_label: str
    x: list[float]
    series: list[Series] = field(default_factory=list)
    time_axis: bool = False     # x in seconds since the epoch (days)

    @property
    def points(self) -> int:
        return sum(v is not None for s in self.series for v in s.values)

    def as_json(self) -> dict[str, Any]:
        return {"x_label": self.x_label, "x": self.x, "time": self.time_axis,
                "series": [{"label": s.label, "values": s.values, "points_only": s.points_only}
                           for s in self.series]}


def _number(text: str | None) -> float | None:
    """A finite float, or None for an empty or non-finite cell (JSON has no NaN)."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise ChartError(f"not a number: {text!r}") from None
    return value if math.isfinite(value) else None


def _loss_chart(by_step: Mapping[float, tuple[float | None, float | None]]) -> Chart:
    steps = sorted(by_step)
    training = [by_step[s][0] for s in steps]
    validation = [by_step[s][1] for s in steps]
    series = [Series("training loss", training)]
    if any(v is not None for v in validation):
        series.append(Series("validation loss", validation, points_only=True))
    return Chart("step", steps, series)


def loss_chart_from_csv(text: str) -> Chart:
    """training_results.csv (step, epoch, training_loss, validation_loss: the trainer's
    export) as a training-loss line and validation-loss points by step."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in RESULTS_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ChartError(f"training_results.csv has no {', '.join(missing)} column")
    by_step: dict[float, tuple[float | None, float | None]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            step = _number(row["step"])
            if step is None:
                raise ChartError("the step is empty")
            by_step[step] = (_number(row["training_loss"]), _number(row.get("validation_loss")))
        except ChartError as exc:
            raise ChartError(f"training_results.csv line {line}: {exc}") from None
    return _loss_chart(by_step)


def loss_chart_from_events(events: Iterable[Any]) -> Chart:
    """The losses the trainer reported in its progress events (JobEvent.metrics), while
    training_results.csv does not exist yet."""
    by_step: dict[float, tuple[float | None, float | None]] = {}
    for event in events:
        metrics = event.metrics
        if "step" not in metrics or not ({"training_loss", "validation_loss"} & set(metrics)):
            continue
        step = float(metrics["step"])
        old = by_step.get(step, (None, None))
        by_step[step] = (_finite(metrics.get("training_loss"), old[0]),
                         _finite(metrics.get("validation_loss"), old[1]))
    return _loss_chart(by_step)


def _finite(value: float | None, otherwise: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else otherwise


def day_seconds(day: str) -> float:
    """YYYY-MM-DD (UTC) as seconds since the epoch at its midnight."""
    parsed = date.fromisoformat(day)
    return datetime(parsed.year, parsed.month, parsed.day, tzinfo=timezone.utc).timestamp()


def daily_chart(points: Iterable[tuple[str, str, float]], x_label: str = "day",
                min_days: int = MIN_DAYS) -> Chart:
    """(day, series, value) summed into one series per name over every day from the first to
    the last, and at least `min_days` up to the last (a day without usage is 0), series in
    name order."""
    totals: dict[str, dict[str, float]] = {}
    for day, name, value in points:
        date.fromisoformat(day)   # a malformed day fails here, not in the browser
        by_day = totals.setdefault(name, {})
        by_day[day] = by_day.get(day, 0.0) + value
    days = sorted({d for by_day in totals.values() for d in by_day})
    if not days:
        return Chart(x_label, [], [], time_axis=True)
    first = min(date.fromisoformat(days[0]),
                date.fromisoformat(days[-1]) - timedelta(days=min_days - 1))
    every = _days_between(first.isoformat(), days[-1])
    return Chart(x_label, [day_seconds(d) for d in every],
                 [Series(name, [totals[name].get(d, 0.0) for d in every])
                  for name in sorted(totals)], time_axis=True)


def _days_between(first: str, last: str) -> Sequence[str]:
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
